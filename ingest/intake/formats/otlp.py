"""OTLP/JSON as the Collector's file exporter writes it: the export envelopes, and AnyValues to Python.

    for span in otlp.items(record, "resourceSpans", "scopeSpans", "spans"): ...
    attrs = otlp.attributes(span.get("attributes") or [])   # {"gen_ai.request.model": "gpt-4o-mini", ...}

Read for every span, log record and body of an OTel source (a batch of a hundred calls is one line, and each
call a handful of records), so the common case goes first: an attribute holding a `stringValue`. The other
kinds are read as the OTLP/JSON encoding writes them: 64-bit integers as strings, arrays and maps nested.
A value in no known shape is returned as it is, for the reader to name; a malformed integer or list is a
`BadRow` (one record quarantined, not its batch).
"""

from __future__ import annotations

from typing import Iterator

from ingest.intake.records import BadRow, describe
from ingest.schema import Reason


def value_of(value):
    """An OTLP AnyValue to Python."""
    if type(value) is not dict or len(value) != 1:
        return value
    if "stringValue" in value:  # by far the most common
        return value["stringValue"]
    (kind, inner), = value.items()
    if kind == "kvlistValue":
        return attributes((inner or {}).get("values", []))
    if kind == "arrayValue":
        return [value_of(v) for v in (inner or {}).get("values", [])]
    if kind == "intValue":
        try:
            return int(inner)  # OTLP/JSON writes 64-bit integers as strings
        except (TypeError, ValueError):
            raise BadRow(Reason.WRONG_TYPE, f"intValue: {describe(inner)} is not an integer") from None
    return inner


def any_value(value) -> dict:
    """Python to an OTLP/JSON AnyValue, as the exporter encodes it: `value_of`'s inverse (what writes OTLP
    records for the tests and benchmarks/ingest.py)."""
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, list):
        return {"arrayValue": {"values": [any_value(v) for v in value]}}
    if isinstance(value, dict):
        return {"kvlistValue": {"values": [{"key": k, "value": any_value(v)} for k, v in value.items()]}}
    return {"stringValue": value}


def attributes(items) -> dict:
    """A list of {key, value} (attributes, a kvlist's values) to a dict; the last of a repeated key wins."""
    if not isinstance(items, list):
        raise BadRow(Reason.WRONG_TYPE, "attributes must be a list of {key, value}")
    out = {}
    try:  # every item a {key, value}, as the exporters write them; value_of's first case inlined (a call each)
        for item in items:
            value = item["value"]
            out[item["key"]] = (value["stringValue"] if type(value) is dict and len(value) == 1
                                and "stringValue" in value else value_of(value))
        return out
    except (KeyError, TypeError):  # an item that is not one, or a value in no shape: again, item by item
        pass
    out = {}
    for item in items:
        if isinstance(item, dict):
            out[item.get("key")] = value_of(item.get("value"))
    return out


def listed(record, name: str) -> list:
    """`record[name]`, a list (missing or null: empty)."""
    if not isinstance(record, dict):
        raise BadRow(Reason.NOT_AN_OBJECT, f"an item holding {name} is not an object")
    value = record.get(name) or []
    if not isinstance(value, list):
        raise BadRow(Reason.WRONG_TYPE, f"{name} must be a list")
    return value


def items(record: dict, resources: str, scopes: str, name: str) -> Iterator:
    """The spans or log records of an export request: resourceSpans/scopeSpans/spans, or the logs' names."""
    for resource in listed(record, resources):
        for scope in listed(resource, scopes):
            yield from listed(scope, name)
