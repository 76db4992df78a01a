"""Local provider options: defaults, the instance-type catalogue, modes, and errors that name the key."""

from __future__ import annotations

import ipaddress

import pytest

from cloud_api_adaptor.errors import ConfigError
from cloud_api_adaptor.localvm.config import (
    DEFAULT_CATALOGUE,
    LocalConfig,
    LocalSettings,
    parse_catalogue,
    parse_subnet,
)
from cloud_api_adaptor.localvm.plugin import PLUGIN
from cloud_api_adaptor.options import load, options_of
from cloud_api_adaptor.provider import InstanceTypeInfo, ProviderPlugin

PYTHON = "/opt/venv/bin/python"


def config(env: dict[str, str], *, euid: int = 0) -> LocalConfig:
    return LocalConfig.from_settings(load(LocalSettings, env), euid=euid, python=PYTHON)


def test_the_plugin_is_named_local_and_declares_its_options() -> None:
    assert isinstance(PLUGIN, ProviderPlugin)
    assert PLUGIN.name == "local"
    keys = {o.key for o in options_of(PLUGIN.settings_class)}
    assert {
        "LOCAL_VM_SUBNET",
        "LOCAL_BOOT_DELAY",
        "LOCAL_INSTANCE_TYPES",
        "LOCAL_AGENT_COMMAND",
        "LOCAL_MODE",
    } <= keys


def test_defaults_give_the_documented_subnet_no_boot_delay_and_the_builtin_agent() -> None:
    cfg = config({})
    assert cfg.subnet == ipaddress.IPv4Network("198.18.0.0/16")
    assert cfg.boot_delay == 0.0
    assert cfg.programs.agent == ()
    assert cfg.programs.process_user_data == ("/opt/venv/bin/process-user-data",)
    assert cfg.programs.forwarder == ("/opt/venv/bin/agent-protocol-forwarder",)
    assert cfg.catalogue == parse_catalogue("LOCAL_INSTANCE_TYPES", DEFAULT_CATALOGUE)


def test_auto_mode_is_netns_as_root_and_loopback_otherwise() -> None:
    assert config({}, euid=0).mode == "netns"
    assert config({}, euid=1000).mode == "loopback"
    assert config({"LOCAL_MODE": "loopback"}, euid=0).mode == "loopback"
    assert config({"LOCAL_MODE": "NetNS"}, euid=0).mode == "netns"


def test_netns_mode_without_root_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        config({"LOCAL_MODE": "netns"}, euid=1000)
    assert err.value.key == "LOCAL_MODE"
    with pytest.raises(ConfigError, match="unknown value"):
        config({"LOCAL_MODE": "vm"})


def test_boot_delay_is_a_go_duration() -> None:
    assert config({"LOCAL_BOOT_DELAY": "1500ms"}).boot_delay == 1.5
    assert config({"LOCAL_BOOT_DELAY": "2"}).boot_delay == 2.0
    with pytest.raises(ConfigError) as err:
        config({"LOCAL_BOOT_DELAY": "soon"})
    assert err.value.key == "LOCAL_BOOT_DELAY"


def test_agent_command_and_forwarder_args_are_shell_split() -> None:
    cfg = config(
        {
            "LOCAL_AGENT_COMMAND": "/usr/bin/kata-agent --config '/etc/agent config.toml'",
            "LOCAL_FORWARDER_EXTRA_ARGS": "-disable-tls",
        }
    )
    assert cfg.programs.agent == ("/usr/bin/kata-agent", "--config", "/etc/agent config.toml")
    assert cfg.forwarder_extra_args == ("-disable-tls",)
    with pytest.raises(ConfigError) as err:
        config({"LOCAL_AGENT_COMMAND": "kata-agent 'unterminated"})
    assert err.value.key == "LOCAL_AGENT_COMMAND"


def test_catalogue_entries_parse_with_optional_gpus() -> None:
    assert parse_catalogue("K", " a:1:512 , b:4:8192:2 ") == (
        InstanceTypeInfo("a", 1, 512, 0),
        InstanceTypeInfo("b", 4, 8192, 2),
    )


@pytest.mark.parametrize(
    ("raw", "bad"),
    [
        ("a:1", "a:1"),
        ("a:1:512,b:x:1", "b:x:1"),
        ("a:0:512", "a:0:512"),
        ("a:1:512:-1", "a:1:512:-1"),
        (":1:512", ":1:512"),
        ("a:1:512,a:2:1024", "a:2:1024"),
        ("a:1:2:3:4", "a:1:2:3:4"),
    ],
)
def test_a_bad_catalogue_entry_is_named_with_the_key(raw: str, bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        config({"LOCAL_INSTANCE_TYPES": raw})
    assert err.value.key == "LOCAL_INSTANCE_TYPES"
    assert repr(bad) in str(err.value)


def test_an_empty_catalogue_is_refused() -> None:
    with pytest.raises(ConfigError, match="empty"):
        parse_catalogue("LOCAL_INSTANCE_TYPES", " , ")


def test_the_default_instance_type_is_the_smallest_by_gpus_memory_vcpus() -> None:
    cfg = config({"LOCAL_INSTANCE_TYPES": "big:8:16384,gpu:1:256:1,tiny:4:256,tinier:2:256"})
    assert cfg.default_instance_type == "tinier"
    assert config({}).default_instance_type == "small"


@pytest.mark.parametrize(
    "raw", ["198.18.0.1/16", "2001:db8::/64", "198.18.0.0/31", "127.0.0.0/8", "not-a-net", "224.0.0.0/24"]
)
def test_a_bad_subnet_is_refused_naming_the_key(raw: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_subnet("LOCAL_VM_SUBNET", raw)
    assert err.value.key == "LOCAL_VM_SUBNET"


def test_a_single_block_subnet_is_enough() -> None:
    assert parse_subnet("LOCAL_VM_SUBNET", "198.18.7.4/30").num_addresses == 4
