"""Typed config dataclasses from three layers: the dataclass's defaults, then a YAML (or JSON) file, then
overrides (command-line flags, flow parameters) whose value is not None. Every loader in thumbs goes
through here, so an unknown key is refused the same way everywhere, with the known ones listed.

    config = load_config(TrainConfig, "training/kto.yaml", beta=0.2)
    fields = read_mapping("params.yaml")      # the file alone, checked to be a mapping
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Optional, Type, TypeVar, Union

T = TypeVar("T")


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


def from_mapping(cls: Type[T], fields: Mapping[str, Any], what: Optional[str] = None) -> T:
    """`cls(**fields)` after refusing keys that are not fields of the dataclass `cls`."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown {what or cls.__name__} field(s) {unknown}; known: {sorted(known)}")
    return cls(**fields)


def load_config(cls: Type[T], path: Union[str, Path, None] = None, what: Optional[str] = None, **overrides: Any) -> T:
    """Defaults, then the file at `path` (if any), then the overrides that are not None."""
    fields = read_mapping(path) if path is not None else {}
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return from_mapping(cls, fields, what)
