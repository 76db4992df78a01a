"""The published ARM schema of ``VirtualMachine``, as a validator for request bodies.

Source: the ``Microsoft.Compute`` 2024-11-01 swagger of azure-rest-api-specs, as
AutoRest generated it into the msrest models of ``azure-mgmt-compute`` 35.0.0
(the last release that ships them; 39 is TypeSpec-generated and carries no
constraints).  Each model's ``_attribute_map`` gives the wire names (flattened
``properties.x`` included) and types, ``_validation`` the required, read-only
and length/pattern/range constraints, and the ``__init__`` annotations the enums.
That wheel cannot be installed beside 39, so it is fetched once with pip into
``~/.cache/cloud-api-adaptor/azure-arm-schema/`` and read as source (``ast``,
nothing imported), then kept as JSON.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

PACKAGE = "azure-mgmt-compute==35.0.0"
API = "v2024_11_01"
CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cloud-api-adaptor" / "azure-arm-schema"
)
_MODELS = f"azure/mgmt/compute/{API}/models/_models_py3.py"
_ENUMS = f"azure/mgmt/compute/{API}/models/_compute_management_client_enums.py"
_LOCK = threading.Lock()
#: enums the spec itself calls open-ended (the size list predates most sizes: "use the sizes API")
OPEN_ENUMS = frozenset({"VirtualMachineSizeTypes"})

Schema = dict[str, Any]


def load() -> Schema:
    """``{"models": {name: {"fields": {...}}}, "enums": {name: [values]}}``, fetched and parsed once."""
    with _LOCK:
        parsed = CACHE / f"{API}.json"
        if parsed.exists():
            return json.loads(parsed.read_text())  # type: ignore[no-any-return]
        CACHE.mkdir(parents=True, exist_ok=True)
        wheels = sorted(CACHE.glob("azure_mgmt_compute-35.0.0-*.whl"))
        if not wheels:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(CACHE), PACKAGE],
                check=True,
                timeout=600,
            )
            wheels = sorted(CACHE.glob("azure_mgmt_compute-35.0.0-*.whl"))
        with zipfile.ZipFile(wheels[0]) as wheel:
            models_src = wheel.read(_MODELS).decode()
            enums_src = wheel.read(_ENUMS).decode()
        schema = {"models": _models(models_src), "enums": _enums(enums_src)}
        tmp = parsed.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(schema))
        tmp.replace(parsed)
        return schema


def _enums(source: str) -> dict[str, list[str]]:
    enums: dict[str, list[str]] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            values = [
                stmt.value.value
                for stmt in node.body
                if isinstance(stmt, ast.Assign)
                and isinstance(stmt.value, ast.Constant)
                and isinstance(stmt.value.value, str)
            ]
            enums[node.name] = values
    return enums


def _models(source: str) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        attribute_map: dict[str, Any] = {}
        validation: dict[str, Any] = {}
        enum_of: dict[str, str] = {}
        for stmt in node.body:
            if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name):
                target = stmt.targets[0].id
                if target == "_attribute_map":
                    attribute_map = ast.literal_eval(stmt.value)
                elif target == "_validation":
                    validation = ast.literal_eval(stmt.value)
            elif isinstance(stmt, ast.FunctionDef) and stmt.name == "__init__":
                for arg in stmt.args.kwonlyargs:
                    if arg.annotation is not None:
                        found = re.findall(r"_models\.(\w+)", ast.unparse(arg.annotation))
                        if found and "Union[str" in ast.unparse(arg.annotation):
                            enum_of[arg.arg] = found[-1]
        fields = {}
        for attr, spec in attribute_map.items():
            fields[attr] = {
                "key": spec["key"],
                "type": spec["type"],
                "enum": enum_of.get(attr, ""),
                **validation.get(attr, {}),
            }
        models[node.name] = {"fields": fields}
    return models


def _split_key(key: str) -> list[str]:
    """``properties.hardwareProfile`` -> two levels; ``\\.`` is a literal dot."""
    return [part.replace("\\.", ".") for part in re.split(r"(?<!\\)\.", key)]


class Validator:
    """Validates a wire JSON body against a model: unknown, read-only, required, types, enums, limits."""

    def __init__(self, schema: Schema) -> None:
        self._models: dict[str, Any] = schema["models"]
        self._enums: dict[str, list[str]] = schema["enums"]
        self._response = False
        self._lock = threading.Lock()

    def errors(self, model: str, body: Any, *, response: bool = False) -> list[str]:
        """What in ``body`` breaks the schema; a ``response`` may carry read-only fields."""
        found: list[str] = []
        with self._lock:  # the fake's handler threads share one validator
            self._response = response
            self._model(model, body, "$", found)
        return found

    def _model(self, model: str, value: Any, where: str, found: list[str]) -> None:
        if not isinstance(value, dict):
            found.append(f"{where}: expected an object ({model}), got {type(value).__name__}")
            return
        # the flattened wire tree: {"location": field, "properties": {"hardwareProfile": field}}
        tree: dict[str, Any] = {}
        for spec in self._models[model]["fields"].values():
            node = tree
            parts = _split_key(spec["key"])
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = spec
        self._tree(tree, value, where, found, model)

    def _tree(
        self, tree: dict[str, Any], value: dict[str, Any], where: str, found: list[str], model: str
    ) -> None:
        for key, item in value.items():
            if key not in tree:
                found.append(f"{where}.{key}: not a field of {model}")
                continue
            spec = tree[key]
            if "key" not in spec:  # an intermediate level such as "properties"
                if not isinstance(item, dict):
                    found.append(f"{where}.{key}: expected an object")
                else:
                    self._tree(spec, item, f"{where}.{key}", found, model)
                continue
            if spec.get("readonly") and not self._response:
                found.append(f"{where}.{key}: read-only in {model}")
                continue
            self._value(spec, spec["type"], item, f"{where}.{key}", found)
        for key, spec in tree.items():
            if "key" in spec and spec.get("required") and key not in value:
                found.append(f"{where}.{key}: required by {model}")

    def _value(self, spec: dict[str, Any], kind: str, value: Any, where: str, found: list[str]) -> None:
        if value is None:
            return
        if kind.startswith("[") and kind.endswith("]"):
            if not isinstance(value, list):
                found.append(f"{where}: expected an array")
                return
            if "max_items" in spec and len(value) > spec["max_items"]:
                found.append(f"{where}: more than {spec['max_items']} items")
            for i, item in enumerate(value):
                self._value({}, kind[1:-1], item, f"{where}[{i}]", found)
            return
        if kind.startswith("{") and kind.endswith("}"):
            if not isinstance(value, dict):
                found.append(f"{where}: expected a map")
                return
            for k, item in value.items():
                self._value({}, kind[1:-1], item, f"{where}.{k}", found)
            return
        if kind in self._models:
            self._model(kind, value, where, found)
            return
        checks: dict[str, Callable[[Any], bool]] = {
            "str": lambda v: isinstance(v, str),
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "long": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
            "bool": lambda v: isinstance(v, bool),
            "iso-8601": lambda v: isinstance(v, str),
            "duration": lambda v: isinstance(v, str),
            "base64": lambda v: isinstance(v, str),
            "object": lambda v: True,
        }
        check = checks.get(kind)
        if check is None:
            found.append(f"{where}: unknown schema type {kind}")
            return
        if not check(value):
            found.append(f"{where}: expected {kind}, got {value!r}")
            return
        enum = spec.get("enum")
        if enum and enum in self._enums and enum not in OPEN_ENUMS and value not in self._enums[enum]:
            found.append(f"{where}: {value!r} is not one of {enum} {self._enums[enum]}")
        if isinstance(value, str):
            if "max_length" in spec and len(value) > spec["max_length"]:
                found.append(f"{where}: longer than {spec['max_length']}")
            if "min_length" in spec and len(value) < spec["min_length"]:
                found.append(f"{where}: shorter than {spec['min_length']}")
            if "pattern" in spec and not re.search(spec["pattern"], value):
                found.append(f"{where}: does not match {spec['pattern']}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if "maximum" in spec and value > spec["maximum"]:
                found.append(f"{where}: above {spec['maximum']}")
            if "minimum" in spec and value < spec["minimum"]:
                found.append(f"{where}: below {spec['minimum']}")


if __name__ == "__main__":
    # `python providers/azure/tests/armfake/schema.py`: fill the cache ahead of the tests (an install step)
    print(f"{len(load()['models'])} models cached under {CACHE}")
