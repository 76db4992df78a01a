"""Declarative configuration options: one source of truth for flags, env keys and docs.

The daemon's own settings and every provider declare their keys as ``Option``
values.  The CLI builds argparse from them, resolves each one from argv, then the
environment (the Go version's variable names, so an existing ``peer-pods-cm``
works unchanged), then the default; ``make deploy-sync`` generates the Helm
values, kustomize env files and the README table from the same definitions.

Unlike the Go version, an environment value that does not parse is an error
naming the variable, not a silent fall-back to the default.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

Kind = Literal["str", "int", "bool", "duration", "list", "keyvalue"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Option:
    """One configuration key.

    ``flag`` is the Go-style flag name without dashes (``pods-dir``); ``env`` the
    environment variable (``PODS_DIR``), or ``None`` for flag-only keys.  ``default``
    is the string form, as it would appear in a ConfigMap.
    """

    flag: str
    env: str | None
    default: str
    help: str
    kind: Kind = "str"
    secret: bool = False
    required: bool = False
    group: str = "daemon"

    @property
    def key(self) -> str:
        """The name values are stored under: the env name, else the flag."""
        return self.env or self.flag


def parse_bool(key: str, raw: str) -> bool:
    """Parse a boolean the way ConfigMaps spell them; anything else names ``key``."""
    from cloud_api_adaptor.errors import ConfigError

    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(key, f"invalid boolean {raw!r} (use true or false)")


def parse_int(key: str, raw: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Parse a decimal integer within bounds; errors name ``key``."""
    from cloud_api_adaptor.errors import ConfigError

    try:
        value = int(raw.strip(), 10)
    except ValueError:
        raise ConfigError(key, f"invalid integer {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(key, f"{value} is below the minimum {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigError(key, f"{value} is above the maximum {maximum}")
    return value


def parse_duration(key: str, raw: str) -> float:
    """Parse a Go duration (``5m``, ``1h30m``, ``250ms``) or plain seconds into seconds."""
    from cloud_api_adaptor.errors import ConfigError

    text = raw.strip()
    if not text:
        raise ConfigError(key, "empty duration")
    try:
        return float(text)
    except ValueError:
        pass
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise ConfigError(key, f"invalid duration {raw!r} (e.g. 5m, 30s, 1h30m)")
    return total


def parse_list(raw: str) -> tuple[str, ...]:
    """Split a comma-separated list, trimming blanks and dropping empty entries."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def parse_keyvalue(key: str, raw: str) -> dict[str, str]:
    """Parse ``k1=v1,k2=v2`` (the Go KeyValueFlag); an entry without ``=`` names ``key``."""
    from cloud_api_adaptor.errors import ConfigError

    result: dict[str, str] = {}
    for part in raw.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise ConfigError(key, f"invalid key-value pair: {part.strip()}")
        result[name.strip()] = value.strip()
    return result


class OptionValues(Mapping[str, str]):
    """Resolved string values keyed by ``Option.key``, with typed accessors.

    Typed accessors raise ``ConfigError`` naming the key, so a provider's config
    parser needs no error handling of its own.
    """

    def __init__(self, values: Mapping[str, str], options: Iterable[Option] = ()) -> None:
        self._values = dict(values)
        self._options = {o.key: o for o in options}

    def __getitem__(self, key: str) -> str:
        return self._values[key]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        shown = {k: ("<redacted>" if self._is_secret(k) and v else v) for k, v in self._values.items()}
        return f"OptionValues({shown!r})"

    def _is_secret(self, key: str) -> bool:
        option = self._options.get(key)
        return option is not None and option.secret

    def str(self, key: builtins.str, default: builtins.str = "") -> builtins.str:
        return self._values.get(key, default)

    def int(
        self,
        key: builtins.str,
        default: builtins.int = 0,
        *,
        minimum: builtins.int | None = None,
        maximum: builtins.int | None = None,
    ) -> builtins.int:
        raw = self._values.get(key, "")
        return default if raw.strip() == "" else parse_int(key, raw, minimum=minimum, maximum=maximum)

    def bool(self, key: builtins.str, default: builtins.bool = False) -> builtins.bool:
        raw = self._values.get(key, "")
        return default if raw.strip() == "" else parse_bool(key, raw)

    def duration(self, key: builtins.str, default: float) -> float:
        raw = self._values.get(key, "")
        return default if raw.strip() == "" else parse_duration(key, raw)

    def list(self, key: builtins.str) -> tuple[builtins.str, ...]:
        return parse_list(self._values.get(key, ""))

    def keyvalue(self, key: builtins.str) -> dict[builtins.str, builtins.str]:
        return parse_keyvalue(key, self._values.get(key, ""))


def resolve(
    options: Iterable[Option],
    env: Mapping[str, str],
    cli: Mapping[str, str | None] | None = None,
) -> OptionValues:
    """Resolve each option: CLI flag, else a non-empty env value, else the default."""
    options = list(options)
    cli = cli or {}
    values: dict[str, str] = {}
    for option in options:
        from_cli = cli.get(option.flag)
        if from_cli is not None:
            values[option.key] = from_cli
        elif option.env and env.get(option.env, "") != "":
            values[option.key] = env[option.env]
        else:
            values[option.key] = option.default
    return OptionValues(values, options)
