"""What the flow publishes to the Prefect UI: the eval table, the decision and the report, as plain data.

Pure functions of eval.json, decision records and report.md; `flows/nightly.py` hands them to
Prefect's artifact API. The report's PNGs are inlined as data URIs, since the UI cannot reach the
run folder's files.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path


def eval_table(evaluation: dict) -> list:
    """One row per metric: candidate, production, and the base where it applies."""
    c, i = evaluation["candidate"], evaluation.get("incumbent")
    rows = []

    def add(metric: str, get, base=None):
        rows.append({"metric": metric, "candidate": _fmt(get(c)), "production": _fmt(get(i)) if i else "",
                     "base": _fmt(base) if base is not None else ""})

    add("preference AUC", lambda r: r["preference"]["auc"], 0.5)
    add("AUC 95% CI low", lambda r: r["preference"]["auc_ci95"][0])
    add("AUC 95% CI high", lambda r: r["preference"]["auc_ci95"][1])
    add("accuracy at 0", lambda r: r["preference"]["accuracy"])
    add("KL per token", lambda r: r["drift"]["kl_per_token"], 0.0)
    length = (evaluation.get("reference") or {}).get("length")
    if length:
        add("greedy length (tokens)", lambda r: r["drift"]["length"]["greedy"], length["greedy"])
        add("sampled length (tokens)", lambda r: r["drift"]["length"]["sampled"], length["sampled"])
    for suite, score in c.get("suites", {}).items():
        add(f"suite {suite}", lambda r, s=suite: r["suites"][s]["accuracy"],
            evaluation["reference"]["suites"][suite]["accuracy"])
    return rows


def decision_markdown(record: dict) -> str:
    verdict = ("passed: the canary, or waiting for the running one" if record.get("rollout") == "canary" else
               "promoted to production") if record.get("promote") else (
        "forced to production" if record.get("forced") else "rejected (registered, not live)")
    lines = [f"## {record.get('version', '?')}: {verdict}", ""]
    if record.get("incumbent"):
        lines += [f"Compared with production {record['incumbent']}.", ""]
    lines += [f"- {'✅' if c['passed'] else '❌'} {c['reason']}" for c in record.get("checks", [])]
    return "\n".join(lines)


CANARY_VERDICTS = {"promote": "promoted to production", "rollback": "rolled back (production unchanged)",
                   "reject": "withdrawn: no decision in time (production unchanged)", "continue": "still collecting"}


def canary_markdown(record: dict) -> str:
    """A canary's look (deploy.canary.settle's record): the outcome, the two arms and the sentence."""
    lines = [f"## canary {record['version']} vs production {record['against']}: "
             f"{CANARY_VERDICTS[record['outcome']]}", "", record["sentence"], "",
             "| arm | served as | thumbs-up | thumbs-down |", "|---|---|---:|---:|"]
    for arm in ("canary", "production"):
        lines.append(f"| {arm} | `{record['served_as'][arm]}` | {record[arm]['up']:,} | {record[arm]['down']:,} |")
    left_out = {why: n for why, n in record.get("left_out", {}).items() if n}
    if left_out:
        lines += ["", "Not counted: " + ", ".join(f"{n:,} ({why})" for why, n in left_out.items()) + "."]
    lines += ["", f"Day {record['days']:.1f} of the test; looked at {record['at']}."]
    return "\n".join(lines)


def report_markdown(folder: Path) -> str:
    """report.md with each `![title](file.png)` replaced by the image as a data URI."""
    report = Path(folder) / "report.md"
    if not report.is_file():
        return "_no report.md was written_"

    def inline(match: re.Match) -> str:
        image = Path(folder) / match.group(2)
        if not image.is_file():
            return match.group(0)
        data = base64.b64encode(image.read_bytes()).decode()
        return f"![{match.group(1)}](data:image/png;base64,{data})"

    return re.sub(r"!\[([^\]]*)\]\(([^)]+\.png)\)", inline, report.read_text())


def _fmt(value) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)
