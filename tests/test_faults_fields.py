"""Every value a row can carry ends accepted or quarantined, never in a crash, on both ingest paths.

Hypothesis builds files of event lines whose every field is drawn from hostile values (other JSON types,
numbers at the edges, timestamps out of range or in odd ISO forms, lone surrogates, control characters,
BOMs, CRLF, invalid UTF-8, truncation, nesting around records.MAX_DEPTH and far past it). Within one file
the fields often share a JSON type, so Arrow's reader types the block and the vectorised path really decides
rows (a file of mixed types goes per line, which is tested too). Each file is ingested with the Arrow path on
and forced off; both must count lines read = accepted + quarantined, and write the same accepted rows and the
same quarantine.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.compute as pc
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ingest.intake.job import IngestConfig, ingest  # noqa: E402
from ingest.lake import feedback_dataset, quarantine_table  # noqa: E402
from ingest.intake.records import MAX_DEPTH  # noqa: E402

LIMIT = 64  # max_text_chars: texts near and over the limit are cheap to generate

# --- values ----------------------------------------------------------------------------------------------

_text = st.text(st.characters(exclude_categories=()), max_size=LIMIT + 8)  # lone surrogates too
_edge_text = st.sampled_from(["", " ", "\t\n", "\x00", "\u2028", "\ufeff", "é", "e\u0301", "🎉", "x" * LIMIT,
                              "x" * (LIMIT + 1), "up", "DOWN", "thumbs_up", "true", "null", "1", "-1"])
_ints = st.one_of(st.integers(-3, 3), st.sampled_from([2**31, -2**31 - 1, 2**53 + 1, 2**63, -2**63 - 1, 10**30]))
_floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1.0, -1.0, 0.0, -0.0, 1e308]))


def _iso(draw_year, month, day, hour, minute, second, frac, sep, tz) -> str:
    return f"{draw_year}-{month:02d}-{day:02d}{sep}{hour:02d}:{minute:02d}:{second:02d}{frac}{tz}"


_timestamps = st.one_of(
    st.builds(_iso, st.sampled_from(["0001", "0000", "1969", "1970", "2026", "9999", "10000", "+2026", "-001"]),
              st.integers(0, 13), st.integers(0, 32), st.integers(0, 25), st.integers(0, 61), st.integers(0, 61),
              st.sampled_from(["", ".5", ".123456", ".1234567", ".000000001", ",5"]),
              st.sampled_from(["T", " ", "t", "_"]),
              st.sampled_from(["", "Z", "z", "+00:00", "-01:00", "+14:00", "-23:59", "+24:00", "+0530", "+05",
                               "+05:30:15", "+05:30:15.5", " UTC", "GMT"])),
    st.sampled_from(["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59.999999Z",
                     "0001-01-01T00:00:00Z", "2026-11-20", "2026-11-20T03", "2026-W47-5", "2026-324",
                     "20261120T031245Z", "2026-02-29T00:00:00Z", "2024-02-29T00:00:00Z", "2026-11-20T24:00:00",
                     "2026-11-20T23:59:60Z", "", "now"]),
)
_labels = st.one_of(st.sampled_from(["up", "down", "Up ", " THUMBS_DOWN", "thumbs-up", "true", "1", "+1", "yes",
                                     "\u0075p", "ｕｐ"]), _ints, st.booleans(), _floats)
_roles = st.one_of(st.sampled_from(["user", "assistant", "system", "User", "tool", "", " user"]), _text, st.none(),
                   _ints)
_message = st.fixed_dictionaries({}, optional={"role": _roles, "content": st.one_of(_text, _edge_text, st.none(),
                                                                                     _ints)})
_json = st.recursive(st.one_of(st.none(), st.booleans(), _ints, _floats, _text),
                     lambda inner: st.one_of(st.lists(inner, max_size=3),
                                             st.dictionaries(_text, inner, max_size=3)), max_leaves=6)

_word = st.text(st.characters(codec="ascii", categories=("L", "N")), min_size=1, max_size=12)
_good_text = st.one_of(_word, st.text(min_size=1, max_size=LIMIT).filter(str.strip))
_offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
_aware = st.one_of(st.datetimes(timezones=_offsets).map(datetime.isoformat),
                   st.sampled_from(["2026-11-20T03:12:45Z", "2026-11-20T01:30:00+02:00", "9999-12-31T23:59:59Z"]))
_naive = st.one_of(st.datetimes().map(datetime.isoformat), st.sampled_from(["2026-11-19 23:59:59", "0001-01-01"]))

_good_messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]),
                                                  "content": _text}), min_size=1, max_size=3)

# Per field: the kinds of value it may hold in one file, a valid kind first. Each file picks one kind per
# field (the first most often), so a whole column shares a JSON type and Arrow's reader can type the block.
FIELD_KINDS = {
    "event_id": [_word, st.one_of(_text, _edge_text), _ints, _floats],
    "timestamp": [_aware, _naive, _timestamps, _ints],
    "prompt": [_good_text, _good_messages, st.one_of(_text, _edge_text), st.lists(_message, max_size=3)],
    "completion": [_good_text, st.one_of(_text, _edge_text), _ints],
    "label": [st.sampled_from(["up", "down", "thumbs_up", "Down"]), _labels, st.sampled_from([1, -1, 0, 2]),
              st.booleans()],
    "user_id": [_word, st.one_of(_text, _edge_text), _ints],
    "conversation_id": [_word, st.one_of(_text, _edge_text)],
    "model_version": [_word, st.one_of(_text, _edge_text)],
    "metadata": [st.none(), st.dictionaries(_text, _json, max_size=2), _json],
}
OPTIONAL = ("user_id", "conversation_id", "model_version", "metadata")

# Nesting around the bound and far past it (Python's json gives up near 1,000 levels, Arrow crashed near 10,000),
# planted as raw text after json.dumps (which would recurse too) in place of a placeholder string.
DEPTHS = [2, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 1_000, 10_000]
_DEEP = "__deep_placeholder__"


def nested(depth: int) -> bytes:
    opens = "".join("[" if i % 2 else '{"k":' for i in range(depth))
    return (opens + "0" + "".join("]" if i % 2 else "}" for i in reversed(range(depth)))).encode()


@st.composite
def event_file(draw) -> bytes:
    """Lines of one source file. Per file: which fields (up to 3) hold another kind of value than their
    first, whether one field mixes JSON types (the block then goes per line), whether bytes get broken."""
    n = draw(st.integers(1, 8))
    varied = set(draw(st.lists(st.sampled_from(sorted(FIELD_KINDS)), max_size=3)))
    mixed = draw(st.sampled_from(sorted(FIELD_KINDS))) if draw(st.integers(0, 4)) == 0 else None
    kinds, present = {}, {}
    for name, (first, *others) in FIELD_KINDS.items():
        kinds[name] = (st.one_of(first, *others, _json) if name == mixed else
                       draw(st.sampled_from(others)) if name in varied else first)
        present[name] = draw(st.sampled_from([1.0, 0.5, 0.0] if name in OPTIONAL else [1.0, 1.0, 1.0, 0.9]))
    ascii_only, broken = draw(st.booleans()), draw(st.integers(0, 2)) == 0
    deep = draw(st.sampled_from([None, None, None, "metadata", "prompt", "extra"]))  # where nesting is planted
    lines = []
    for _ in range(n):
        record = {}
        for name in FIELD_KINDS:
            if draw(st.floats(0, 1)) < present[name]:
                record[name] = draw(st.none() if draw(st.integers(0, 29)) == 0 else kinds[name])
        depth = draw(st.sampled_from(DEPTHS)) if deep and draw(st.booleans()) else None
        if depth:
            record["zz" if deep == "extra" else deep] = _DEEP
        raw = json.dumps(record, ensure_ascii=ascii_only, allow_nan=True).encode("utf-8", "surrogatepass")
        if depth:
            raw = raw.replace(f'"{_DEEP}"'.encode(), nested(depth))
        if broken and draw(st.booleans()):  # a line broken at the byte level
            at = draw(st.integers(0, len(raw)))
            bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\x00", b"\x1f"]))
            value = draw(st.integers(0, raw.count(b'": "')))  # inside the n-th string value, where Arrow must look
            raw = draw(st.sampled_from([
                raw + b"\r", b"\xef\xbb\xbf" + raw, raw[:at], raw + b" {}", b"   ", raw.replace(b"\\", b"\\\\", 1),
                raw[:at] + bad + raw[at:], b'": "'.join(p + bad if i == value else p
                                                        for i, p in enumerate(raw.split(b'": "')))]))
        lines.append(raw)
    return b"\n".join(lines) + draw(st.sampled_from([b"\n", b"", b"\n\n"]))


def _lake_state(lake: Path) -> tuple:
    rows = feedback_dataset(lake).to_table() if (lake / "feedback").exists() else None
    accepted = sorted(rows.drop_columns(["date"]).to_pylist(), key=lambda r: r["source_line"]) if rows else []
    if rows is not None:  # each row sits in the partition of its UTC date
        days = pc.strftime(rows.column("timestamp"), format="%Y-%m-%d").to_pylist()
        assert days == rows.column("date").to_pylist()
    quarantined = sorted((r["line"], r["reason"]) for r in quarantine_table(lake).to_pylist())
    return accepted, quarantined


def ingest_both_ways(tmp: Path, data: bytes):
    source = tmp / "fuzz.jsonl"
    source.write_bytes(data)
    results = []
    for vectorized in (True, False):
        lake = tmp / f"lake-{vectorized}"
        summary = ingest([source], lake, IngestConfig(insecure_dev_key=True, max_text_chars=LIMIT,
                                                      vectorized=vectorized), progress=False)
        s = summary.sources[0]
        assert s.status == "ingested", s.error
        assert s.lines == s.accepted + sum(s.quarantined.values()), s
        results.append((s.lines, _lake_state(lake)))
    return results


OUT_OF_RANGE = b"\n".join(
    [json.dumps({"event_id": f"e{i}", "timestamp": "2026-11-20T03:12:45Z", "prompt": "p", "completion": "c",
                 "label": "up"}).encode() for i in range(3)]
    + [b'{"event_id": "late", "timestamp": "9999-12-31T23:59:59-01:00", "prompt": "p", "completion": "c", '
       b'"label": "up"}',
       b'{"event_id": "early", "timestamp": "0001-01-01T00:00:00+01:00", "prompt": "p", "completion": "c", '
       b'"label": "up"}']
    + [json.dumps({"event_id": f"f{i}", "timestamp": "2026-11-20T03:12:45Z", "prompt": "p", "completion": "c",
                   "label": "down"}).encode() for i in range(2)]) + b"\n"


def test_a_timestamp_out_of_range_in_utc_is_quarantined_and_its_neighbours_ingested(tmp_path):
    (lines_a, (accepted_a, quarantined_a)), (lines_b, state_b) = ingest_both_ways(tmp_path, OUT_OF_RANGE)
    assert lines_a == lines_b == 7
    assert [r["event_id"] for r in accepted_a] == ["e0", "e1", "e2", "f0", "f1"]
    assert quarantined_a == [(4, "bad_timestamp"), (5, "bad_timestamp")]
    assert (accepted_a, quarantined_a) == state_b

    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["ingest", str(tmp_path / "fuzz.jsonl"), "--lake", str(tmp_path / "cli-lake"),
                                      "--insecure-dev-key", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["accepted"], summary["quarantined"]) == (5, {"bad_timestamp": 2})


def test_a_byte_order_mark_opens_a_file_but_elsewhere_is_bad_json(tmp_path):
    line = json.dumps({"event_id": "e", "timestamp": "2026-11-20T03:12:45Z", "prompt": "p", "completion": "c",
                       "label": "up"}).encode()
    data = b"\xef\xbb\xbf" + line + b"\n" + b"\xef\xbb\xbf" + line.replace(b'"e"', b'"f"') + b"\n"
    for _, (accepted, quarantined) in ingest_both_ways(tmp_path, data):
        assert [r["event_id"] for r in accepted] == ["e"] and quarantined == [(2, "malformed_json")]


@pytest.mark.slow
@settings(max_examples=int(os.environ.get("THUMBS_FUZZ_EXAMPLES", 150)), deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(data=event_file())
@example(data=OUT_OF_RANGE)
@example(data=OUT_OF_RANGE.replace(b'"p"', nested(1_000), 1).replace(b'"p"', nested(10_000), 1))  # too deep
@example(data=OUT_OF_RANGE.replace(b'"label": "up"}', b'"label": "up", "zz": ' + nested(MAX_DEPTH - 1) + b"}", 1))
@example(data=b'{"event_id": "a", "timestamp": "2026-11-20T03:12:45Z", "prompt": "p", "completion": "c\xff", '
              b'"label": "up"}\n')  # Arrow's reader does not check UTF-8 itself
@example(data=b'{"event_id": "a", "timestamp": "2026-11-20T03:12:45Z", "prompt": "p", "completion": "c", '
              b'"label": "up"} {}\n\n')  # two objects on a line and a blank line: Arrow's row count still matches
def test_fuzzed_fields_end_accepted_or_quarantined_and_both_paths_agree(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("fuzz")
    (lines_a, state_a), (lines_b, state_b) = ingest_both_ways(tmp, data)
    assert lines_a == lines_b
    assert state_a == state_b
