"""Typed configs, each field declared once and checked at load, from three layers: the class's defaults,
then a YAML (or JSON) file, then overrides (command-line flags, flow parameters) whose value is not None.
Every config class in thumbs is a `@config` dataclass and every loader goes through `load_config`, so a
bad value or an unknown key is refused the same way everywhere, naming the field and the file.

    @config
    class TrainConfig:
        learning_rate: float = Field(5e-5, gt=0)   # the docstring under it is its description (help text)

    config = load_config(TrainConfig, "training/kto.yaml", "training config", beta=0.2)
    # training/kto.yaml: learning_rate must be > 0, got 0      (a ConfigError, a ValueError)
    fields = read_mapping("params.yaml")      # the file alone, checked to be a mapping

Why pydantic dataclasses rather than a checker of our own: the one declaration (type, default, range in
`Field(...)`, the docstring under the field as its description) is what pydantic turns into a JSON schema,
so Prefect can render a stage's config as a section of the flow's form with the very ranges the loader
enforces; and the classes stay dataclasses (`dataclasses.fields`, `asdict`, `replace` and `__post_init__`
for cross-field checks work as before). pydantic is already here: Prefect depends on it.

`@config` adds to pydantic's checks: inf and nan are refused for every float, `true`/`false` for a number,
and keyword arguments that are not fields; its errors are one sentence per field instead of pydantic's report.
What a value may be, as YAML writes it:
- a number spelt as a string is that number: YAML 1.1, which PyYAML follows, reads `1e-4` (no dot) as a
  string; `abc` for a number is refused, and so is a fractional value for a whole number (2.0 is 2);
- a bool takes `true`/`false`, `yes`/`no`, `on`/`off` and 1/0, quoted or not; anything else is refused,
  never read as "truthy";
- a choice (a `Literal`) takes exactly one of its values.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Type, TypeVar, Union

import pydantic.dataclasses
from pydantic import ConfigDict, ValidationError, ValidationInfo, field_validator

T = TypeVar("T")
UNIONS = (Union, types.UnionType)  # Optional[X] and X | None

CONFIG = ConfigDict(allow_inf_nan=False, use_attribute_docstrings=True, extra="forbid")
"""Shared by every config class (`flows/config.py`'s ThumbsConfig included)."""

_WHAT = {  # pydantic's error type -> what the value must be
    "int_parsing": "must be a whole number", "int_from_float": "must be a whole number", "int_type": "must be a whole number",
    "float_parsing": "must be a number", "float_type": "must be a number", "finite_number": "must be a finite number",
    "bool_parsing": "must be true or false", "bool_type": "must be true or false", "string_type": "must be a string",
    "list_type": "must be a list", "tuple_type": "must be a list", "dict_type": "must be a mapping",
    "string_too_short": "must not be empty", "too_short": "must not be empty", "missing": "must be set",
    "unexpected_keyword_argument": "is not a field", "extra_forbidden": "is not a field",
    "datetime_parsing": "must be a date and time (ISO 8601)", "datetime_type": "must be a date and time (ISO 8601)",
    "dataclass_type": "must be a mapping of its fields",
}
_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


class ConfigError(ValueError):
    """Config values refused: `problems` holds (field or None for a cross-field check, sentence) pairs."""

    def __init__(self, problems: list[tuple[Optional[str], str]]):
        self.problems = problems
        super().__init__("; ".join(sentence for _, sentence in problems))

    def at(self, source: typing.Callable[[Optional[str]], str]) -> "ConfigError":
        """The same problems, each prefixed with where its field's value came from."""
        return ConfigError([(name, f"{source(name)}: {sentence}") for name, sentence in self.problems])


def config(cls: Optional[Type[T]] = None, *, frozen: bool = False) -> Type[T]:
    """`@dataclass` for a config class (`@config` or `@config(frozen=True)`): every field's type and range
    (`Field(ge=..., ...)`) is checked when an instance is made, then `__post_init__` runs the cross-field checks;
    a refusal is a ConfigError."""
    if cls is None:
        return functools.partial(config, frozen=frozen)
    cls._refuse_bool_for_number = field_validator("*", mode="before")(classmethod(refuse_bool_for_number))
    cls = pydantic.dataclasses.dataclass(cls, config=CONFIG, frozen=frozen)
    validate = cls.__init__

    @functools.wraps(validate)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            validate(self, *args, **kwargs)
        except ValidationError as err:
            raise ConfigError(explain(err, cls)) from None  # pydantic's report and traceback add nothing

    cls.__init__ = __init__
    return cls


def refuse_bool_for_number(cls: type, value: Any, info: ValidationInfo) -> Any:
    """A `mode="before"` field validator: YAML's `true` for a number is a mistake, not 1 (pydantic takes it)."""
    where = _bool_for_number(cls.__pydantic_fields__[info.field_name].annotation, value)
    if where is not None:
        raise ValueError(f"must be a number{where}")
    return value


def _bool_for_number(annotation: Any, value: Any) -> Optional[str]:
    """None, or where in `value` a bool stands for a number: "" (the value itself), " at [1]", " at [key]"."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _bool_for_number(args[0], value)
    if isinstance(value, bool):
        members = [a for a in (args if origin in UNIONS else (annotation,)) if a is not type(None)]
        return "" if all(_is_number(a) for a in members) else None
    if origin is dict and isinstance(value, dict):
        items = [(key, args[1], item) for key, item in value.items()]
    elif origin in (list, tuple) and isinstance(value, (list, tuple)):
        fixed = origin is tuple and args[-1:] != (Ellipsis,)
        items = [(i, args[i] if fixed else args[0], item) for i, item in enumerate(value[:len(args)] if fixed else value)]
    else:
        return None
    return next((f" at [{key}]" for key, inner, item in items if _bool_for_number(inner, item) == ""), None)


def _is_number(annotation: Any) -> bool:
    annotation = typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation
    if typing.get_origin(annotation) is Literal:
        return all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in typing.get_args(annotation))
    return annotation in (int, float)


def explain(err: ValidationError, cls: type) -> list[tuple[Optional[str], str]]:
    """pydantic's errors as one sentence per field: "learning_rate must be > 0, got 0"."""
    fields = getattr(cls, "__pydantic_fields__", {})
    cross, by_name = [], {}
    for error in err.errors():
        if not error["loc"]:  # __post_init__ or a model validator: its own sentence
            cross.append((None, _reason(error)))
            continue
        info = fields.get(str(error["loc"][0]))
        name = _where(error["loc"], info)
        entry = by_name.setdefault(name, {"field": str(error["loc"][0]), "rules": [], "input": error.get("input")})
        entry["rules"].append(_rule(error, info if len(error["loc"]) == 1 else None))
    problems = []
    for name, entry in by_name.items():
        rules = [entry["rules"][0]] + [r.removeprefix("must be ") for r in entry["rules"][1:]]  # a union's members
        sentence = f"{name} {' or '.join(dict.fromkeys(rules))}"
        info = fields.get(entry["field"])
        if sentence.startswith(f"{name} must") and (info is None or info.repr):  # repr=False: a key, never echoed
            sentence += f", got {_short(entry['input'])}"
        problems.append((entry["field"], sentence))
    return problems + cross


def _reason(error: dict) -> str:
    cause = (error.get("ctx") or {}).get("error")
    return str(cause) if cause is not None else error["msg"]


def _where(loc: tuple, info: Any) -> str:
    """`adam_betas[1]`, `formats.up_at`; a union member's tag (pydantic puts it in the path) is left out."""
    rest, kind = loc[1:], info.annotation if info is not None else None
    members = [a for a in typing.get_args(kind) if a is not type(None)] if typing.get_origin(kind) in UNIONS else [kind]
    if rest and len(members) > 1:
        rest = rest[1:]
    keyed = rest and typing.get_origin(members[0]) is dict  # a mapping's key, not a nested config's field
    return str(loc[0]) + "".join(f"[{part}]" if isinstance(part, int) or (keyed and i == 0) else f".{part}"
                                 for i, part in enumerate(rest))


def _rule(error: dict, info: Any) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "value_error":
        reason = _reason(error)
        return reason if reason.startswith("must") else f"is refused: {reason}"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}"
    bounds = {key: ctx[key] for key, _ in _BOUNDS if key in ctx}
    if bounds:
        if info is not None:  # the field's whole range reads better than the one bound it broke
            bounds = {key: getattr(m, key) for m in info.metadata for key, _ in _BOUNDS if hasattr(m, key)} or bounds
        return _range(bounds)
    if kind in _WHAT:
        return _WHAT[kind]
    message = error["msg"]
    return "must be" + message[len("Input should be"):] if message.startswith("Input should be") else message


