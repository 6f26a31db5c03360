"""Every field of every config is type- and range-checked when the config is made or loaded, with the field
named (and the file, when the value came from one). The cases are generated from the declarations: for each
field, values of a type it does not take, values just outside its declared range, inf and nan for a float
and `true` for a number are refused; the default passes; a number spelt as a string is read as that number
and `'no'`/`'yes'` as a bool. A field added later is covered without a line here; a field of a type the
generator does not know fails `test_every_field_is_generated`, and a config class it does not list fails
`test_every_config_class_is_listed`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from typer.testing import CliRunner

from common.configfile import UNIONS, ConfigError, load_config
from evaluation.evaluate import EvalConfig
from evaluation.canary import CanaryPolicy
from evaluation.promotion import PromotionPolicy
from deploy.config import ExportConfig
from flows.config import RunSettings, ThumbsConfig
from ingest.curate.rules import CurateConfig
from ingest.intake.formats.options import FormatOptions
from ingest.intake.job import IngestConfig
from training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {TrainConfig: "training config", CurateConfig: "curate config", PromotionPolicy: "promotion policy",
           EvalConfig: "eval config", IngestConfig: "ingest config", RunSettings: "run settings",
           ExportConfig: "export config", FormatOptions: "format options", CanaryPolicy: "canary policy"}
REQUIRED = {RunSettings: {"base_model": "models/tiny"}}  # fields without a default
COMPOSED = {ThumbsConfig}  # sections of the classes above, each checked there (tests/test_config_surfaces.py)
FOREIGN = ("abc", 2.5, 7, True, [1], {"k": 1})  # one value of each YAML kind
NONE = type(None)


def _declared(cls) -> dict:
    """Field name -> (type, constraints): pydantic's view for our configs, the annotations for a plain dataclass."""
    if hasattr(cls, "__pydantic_fields__"):
        return {name: (info.annotation, list(info.metadata)) for name, info in cls.__pydantic_fields__.items()}
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: (hints[f.name], []) for f in dataclasses.fields(cls)}


def _strip(kind) -> tuple[Any, list]:
    """The type without `Annotated`, and the constraints Annotated carried."""
    if get_origin(kind) is Annotated:
        base, *extra = get_args(kind)
        return base, [c for e in extra for c in (e.metadata if isinstance(e, FieldInfo) else [e])]
    return kind, []


def _is_config(kind) -> bool:
    return dataclasses.is_dataclass(kind) or (isinstance(kind, type) and issubclass(kind, BaseModel))


def takes(kind, value) -> bool:
    """Whether a field of type `kind` takes `value` as that type (ranges aside), by the rules of configfile.py."""
    kind, _ = _strip(kind)
    origin, args = get_origin(kind), get_args(kind)
    if kind is NONE:
        return value is None
    if origin in UNIONS:
        return any(takes(a, value) for a in args)
    if isinstance(value, bool) or value is None:
        return kind is bool and value is not None
    if origin is Literal:
        return value in args
    if kind in (bool, int, float, str, datetime):
        number = type(value) in (int, float)
        return {bool: False, int: type(value) is int, float: number, str: isinstance(value, str), datetime: number}[kind]
    if kind in (list, dict) or origin in (list, tuple, dict):
        return _container_takes(origin or kind, args, value)
    if _is_config(kind):
        fields = _declared(kind)
        return isinstance(value, dict) and all(k in fields and takes(fields[k][0], v) for k, v in value.items())
    raise AssertionError(f"no rule for a field of type {kind}: teach tests/test_config_validation.py's takes() it")


def _container_takes(container, args, value) -> bool:
    if not isinstance(value, dict if container is dict else list):
        return False
    if container is tuple and args[-1:] != (Ellipsis,):
        return len(value) == len(args) and all(takes(a, v) for a, v in zip(args, value))
    if container is dict:
        return not args or all(takes(args[1], v) for v in value.values())
    return not args or all(takes(args[0], v) for v in value)  # a list, or a tuple of any length


def refused(kind, constraints: list, default) -> list:
    """Values a field of type `kind` with `constraints` must refuse."""
    kind, more = _strip(kind)
    constraints = constraints + more
    values = [v for v in FOREIGN if not takes(kind, v)] + ([] if takes(kind, None) else [None])
    members = [a for a in (get_args(kind) if get_origin(kind) in UNIONS else (kind,)) if a is not NONE]
    plain = [_strip(m)[0] for m in members]
    if float in plain:
        values += [math.inf, -math.inf, math.nan]
    step = 1 if int in plain else 0.5
    for c in constraints:
        values += [v for v in (_outside(c, step),) if v is not None]
    for member in plain:
        values += _inside(member, default)
    return values


def _outside(constraint, step):
    for name, shift in (("ge", -step), ("gt", 0), ("le", step), ("lt", 0)):
        if hasattr(constraint, name):
            return getattr(constraint, name) + shift
    return "" if getattr(constraint, "min_length", 0) == 1 else None


