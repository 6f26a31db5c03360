"""OTLP's unix nanoseconds to ISO-8601 (`base.nanos_to_iso`): the same text as `datetime` gives, on any value.

Every OTel record's time goes through it (three per call), so the common range is written from integers with
the seconds' text cached, instead of a `datetime` per record. `datetime.fromtimestamp` on the float is the
reference; both are run on random and edge values across and beyond the fast range, and on bad ones.

    pytest -q tests/test_format_timestamps.py
"""

from __future__ import annotations

import random
from datetime import datetime, timezone

import pytest

from ingest.intake.formats.base import nanos_to_iso
from ingest.intake.records import BadRow
from ingest.schema import Reason


def reference(value) -> str:
    """nanos_to_iso as it was: through a float and a datetime."""
    return datetime.fromtimestamp(int(value) // 1000 / 1e6, timezone.utc).isoformat()


def _values(rng: random.Random, top: int) -> list[int]:
    """Random nanoseconds below `top`, with their microseconds at the edges (0, 1, 999,999, a half) too."""
    out = []
    for _ in range(20_000):
        seconds = rng.randrange(top // 10**9)
        micros = rng.choice([0, 1, 500_000, 999_999, rng.randrange(10**6)])
        out.append((seconds * 10**6 + micros) * 1000 + rng.randrange(1000))
    return out


RANGES = {"to 2001": 10**18, "to 2038 (the fast range's end)": 2**31 * 10**9 + 5 * 10**9,
          "to 2262": 2**63 - 1, "the fast range's last seconds": None}


@pytest.mark.parametrize("span", sorted(RANGES))
def test_the_text_is_the_datetime_text(span):
    rng = random.Random(span)
    if RANGES[span] is None:
        values = [(2**31 + d) * 10**9 + rng.randrange(10**9) for d in range(-3000, 3000)]
    else:
        values = _values(rng, RANGES[span])
    for value in values:
        for written in (value, str(value)):  # OTLP/JSON writes a string; a number is read too
            assert nanos_to_iso(written, "timeUnixNano") == reference(value), value


@pytest.mark.parametrize("value, reason", [("soon", Reason.BAD_TIMESTAMP), (None, Reason.BAD_TIMESTAMP),
                                           (str(10**30), Reason.BAD_TIMESTAMP), ("1.5", Reason.BAD_TIMESTAMP)])
def test_bad_values_are_bad_timestamps(value, reason):
    with pytest.raises(BadRow) as raised:
        nanos_to_iso(value, "timeUnixNano")
    assert raised.value.reason is reason and "timeUnixNano" in raised.value.detail


def test_negative_and_zero_times_as_datetime_writes_them():
    for value in (0, -1, -10**9, -1_500_000_000_000_000_000, 999):
        assert nanos_to_iso(value, "timeUnixNano") == reference(value)
