"""The lab's report: per arm, each variant's ground truth over seeds (mean, 95% t-interval), its paired
difference from `default` on the same seeds, and answer length drift; lab/report.md and lab/lab.png."""

from __future__ import annotations

import io
import math
import statistics
from pathlib import Path

from common.atomic import write_bytes_atomic, write_text_atomic
from evaluation.lab.arms import ARMS, PAIRS

# Two-sided 95% Student t quantiles by degrees of freedom (no scipy in the environment).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% interval); the half-width is nan for a single value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, T95.get(n - 1, 1.96) * sd / math.sqrt(n)


def _fmt(mean: float, half: float, scale: float = 100, unit: str = "") -> str:
    return f"{mean * scale:.1f}{unit}" + ("" if math.isnan(half) else f" ± {half * scale:.1f}")


def arm_table(arm: str, results: dict) -> list[str]:
    """Markdown rows for one arm; `results[variant][seed]` is a run's result."""
    base = results.get("default", {})
    lines = [f"### {arm}", "", "| variant | seeds | ground truth % (95% CI) | Δ vs default, paired (95% CI) | "
             "answer words | length drift vs night 0 | verdict |", "|---|---:|---:|---:|---:|---:|---|"]
    for name in ARMS[arm]:
        runs = results.get(name, {})
        if not runs:
            lines.append(f"| {name} | 0 | not run | | | | |")
            continue
        seeds = sorted(runs)
        truth = interval([runs[s]["truth"] for s in seeds])
        words = interval([runs[s]["words"] for s in seeds])
        drift = interval([runs[s]["words"] - runs[s]["night0"]["words"] for s in seeds])
        paired = [s for s in seeds if s in base]
        delta, verdict = "", ""
        if name != "default" and paired:
            d = interval([runs[s]["truth"] - base[s]["truth"] for s in paired])
            delta = _fmt(*d, unit=" pts")
            verdict = ("no difference shown" if math.isnan(d[1]) or abs(d[0]) <= d[1]
                       else ("better" if d[0] > 0 else "worse") + " beyond its interval")
        lines.append(f"| {name} | {len(seeds)} | {_fmt(*truth)} | {delta} | {_fmt(*words, scale=1)} | "
                     f"{_fmt(*drift, scale=1)} | {verdict} |")
    extra = {"microbatch": z0_table, "poisoning": poison_table}.get(arm)
    return lines + [""] + pairs_table(arm, results) + (extra(arm, results) if extra else [])


def pairs_table(arm: str, results: dict) -> list[str]:
    """The arm's head-to-head comparisons (PAIRS), each paired by seed."""
    rows = []
    for a, b in PAIRS.get(arm, []):
        seeds = sorted(set(results.get(a, {})) & set(results.get(b, {})))
        if not seeds:
            continue
        d = interval([results[a][s]["truth"] - results[b][s]["truth"] for s in seeds])
        verdict = ("no difference shown" if math.isnan(d[1]) or abs(d[0]) <= d[1]
                   else ("better" if d[0] > 0 else "worse") + " beyond its interval")
        rows.append(f"| {a} − {b} | {len(seeds)} | {_fmt(*d, unit=' pts')} | {verdict} |")
    if not rows:
        return []
    return ["| comparison (paired by seed) | seeds | Δ ground truth (95% CI) | verdict |", "|---|---:|---:|---|",
            *rows, ""]


