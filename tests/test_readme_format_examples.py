"""The README's example records for `--format trl-kto|langfuse|langsmith|otel-genai|openai`, checked.

Under each `### `--format X`` heading: a variant table and a ```json block, one record per line (pasteable into a
.jsonl file as it is). Each block is ingested with its format: nothing is quarantined, the events are as many as
the text says, each line gives events of its own or is a generation-only line that a rating of another line names,
each variant of the table has its line, and every prompt and answer is text of the fixtures (HH-RLHF, PandaLM).

    pytest -q tests/test_readme_format_examples.py
"""

from __future__ import annotations

import functools
import gzip
import json
import re
from pathlib import Path

import pytest

from conftest import HH_PATH, PANDALM_PATH, ROOT
from ingest.intake.job import ingest
from ingest.intake.records import FOREIGN_FORMATS
from ingest.lake import feedback_dataset
from test_ingest_formats import config

# The text whose examples are checked (tests/test_format_cross_shapes.py reads them too).
EXAMPLES = ROOT / "README.md"
EVENTS = {"trl-kto": 6, "langfuse": 4, "langsmith": 3, "otel-genai": 5, "openai": 4}  # as each section's text says


def sections(path: Path = EXAMPLES) -> dict[str, str]:
    """Each `### `--format X`` subsection's text, up to the next heading of its level or above."""
    text = path.read_text()
    found = re.finditer(r"^### `--format ([a-z-]+)`\n(.*?)(?=^#{1,3} |\Z)", text, re.M | re.S)
    return {m.group(1): m.group(2) for m in found}


def example_lines(section: str) -> list[str]:
    """The lines of the section's ```json blocks: each one record."""
    return [line for block in re.findall(r"^```json\n(.*?)^```", section, re.M | re.S)
            for line in block.splitlines() if line.strip()]


def examples(path: Path = EXAMPLES) -> dict[str, list]:
    """The example records by format (for tests/test_format_cross_shapes.py too)."""
    return {fmt: [json.loads(line) for line in example_lines(text)] for fmt, text in sections(path).items()}


SECTIONS = sections()


def _variants(section: str) -> int:
    """Rows of the section's variant table (the one whose header starts `| variant |`)."""
    table = re.search(r"^\| variant \|.*?\n\|[-|]+\|\n((?:\|.*\n)+)", section, re.M)
    return len(table.group(1).splitlines()) if table else 0


def _ingest(tmp_path: Path, name: str, fmt: str, lines: list[str]) -> tuple[dict, list[dict]]:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "example.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = ingest([folder / "example.jsonl"], folder / "lake", config(fmt), progress=False).to_dict()
    rows = feedback_dataset(folder / "lake").to_table().to_pylist() if summary["accepted"] else []
    return summary, rows


@functools.cache
def _fixture_text() -> str:
    """Every text of the fixtures the examples are taken from, one after the other."""
    with gzip.open(HH_PATH, "rt", encoding="utf-8") as f:
        hh = [text for line in f for text in json.loads(line).values()]
    items = json.loads(PANDALM_PATH.read_text())
    pandalm = [item[k] for item in items for k in ("instruction", "input", "response1", "response2")
               if isinstance(item.get(k), str)]
    pandalm += [f"{item['instruction']}\n\n{item['input']}" for item in items if item.get("input")]  # as tests pose it
    return "\x00".join(hh + pandalm)


def test_every_foreign_format_has_its_examples():
    assert set(SECTIONS) == set(FOREIGN_FORMATS) == set(EVENTS)


@pytest.mark.parametrize("fmt", sorted(EVENTS))
def test_each_example_is_one_record_on_one_line_and_each_variant_has_one(fmt):
    lines = example_lines(SECTIONS[fmt])
    for line in lines:
        assert isinstance(json.loads(line), (dict, list)), line[:80]  # a record wrapped over lines would not parse
    assert _variants(SECTIONS[fmt]) >= 4 and len(lines) >= _variants(SECTIONS[fmt])


@pytest.mark.parametrize("fmt", sorted(EVENTS))
def test_each_block_ingests_in_its_format_line_by_line(tmp_path, fmt):
    lines = example_lines(SECTIONS[fmt])
    summary, rows = _ingest(tmp_path, "block", fmt, lines)
    assert summary["quarantined_total"] == 0, summary["quarantined"]
    assert (summary["accepted"], summary["unrated"], summary["ignored"]) == (EVENTS[fmt], 0, {})
    rated = {r["source_line"] for r in rows}
    for number, line in enumerate(lines, start=1):
        if number in rated:
            continue
        alone, _ = _ingest(tmp_path, f"line-{number}", fmt, [line])  # a generation that another line rates
        assert (alone["accepted"], alone["quarantined_total"]) == (0, 0), (number, alone)


@pytest.mark.parametrize("fmt", sorted(EVENTS))
def test_the_examples_hold_real_fixture_text(tmp_path, fmt):
    corpus = _fixture_text()
    _, rows = _ingest(tmp_path, "block", fmt, example_lines(SECTIONS[fmt]))
    texts = [r["completion"] for r in rows] + [m["content"] for r in rows for m in r["prompt"]]
    assert texts and all(text.strip() in corpus for text in texts), [t for t in texts if t.strip() not in corpus]
