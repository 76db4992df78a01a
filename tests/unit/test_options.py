"""The option system: parsers, precedence, nested settings, and every declaration in the repository."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloud_api_adaptor.errors import ConfigError
from cloud_api_adaptor.options import (
    boolean,
    check_declarations,
    format_duration,
    integer,
    load,
    nested,
    options_of,
    parse_duration,
    parse_keyvalue,
    settings,
    text,
)
from cloud_api_adaptor.plugins import installed_providers, load_plugin
from cloud_api_adaptor.settings import DAEMON_OPTIONS, Settings
from tools.provider_keys import PROVIDER_SETTINGS


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), ("30", 30.0), ("1.5s", 1.5), ("2m3s", 123.0)],
)
def test_go_durations_parse_to_seconds(raw: str, seconds: float) -> None:
    assert parse_duration("PROXY_TIMEOUT", raw) == pytest.approx(seconds)


@pytest.mark.parametrize("raw", ["", "5 minutes", "m5", "5mm", "-", "inf", "nan"])
def test_bad_durations_name_the_key(raw: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_duration("PROXY_TIMEOUT", raw)
    assert err.value.key == "PROXY_TIMEOUT"


@pytest.mark.parametrize(("seconds", "text_"), [(300.0, "5m"), (0.0, "0s"), (7200.0, "2h"), (0.25, "250ms")])
def test_durations_format_back_to_the_go_spelling(seconds: float, text_: str) -> None:
    assert format_duration(seconds) == text_
    assert parse_duration("K", text_) == seconds


def test_keyvalue_parses_like_the_go_flag_and_names_bad_entries() -> None:
    assert parse_keyvalue("TAGS", " a = 1 ,b=2,,") == {"a": "1", "b": "2"}
    with pytest.raises(ConfigError, match="invalid key-value pair: c"):
        parse_keyvalue("TAGS", "a=1,c")


@settings
class _Inner:
    level: int = integer("level", "LEVEL", "A number.", default=3, minimum=1)


@settings
class _Outer:
    pods_dir: str = text("pods-dir", "PODS_DIR", "A directory.", default="/run/peerpod/pods")
    firmware: str = text("firmware", None, "Empty means BIOS.", default="/ovmf", keep_empty=True)
    token: str = text("token", "TOKEN", "A secret.", default="", secret=True)
    needed: str = text("needed", "NEEDED", "Must be set.", default="", required=False)
    flag: bool = boolean("flag", "FLAG", "A switch.", default=False)
    inner: _Inner = nested(default_factory=_Inner)


def test_cli_beats_env_beats_default_and_empty_env_is_ignored() -> None:
    assert load(_Outer, {"PODS_DIR": ""}).pods_dir == "/run/peerpod/pods"
    assert load(_Outer, {"PODS_DIR": "/x"}).pods_dir == "/x"
    assert load(_Outer, {"PODS_DIR": "/x"}, {"pods-dir": "/y"}).pods_dir == "/y"


def test_an_explicit_empty_flag_is_a_value_only_where_the_option_says_so() -> None:
    assert load(_Outer, {}, {"firmware": ""}).firmware == ""
    assert load(_Outer, {}, {"pods-dir": ""}).pods_dir == "/run/peerpod/pods"


def test_nested_settings_load_with_their_parent_and_errors_name_the_key() -> None:
    assert load(_Outer, {"LEVEL": "7"}).inner.level == 7
    assert [o.key for o in options_of(_Outer)][-1] == "LEVEL"
    with pytest.raises(ConfigError) as err:
        load(_Outer, {"LEVEL": "0"})
    assert err.value.key == "LEVEL"


def test_a_required_option_left_unset_is_refused_naming_it() -> None:
    @settings
    class Needy:
        image: str = text("imageid", "PODVM_AMI_ID", "AMI.", default="", required=True)

    with pytest.raises(ConfigError) as err:
        load(Needy, {"PODVM_AMI_ID": " "})
    assert err.value.key == "PODVM_AMI_ID"
    assert load(Needy, {"PODVM_AMI_ID": "ami-1"}).image == "ami-1"


def test_secret_values_are_redacted_in_repr_and_help() -> None:
    loaded = load(_Outer, {"TOKEN": "hunter2"})
    assert loaded.token == "hunter2"
    assert "hunter2" not in repr(loaded)


def test_an_existing_peer_pods_cm_configures_the_daemon() -> None:
    env = {
        "REMOTE_HYPERVISOR_ENDPOINT": "unix:///run/peerpod/hypervisor.sock",
        "PODS_DIR": "/run/peerpod/pods",
        "FORWARDER_PORT": "15151",
        "PROXY_TIMEOUT": "2m",
        "TLS_MIN_VERSION": "VersionTLS13",
        "TAGS": "team=a,env=prod",
        "VXLAN_PORT": "4790",
        "LOG_LEVEL": "DEBUG",
        "PEERPODS_LIMIT_PER_NODE": "12",
    }
    settings_ = load(Settings, env)
    assert settings_.socket == Path("/run/peerpod/hypervisor.sock")
    assert settings_.forwarder_port == 15151
    assert settings_.proxy_timeout == 120.0
    assert settings_.tls.min_version == "VersionTLS13"
    assert dict(settings_.tags) == {"team": "a", "env": "prod"}
    assert settings_.network.vxlan_port == 4790
    assert settings_.log_level == "debug"
    assert settings_.kubernetes.limit_per_node == 12


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("FORWARDER_PORT", "http"),
        ("FORWARDER_PORT", "70000"),
        ("PROXY_TIMEOUT", "0s"),
        ("PODS_DIR", "relative/dir"),
        ("REMOTE_HYPERVISOR_ENDPOINT", "/" + "x" * 120),
        ("TUNNEL_TYPE", "routing"),
        ("TLS_SKIP_VERIFY", "maybe"),
        ("POD_SUBNET_CIDRS", "10.0.0.0/8,10.1.0.0/33"),
        ("EXTERNAL_NETWORK_VIA_PODVM", "sometimes"),
        ("LOG_LEVEL", "chatty"),
    ],
)
def test_bad_settings_are_refused_naming_the_variable(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(Settings, {key: value})
    assert err.value.key == key


def _every_settings_class() -> list[tuple[str, type[Any]]]:
    classes: list[tuple[str, type[Any]]] = [("daemon", Settings)]
    classes += [(name, load_plugin(name).settings_class) for name in installed_providers()]
    classes += [(f"{name} (stand-in)", cls) for name, cls in PROVIDER_SETTINGS.items()]
    return classes


@pytest.mark.parametrize(
    ("name", "cls"), _every_settings_class(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_declaration_is_consistent(name: str, cls: type[Any]) -> None:
    """Defaults as documented parse back to the field defaults, and no key is declared twice."""
    assert check_declarations(cls) == []


def test_each_key_is_declared_once_for_the_daemon_and_providers_never_redeclare_its_keys() -> None:
    daemon_keys = {o.key for o in DAEMON_OPTIONS}
    for name, cls in _every_settings_class()[1:]:
        overlap = daemon_keys & {o.key for o in options_of(cls)}
        assert not overlap, f"{name} redeclares daemon keys {overlap}"
