"""The lab's one command on the smallest setting: two variants, one seed, one night of 60 events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_lab_command_runs_the_real_stages_and_writes_the_report(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "benchmarks/quality.py", "--arms", "poisoning,baselines",
                           "--variants", "poison-1%+caps,SFT then KTO", "--seeds", "1", "--nights", "1", "--events", "60",
                           "--truth-prompts", "10", "--base-steps", "150",  # a rough base: the full one takes ~1 min
                           "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "runs" / "poison-1%+caps" / "seed-0.json").read_text())
    night = result["nights"][0]
    assert night["adversarial"] > 0 and night["dropped_user_cap"] > 0  # the adversaries voted; the cap thinned them
    assert 0 <= night["adversarial_kept"] < night["adversarial"] and 0 <= night["adversarial_up_share"] < 1
    assert night["steps"] > 0 and 0.0 <= result["truth"] <= 1.0
    assert night["z0_max"] >= night["z0_min"] >= 0
    if night["z0_length_r"] is None:  # z0 clamped at 0 through a 60-event night has no correlation: said why
        assert night["z0_max"] == night["z0_min"] or night["steps"] < 3 or "length" in night["z0_length_r_undefined"]
    else:
        assert -1 <= night["z0_length_r"] <= 1
    # KTO after SFT: the SFT adapter merged into a base of its own, from which KTO trained (its reference)
    work = tmp_path / "runs" / "SFT_then_KTO" / "work-0"
    kto = json.loads((work / "runs" / "night-0" / "thumbs_meta.json").read_text())
    sft = json.loads((work / "runs" / "night-0-sft" / "thumbs_meta.json").read_text())
    assert sft["config"]["objective"] == "sft" and kto["config"]["objective"] == "kto"
    assert Path(kto["base_model"]) == work / "merged" / "night-0" and kto["base_model_sha256"] != sft["base_model_sha256"]
    report = (tmp_path / "report.md").read_text()
    assert "share of train thumbs-up" in report and f"| poison-1%+caps | {night['adversarial']:.1f} |" in report
    assert "| poison-1%+caps | 1 |" in report and "| SFT then KTO | 1 |" in report and (tmp_path / "lab.png").stat().st_size > 1000
    assert "on a rough base (150 warm-start steps)" in report  # a smoke run says it is one
    assert "| default | 0 | not run |" in report  # what was not run is said, not left out


@pytest.mark.parametrize("z0, length, r, why", [
    ([0.0, 1.0, 2.0], [10, 20, 30], 1.0, None),
    ([2.0, 1.0, 0.0], [10, 20, 30], -1.0, None),
    ([1.0, 2.0, 1.0, 2.0], [1, 1, 2, 2], 0.0, None),  # hand-worked: the deviations (-.5,.5,-.5,.5)·(-.5,-.5,.5,.5) sum to 0
    ([0.0, 0.0, 0.0], [10, 20, 30], None, "z0 constant at 0"),
    ([0.0, 1.0, 2.0], [7, 7, 7], None, "every micro-batch of one length"),
    ([0.5, 1.0], [10, 20], None, "2 step(s)"),
])
def test_z0_length_correlation_is_none_with_a_reason_where_it_is_undefined(z0, length, r, why):
    from evaluation.lab.nights import pearson

    got, reason = pearson(z0, length)
    assert reason == why
    assert got == pytest.approx(r) if r is not None else got is None
