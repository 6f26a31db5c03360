"""The deep-nesting guard (`records.too_deep`) gives the verdict it always gave, on any bytes.

Every foreign-format line (an OTLP batch of a hundred calls is one line) goes through the guard before any
parser, so it was rewritten to scan in C and numpy. Its verdict is a contract: a line the old guard let through
must still be let through, and one it refused refused, invalid JSON included. The old guard is kept here as the
reference (strip JSON strings with a regex, then count brackets byte by byte) and both are run on random and
hostile texts: stray backslashes and quotes outside strings, unterminated strings, every byte value, lines at
the limit.

    pytest -q tests/test_format_depth_guard.py
"""

from __future__ import annotations

import json
import random
import re

import pytest

from ingest.intake.records import MAX_DEPTH, too_deep

# The guard as it was before (ingest/intake/records.py at issue 29's first change): the reference.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def reference(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    depth = 0
    for byte in _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS):
        depth += 1 if byte in b"[{" else -1
        if depth > limit:
            return True
    return False


def _hostile(rng: random.Random, n: int) -> bytes:
    """Bytes mostly from the few that matter (brackets, quotes, backslashes), runs of them, and noise."""
    alphabet = b'[]{}"\\\\\\a, :'
    out = bytearray()
    while len(out) < n:
        pick = rng.random()
        if pick < 0.6:
            out.append(rng.choice(alphabet))
        elif pick < 0.75:
            out += bytes([rng.choice(b'[{\\"')]) * rng.randint(2, 12)  # runs: nesting, backslash runs
        elif pick < 0.9:
            out.append(rng.randrange(256))  # any byte: invalid UTF-8, control bytes, would-be markers
        else:
            out += json.dumps(rng.choice(["x", 'a"b', "c\\d", "[{", "]}", 'e\\"f'])).encode()
    return bytes(out)


def _nested(rng: random.Random, depth: int) -> bytes:
    """Valid JSON nested `depth` deep, with brackets, quotes and backslashes inside its strings."""
    value: object = rng.choice(["leaf", 'q"uote', "back\\slash", "[[[{{{", "]]]}}}"])
    for _ in range(depth):
        value = [value, "[{\\\"", {"k": 1}] if rng.random() < 0.5 else {"a": value, "s": "}]\\"}
    return json.dumps(value).encode()


CASES = {
    "hostile bytes, small limit": lambda rng: (_hostile(rng, rng.randint(0, 300)), rng.randint(0, 8)),
    "hostile bytes, long": lambda rng: (_hostile(rng, rng.randint(200, 3000)), rng.randint(2, 40)),
    "valid JSON near the limit": lambda rng: (_nested(rng, rng.randint(0, 12)), rng.randint(4, 10)),
    "valid JSON at MAX_DEPTH": lambda rng: (_nested(rng, rng.randint(MAX_DEPTH - 3, MAX_DEPTH + 3)), MAX_DEPTH),
    "stray backslashes and quotes outside strings": lambda rng: (
        b"".join(rng.choice([b"[", b"{", b"\\", b'\\"', b'"', b"\\\\", b"]", b"x"])
                 for _ in range(rng.randint(1, 400))),
        rng.randint(1, 6)),
    "every byte value, then nesting": lambda rng: (  # no byte is free to stand for an escaped quote
        bytes(rng.sample(range(256), 256)) + rng.choice([b"", b'"', b'\\"', b'\\\\"']) + b"[" * rng.randint(0, 20)
        + b'\\"' + b"{" * rng.randint(0, 20), rng.randint(5, 30)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_guard_gives_the_reference_verdict(case):
    rng = random.Random(case)
    refused = 0
    for _ in range(1500):
        raw, limit = CASES[case](rng)
        assert too_deep(raw, limit) == reference(raw, limit), (raw[:200], limit)
        refused += reference(raw, limit)
    assert 0 < refused < 1500  # both verdicts were exercised


@pytest.mark.parametrize("raw, limit, deep", [
    (b"[" * 129, MAX_DEPTH, True), (b"[" * 128 + b"]" * 128, MAX_DEPTH, False),
    (b'["' + b"[" * 200 + b'"]', MAX_DEPTH, False),  # brackets in a string do not count
    (b'["\\"' + b"[" * 200 + b'"]', MAX_DEPTH, False),  # an escaped quote does not end the string
    (b'["\\\\"' + b"[" * 200, MAX_DEPTH, True),  # an escaped backslash does not escape the quote
    (b'\\"' + b"[" * 200, MAX_DEPTH, False),  # a stray backslash outside: the quote still opens a string
    (b'"' + b"[" * 200, MAX_DEPTH, False),  # an unterminated string runs to the end
])
def test_the_guard_on_hand_made_lines(raw, limit, deep):
    assert too_deep(raw, limit) is deep
    assert reference(raw, limit) is deep