def _range(bounds: dict) -> str:
    low = [(key, v) for key, v in bounds.items() if key in ("gt", "ge")]
    high = [(key, v) for key, v in bounds.items() if key in ("lt", "le")]
    if low and high:
        (lk, lv), (hk, hv) = low[0], high[0]
        return f"must be in {'(' if lk == 'gt' else '['}{_number(lv)}, {_number(hv)}{')' if hk == 'lt' else ']'}"
    key, value = (low or high)[0]
    return f"must be {dict(_BOUNDS)[key]} {_number(value)}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read_mapping(path: Union[str, Path]) -> dict:
    """The mapping a YAML or JSON file holds (an empty file is an empty mapping)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of config fields, not a {type(data).__name__}")
    return data


def config_fields(cls: type) -> dict[str, Any]:
    """The fields of a `@config` class or pydantic model: name -> pydantic FieldInfo."""
    return dict(cls.__pydantic_fields__)


def is_config(annotation: Any) -> bool:
    """Whether a field's type is a config itself (IngestConfig.formats, ThumbsConfig's sections)."""
    return isinstance(annotation, type) and (dataclasses.is_dataclass(annotation) or hasattr(annotation, "model_fields"))


def _field_names(cls: type) -> set:
    return set(getattr(cls, "__pydantic_fields__", None) or (f.name for f in dataclasses.fields(cls)))


def _nested_configs(cls: type) -> set:
    """Fields of `cls` that are configs themselves (their mapping is merged, not replaced)."""
    return {name for name, info in getattr(cls, "__pydantic_fields__", {}).items() if is_config(info.annotation)}


def from_mapping(cls: Type[T], fields: Mapping[str, Any], what: Optional[str] = None) -> T:
    """`cls(**fields)` after refusing keys that are not fields of `cls` (a `@config` dataclass or a pydantic
    model), the known ones listed; a refused value is a ConfigError either way."""
    known = _field_names(cls)
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError([(None, f"unknown {what or cls.__name__} field(s) {unknown}; known: {sorted(known)}")])
    try:
        return cls(**fields)
    except ValidationError as err:  # a pydantic model (flows/config.py); `@config` classes raise ConfigError
        raise ConfigError(explain(err, cls)) from None


def load_config(cls: Type[T], path: Union[str, Path, None] = None, what: Optional[str] = None, *,
                section: Optional[str] = None, **overrides: Any) -> T:
    """Defaults, then the file at `path` (if any), then the overrides that are not None. A refused value
    is named with where it came from: the file, or `what` (e.g. "training config") for an override.

    `section`: the file may also be a whole thumbs.yaml (flows/config.py), of which this config is the
    mapping under `section` (`train:`, say). An override of a nested config (IngestConfig.formats) is merged
    into the file's, field by field."""
    fields = read_mapping(path) if path is not None else {}
    if section is not None and isinstance(fields.get(section, {}), dict) and section in fields \
            and section not in _field_names(cls):
        fields = dict(fields[section] or {})
    given = {k: v for k, v in overrides.items() if v is not None}
    nested = _nested_configs(cls)
    for name, value in given.items():
        if name in nested and isinstance(value, dict) and isinstance(fields.get(name), dict):
            value = {**fields[name], **value}
        fields[name] = value
    try:
        return from_mapping(cls, fields, what)
    except ConfigError as err:
        raise err.at(lambda name: str(path) if path is not None and name not in given else what or cls.__name__) \
            from None
