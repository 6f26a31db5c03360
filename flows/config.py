"""thumbs.yaml: one file for a whole nightly, one section per stage, each section that stage's own config.

    run:        # what to read, where to write, which model (RunSettings, below)
      sources: [/var/log/chat/feedback]
      base_model: /models/smollm2-135m-instruct
    ingest:     # IngestConfig (ingest/intake/job.py), formats: its FormatOptions
      format: langfuse
      formats: {score_name: user-feedback}
    curate:     # CurateConfig (ingest/curate/rules.py)
      max_user_share: 0.05
    train:      # TrainConfig (training/config.py)
    evaluate:   # EvalConfig (evaluation/evaluate.py)
    promotion:  # PromotionPolicy (evaluation/promotion.py)
    export:     # ExportConfig (deploy/export.py)

Each field is declared once, in its stage's class (type, default, range, the docstring under it). The flow's
parameters are these sections (the Prefect UI's run form shows one section per stage); `thumbs run --config`,
`thumbs deploy --config`, `thumbs ui --config` and `thumbs config show` read this file; each stage's command
(`thumbs train --config thumbs.yaml`) reads its own section, and its flags are generated from the same class.

Precedence, lowest first: the declaration's default, the file, `--set section.field=value` (or a stage's
flags), and for a deployment's run the values changed in the UI's "Custom run" form. `thumbs config show`
prints every value with the layer it came from.
"""

from __future__ import annotations

import dataclasses
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Iterator, List, Mapping, Optional, Union

from pydantic import BaseModel, Field, ValidationError

from common.cliflags import parse_value
from common.configfile import CONFIG, ConfigError, config, config_fields, explain, is_config, read_mapping
from deploy.config import ExportConfig
from evaluation.config import EvalConfig
from evaluation.promotion import PromotionPolicy
from ingest.curate.rules import CurateConfig
from ingest.intake.job import IngestConfig
from training.config import TrainConfig

DEFAULT, FILE, FLAG, UI = "default", "file", "flag", "UI"
CONFIG_SOURCE: ContextVar[Optional[dict]] = ContextVar("thumbs_config_source", default=None)
"""Set by `thumbs run` around its in-process flow run: each value's source as the command resolved it."""


@config
class RunSettings:
    base_model: str = Field(min_length=1)
    """Base model: a local folder, or a hub id already in the local cache."""
    sources: List[str] = dataclasses.field(default_factory=list)
    """Feedback logs to ingest: files (JSONL, optionally .gz), folders or glob patterns. Files already in the
    lake are skipped, so pointing at the whole log folder every night is fine."""
    workdir: str = Field(".thumbs", min_length=1)
    """Root for lake/, snapshots/, runs/, registry/ and serving/ unless set below."""
    lake: Optional[str] = None
    """Parquet lake folder or fsspec URL, e.g. s3://bucket/lake (default WORKDIR/lake)."""
    snapshots: Optional[str] = None
    """Folder or fsspec URL of curated snapshots (default WORKDIR/snapshots)."""
    registry: Optional[str] = None
    """Registry folder or fsspec URL (default WORKDIR/registry)."""
    model_name: str = Field("default", min_length=1)
    """Model name inside the registry; one retrain at a time per name."""
    window_days: Optional[int] = Field(None, ge=1)
    """Curate feedback from the last N days (by event date); empty = the whole lake."""
    lock_timeout_s: float = Field(6 * 3600, gt=0)
    """Fail if another retrain of the same model holds the lock for longer than this (seconds)."""
    train_deployment: Optional[str] = None
    """Run training as this deployment (e.g. 'thumbs-train/train' on a GPU work pool) instead of in the flow's
    process. The run folder must be on storage both can reach."""
    train_timeout_s: float = Field(12 * 3600, gt=0)
    """With train_deployment: fail the run if training has not finished after this long (seconds)."""


