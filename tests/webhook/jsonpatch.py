"""A minimal RFC 6902 applier (add, replace, remove) so the tests check the pod a patch produces."""

from __future__ import annotations

import copy
from typing import Any


def _tokens(path: str) -> list[str]:
    assert path.startswith("/"), path
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def apply_patch(document: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    result = copy.deepcopy(document)
    for op in patch:
        *parents, last = _tokens(op["path"])
        target: Any = result
        for token in parents:
            target = target[int(token)] if isinstance(target, list) else target[token]
        if isinstance(target, list):
            index = len(target) if last == "-" else int(last)
            if op["op"] == "add":
                target.insert(index, op["value"])
            elif op["op"] == "replace":
                target[index] = op["value"]
            else:
                del target[index]
        elif op["op"] in {"add", "replace"}:
            if op["op"] == "replace":
                assert last in target, op
            target[last] = op["value"]
        else:
            del target[last]
    return result
