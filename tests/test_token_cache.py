"""The split's token ids, encoded once and memory-mapped from the snapshot's cache (training/tokencache.py): the
same examples as encoding afresh, a damaged or foreign cache never trusted."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from transformers import AutoTokenizer

from ingest.curate.snapshot import read_split
from tests.conftest import GPT2_TOKENIZER
from training.data import encode
from training.model import model_files_fingerprint
from training.tokencache import cache_dir, encoded_split


@pytest.fixture
def snapshot(hh_snapshot, tmp_path):
    return shutil.copytree(hh_snapshot, tmp_path / "snapshots" / hh_snapshot.name)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(GPT2_TOKENIZER)


def split(snapshot, tokenizer, notices, **limits):
    limits = {"max_length": 128, "max_prompt_length": 64} | limits
    return encoded_split(snapshot, "train", tokenizer, model_files_fingerprint(GPT2_TOKENIZER), check=False,
                         log=notices.append, **limits)


def same(a, b) -> bool:
    return (a.fingerprint() == b.fingerprint() and a.counts == b.counts and a.dropped == b.dropped
            and np.array_equal(a.rows, b.rows) and np.array_equal(a.prompt_group, b.prompt_group))


def test_the_second_read_maps_the_ids_the_first_encoded(snapshot, tokenizer):
    notices = []
    first, hit = split(snapshot, tokenizer, notices)
    assert not hit and not notices  # nothing cached yet: encoded, quietly
    second, hit = split(snapshot, tokenizer, notices)
    assert hit and "from the cache" in notices[-1]
    assert isinstance(second.prompt_ids.values, np.memmap) and isinstance(second.completion_ids.values, np.memmap)
    fresh = encode(read_split(snapshot), tokenizer, 128, 64, check=False)
    assert same(first, fresh) and same(second, fresh)
    assert [f.name for f in cache_dir(snapshot).iterdir()] == [next(cache_dir(snapshot).iterdir()).name]  # one key


def test_other_limits_are_another_key(snapshot, tokenizer):
    notices = []
    split(snapshot, tokenizer, notices)
    short, hit = split(snapshot, tokenizer, notices, max_length=64, max_prompt_length=32)
    assert not hit and len(list(cache_dir(snapshot).iterdir())) == 2
    assert same(short, encode(read_split(snapshot), tokenizer, 64, 32, check=False))


@pytest.mark.parametrize("damage", ["flip a byte", "drop the proof", "drop an array", "proof not json"])
def test_a_damaged_cache_is_never_trusted_and_is_rebuilt(snapshot, tokenizer, damage):
    notices = []
    split(snapshot, tokenizer, notices)
    folder = next(cache_dir(snapshot).iterdir())
    if damage == "flip a byte":
        path = folder / "completion_values.npy"
        data = bytearray(path.read_bytes())
        data[-3] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "drop the proof":
        (folder / "encoded.json").unlink()
    elif damage == "drop an array":
        (folder / "rows.npy").unlink()
    else:
        (folder / "encoded.json").write_text("{not json")
    again, hit = split(snapshot, tokenizer, notices)
    assert not hit and "is not used" in notices[-1] and "encoding train again" in notices[-1]
    assert same(again, encode(read_split(snapshot), tokenizer, 128, 64, check=False))
    _, hit = split(snapshot, tokenizer, notices)
    assert hit  # rebuilt whole
    assert json.loads((folder / "encoded.json").read_text())["examples"] == len(again)