class ThumbsConfig(BaseModel):
    """A whole nightly: the flow's parameters, section by section."""
    model_config = CONFIG

    run: RunSettings
    """What to read, where to write, which model."""
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    """Reading the feedback logs into the lake: their format, what a score means, privacy."""
    curate: CurateConfig = Field(default_factory=CurateConfig)
    """The lake to a train/eval snapshot: vote policy, poisoning caps, length limits, split, class balance."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """KTO on the snapshot: objective, β, LoRA, optimisation, quantisation."""
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    """Scoring candidate and production on the held-out split."""
    promotion: PromotionPolicy = Field(default_factory=PromotionPolicy)
    """When a candidate replaces production."""
    export: ExportConfig = Field(default_factory=ExportConfig)
    """Writing production for serving, and telling vLLM."""

    def path(self, name: str) -> str:
        """run.lake / snapshots / registry, or WORKDIR/<name>; runs and serving (export.out) likewise."""
        value = self.export.out if name == "serving" else getattr(self.run, name, None)
        return str(value) if value else str(Path(self.run.workdir) / name)

    def sections(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SECTIONS}


SECTIONS = {name: info.annotation for name, info in ThumbsConfig.model_fields.items()}


# --- layers and where each value came from ----------------------------------------------------------------

def leaves(cls: type, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, FieldInfo) of every settable value under `cls`, nested configs walked."""
    for name, info in config_fields(cls).items():
        if is_config(info.annotation):
            yield from leaves(info.annotation, prefix + (name,))
        else:
            yield prefix + (name,), info


LEAVES = dict(leaves(ThumbsConfig))


