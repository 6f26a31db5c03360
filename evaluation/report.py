"""`report.md` and its plots: what a person reads before trusting a promotion.

Three PNGs (matplotlib, headless): the implied-reward distributions of held-out thumbs-up and
thumbs-down completions (candidate and incumbent side by side), the training curves from
metrics.jsonl, and the snapshot's class balance with its λ weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

REPORT = "report.md"
PLOTS = ("rewards.png", "training.png", "balance.png")


def write(folder: Path, result: dict, *, metrics_path: Path, stats: dict) -> List[str]:
    """Write the report and its plots into `folder`; return the file names written."""
    names = [_rewards_plot(folder / PLOTS[0], result)]
    names.append(_training_plot(folder / PLOTS[1], metrics_path))
    names.append(_balance_plot(folder / PLOTS[2], stats))
    names = [n for n in names if n]
    (folder / REPORT).write_text(render(result, stats, names))
    return names + [REPORT]


def render(result: dict, stats: dict, plots: List[str]) -> str:
    rows = [("", "candidate", "incumbent" + (f" ({result['incumbent']['version']})"
                                             if result["incumbent"] and result["incumbent"].get("version") else ""))]
    c, i = result["candidate"], result["incumbent"]
    for label, get in (
        ("preference AUC [95% CI]", lambda r: f"{r['preference']['auc']:.3f} [{r['preference']['auc_ci95'][0]:.3f}, "
                                              f"{r['preference']['auc_ci95'][1]:.3f}]"),
        ("accuracy at 0 [95% CI]", lambda r: f"{r['preference']['accuracy']:.3f} [{r['preference']['accuracy_ci95'][0]:.3f}, "
                                             f"{r['preference']['accuracy_ci95'][1]:.3f}]"),
        ("mean reward, desirable", lambda r: f"{r['preference']['reward_desirable']:+.4f}"),
        ("mean reward, undesirable", lambda r: f"{r['preference']['reward_undesirable']:+.4f}"),
        ("KL from reference, per token", lambda r: f"{r['drift']['kl_per_token']:.5f}"),
        ("KL from reference, per answer", lambda r: f"{r['drift']['kl_per_sequence']:.4f}"),
        ("greedy length / reference", lambda r: _ratio(r["drift"]["length"], "greedy")),
        ("sampled length / reference", lambda r: _ratio(r["drift"]["length"], "sampled")),
    ):
        rows.append((label, get(c), get(i) if i else "—"))
    if result.get("paired"):
        low, high = result["paired"]["auc_difference_ci95"]
        rows.append(("AUC, candidate − production, same rows [95% CI]",
                     f"{result['paired']['auc_difference']:+.3f} [{low:+.3f}, {high:+.3f}]", "—"))
    for suite in c["suites"]:
        ref = result["reference"]["suites"][suite]["accuracy"]
        rows.append((f"suite `{suite}` accuracy (base {ref:.2f})", f"{c['suites'][suite]['accuracy']:.2f}",
                     f"{i['suites'][suite]['accuracy']:.2f}" if i else "—"))
    e = result["eval_examples"]
    lines = [f"# Evaluation of `{result['adapter']}`", "",
             f"Snapshot `{result['snapshot_id']}`: {e['examples']:,} held-out examples ({e['desirable']:,} thumbs-up, "
             f"{e['undesirable']:,} thumbs-down, {e['prompts']:,} prompts). Base `{result['base_model']}` "
             f"(sha256 `{result['base_model_sha256'][:12]}…`). Evaluated {result['evaluated_at']}.", "",
             _table(rows), "",
             "The implied reward β·(log πθ − log πref) classifies held-out completions; AUC 0.5 is chance. "
             "KL is exact over the vocabulary at each completion token. Lengths are mean generated tokens on "
             f"{result['config']['generation_prompts']} eval prompts against the base's.", ""]
    length = c["drift"]["length"]
    if length and length.get("examples"):
        lines += ["## Sampled answers (candidate)", ""] + [f"- {_quote(t)}" for t in length["examples"]] + [""]
    titles = {"rewards.png": "Implied rewards by class", "training.png": "Training curves",
              "balance.png": "Class balance"}
    for name in plots:
        lines += [f"## {titles[name]}", "", f"![{titles[name]}]({name})", ""]
    if stats:
        lines += [f"λD = {stats['desirable_weight']:.4f}, λU = {stats['undesirable_weight']:.4f} "
                  f"(λD·nD / λU·nU = {stats['balance_ratio']:.3f})", ""]
    return "\n".join(lines)


def _ratio(length: Optional[dict], kind: str) -> str:
    if not length or length.get(f"{kind}_ratio") is None:
        return "—"
    return f"{length[f'{kind}_ratio']:.2f} ({length[kind]:.1f} tokens)"


def _table(rows: list) -> str:
    head, *body = rows
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(r) + " |" for r in body])


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return "`" + (text[:160] + "…" if len(text) > 160 else text).replace("`", "'") + "`"


def _rewards_plot(path: Path, result: dict) -> str:
    panels = [(n, result[n]) for n in ("candidate", "incumbent") if result[n]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.4), squeeze=False)
    for ax, (name, r) in zip(axes[0], panels):
        ax.hist(r["rewards"]["desirable"], bins=30, alpha=0.6, color="tab:green", label="thumbs-up")
        ax.hist(r["rewards"]["undesirable"], bins=30, alpha=0.6, color="tab:red", label="thumbs-down")
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(f"{name}: AUC {r['preference']['auc']:.3f}")
        ax.set_xlabel("β·(log πθ − log πref)")
        ax.legend()
    return _save(fig, path)


def _training_plot(path: Path, metrics_path: Path) -> Optional[str]:
    from training.run_folder import read_metrics

    rows = read_metrics(metrics_path.parent)  # checked against the run's proof, a torn line named
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    for ax, key in zip(axes, ("loss", "kl", "margin")):
        ax.plot(steps, [r.get(key) if r.get(key) is not None else float("nan") for r in rows])
        ax.set_title(key if key != "kl" else "z0 (KL estimate)")
        ax.set_xlabel("step")
    return _save(fig, path)


def _balance_plot(path: Path, stats: dict) -> Optional[str]:
    counts = (stats or {}).get("counts", {})
    if not counts:
        return None
    splits = ("train", "eval")
    up = [counts.get(f"{s}_desirable", 0) for s in splits]
    down = [counts.get(f"{s}_undesirable", 0) for s in splits]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(splits, up, color="tab:green", label="thumbs-up")
    ax.bar(splits, down, bottom=up, color="tab:red", label="thumbs-down")
    ax.set_title(f"λD {stats['desirable_weight']:.3f} · λU {stats['undesirable_weight']:.3f}")
    ax.set_ylabel("examples")
    ax.legend()
    return _save(fig, path)


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name
