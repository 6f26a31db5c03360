"""Task suites: user-supplied JSONL checks that an adapter must keep passing.

One JSON object per line, with a `prompt` (a string, or a list of {role, content} messages) and
exactly one of:
- `expected`: the answer's first line must equal it (case and surrounding whitespace ignored);
- `pattern`: a Python regular expression that must match somewhere in the answer (`re.search`).
An optional `id` names the case in reports. The suite's name is the file's stem. Answers are greedy,
so a suite's score is deterministic. `evaluation/suites/example.jsonl` is a small example.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

SUITES_DIR = Path(__file__).with_name("suites")
EXAMPLE_SUITE = SUITES_DIR / "example.jsonl"


class SuiteError(ValueError):
    """A suite file that cannot be read; the message names the file and line."""


@dataclass
class Case:
    id: str
    prompt: list  # messages
    expected: Optional[str] = None
    pattern: Optional[re.Pattern] = None

    def passes(self, answer: str) -> bool:
        if self.expected is not None:
            first_line = answer.strip().splitlines()[0] if answer.strip() else ""
            return first_line.strip().casefold() == self.expected.strip().casefold()
        return self.pattern.search(answer) is not None


@dataclass
class Suite:
    name: str
    path: Path
    cases: List[Case]


def load_suite(path: Path) -> Suite:
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"task suite {path} not found")
    cases = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise SuiteError(f"{where}: not JSON ({err})") from err
        cases.append(_case(record, where, default_id=f"{path.stem}-{number}"))
    if not cases:
        raise SuiteError(f"task suite {path} holds no cases")
    return Suite(path.stem, path, cases)


def _case(record, where: str, default_id: str) -> Case:
    if not isinstance(record, dict):
        raise SuiteError(f"{where}: each line must be a JSON object")
    prompt = record.get("prompt")
    if isinstance(prompt, str) and prompt.strip():
        prompt = [{"role": "user", "content": prompt}]
    elif not (isinstance(prompt, list) and prompt and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in prompt)):
        raise SuiteError(f"{where}: `prompt` must be a non-empty string or a list of {{role, content}} messages")
    has_expected, has_pattern = "expected" in record, "pattern" in record
    if has_expected == has_pattern:
        raise SuiteError(f"{where}: give exactly one of `expected` (exact match) or `pattern` (regex)")
    case = Case(str(record.get("id", default_id)), prompt)
    if has_expected:
        if not isinstance(record["expected"], str):
            raise SuiteError(f"{where}: `expected` must be a string")
        case.expected = record["expected"]
    else:
        try:
            case.pattern = re.compile(record["pattern"])
        except (re.error, TypeError) as err:
            raise SuiteError(f"{where}: `pattern` is not a valid regular expression ({err})") from err
    return case


def score_suite(suite: Suite, answers: List[str]) -> dict:
    """Accuracy of one adapter's answers (in case order) and which cases failed."""
    passed = [case.passes(answer) for case, answer in zip(suite.cases, answers, strict=True)]
    return {"accuracy": sum(passed) / len(passed), "passed": sum(passed), "cases": len(passed),
            "failed": [case.id for case, ok in zip(suite.cases, passed) if not ok]}
