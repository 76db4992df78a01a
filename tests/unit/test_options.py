import pytest

from cloud_api_adaptor.errors import ConfigError
from cloud_api_adaptor.options import Option, parse_duration, parse_keyvalue, resolve
from cloud_api_adaptor.settings import DAEMON_OPTIONS, Settings


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), ("30", 30.0), ("1.5s", 1.5), ("2m3s", 123.0)],
)
def test_go_durations_parse_to_seconds(raw: str, seconds: float) -> None:
    assert parse_duration("PROXY_TIMEOUT", raw) == pytest.approx(seconds)


@pytest.mark.parametrize("raw", ["", "5 minutes", "m5", "5mm", "-"])
def test_bad_durations_name_the_key(raw: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_duration("PROXY_TIMEOUT", raw)
    assert err.value.key == "PROXY_TIMEOUT"


def test_keyvalue_parses_like_the_go_flag_and_names_bad_entries() -> None:
    assert parse_keyvalue("TAGS", " a = 1 ,b=2,,") == {"a": "1", "b": "2"}
    with pytest.raises(ConfigError, match="invalid key-value pair: c"):
        parse_keyvalue("TAGS", "a=1,c")


def test_cli_beats_env_beats_default_and_empty_env_is_ignored() -> None:
    options = [Option("pods-dir", "PODS_DIR", "/run/peerpod/pods", "")]
    assert resolve(options, {"PODS_DIR": ""})["PODS_DIR"] == "/run/peerpod/pods"
    assert resolve(options, {"PODS_DIR": "/x"})["PODS_DIR"] == "/x"
    assert resolve(options, {"PODS_DIR": "/x"}, {"pods-dir": "/y"})["PODS_DIR"] == "/y"


def test_an_existing_peer_pods_cm_configures_the_daemon() -> None:
    env = {
        "REMOTE_HYPERVISOR_ENDPOINT": "/run/peerpod/hypervisor.sock",
        "PODS_DIR": "/run/peerpod/pods",
        "FORWARDER_PORT": "15151",
        "PROXY_TIMEOUT": "2m",
        "TLS_MIN_VERSION": "VersionTLS13",
        "PODVM_INSTANCE_TYPES": "t1, t2 ,",
        "TAGS": "team=a,env=prod",
        "VXLAN_PORT": "4790",
    }
    settings = Settings.from_values(resolve(DAEMON_OPTIONS, env))
    assert settings.forwarder_port == 15151
    assert settings.proxy_timeout == 120.0
    assert settings.tls.min_version == "VersionTLS13"
    assert settings.instance_types == ("t1", "t2")
    assert dict(settings.tags) == {"team": "a", "env": "prod"}
    assert settings.network.vxlan_port == 4790


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("FORWARDER_PORT", "http"),
        ("FORWARDER_PORT", "70000"),
        ("PROXY_TIMEOUT", "0s"),
        ("PODS_DIR", "relative/dir"),
        ("TUNNEL_TYPE", "routing"),
        ("TLS_SKIP_VERIFY", "maybe"),
        ("POD_SUBNET_CIDRS", "10.0.0.0/8,10.1.0.0/33"),
        ("EXTERNAL_NETWORK_VIA_PODVM", "sometimes"),
    ],
)
def test_bad_settings_are_refused_naming_the_variable(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_values(resolve(DAEMON_OPTIONS, {key: value}))
    assert err.value.key == key


def test_secret_values_are_redacted_in_repr() -> None:
    options = [Option("secret", "AWS_SECRET_ACCESS_KEY", "", "", secret=True)]
    values = resolve(options, {"AWS_SECRET_ACCESS_KEY": "hunter2"})
    assert "hunter2" not in repr(values)
