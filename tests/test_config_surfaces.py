"""Nothing is stranded: every field of every stage's config is settable from each surface (thumbs.yaml, the
flow's parameters as the Prefect UI's form shows them, the stage's own command line, `thumbs run --set`), and
no surface has a field the config lacks. The values are generated from the declarations, so a field added
later is covered without a line here.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

import pytest
import typer.main
import yaml

from common.cliflags import flags_of, given_flags
from common.configfile import UNIONS, load_config
from flows.config import (FILE, FLAG, LEAVES, SECTIONS, ThumbsConfig, commented_yaml, load, merge, parse_sets,
                          resolve, sparse)

BASE = {"run": {"base_model": "models/tiny"}}
# The command whose flags set each section; `run` is the flow's own (thumbs run --set run.x=...).
COMMANDS = {"ingest": "ingest", "curate": "curate", "train": "train", "evaluate": "evaluate", "promotion": "promote",
            "export": "export"}
# Values that only make sense together with another (a cross-field check): field -> the pair to set.
TOGETHER = {("export", "notify"): {"format": "peft"}, ("train", "max_prompt_length"): {"max_length": 4096},
            ("ingest", "formats", "down_at"): {"formats": {"up_at": 5.0}}}


def other_value(path: tuple[str, ...]) -> Any:
    """A valid value of the field other than its default, from its declared type and range."""
    info = LEAVES[path]
    default = None if info.is_required() else info.get_default(call_default_factory=True)
    kind = info.annotation
    members = [m for m in (typing.get_args(kind) if typing.get_origin(kind) in UNIONS else (kind,)) if m is not type(None)]
    bounds = {k: getattr(m, k) for m in info.metadata for k in ("ge", "gt", "le", "lt") if hasattr(m, k)}
    for member in members:
        member = typing.get_args(member)[0] if typing.get_origin(member) is typing.Annotated else member
        origin = typing.get_origin(member)
        if origin is Literal:
            choices = [c for c in typing.get_args(member) if c != default]
            return choices[-1]
        if member is bool:
            return not default if isinstance(default, bool) else True
        if member in (int, float):
            low = bounds.get("ge", bounds.get("gt", 0))
            high = bounds.get("le", bounds.get("lt"))
            value = (low + high) / 2 if high is not None else (default or low) + 3
            value = int(value) if member is int else round(value, 3)
            if value == default or ("gt" in bounds and value <= bounds["gt"]):
                value = value + 1 if high is None or value + 1 < high else value / 2
            return int(value) if member is int else value
        if member is str:
            return "x-" + (default or "value")
        if origin in (list, tuple):
            inner = typing.get_args(member)
            if origin is tuple and inner and inner[-1] is not Ellipsis:  # a fixed pair (adam_betas)
                return [0.8, 0.99]
            return ["a", "b"]
        if origin is dict:
            return {"arith": 0.5}
        if getattr(member, "__name__", "") == "datetime":
            return "2026-11-20T03:00:00+00:00"
    raise AssertionError(f"no example value for {'.'.join(path)}: {kind}")


def _set(path, value) -> dict:
    """BASE with the field at `path` set to `value` (and its TOGETHER partner)."""
    node = value
    for part in reversed(path):
        node = {part: node}
    return merge(merge(BASE, {path[0]: TOGETHER.get(path, {})}), node)


def _value(config: ThumbsConfig, path) -> Any:
    value = config.model_dump(mode="json")
    for part in path:
        value = value[part]
    return value


def _flat(mapping: dict, prefix: tuple = ()) -> list:
    return [item for key, value in mapping.items()
            for item in (_flat(value, prefix + (key,)) if isinstance(value, dict) else [(prefix + (key,), value)])]


SETTABLE = [p for p in LEAVES if p != ("run", "base_model")]


@pytest.mark.parametrize("path", SETTABLE, ids=[".".join(p) for p in SETTABLE])
def test_every_field_is_settable_from_the_file_and_the_flag_and_reaches_the_flow(tmp_path, path):
    value = other_value(path)
    from_file = tmp_path / "thumbs.yaml"
    from_file.write_text(yaml.safe_dump(_set(path, value)))
    config, source = load(from_file)
    expected = _value(ThumbsConfig.model_validate(_set(path, value)), path)
    assert _value(config, path) == expected != _value(ThumbsConfig.model_validate(BASE), path)
    assert source[".".join(path)] == FILE

    text = ",".join(map(str, value)) if isinstance(value, list) else yaml.safe_dump(value).strip().removesuffix("...").strip()
    together = [f"{'.'.join((path[0],) + tuple(k))}={v}" for k, v in _flat(TOGETHER.get(path, {}))]
    flagged, source = load(None, [*together, f"{'.'.join(path)}={text}"], base_model="models/tiny")
    assert _value(flagged, path) == expected and source[".".join(path)] == FLAG

    # The flow gets the section as Prefect gets it from a deployment: JSON, validated into the stage's class.
    sections = sparse(config, source)
    assert _value(ThumbsConfig.model_validate(sections), path) == expected


@pytest.mark.parametrize("section", [s for s in SECTIONS if s in COMMANDS])
def test_each_stage_command_has_a_flag_for_every_field_of_its_config_and_no_other(section):
    from flows.cli import app

    group = typer.main.get_command(app)
    command = group.commands[COMMANDS[section]]
    config_paths = {path[1:] for path in LEAVES if path[0] == section}
    generated = {flag.path for flag in flags_of(SECTIONS[section])}
    assert generated == config_paths
    options = {name for param in command.params for name in param.opts + param.secondary_opts}
    assert {flag.name for flag in flags_of(SECTIONS[section])} <= options


@pytest.mark.parametrize("path", [p for p in SETTABLE if p[0] in COMMANDS], ids=lambda p: ".".join(p))
def test_a_stage_flag_sets_its_field_as_the_file_would(path):
    """The command line parses the flag (click's types and choices) and the config class checks it."""
    from flows.cli import app

    section, value = path[0], other_value(path)
    cls = SECTIONS[section]
    flag = next(f for f in flags_of(cls) if f.path == path[1:])
    command = typer.main.get_command(app).commands[COMMANDS[section]]
    if flag.annotation is bool:
        args = [flag.name if value else "--no-" + flag.name[2:]]
    else:
        text = ",".join(map(str, value)) if isinstance(value, list) else \
            yaml.safe_dump(value).strip().removesuffix("...").strip()
        args = [flag.name, text]
    together = []
    for name, other in _flat(TOGETHER.get(path, {})):
        together += ["--" + name[-1].replace("_", "-"), str(other)]
    required = {"ingest": ["src.jsonl", "--lake", "L"], "curate": [], "train": ["--snapshot", "S", "--base-model", "M",
                "--out", "O"], "evaluate": ["--adapter", "A", "--snapshot", "S"], "promote": ["--adapter", "A",
                "--registry", "R"], "export": ["production", "--registry", "R"]}[COMMANDS[section]]
    context = command.make_context(COMMANDS[section], [*required, *together, *args])
    overrides = given_flags(list(flags_of(cls)), dict(context.params))
    config = load_config(cls, None, section, **overrides)
    expected = ThumbsConfig.model_validate(_set(path, value)).model_dump(mode="json")[section]
    got = ThumbsConfig.model_validate({**BASE, section: config}).model_dump(mode="json")[section]
    assert got == expected


def test_the_run_form_schema_holds_every_field_with_its_description_and_nothing_else():
    from prefect.utilities.callables import parameter_schema

    from flows.nightly import nightly_retrain

    schema = parameter_schema(nightly_retrain).model_dump()
    definitions = schema["definitions"]
    assert list(schema["properties"]) == list(SECTIONS)

    def walk(name: str, prefix: tuple) -> set:
        found = set()
        for field, spec in definitions[name]["properties"].items():
            ref = spec.get("$ref") or next((a["$ref"] for a in spec.get("allOf", []) if "$ref" in a), None)
            if ref:
                found |= walk(ref.rsplit("/", 1)[1], prefix + (field,))
            else:
                assert spec.get("description"), f"{'.'.join(prefix + (field,))} has no description in the UI"
                found.add(prefix + (field,))
        return found

    shown = set()
    for section, spec in schema["properties"].items():
        shown |= walk(spec["$ref"].rsplit("/", 1)[1], (section,))
    assert shown == set(LEAVES)


def test_a_field_the_config_lacks_is_refused_on_every_surface(tmp_path):
    bad = tmp_path / "thumbs.yaml"
    bad.write_text(yaml.safe_dump({**BASE, "train": {"betta": 0.2}}))
    with pytest.raises(ValueError, match="betta"):
        load(bad)
    with pytest.raises(ValueError, match="train.betta"):
        parse_sets(["train.betta=0.2"])
    old = tmp_path / "params.yaml"  # the flat parameters file of earlier versions names each field's new home
    old.write_text("base_model: m\nbeta: 0.2\nsource_format: events\n")
    with pytest.raises(ValueError, match=r"'beta' \(now train.beta\)"):
        load(old)


def test_the_generated_commented_yaml_loads_back_to_the_same_config(tmp_path):
    config, source = resolve([(FILE, {**BASE, "ingest": {"format": "langfuse"}, "curate": {"max_user_share": 0.1}})])
    written = tmp_path / "thumbs.yaml"
    written.write_text(commented_yaml(config, source))
    again, again_source = load(written)
    assert again == config and all(origin == FILE for origin in again_source.values())
