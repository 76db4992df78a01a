"""Request bodies checked against the compute v1 discovery document Google publishes.

The document ships inside the google-api-python-client wheel (a test extra);
this is a small validator over its schemas: JSON types and the discovery
formats (int64 as decimal strings, uint32 ranges, byte as base64), enums,
patterns (whole-value matches), ``annotations.required`` per method id,
output-only (``readOnly``) fields, unknown properties, and ``$ref``/``items``/
``additionalProperties`` recursion.  Size limits the document states only in prose
(the 256 KiB metadata value) are checked by the fake itself.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_INT_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


def document_path() -> Path:
    import googleapiclient

    return Path(googleapiclient.__file__).parent / "discovery_cache" / "documents" / "compute.v1.json"


@functools.cache
def document() -> Mapping[str, Any]:
    return dict(json.loads(document_path().read_text()))


@functools.cache
def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text)


def method(resource: str, name: str) -> Mapping[str, Any]:
    return dict(document()["resources"][resource]["methods"][name])


def validate_body(method_id: str, schema_name: str, body: Any) -> list[str]:
    """Problems with ``body`` as the request of ``method_id`` (``compute.instances.insert``)."""
    problems: list[str] = []
    _check({"$ref": schema_name}, body, "resource", method_id, problems)
    return problems


def validate_parameters(resource: str, name: str, params: Mapping[str, str]) -> list[str]:
    """Problems with query parameters: unknown names, patterns, enums."""
    declared = method(resource, name).get("parameters", {})
    problems = []
    for key, value in params.items():
        spec = declared.get(key)
        if spec is None:
            if key not in ("alt", "prettyPrint", "$alt", "fields", "key", "quotaUser", "userIp"):
                problems.append(f"query parameter {key!r} is not a parameter of {resource}.{name}")
            continue
        if "pattern" in spec and not _pattern(spec["pattern"]).fullmatch(value):
            problems.append(f"{key}={value!r} does not match {spec['pattern']}")
        if "enum" in spec and value not in spec["enum"]:
            problems.append(f"{key}={value!r} is not one of {spec['enum']}")
    return problems


def _check(schema: Mapping[str, Any], value: Any, path: str, method_id: str, problems: list[str]) -> None:
    if "$ref" in schema:
        resolved = document()["schemas"][schema["$ref"]]
        _check(resolved, value, path, method_id, problems)
        return
    kind = schema.get("type")
    if kind == "object":
        _check_object(schema, value, path, method_id, problems)
    elif kind == "array":
        if not isinstance(value, list):
            problems.append(f"{path}: expected an array, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _check(schema.get("items", {}), item, f"{path}[{i}]", method_id, problems)
    elif kind == "string":
        _check_string(schema, value, path, problems)
    elif kind == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append(f"{path}: expected an integer, got {value!r}")
            return
        low, high = _INT_RANGES.get(schema.get("format", "int32"), _INT_RANGES["int64"])
        if not low <= value <= high:
            problems.append(f"{path}: {value} is out of range for {schema.get('format')}")
        if "minimum" in schema and value < int(schema["minimum"]):
            problems.append(f"{path}: {value} is below the minimum {schema['minimum']}")
    elif kind == "number":
        if not isinstance(value, int | float) or isinstance(value, bool):
            problems.append(f"{path}: expected a number, got {value!r}")
    elif kind == "boolean":
        if not isinstance(value, bool):
            problems.append(f"{path}: expected a boolean, got {value!r}")
    elif kind == "any" or kind is None:
        return


def _check_object(
    schema: Mapping[str, Any], value: Any, path: str, method_id: str, problems: list[str]
) -> None:
    if not isinstance(value, dict):
        problems.append(f"{path}: expected an object, got {type(value).__name__}")
        return
    properties: Mapping[str, Any] = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    for key, item in value.items():
        if key in properties:
            spec = properties[key]
            if spec.get("readOnly"):
                problems.append(f"{path}.{key}: output-only field sent in a request")
            _check(spec, item, f"{path}.{key}", method_id, problems)
        elif extra is not None:
            _check(extra, item, f"{path}[{key!r}]", method_id, problems)
        else:
            problems.append(f"{path}.{key}: unknown field of {schema.get('id', 'object')}")
    for key, spec in properties.items():
        required = spec.get("annotations", {}).get("required", [])
        if method_id in required and key not in value:
            problems.append(f"{path}.{key}: required by {method_id}")


def _check_string(schema: Mapping[str, Any], value: Any, path: str, problems: list[str]) -> None:
    if not isinstance(value, str):
        problems.append(f"{path}: expected a string, got {value!r}")
        return
    fmt = schema.get("format")
    if fmt in _INT_RANGES:
        try:
            number = int(value, 10)
        except ValueError:
            problems.append(f"{path}: {value!r} is not a decimal {fmt}")
            return
        low, high = _INT_RANGES[fmt]
        if not low <= number <= high:
            problems.append(f"{path}: {value} is out of range for {fmt}")
    elif fmt == "byte":
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            try:
                base64.urlsafe_b64decode(value)
            except (binascii.Error, ValueError):
                problems.append(f"{path}: {value!r} is not base64")
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if "pattern" in schema and not _pattern(schema["pattern"]).fullmatch(value):
        problems.append(f"{path}: {value!r} does not match {schema['pattern']}")