def _inside(kind, default) -> list:
    """Containers and nested configs: their default with one element or field refused."""
    origin, args = get_origin(kind), get_args(kind)
    if origin is tuple and args[-1:] != (Ellipsis,):
        return [[bad] + list(default[1:]) for bad in refused(args[0], [], default[0])]
    if origin in (list, tuple) and args:
        return [[bad] for bad in refused(args[0], [], None)]
    if origin is dict and args:
        return [{"k": bad} for bad in refused(args[1], [], None)]
    if _is_config(kind):
        # A plain dataclass nested in a config would have its types and ranges checked, but not the
        # `true`-for-a-number rule, which only `@config` classes add (every nested config is one today).
        plain = not hasattr(kind, "__pydantic_fields__")
        return [{name: bad} for name, (sub, constraints) in _declared(kind).items()
                for bad in refused(sub, constraints, None) if bad is not None and not (plain and bad is True)]
    return []


def _cases():
    for cls in CONFIGS:
        for name, (kind, constraints) in _declared(cls).items():
            default = getattr(cls(**REQUIRED.get(cls, {})), name)
            for value in refused(kind, constraints, default):
                yield pytest.param(cls, name, value, id=f"{cls.__name__}.{name}={value!r}")


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("cls,name,value", list(_cases()))
def test_a_value_of_the_wrong_type_or_out_of_range_is_refused_naming_the_field_and_file(tmp_path, cls, name, value):
    others = {k: v for k, v in REQUIRED.get(cls, {}).items() if k != name}
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        cls(**others, **{name: value})
    path = _write(tmp_path, yaml.safe_dump({name: value}))
    with pytest.raises(ConfigError) as refusal:
        load_config(cls, path, CONFIGS[cls], **others)
    assert str(refusal.value).startswith(f"{path}: {name}"), str(refusal.value)


@pytest.mark.parametrize("cls", list(CONFIGS))
def test_every_field_is_generated_and_the_defaults_pass(cls):
    config = load_config(cls, None, CONFIGS[cls], **REQUIRED.get(cls, {}))
    assert config == cls(**REQUIRED.get(cls, {}))
    for name, (kind, constraints) in _declared(cls).items():
        values = refused(kind, constraints, getattr(config, name))
        assert values and repr(getattr(config, name)) not in map(repr, values), name  # (1.0 == True: by repr)


@pytest.mark.parametrize("cls", list(CONFIGS))
def test_every_field_has_a_description(cls):
    # The description is what the Prefect form and the README show next to the field.
    assert not [name for name, info in cls.__pydantic_fields__.items() if not info.description]


def test_every_config_class_is_listed():
    declared = set()
    for package in ("common", "ingest", "training", "evaluation", "deploy", "flows"):
        for path in (ROOT / package).rglob("*.py"):
            declared |= set(re.findall(r"^@config(?:\(frozen=True\))?\nclass (\w+)|^class (\w+)\(BaseModel\)", path.read_text(), re.M))
    names = {a or b for a, b in declared}
    assert names == {cls.__name__ for cls in (*CONFIGS, *COMPOSED)}


def _valid(constraints, default):
    """A value the field takes: its default, or for a default of None the lower edge of its range."""
    if default is not None:
        return default
    bounds = {k: getattr(c, k) for c in constraints for k in ("ge", "gt") if hasattr(c, k)}
    return bounds.get("ge", bounds.get("gt", 0) + 1)


def _numbers():
    for cls in CONFIGS:
        for name, (kind, constraints) in _declared(cls).items():
            plain = [_strip(a)[0] for a in (get_args(kind) if get_origin(kind) in UNIONS else (kind,))]
            if float in plain or int in plain:
                yield pytest.param(cls, name, constraints, float if float in plain else int, id=f"{cls.__name__}.{name}")


@pytest.mark.parametrize("cls,name,constraints,number", list(_numbers()))
def test_a_number_spelt_as_a_string_is_that_number(tmp_path, cls, name, constraints, number):
    # YAML 1.1 reads `1e-4` (no dot) as a string; quoted, any number is one. Both mean the number.
    value = _valid(constraints, getattr(cls(**REQUIRED.get(cls, {})), name))
    config = load_config(cls, _write(tmp_path, f"{name}: '{value!r}'\n"), CONFIGS[cls], **REQUIRED.get(cls, {}))
    assert getattr(config, name) == value and type(getattr(config, name)) is number


def _bools():
    for cls in CONFIGS:
        for name, (kind, _) in _declared(cls).items():
            if bool in (get_args(kind) if get_origin(kind) in UNIONS else (kind,)):
                yield pytest.param(cls, name, id=f"{cls.__name__}.{name}")


@pytest.mark.parametrize("cls,name", list(_bools()))
@pytest.mark.parametrize("spelling,meaning", [("'no'", False), ("'yes'", True), ("off", False), ("'true'", True),
                                              ("0", False)])
