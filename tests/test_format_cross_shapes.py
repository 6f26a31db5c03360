"""No format reads what it does not understand: each foreign format is fed the records of every other format
(the README's examples, which the formats' own tests show ingest in their format) and JSON of no format at all,
and quarantines every one of them, with a reason, accepting nothing.
"""

from __future__ import annotations

import pytest

from ingest.intake.job import ingest
from ingest.intake.records import FOREIGN_FORMATS
from ingest.lake import quarantine_table
from test_ingest_formats import config, write_jsonl
from test_readme_format_examples import examples

ARBITRARY = [
    {}, {"a": 1}, {"data": "x"}, {"data": [{}], "meta": {}}, {"resourceSpans": "x"}, {"runs": {"a": 1}},
    {"id": 7, "name": "thumbs"}, {"object": "list"}, {"choices": [1, 2]}, {"event_id": "e1", "label": "up"},
    {"prompt": 3, "label": "maybe"}, {"chosen": 1, "rejected": 2}, {"scores": [{"name": "thumbs"}]},
]


EXAMPLES = examples()  # the README's, from tests/test_readme_format_examples.py's EXAMPLES text


def test_the_examples_cover_every_foreign_format():
    assert set(EXAMPLES) == set(FOREIGN_FORMATS)


@pytest.mark.parametrize("fmt", FOREIGN_FORMATS)
def test_a_format_quarantines_every_other_formats_records_and_arbitrary_json(tmp_path, fmt):
    strangers = [r for other, records in EXAMPLES.items() if other != fmt for r in records] + ARBITRARY
    source = tmp_path / "strangers.jsonl"
    write_jsonl(source, strangers)
    summary = ingest([source], tmp_path / "lake", config(fmt), progress=False).to_dict()
    assert summary["accepted"] == 0, summary
    assert summary["unrated"] == 0 and not summary["ignored"], summary  # not understood is not "unrated"
    quarantined = quarantine_table(tmp_path / "lake").to_pylist()
    assert sorted(r["line"] for r in quarantined) == list(range(1, len(strangers) + 1))
    assert all(r["reason"] and r["detail"] for r in quarantined)
