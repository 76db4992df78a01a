"""Configuration options, declared once on the settings dataclasses they fill.

Every setting is a field of a frozen dataclass decorated with ``@settings``; its
declaration names the flag, the environment variable, the help text, the parser
with its bounds, and the default, all in one place::

    @settings
    class ProxySettings:
        port: int = integer("forwarder-port", "FORWARDER_PORT", "Port of the forwarder.",
                            default=15150, minimum=1, maximum=65535)

``integer`` returns an ``int`` as far as the type checker is concerned, so a field
whose annotation disagrees with its option is a mypy error.  ``default`` is always
spelled out (keyword-only, no fallback), which is also how the type checker knows
the field has one.  From the same
declarations ``options_of`` lists every ``Option`` (the CLI builds argparse from
them; ``make deploy-sync`` renders the Helm values, kustomize env files and
docs/configuration.md), and ``load`` resolves each one from argv, then a
non-empty environment variable (the Go version's names, so an existing
``peer-pods-cm`` works unchanged), then the default, and builds the dataclass.

A value that does not parse is an error naming the key, never a silent fall-back
to the default.  Checks that involve several fields live in ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, cast

from typing_extensions import dataclass_transform

from cloud_api_adaptor.errors import ConfigError

T = TypeVar("T")
C = TypeVar("C")

Kind = Literal["str", "int", "bool", "duration", "list", "keyvalue", "path"]
Parser = Callable[[str, str], T]
"""``(key, raw text) -> value``; raises ``ConfigError`` naming ``key``."""

_OPTION = "cloud_api_adaptor.option"
_NESTED = "cloud_api_adaptor.nested"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Option(Generic[T]):
    """One configuration key, as declared on a settings field.

    ``flag`` is the Go-style flag name without dashes (``pods-dir``); ``env`` the
    environment variable (``PODS_DIR``) or ``None`` for flag-only keys.
    ``default_text`` is the default as a ConfigMap would spell it.
    """

    flag: str
    env: str | None
    help: str
    kind: Kind
    parse: Parser[T] = dataclasses.field(repr=False, compare=False)
    default_text: str = ""
    secret: bool = False
    required: bool = False
    #: an explicit empty value from the command line is a value (``-firmware ""``), not "unset"
    keep_empty: bool = False

    @property
    def key(self) -> str:
        """The name errors and docs use: the environment variable, else the flag."""
        return self.env or self.flag


# --------------------------------------------------------------------------- parsers


def parse_bool(key: str, raw: str) -> bool:
    """A boolean the way ConfigMaps spell them; anything else names ``key``."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(key, f"invalid boolean {raw!r} (use true or false)")


def parse_int(key: str, raw: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """A decimal integer within bounds; errors name ``key``."""
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
    """A Go duration (``5m``, ``1h30m``, ``250ms``) or plain seconds, in seconds."""
    text = raw.strip()
    if not text:
        raise ConfigError(key, "empty duration")
    try:
        value = float(text)
    except ValueError:
        value = _go_duration(key, raw, text)
    if not math.isfinite(value):
        raise ConfigError(key, f"invalid duration {raw!r}")
    return value


def _go_duration(key: str, raw: str, text: str) -> float:
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


def format_duration(seconds: float) -> str:
    """The shortest Go-style spelling of ``seconds`` (``300.0`` -> ``5m``)."""
    if seconds == 0:
        return "0s"
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3)):
        count = seconds / size
        if count >= 1 and abs(count - round(count)) < 1e-9:
            return f"{round(count)}{unit}"
    return f"{seconds:g}s"