def test_a_bool_takes_what_yaml_spells_and_nothing_truthy(tmp_path, cls, name, spelling, meaning):
    config = load_config(cls, _write(tmp_path, f"{name}: {spelling}\n"), CONFIGS[cls], **REQUIRED.get(cls, {}))
    assert getattr(config, name) is meaning
    with pytest.raises(ConfigError, match=rf"{name} must be true or false"):
        load_config(cls, _write(tmp_path, f"{name}: 'maybe'\n"), CONFIGS[cls], **REQUIRED.get(cls, {}))


@pytest.mark.parametrize("cls,text,message", [
    (TrainConfig, "learning_rate: 0", "learning_rate must be > 0, got 0"),
    (TrainConfig, "epochs: .inf", "epochs must be a finite number, got inf"),
    (TrainConfig, "micro_batch_size: 2.5", "micro_batch_size must be a whole number, got 2.5"),
    (TrainConfig, "lora_r: -4", "lora_r must be >= 1, got -4"),
    (TrainConfig, "seed: abc", "seed must be a whole number, got 'abc'"),
    (TrainConfig, "max_grad_norm: .nan", "max_grad_norm must be a finite number, got nan"),
    (TrainConfig, "cache_reference: 'sometimes'", "cache_reference must be true or false, got 'sometimes'"),
    (TrainConfig, "adam_betas: [0.9, 1.0]", "adam_betas[1] must be < 1, got 1.0"),
    (TrainConfig, "max_length: 128\nmax_prompt_length: 128", "need 0 < max_prompt_length (128) < max_length (128)"),
    (CurateConfig, "balance_target: 2", "balance_target must be in [1, 1.33333], got 2"),
    (CurateConfig, "min_per_class: 0", "min_per_class must be >= 1, got 0"),
    (PromotionPolicy, "min_suite_accuracy: {safety: 1.5}", "min_suite_accuracy[safety] must be <= 1, got 1.5"),
])
def test_the_audits_values_are_refused_in_one_sentence_naming_the_file(tmp_path, cls, text, message):
    path = _write(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as refusal:
        load_config(cls, path, CONFIGS[cls])
    assert str(refusal.value) == f"{path}: {message}" or str(refusal.value).startswith(f"{path}: {message} ")


def test_yaml_1_1_reads_a_bare_exponent_as_a_string_and_the_config_reads_it_as_the_number(tmp_path):
    path = _write(tmp_path, "learning_rate: 1e-4\ncache_reference: 'no'\n")
    assert yaml.safe_load(path.read_text())["learning_rate"] == "1e-4"
    config = TrainConfig.load(path)
    assert config.learning_rate == 1e-4 and config.cache_reference is False


def test_an_override_is_named_as_the_config_not_the_file(tmp_path):
    path = _write(tmp_path, "beta: 0.2\nseed: 7\n")
    with pytest.raises(ConfigError, match=r"^training config: seed must be in \[0, 4294967296\), got -1$"):
        TrainConfig.load(path, seed=-1)
    assert TrainConfig.load(path, seed=3).seed == 3


def test_the_pseudonym_key_is_no_config_field_and_never_echoed():
    """The key comes from THUMBS_PSEUDONYM_KEY (or `ingest(pseudonym_key=)`): as a config field it would be a
    flag in shell history, a line in thumbs.yaml and a flow parameter Prefect stores in the clear."""
    with pytest.raises(ConfigError) as refusal:
        IngestConfig(pseudonym_key="hunter2")
    assert "pseudonym_key is not a field" in str(refusal.value) and "hunter2" not in str(refusal.value)


@pytest.mark.parametrize("args,message", [
    (["train", "--snapshot", "S", "--base-model", "M", "--out", "O", "--learning-rate", "0"],
     "error: training config: learning_rate must be > 0, got 0.0"),
    (["train", "--snapshot", "S", "--base-model", "M", "--out", "O", "--epochs", "inf"],
     "error: training config: epochs must be a finite number, got inf"),
    (["train", "--snapshot", "S", "--base-model", "M", "--out", "O", "--config", "{bad}"],
     "error: {bad}: seed must be a whole number, got 'abc'"),
    (["curate", "--lake", "L", "--out", "O", "--min-per-class", "0"],
     "error: curate config: min_per_class must be >= 1, got 0"),
    (["evaluate", "--adapter", "A", "--snapshot", "S", "--batch-size", "0"],
     "error: eval config: batch_size must be >= 1, got 0"),
])
def test_command_line_flags_hit_the_same_checks(tmp_path, args, message):
    from flows.cli import app

    bad = _write(tmp_path, "seed: abc\n")
    result = CliRunner().invoke(app, [a.replace("{bad}", str(bad)) for a in args])
    assert result.exit_code == 2, result.output
    assert message.replace("{bad}", str(bad)) in result.output and "Traceback" not in result.output