def _get(mapping: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    """(found, value) of `path` in nested mappings."""
    for part in path:
        if not isinstance(mapping, Mapping) or part not in mapping:
            return False, None
        mapping = mapping[part]
    return True, mapping


def merge(base: dict, layer: Mapping) -> dict:
    """`layer` over `base`, nested mappings merged key by key (a leaf's mapping value is replaced whole)."""
    out = dict(base)
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and not _is_leaf_mapping(key):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _is_leaf_mapping(key: str) -> bool:  # suite_tolerances, min_suite_accuracy: one value, not a section
    return any(path[-1] == key for path in LEAVES)


def parse_sets(assignments: list[str]) -> dict:
    """`--set train.beta=0.2` (repeatable) as a nested mapping; the value read as the field's type reads it."""
    out: dict = {}
    for text in assignments:
        name, sep, value = text.partition("=")
        path = tuple(name.strip().split("."))
        if not sep or path not in LEAVES:
            known = ", ".join(".".join(p) for p in list(LEAVES)[:6])
            raise ConfigError([(None, f"--set {text!r}: expected SECTION.FIELD=VALUE with a field of thumbs.yaml "
                                      f"(e.g. {known}, ...; `thumbs config show` lists them all)")])
        out = merge(out, _nested(path, parse_value(LEAVES[path].annotation, value)))
    return out


def _nested(path: tuple[str, ...], value: Any) -> dict:
    for part in reversed(path):
        value = {part: value}
    return value


def resolve(layers: list[tuple[str, Mapping]], labels: Optional[Mapping[str, str]] = None) \
        -> tuple[ThumbsConfig, dict[str, str]]:
    """The config from its layers, lowest first ((FILE, mapping), (FLAG, mapping), ...), and for each leaf
    ("train.beta") the layer that set it, DEFAULT if none did. A refused value is prefixed with its layer's
    label (labels[FILE] = the file's path, say)."""
    labels = {**{name: name for name, _ in layers}, **(labels or {})}
    merged: dict = {}
    for name, layer in layers:
        try:
            merged = merge(merged, _check_keys(dict(layer)))
        except ConfigError as err:
            raise err.at(lambda _: labels[name]) from None
    source = {}
    for path in LEAVES:
        source[".".join(path)] = next((name for name, layer in reversed(layers) if _get(layer, path)[0]), DEFAULT)
    try:
        return ThumbsConfig.model_validate(merged), source
    except ValidationError as err:
        problems = explain(err, ThumbsConfig)
    except ConfigError as err:
        problems = err.problems
    raise ConfigError([(field, f"{_layer_of(sentence, source, layers, labels)}{sentence}")
                       for field, sentence in problems])


def _layer_of(sentence: str, source: dict, layers: list, labels: Mapping[str, str]) -> str:
    first = sentence.split(" ", 1)[0].split("[", 1)[0]
    origin = source.get(first, DEFAULT)
    if origin == DEFAULT:
        origin = layers[-1][0] if layers else None
    return f"{labels[origin]}: " if origin else ""


def _check_keys(merged: dict) -> dict:
    """Unknown keys refused with a pointer: a field of an older flat params file names its section now."""
    unknown = sorted(set(merged) - set(SECTIONS))
    if unknown:
        hints = []
        for key in unknown:
            homes = [".".join(path) for path in LEAVES if path[-1] == key]
            hints.append(f"{key!r} (now {' or '.join(homes)})" if homes else repr(key))
        raise ConfigError([(None, f"unknown section(s) {', '.join(hints)}; thumbs.yaml has the sections "
                                  f"{', '.join(SECTIONS)}")])
    for name, value in merged.items():
        if value is None:
            merged[name] = {}  # `train:` with nothing under it: that section's defaults
    return merged


def load(path: Union[str, Path, None] = None, sets: list[str] = (), base_model: Optional[str] = None) \
        -> tuple[ThumbsConfig, dict[str, str]]:
    """thumbs.yaml (if given), then `--set` assignments: the config and each value's source."""
    layers = []
    if path is not None:
        layers.append((FILE, read_mapping(path)))
    flags = parse_sets(list(sets))
    if base_model:
        flags = merge(flags, {"run": {"base_model": base_model}})
    if flags:
        layers.append((FLAG, flags))
    return resolve(layers, {FILE: str(path), FLAG: "--set"})


def values(config: ThumbsConfig) -> dict[str, Any]:
    """Every leaf's value as JSON, by its dotted name ("train.beta"), in the declarations' order."""
    dumped = config.model_dump(mode="json")
    return {".".join(path): _get(dumped, path)[1] for path in LEAVES}


def sparse(config: ThumbsConfig, source: dict[str, str]) -> dict:
    """Only the values a layer set (not the defaults), as JSON: a deployment's parameters, so a deployment made
    from thumbs.yaml follows the declarations' defaults and its UI form shows what the file chose."""
    out: dict = {}
    for dotted, value in values(config).items():
        if source[dotted] != DEFAULT:
            out = merge(out, _nested(tuple(dotted.split(".")), value))
    return out


def provenance_against(config: ThumbsConfig, deployed: Mapping, given: str = UI) -> dict[str, str]:
    """Where each value of a flow run's config came from, as the run sees it: equal to the declaration's default
    -> DEFAULT; else equal to the deployment's parameter (thumbs.yaml at deploy time) -> FILE; else `given`
    (a custom run's form, UI)."""
    defaults = {path: _json(info.get_default(call_default_factory=True)) for path, info in LEAVES.items()
                if not info.is_required()}
    source = {}
    for path, value in zip(LEAVES, values(config).values()):
        found, deployed_value = _get(deployed, path)
        if path in defaults and value == defaults[path] and not (found and deployed_value == value):
            source[".".join(path)] = DEFAULT
        elif found and deployed_value == value:
            source[".".join(path)] = FILE
        else:
            source[".".join(path)] = given
    return source


def _json(value: Any) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(Any).dump_python(value, mode="json")


def table(config: ThumbsConfig, source: dict[str, str], only_set: bool = False) -> str:
    """The resolved configuration, one line per value: `train.beta  0.2  file`."""
    import json

    rows = []
    for dotted, value in values(config).items():
        if only_set and source[dotted] == DEFAULT:
            continue
        rows.append((dotted, json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value,
                     source[dotted]))
    width = max((len(r[0]) for r in rows), default=0)
    vwidth = min(max((len(r[1]) for r in rows), default=0), 48)
    return "\n".join(f"{name:<{width}}  {value:<{vwidth}}  {origin}" for name, value, origin in rows)


def commented_yaml(config: ThumbsConfig, source: dict[str, str]) -> str:
    """The resolved configuration as a complete thumbs.yaml, each field's description as its comment."""
    import json
    import textwrap

    dumped = config.model_dump(mode="json")
    lines = ["# thumbs.yaml, written by `thumbs config show --yaml` (every field; delete what you keep at default)"]

    def emit(cls: type, values: dict, indent: int) -> None:
        for name, info in config_fields(cls).items():
            pad = " " * indent
            for line in textwrap.wrap(" ".join((info.description or "").split()), 110 - indent):
                lines.append(f"{pad}# {line}")
            if is_config(info.annotation):
                lines.append(f"{pad}{name}:")
                emit(info.annotation, values.get(name) or {}, indent + 2)
            else:
                lines.append(f"{pad}{name}: {json.dumps(values.get(name), ensure_ascii=False)}")

    for section, cls in SECTIONS.items():
        lines += ["", f"# {' '.join((ThumbsConfig.model_fields[section].description or '').split())}", f"{section}:"]
        emit(cls, dumped[section], 2)
    return "\n".join(lines) + "\n"
