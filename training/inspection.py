"""`thumbs inspect`: the exact token sequences training would see, for debugging a model's chat template.

    thumbs inspect --snapshot SNAPSHOT --base-model MODEL [--n 5] [--json] [--config kto.yaml] [--split train]

Needs only the base model's tokenizer (no weights are loaded). For the first `n` examples it shows the
rendered training sequence with the completion span marked ⟦like this⟧ and the token ids; then the counts
of truncated, unsplittable and dropped examples, with the reason of each dropped one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

COMPLETION_OPEN, COMPLETION_CLOSE = "⟦", "⟧"


def inspect_snapshot(snapshot: Path, base_model: str, *, n: int = 5, split: str = "train", max_length: int = 1024,
                     max_prompt_length: int = 512) -> dict:
    """The first `n` examples' ids and texts, the counts and the dropped rows, as training would tokenize them."""
    from ingest.curate.snapshot import read_split
    from training.data import encode
    from training.model import load_tokenizer, resolve_model_path
    from training.sequences import Template, end_of_turn_id

    tokenizer = load_tokenizer(resolve_model_path(base_model))
    rows = read_split(Path(snapshot), split)
    encoded = encode(rows, tokenizer, max_length, max_prompt_length, split=split, check=False)
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False,  # noqa: E731
                                          clean_up_tokenization_spaces=False)
    examples = []
    for k in range(min(n, len(encoded))):
        p, c = encoded.prompt_ids[k].tolist(), encoded.completion_ids[k].tolist()
        examples.append({"row": int(encoded.rows[k]), "desirable": bool(encoded.desirable[k]),
                         "prompt_ids": p, "completion_ids": c, "prompt_text": decode(p), "completion_text": decode(c)})
    eot = end_of_turn_id(tokenizer)
    return {"snapshot": str(snapshot), "split": split, "base_model": base_model,
            "template": "chat" if Template(tokenizer).chat else "plain",
            "end_of_turn": tokenizer.convert_ids_to_tokens(eot) if eot is not None else None,
            "limits": {"max_length": max_length, "max_prompt_length": max_prompt_length},
            "counts": encoded.counts, "examples": examples,
            "dropped": [{"row": row, "reason": reason} for row, reason in encoded.dropped]}


def render_text(report: dict) -> str:
    """The report for a terminal: each sequence with its completion marked, then the counts."""
    lines = [f"thumbs inspect: {report['split']} split of {report['snapshot']}, tokenizer of {report['base_model']} "
             f"({report['template']} template, completions end with {report['end_of_turn']!r})"]
    for ex in report["examples"]:
        lines += ["", f"--- row {ex['row']} ({'desirable' if ex['desirable'] else 'undesirable'}): "
                      f"{len(ex['prompt_ids'])} prompt + {len(ex['completion_ids'])} completion tokens",
                  ex["prompt_text"] + COMPLETION_OPEN + ex["completion_text"] + COMPLETION_CLOSE,
                  f"prompt_ids: {ex['prompt_ids']}", f"completion_ids: {ex['completion_ids']}"]
    c = report["counts"]
    lines += ["", f"{c['examples']:,} of {c['examples_in']:,} rows are training examples "
                  f"({c['desirable']:,} desirable / {c['undesirable']:,} undesirable, {c['prompts']:,} prompts)",
              f"truncated: {c['truncated_prompt']:,} prompts ({c['dropped_turns']:,} oldest turns dropped), "
              f"{c['truncated_completion']:,} completions (limits {report['limits']})",
              f"template-inserted text kept as context: {c['template_inserted']:,}",
              f"dropped: {c['dropped_empty']:,} empty, {c['unsplittable']:,} unsplittable, "
              f"{c['template_refused']:,} refused by the template, {c['dropped_prompt_too_long']:,} prompts too long"]
    lines += [f"  row {d['row']}: {d['reason']}" for d in report["dropped"][:20]]
    if len(report["dropped"]) > 20:
        lines.append(f"  ... and {len(report['dropped']) - 20:,} more (--json lists all)")
    return "\n".join(lines)


def inspect_command(snapshot: Path, base_model: str, n: int = 5, json_out: bool = False,
                    config_file: Optional[Path] = None, split: str = "train") -> str:
    """What `thumbs inspect` prints; the truncation limits come from the training config (or its defaults)."""
    from training.config import TrainConfig

    config = TrainConfig.load(config_file)
    report = inspect_snapshot(snapshot, base_model, n=n, split=split, max_length=config.max_length,
                              max_prompt_length=config.max_prompt_length)
    return json.dumps(report, indent=2, ensure_ascii=False) if json_out else render_text(report)
