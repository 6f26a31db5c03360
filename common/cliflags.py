"""Command-line flags generated from a config class: one flag per field, its help the field's docstring and its
default the declaration's, so no command retypes either (common/configfile.py declares them).

    @config_flags(TrainConfig)
    def train_command(snapshot: str = typer.Option(...), ..., overrides: dict = None) -> None:
        config = load_config(TrainConfig, config_file, "training config", **overrides)

`train_command` gains `--beta`, `--learning-rate`, ... (`learning_rate` → `--learning-rate`); a nested config
field (IngestConfig.formats) gives its own fields' flags (`--score-name`). The command receives `overrides`:
the flags given on the command line only, nested as the config nests them, so a flag left out keeps the
file's value or the default (precedence: default < file < flag). Values are checked by the config class,
with the same sentence a bad file value gets.

A flag's value: a number or a word as usual; `--x/--no-x` for a bool; a list as `a,b,c` (or YAML `[a, b]`);
a mapping as YAML or JSON (`--min-suite-accuracy '{arith: 0.9}'`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import typing
from typing import Any, Callable, Iterator, Literal, Optional

import typer

from common.configfile import UNIONS, config_fields, is_config

CONFIG_HELP = "YAML of the config's fields, or a whole thumbs.yaml (its `{section}:` section); flags override it."
"""A stage command's `--config` (format with the thumbs.yaml section it reads)."""


@dataclasses.dataclass(frozen=True)
class Flag:
    path: tuple[str, ...]  # the field's place in the config: ("formats", "score_name")
    name: str  # the flag, "--score-name"
    annotation: Any
    help: str
    default: Any

    @property
    def param(self) -> str:
        return "_".join(self.path)


def flags_of(cls: type, prefix: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> Iterator[Flag]:
    """One Flag per leaf field of `cls`, nested configs flattened; a nested class's `FLAG_PREFIX` (a ClassVar, e.g.
    "canary-") starts its flags' names, where its fields would clash with its parent's (`--canary-confidence`)."""
    for name, info in config_fields(cls).items():
        if name in skip:
            continue
        if is_config(info.annotation):
            yield from flags_of(info.annotation, prefix + (name,))
            continue
        default = info.get_default(call_default_factory=True)
        yield Flag(prefix + (name,), "--" + getattr(cls, "FLAG_PREFIX", "") + name.replace("_", "-"), info.annotation,
                   _help(info.description), default)


def _help(description: Optional[str]) -> str:
    first = (description or "").split("\n\n")[0]
    return re.sub(r"\s+", " ", first).strip()


def _members(annotation: Any) -> list:
    if typing.get_origin(annotation) in UNIONS:
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _plain(annotation: Any) -> Any:
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation


def _option(flag: Flag) -> tuple[Any, Any]:
    """(annotation, typer.Option) of the generated parameter."""
    members = [_plain(m) for m in _members(flag.annotation)]
    shown = _show(flag.default)
    common = dict(help=flag.help, show_default=shown if shown is not None else False)
    if members == [bool]:
        no = "--no-" + flag.name[2:]
        return Optional[bool], typer.Option(None, f"{flag.name}/{no}", **common)
    if len(members) == 1 and typing.get_origin(members[0]) is Literal:
        choices = tuple(str(c) for c in typing.get_args(members[0]))  # parse_value maps "16" back to 16
        return Optional[Literal[choices]], typer.Option(None, flag.name, **common)
    if members in ([int], [float], [str]):
        return Optional[members[0]], typer.Option(None, flag.name, **common)
    return Optional[str], typer.Option(None, flag.name, metavar=_metavar(members), **common)


def _metavar(members: list) -> str:
    origins = {typing.get_origin(m) or m for m in members}
    if origins & {dict}:
        return "MAPPING"
    if origins & {list, tuple}:
        return "A,B,..."
    return "TEXT"


def _show(default: Any) -> Optional[str]:
    if default is None:
        return None
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, (list, tuple)):
        return ",".join(str(v) for v in default) if default else "none"
    if isinstance(default, dict):
        return "{}" if not default else str(default)
    if isinstance(default, float):
        return f"{default:.6g}"
    return str(default)


def parse_value(annotation: Any, text: Any) -> Any:
    """A flag's text as the field's value (the config class checks it): `a,b` for a list, YAML for the rest."""
    import yaml

    if not isinstance(text, str):
        return text
    members = [_plain(m) for m in _members(annotation)]
    if members == [str]:
        return text
    if members in ([int], [float]):  # a number as YAML reads it (refusals then show 0, not '0')
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            return text
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else text
    if all(typing.get_origin(m) is Literal for m in members):
        values = [v for m in members for v in typing.get_args(m)]
        return next((v for v in values if str(v) == text), text)
    listy = any((typing.get_origin(m) or m) in (list, tuple) for m in members)
    if listy and not text.lstrip().startswith("["):
        if "," in text or str not in members:
            return [part.strip() for part in text.split(",") if part.strip()]
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def nest(values: dict[tuple[str, ...], Any]) -> dict:
    """{("formats", "up_at"): 3} -> {"formats": {"up_at": 3}}."""
    out: dict = {}
    for path, value in values.items():
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def given_flags(flags: list[Flag], values: dict) -> dict:
    """Pop every flag's parameter from `values`; the ones given (not None), parsed and nested."""
    given = {flag.path: values.pop(flag.param, None) for flag in flags}
    return nest({path: parse_value(flag.annotation, value) for flag, (path, value) in zip(flags, given.items())
                 if value is not None})


def config_flags(*classes: type, skip: tuple[str, ...] = (), dest: str = "overrides") -> Callable:
    """Decorator: add a flag per field of each class to a typer command; the command gets the flags given as
    `dest` (a dict, nested as the configs nest). Two classes may not declare the same flag."""
    flags = [flag for cls in classes for flag in flags_of(cls, skip=skip)]
    names = [f.name for f in flags]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise TypeError(f"flags declared twice: {doubled}")

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command)
        own = [p for p in signature.parameters.values() if p.name != dest]
        taken = {p.name for p in own}
        clash = sorted(f.param for f in flags if f.param in taken)
        if clash:
            raise TypeError(f"{command.__name__} already has parameters {clash}")
        added, annotations = [], {k: v for k, v in typing.get_type_hints(command).items() if k != dest}
        for flag in flags:
            annotation, option = _option(flag)
            added.append(inspect.Parameter(flag.param, inspect.Parameter.KEYWORD_ONLY, default=option,
                                           annotation=annotation))
            annotations[flag.param] = annotation

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            overrides = given_flags(flags, kwargs)
            return command(*args, **kwargs, **{dest: overrides})

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=annotations.get(p.name, p.annotation))
                  for p in own]
        wrapper.__signature__ = signature.replace(parameters=params + added)
        wrapper.__annotations__ = annotations
        del wrapper.__wrapped__  # typer must read the generated signature, not the command's own
        wrapper.config_flags = flags
        return wrapper

    return decorate