def z0_table(arm: str, results: dict) -> list[str]:
    """Per night: how z0 followed the micro-batch's length (Pearson r over the night's steps, mean over seeds)."""
    lines = ["z0 against the micro-batch's length, per night: Pearson r of each step's z0 with its tokens per "
             "example (mean over seeds, and the seeds' range), and z0's range over all steps.", "",
             "| variant | night | r(z0, length), mean | r, seeds' range | z0 min–max |", "|---|---:|---:|---:|---:|"]
    for name in ARMS[arm]:
        runs = results.get(name, {})
        nights = max((len(r["nights"]) for r in runs.values()), default=0)
        for night in range(nights):
            rows = [r["nights"][night] for r in runs.values() if len(r["nights"]) > night and "z0_length_r" in
                    r["nights"][night]]
            if not rows:
                continue
            rs = [row["z0_length_r"] for row in rows if row["z0_length_r"] is not None]
            z0_range = f"{min(row['z0_min'] for row in rows):.2f}–{max(row['z0_max'] for row in rows):.2f}"
            if not rs:  # undefined on every seed: said, not left out
                why = sorted({row.get("z0_length_r_undefined", "undefined") for row in rows})
                lines.append(f"| {name} | {night} | undefined ({'; '.join(why)}) | – | {z0_range} |")
                continue
            lines.append(f"| {name} | {night} | {sum(rs) / len(rs):+.2f} | {min(rs):+.2f} to {max(rs):+.2f} | "
                         f"{z0_range} |")
    return lines + [""]


def poison_table(arm: str, results: dict) -> list[str]:
    """What the adversaries' votes became, and whether the defence keeps their effect under the seeds' noise."""
    lines = ["What reached training on the last night (mean over seeds): the adversaries' votes in the window, the "
             "examples of theirs in the train split, their share of its thumbs-up, and all votes the cap dropped "
             "(honest ones included).", "",
             "| variant | adversarial votes | kept in train | share of train thumbs-up | cap dropped |",
             "|---|---:|---:|---:|---:|"]
    for name in ARMS[arm]:
        runs = [r for r in results.get(name, {}).values() if "adversarial_kept" in r["nights"][-1]]
        if not runs:
            continue
        def mean(get):
            return sum(map(get, runs)) / len(runs)
        lines.append(f"| {name} | {mean(lambda r: sum(n['adversarial'] for n in r['nights'])):.1f} | "
                     f"{mean(lambda r: r['nights'][-1]['adversarial_kept']):.1f} | "
                     f"{mean(lambda r: r['nights'][-1]['adversarial_up_share']):.1%} | "
                     f"{mean(lambda r: r['nights'][-1]['dropped_user_cap']):.1f} |")
    base = results.get("default", {})
    if len(base) >= 2:
        noise = statistics.stdev(r["truth"] for r in base.values())
        lines += ["", f"Noise between seeds (default's standard deviation of ground truth over {len(base)} seeds): "
                  f"{100 * noise:.1f} pts."]
        for name in ARMS[arm]:
            runs = results.get(name, {})
            seeds = sorted(set(runs) & set(base))
            if name.startswith("poison") and len(seeds) >= 2:
                moved = sum(runs[s]["truth"] - base[s]["truth"] for s in seeds) / len(seeds)
                lines.append(f"- {name}: moves ground truth by {100 * moved:+.1f} pts (paired mean, {len(seeds)} seeds): "
                             f"{'less' if abs(moved) < noise else 'more'} than the noise between seeds.")
    return lines + [""]


def write_report(out: Path, arms: list[str], results: dict, header: list[str]) -> Path:
    lines = ["# Alignment lab report", ""] + header + [""]
    for arm in arms:
        lines += arm_table(arm, results)
    lines += ["![ground truth per variant](lab.png)", ""]
    _plot(out / "lab.png", arms, results)
    path = out / "report.md"
    write_text_atomic(path, "\n".join(lines))
    return path


def _plot(path: Path, arms: list[str], results: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(arms), figsize=(4.5 * len(arms), 4), squeeze=False)
    for ax, arm in zip(axes[0], arms):
        names = [n for n in ARMS[arm] if results.get(n)]
        stats = [interval([r["truth"] for r in results[n].values()]) for n in names]
        ax.bar(range(len(names)), [m * 100 for m, _ in stats],
               yerr=[0 if math.isnan(h) else h * 100 for _, h in stats], capsize=4, color="tab:blue")
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_title(arm)
        ax.set_ylabel("ground truth %, 95% CI over seeds")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(path, png.getvalue())
