"""`thumbs evaluate`: score a trained adapter, and production's when a registry has one, on held-out data.

    thumbs evaluate --adapter runs/2026-11-24 --snapshot .demo/snapshots/<id> [--registry registry/] [--json]

Every metric is computed for the candidate and the incumbent on the same eval split of the same
snapshot (curation splits by a stable hash of the prompt, so no eval prompt was trained on):
preference AUC and accuracy of the implied reward with bootstrap intervals, KL from the reference,
answer lengths (greedy and sampled) against the reference's, and the optional task suites.
Writes `eval.json`, `report.md` and its PNG plots into `--out` (default: the adapter's folder).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from evaluation import report, scoring
from evaluation.metrics import paired_bootstrap_difference, preference_metrics, roc_auc
from evaluation.suites import load_suite, score_suite
from common.atomic import write_json_atomic
from evaluation.config import EvalConfig
from ingest.curate import snapshot as layout
from ingest.curate.store import local_snapshot
from ingest.curate.snapshot import SnapshotError, read_split, read_stats
from training.data import DataError, encode
from training.run_folder import RunFolderError, metrics_path, read_meta
from training.model import (BaseModelError, check_base_model, load_tokenizer, pick_device, resolve_model_path,
                            weights_fingerprint)

EVAL_FILE = "eval.json"
CANDIDATE, INCUMBENT = "candidate", "incumbent"


class EvaluationError(ValueError):
    """The inputs cannot be evaluated as given; the message says what to change. Nothing was written."""


def read_adapter(path: Path) -> dict:
    """The adapter folder's thumbs_meta.json (training/run_folder.py), as an EvaluationError if it is not finished."""
    try:
        return read_meta(path)
    except RunFolderError as err:
        raise EvaluationError(str(err)) from err