def parse_list(raw: str) -> tuple[str, ...]:
    """A comma-separated list, trimmed, without empty entries."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def parse_keyvalue(key: str, raw: str) -> dict[str, str]:
    """``k1=v1,k2=v2`` (the Go KeyValueFlag); an entry without ``=`` names ``key``."""
    result: dict[str, str] = {}
    for part in raw.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise ConfigError(key, f"invalid key-value pair: {part.strip()}")
        result[name.strip()] = value.strip()
    return result


# --------------------------------------------------------------------------- declarations


def _declare(
    option: Option[T], default: T | None = None, default_factory: Callable[[], T] | None = None
) -> Any:
    metadata = {_OPTION: option}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata, repr=not option.secret)
    return dataclasses.field(default=default, metadata=metadata, repr=not option.secret)


def text(
    flag: str,
    env: str | None,
    help: str,
    *,
    default: str,
    choices: Sequence[str] = (),
    secret: bool = False,
    required: bool = False,
    keep_empty: bool = False,
    strip: bool = True,
) -> str:
    """A string option; ``choices`` (compared case-insensitively) restricts it and lower-cases it."""
    allowed = {c.lower(): c for c in choices}

    def parse(key: str, raw: str) -> str:
        value = raw.strip() if strip else raw
        if allowed:
            if value.lower() not in allowed:
                raise ConfigError(key, f"unknown value {raw!r} (use one of {', '.join(choices)})")
            return allowed[value.lower()]
        return value

    option = Option(flag, env, help, "str", parse, default, secret, required, keep_empty)
    return cast(str, _declare(option, default))


def integer(
    flag: str,
    env: str | None,
    help: str,
    *,
    default: int,
    minimum: int | None = None,
    maximum: int | None = None,
    required: bool = False,
) -> int:
    """A decimal integer within ``[minimum, maximum]``."""

    def parse(key: str, raw: str) -> int:
        return parse_int(key, raw, minimum=minimum, maximum=maximum)

    return cast(
        int, _declare(Option(flag, env, help, "int", parse, str(default), required=required), default)
    )


def boolean(flag: str, env: str | None, help: str, *, default: bool) -> bool:
    """true/false (also 1/0, yes/no, on/off)."""
    option = Option(flag, env, help, "bool", parse_bool, "true" if default else "false")
    return cast(bool, _declare(option, default))


def duration(flag: str, env: str | None, help: str, *, default: float, positive: bool = False) -> float:
    """A Go duration in seconds; never negative, and with ``positive`` never zero."""

    def parse(key: str, raw: str) -> float:
        value = parse_duration(key, raw)
        if value < 0 or (positive and value == 0):
            raise ConfigError(key, "must be positive" if positive else "must not be negative")
        return value

    option = Option(flag, env, help, "duration", parse, format_duration(default))
    return cast(float, _declare(option, default))


def text_list(
    flag: str, env: str | None, help: str, *, default: tuple[str, ...], required: bool = False
) -> tuple[str, ...]:
    """A comma-separated list of strings."""

    def parse(key: str, raw: str) -> tuple[str, ...]:
        return parse_list(raw)

    option = Option(flag, env, help, "list", parse, ",".join(default), required=required)
    return cast("tuple[str, ...]", _declare(option, default))


def key_values(
    flag: str, env: str | None, help: str, *, default: tuple[tuple[str, str], ...]
) -> tuple[tuple[str, str], ...]:
    """``k1=v1,k2=v2``, kept as sorted pairs so the settings stay hashable."""

    def parse(key: str, raw: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(parse_keyvalue(key, raw).items()))

    option = Option(flag, env, help, "keyvalue", parse, ",".join(f"{k}={v}" for k, v in default))
    return cast("tuple[tuple[str, str], ...]", _declare(option, default))


def path(flag: str, env: str | None, help: str, *, default: str, max_bytes: int | None = None) -> Path:
    """An absolute path (a ``unix://`` prefix is accepted for socket endpoints)."""

    def parse(key: str, raw: str) -> Path:
        return parse_path(key, raw, max_bytes)

    option = Option(flag, env, help, "path", parse, default)
    return cast(Path, _declare(option, Path(default)))


def optional_path(
    flag: str, env: str | None, help: str, *, default: None, max_bytes: int | None = None
) -> Path | None:
    """Like ``path``, but empty (the default) means "not set"."""

    def parse(key: str, raw: str) -> Path | None:
        return parse_path(key, raw, max_bytes) if raw.strip() else None

    return cast("Path | None", _declare(Option(flag, env, help, "path", parse), default))


def custom(
    flag: str,
    env: str | None,
    help: str,
    *,
    default: T,
    parse: Parser[T],
    default_text: str,
    kind: Kind = "str",
    secret: bool = False,
    required: bool = False,
) -> T:
    """An option with its own parser (catalogues, subnets, ...); ``default_text`` parses to ``default``."""
    option = Option(flag, env, help, kind, parse, default_text, secret, required)
    return cast(T, _declare(option, default))


def nested(*, default_factory: Callable[[], C]) -> C:
    """A field holding another ``@settings`` class, whose options belong to this one."""
    return dataclasses.field(default_factory=default_factory, metadata={_NESTED: True})


def parse_path(key: str, raw: str, max_bytes: int | None = None) -> Path:
    """An absolute path without NUL bytes; ``unix://`` is stripped; too long names ``key``."""
    value = raw.strip().removeprefix("unix://")
    if not value.startswith("/") or "\x00" in value:
        raise ConfigError(key, f"must be an absolute path, got {raw!r}")
    if max_bytes is not None and len(value.encode()) > max_bytes:
        raise ConfigError(key, f"path longer than {max_bytes} bytes")
    return Path(value)


@dataclass_transform(
    frozen_default=True,
    field_specifiers=(
        dataclasses.field,
        text,
        integer,
        boolean,
        duration,
        text_list,
        key_values,
        path,
        optional_path,
        custom,
        nested,
    ),
)
def settings(cls: type[C]) -> type[C]:
    """Make ``cls`` a frozen dataclass whose option fields ``load`` can fill."""
    return dataclasses.dataclass(frozen=True)(cls)


# --------------------------------------------------------------------------- reading


def _fields(cls: type[Any]) -> Iterable[tuple[dataclasses.Field[Any], Option[Any] | None, bool]]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a @settings dataclass")
    for f in dataclasses.fields(cls):
        yield f, f.metadata.get(_OPTION), bool(f.metadata.get(_NESTED))


def _nested_class(f: dataclasses.Field[Any]) -> type[Any]:
    factory = f.default_factory
    if not isinstance(factory, type):
        raise TypeError(f"nested settings field {f.name} needs the class as its default_factory")
    return factory


def options_of(cls: type[Any]) -> tuple[Option[Any], ...]:
    """Every option declared on ``cls`` and the settings nested in it, in declaration order."""
    found: list[Option[Any]] = []
    for f, option, is_nested in _fields(cls):
        if is_nested:
            found.extend(options_of(_nested_class(f)))
        elif option is not None:
            found.append(option)
    return tuple(found)


def raw_value(option: Option[Any], env: Mapping[str, str], cli: Mapping[str, str | None]) -> str | None:
    """The text an option resolves to: its flag, else a non-empty env value; None means the default."""
    from_cli = cli.get(option.flag)
    if from_cli is not None and (from_cli.strip() or option.keep_empty):
        return from_cli
    if option.env and env.get(option.env, "").strip():
        return env[option.env]
    return None


def load(cls: type[C], env: Mapping[str, str], cli: Mapping[str, str | None] | None = None) -> C:
    """Build ``cls`` from argv values (by flag) and the environment; errors name the key.

    A required option left unset is an error; everything else falls back to its default.
    """
    cli = cli or {}
    values: dict[str, Any] = {}
    for f, option, is_nested in _fields(cls):
        if is_nested:
            values[f.name] = load(_nested_class(f), env, cli)
            continue
        if option is None:
            continue
        raw = raw_value(option, env, cli)
        if raw is None:
            if option.required:
                raise ConfigError(option.key, "required, but not set")
            continue
        values[f.name] = option.parse(option.key, raw)
    return cls(**values)


def check_declarations(cls: type[Any]) -> list[str]:
    """Problems with ``cls``'s declarations (for tests): duplicate keys, defaults that do not round-trip."""
    problems: list[str] = []
    seen: set[str] = set()
    for option in options_of(cls):
        for name in filter(None, (option.flag, option.env)):
            if name in seen:
                problems.append(f"{name} is declared twice")
            seen.add(name)
    return problems + _check_defaults(cls)


def _check_defaults(cls: type[Any]) -> list[str]:
    problems: list[str] = []
    for f, option, is_nested in _fields(cls):
        if is_nested:
            problems.extend(_check_defaults(_nested_class(f)))
            continue
        if option is None or not option.default_text:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        try:
            parsed = option.parse(option.key, option.default_text)
        except ConfigError as exc:
            problems.append(f"{option.key}: default {option.default_text!r} does not parse: {exc}")
            continue
        if parsed != default:
            problems.append(f"{option.key}: default text {option.default_text!r} means {parsed!r}")
    return problems
