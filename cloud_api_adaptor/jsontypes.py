"""Names of JSON types, for strict decoders' error messages ("expected string, got number")."""

from __future__ import annotations

from collections.abc import Mapping


def json_type_name(value: object) -> str:
    """The JSON type of a decoded value, as a user would call it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__