def evaluate(adapter: Path, snapshot: Path, *, incumbent: Optional[Path] = None, incumbent_version: Optional[str] = None,
             base_model: Optional[str] = None, config: EvalConfig = EvalConfig(), out: Optional[Path] = None,
             log: Callable[[str], None] = print) -> dict:
    """Evaluate `adapter` (and `incumbent`, production's adapter folder) on `snapshot`'s eval split."""
    started = time.monotonic()
    adapter, snapshot = Path(adapter), local_snapshot(snapshot)  # a URL: its verified local mirror
    meta = read_adapter(adapter)
    model_dir = _base_dir(base_model or meta.get("base_model_path") or meta["base_model"], meta)
    incumbent_meta = None
    if incumbent is not None:
        incumbent_meta = read_adapter(incumbent)
        if incumbent_meta["base_model_sha256"] != meta["base_model_sha256"]:
            raise EvaluationError(
                f"production ({incumbent_version or incumbent}) was trained on another base model "
                f"(sha256 {incumbent_meta['base_model_sha256'][:12]}… vs {meta['base_model_sha256'][:12]}…): the two "
                "adapters cannot be compared on one base. Evaluate without --registry to judge the candidate on the "
                "policy's floors alone, then promote it with --force if the base change is intended")
    suites = [load_suite(Path(p)) for p in config.suites]
    tokenizer = load_tokenizer(model_dir)
    train_config = meta["config"]
    try:
        rows = read_split(snapshot, layout.EVAL)
        encoded = encode(rows, tokenizer, train_config["max_length"], train_config["max_prompt_length"], split="eval")
        stats = read_stats(snapshot)
    except (DataError, SnapshotError) as err:
        raise EvaluationError(f"snapshot {snapshot}: {err}") from err
    c = encoded.counts
    log(f"evaluate: {c['examples']:,} eval examples ({c['desirable']:,} desirable / {c['undesirable']:,} undesirable) "
        f"of snapshot {stats.get('snapshot_id')}; candidate {adapter}"
        + (f"; incumbent {incumbent_version or incumbent}" if incumbent is not None else "; no incumbent"))

    adapters = {CANDIDATE: adapter} | ({INCUMBENT: Path(incumbent)} if incumbent is not None else {})
    device = pick_device(config.device)
    model = scoring.load_adapters(model_dir, adapters, train_config["quantize"], device)
    names = list(adapters)
    scores = scoring.score_examples(model, encoded, names, batch_size=config.batch_size,
                                    max_length=train_config["max_length"], pad_id=tokenizer.pad_token_id, log=log)
    prompts = _generation_prompts(rows, config)
    lengths = scoring.generation_lengths(model, tokenizer, prompts, names, max_new_tokens=config.max_new_tokens,
                                         seed=config.seed, batch_size=config.batch_size) if prompts else {}
    suite_scores = {}
    for suite in suites:
        log(f"  task suite {suite.name}: {len(suite.cases)} cases")
        suite_scores[suite.name] = {
            name: score_suite(suite, scoring.suite_answers(model, tokenizer, [case.prompt for case in suite.cases], name,
                                                           max_new_tokens=config.max_new_tokens,
                                                           batch_size=config.batch_size))
            for name in ["reference"] + names}

    metas = {CANDIDATE: meta, INCUMBENT: incumbent_meta}
    result = {
        "adapter": str(adapter), "snapshot": str(snapshot), "snapshot_id": stats.get("snapshot_id"),
        "base_model": meta["base_model"], "base_model_sha256": meta["base_model_sha256"],
        "eval_examples": {k: c[k] for k in ("examples", "desirable", "undesirable", "prompts")},
        "reference": {"length": _lengths(lengths, "reference"),
                      "suites": {s: v["reference"] for s, v in suite_scores.items()}},
        "config": asdict(config), "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    for name in (CANDIDATE, INCUMBENT):
        result[name] = _adapter_result(name, adapters, metas, scores, encoded, lengths, suite_scores, config) \
            if name in adapters else None
    if result[INCUMBENT] is not None:
        result[INCUMBENT]["version"] = incumbent_version
        result["paired"] = _paired(scores, metas, encoded.desirable, config)
    result["seconds"] = round(time.monotonic() - started, 2)
    _write(Path(out) if out else adapter, result, metrics_path=metrics_path(adapter), stats=stats)
    _say_summary(result, log)
    return result


def _base_dir(base_model: str, meta: dict) -> Path:
    try:
        model_dir = resolve_model_path(base_model)
        check_base_model(model_dir)  # a damaged base is named, not reported as "other weights"
    except (FileNotFoundError, BaseModelError) as err:
        raise EvaluationError(str(err)) from err
    found = weights_fingerprint(model_dir)
    if found != meta["base_model_sha256"]:
        raise EvaluationError(
            f"the adapter was trained on base {meta['base_model']} (sha256 {meta['base_model_sha256'][:12]}…) but "
            f"{model_dir} holds other weights (sha256 {found[:12]}…): pass --base-model with the base it was trained on")
    return model_dir


def _generation_prompts(rows: list, config: EvalConfig) -> list:
    """Up to `generation_prompts` distinct eval prompts, chosen by the seed."""
    distinct = list({json.dumps(r["prompt"], sort_keys=True): r["prompt"] for r in rows}.values())
    order = np.random.default_rng(config.seed).permutation(len(distinct))[:config.generation_prompts]
    return [distinct[i] for i in sorted(order)]


def _lengths(lengths: dict, name: str) -> Optional[dict]:
    if not lengths:
        return None
    ours, ref = lengths[name], lengths["reference"]
    ratio = lambda a, b: a / b if b else None  # noqa: E731
    return dict(ours, greedy_ratio=ratio(ours["greedy"], ref["greedy"]), sampled_ratio=ratio(ours["sampled"], ref["sampled"]))


def _adapter_result(name, adapters, metas, scores, encoded, lengths, suite_scores, config) -> dict:
    meta, s = metas[name], scores[name]
    beta = meta["config"]["beta"]
    rewards = _implied_rewards(scores, metas, name)
    tokens = np.maximum(s["tokens"], 1)
    return {
        "adapter": str(adapters[name]), "snapshot_id": meta.get("snapshot_id"), "beta": beta,
        "preference": preference_metrics(rewards, encoded.desirable, resamples=config.resamples, seed=config.seed),
        "drift": {"kl_per_token": float(s["kl"].sum() / tokens.sum()), "kl_per_sequence": float(s["kl"].mean()),
                  "length": _lengths(lengths, name)},
        "suites": {suite: v[name] for suite, v in suite_scores.items()},
        "rewards": {"desirable": rewards[encoded.desirable].round(6).tolist(),
                    "undesirable": rewards[~encoded.desirable].round(6).tolist()},
    }


def _implied_rewards(scores: dict, metas: dict, name: str) -> np.ndarray:
    """β·(log πθ − log πref) of adapter `name` on each eval row, β its own training's."""
    return metas[name]["config"]["beta"] * (scores[name]["policy_logps"] - scores[name]["reference_logps"])


def _paired(scores: dict, metas: dict, desirable: np.ndarray, config: EvalConfig) -> dict:
    """Candidate minus production on the same eval rows: the AUC difference and its paired bootstrap interval."""
    rewards = {name: _implied_rewards(scores, metas, name) for name in (CANDIDATE, INCUMBENT)}
    difference = roc_auc(rewards[CANDIDATE], desirable) - roc_auc(rewards[INCUMBENT], desirable)
    interval = paired_bootstrap_difference(roc_auc, rewards[CANDIDATE], rewards[INCUMBENT], desirable,
                                           resamples=config.resamples, seed=config.seed)
    return {"auc_difference": difference, "auc_difference_ci95": interval}


def _write(out: Path, result: dict, metrics_path: Path, stats: dict) -> None:
    """report.md and plots first, eval.json last (its presence means the evaluation is complete)."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".eval-*"):  # left by a killed evaluation
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".eval-") as tmp:
        files = report.write(Path(tmp), result, metrics_path=metrics_path, stats=stats)
        for name in files:
            (Path(tmp) / name).replace(out / name)
    write_json_atomic(out / EVAL_FILE, result)


def _say_summary(result: dict, log: Callable) -> None:
    for name in (CANDIDATE, INCUMBENT):
        r = result[name]
        if r is None:
            continue
        p, d = r["preference"], r["drift"]
        length = d["length"]
        log(f"evaluate: {name}{' ' + r['version'] if r.get('version') else ''}: AUC {p['auc']:.3f} "
            f"[{p['auc_ci95'][0]:.3f}, {p['auc_ci95'][1]:.3f}], accuracy {p['accuracy']:.3f}, KL/token "
            f"{d['kl_per_token']:.4f}" + (f", sampled length x{length['sampled_ratio']:.2f} of the reference"
                                           if length and length['sampled_ratio'] else ""))
    if result.get("paired"):
        low, high = result["paired"]["auc_difference_ci95"]
        log(f"evaluate: candidate − production, same eval rows: AUC {result['paired']['auc_difference']:+.3f} "
            f"[{low:+.3f}, {high:+.3f}]")
    log(f"evaluate: done in {result['seconds']:,.1f}s")
