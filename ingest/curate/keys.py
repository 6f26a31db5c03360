"""Example keys and stable hashes, column-wise: which rows are the same example, and where each one goes.

Keys compare texts after Unicode NFC and whitespace folding (runs of whitespace become one space,
ends trimmed); the stored texts are never changed. The hash is a fixed polynomial over the key's
UTF-8 bytes followed by a splitmix64 finaliser, in numpy: the same on every machine, run and runner,
so buckets and the train/eval split never move.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_P = np.uint64(0x100000001B3)  # FNV-64 prime as the polynomial base
_POWERS = np.ones(1, dtype=np.uint64)


def normalize_text(texts: pa.Array) -> pa.Array:
    """NFC, whitespace runs folded to one space, ends trimmed."""
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(pc.utf8_normalize(texts, "NFC"), r"\s+", " "))


def prompt_key(prompt: pa.Array) -> pa.Array:
    """One string per prompt: its messages' roles and normalised contents, joined with separators."""
    if isinstance(prompt, pa.ChunkedArray):
        prompt = prompt.combine_chunks()
    offsets = pc.subtract(prompt.offsets, prompt.offsets[0])
    values = prompt.values.slice(prompt.offsets[0].as_py(), (prompt.offsets[-1].as_py() - prompt.offsets[0].as_py()))
    messages = pc.binary_join_element_wise(values.field("role"), normalize_text(values.field("content")), "\x1f")
    return pc.binary_join(pa.ListArray.from_arrays(offsets, messages), "\x1e")


def example_key(prompt_keys: pa.Array, completion: pa.Array) -> pa.Array:
    """The (prompt, completion) identity, from `prompt_key`s: different users voting on it vote on one example."""
    return pc.binary_join_element_wise(prompt_keys, normalize_text(completion), "\x1d")


def _powers(n: int) -> np.ndarray:
    global _POWERS
    if len(_POWERS) < n:
        out = np.empty(max(n, 2 * len(_POWERS)), dtype=np.uint64)
        out[0] = 1
        with np.errstate(over="ignore"):
            for i in range(1, len(out)):  # grows geometrically, so this loop runs rarely
                out[i] = out[i - 1] * _P
        _POWERS = out
    return _POWERS


def stable_hash(strings: pa.Array) -> np.ndarray:
    """uint64 per string, a deterministic function of its UTF-8 bytes (nulls hash as empty strings)."""
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    strings = pc.fill_null(strings.cast(pa.large_string()), "")
    n = len(strings)
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int64)[strings.offset:strings.offset + n + 1]
    data = np.frombuffer(strings.buffers()[2], dtype=np.uint8) if strings.buffers()[2] else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    total = int(offsets[-1] - offsets[0])
    h = np.zeros(n, dtype=np.uint64)
    if total:
        span = data[offsets[0]:offsets[-1]].astype(np.uint64) + np.uint64(1)
        position = np.arange(total, dtype=np.int64) - np.repeat(starts - offsets[0], lengths)
        with np.errstate(over="ignore"):
            terms = span * _powers(int(lengths.max()))[position]
            nonempty = lengths > 0
            h[nonempty] = np.add.reduceat(terms, (starts - offsets[0])[nonempty])
    with np.errstate(over="ignore"):
        h ^= lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h


def unit_interval(strings: pa.Array) -> np.ndarray:
    """A stable pseudo-random number in [0, 1) per string: the train/eval split draws from it."""
    return (stable_hash(strings) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
