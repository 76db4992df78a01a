"""LIBVIRT_* keys: Go defaults, validation naming the key, and the entry point."""

from __future__ import annotations

from pathlib import Path

import pytest
from caa_provider_libvirt import PLUGIN, LibvirtConfig, LibvirtProvider

from cloud_api_adaptor.errors import ConfigError
from cloud_api_adaptor.options import load, options_of
from cloud_api_adaptor.plugins import installed_providers, load_plugin
from cloud_api_adaptor.provider import ProviderContext, ProviderPlugin


def config_from(env: dict[str, str]) -> LibvirtConfig:
    return load(LibvirtConfig, env)


def test_defaults_are_the_go_versions() -> None:
    cfg = config_from({})
    assert cfg.uri == "qemu+ssh://root@192.168.122.1/system?no_verify=1"
    assert (cfg.pool, cfg.network, cfg.vol_name) == ("default", "default", "podvm-base.qcow2")
    assert cfg.launch_security == ""
    assert cfg.efi_firmware == "/usr/share/OVMF/OVMF_CODE_4M.fd"
    assert (cfg.vcpus, cfg.memory_mib, cfg.cpuset, cfg.root_disk_gib) == (2, 8192, "", 10)
    assert cfg.disable_cvm is True
    assert cfg.data_dir == "/var/lib/libvirt/images"
    assert (cfg.address_policy.attempts, cfg.address_policy.interval) == (20, 3.0)


def test_environment_values_are_parsed() -> None:
    cfg = config_from(
        {
            "LIBVIRT_URI": "qemu:///system",
            "LIBVIRT_POOL": "pods",
            "LIBVIRT_NET": "podnet",
            "LIBVIRT_VOL_NAME": "base.qcow2",
            "LIBVIRT_LAUNCH_SECURITY": "s390-pv",
            "LIBVIRT_EFI_FIRMWARE": "",
            "LIBVIRT_CPU": "4",
            "LIBVIRT_MEMORY": "2048",
            "LIBVIRT_CPUSET": "0-3,6",
            "LIBVIRT_ROOT_DISK_SIZE": "20",
            "DISABLECVM": "false",
            "LIBVIRT_ARCH": "s390x",
            "LIBVIRT_DOMAIN_TYPE": "kvm",
            "LIBVIRT_IP_ATTEMPTS": "5",
            "LIBVIRT_IP_INTERVAL": "250ms",
        }
    )
    assert (cfg.uri, cfg.pool, cfg.network, cfg.vol_name) == (
        "qemu:///system",
        "pods",
        "podnet",
        "base.qcow2",
    )
    assert (cfg.launch_security, cfg.efi_firmware) == ("s390-pv", "/usr/share/OVMF/OVMF_CODE_4M.fd")
    assert (cfg.vcpus, cfg.memory_mib, cfg.cpuset, cfg.root_disk_gib) == (4, 2048, "0-3,6", 20)
    assert (cfg.disable_cvm, cfg.arch, cfg.domain_type) == (False, "s390x", "kvm")
    assert (cfg.address_policy.attempts, cfg.address_policy.interval) == (5, 0.25)


def test_an_empty_firmware_flag_turns_efi_off() -> None:
    assert load(LibvirtConfig, {}, cli={"firmware": ""}).efi_firmware == ""  # the Go flag
    assert load(LibvirtConfig, {}, cli={"efi-firmware": ""}).efi_firmware == ""  # ours before


def test_the_firmware_flag_wins_over_its_older_spelling_and_the_environment() -> None:
    env = {"LIBVIRT_EFI_FIRMWARE": "/env/OVMF.fd"}
    assert load(LibvirtConfig, env).efi_firmware == "/env/OVMF.fd"
    assert load(LibvirtConfig, env, cli={"firmware": ""}).efi_firmware == ""
    assert load(LibvirtConfig, {}, cli={"efi-firmware": "/old/OVMF.fd"}).efi_firmware == "/old/OVMF.fd"
    both = {"firmware": "/new/OVMF.fd", "efi-firmware": "/old/OVMF.fd"}
    assert load(LibvirtConfig, {}, cli=both).efi_firmware == "/new/OVMF.fd"


def test_root_disk_size_zero_means_ten_gib() -> None:
    assert config_from({"LIBVIRT_ROOT_DISK_SIZE": "0"}).root_disk_gib == 10


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("LIBVIRT_CPUSET", "0-3;5"),
        ("LIBVIRT_CPUSET", "a"),
        ("LIBVIRT_CPU", "two"),
        ("LIBVIRT_CPU", "0"),
        ("LIBVIRT_MEMORY", "-1"),
        ("LIBVIRT_ROOT_DISK_SIZE", "-5"),
        ("LIBVIRT_LAUNCH_SECURITY", "tdx"),
        ("DISABLECVM", "maybe"),
        ("LIBVIRT_ARCH", "ppc64le"),
        ("LIBVIRT_DOMAIN_TYPE", "xen"),
        ("LIBVIRT_VOL_NAME", "../etc/passwd"),
        ("LIBVIRT_IP_ATTEMPTS", "0"),
        ("LIBVIRT_IP_INTERVAL", "soon"),
    ],
)
def test_invalid_values_name_their_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from({key: value})
    assert info.value.key == key


def test_options_are_declared_with_unique_keys() -> None:
    keys = [o.key for o in options_of(LibvirtConfig)]
    assert len(keys) == len(set(keys))
    assert {"LIBVIRT_URI", "LIBVIRT_POOL", "LIBVIRT_CPUSET", "DISABLECVM", "data-dir"} <= set(keys)


def test_the_entry_point_builds_a_libvirt_provider(tmp_path: Path) -> None:
    assert "libvirt" in installed_providers()
    plugin = load_plugin("libvirt")
    assert plugin is PLUGIN
    assert isinstance(plugin, ProviderPlugin)
    context = ProviderContext(node_name="n", cluster_id="c", state_dir=tmp_path, work_dir=tmp_path)
    provider = plugin.build(load(plugin.settings_class, {"LIBVIRT_URI": "test:///default"}), context)
    assert isinstance(provider, LibvirtProvider)
    assert provider.default_image == "podvm-base.qcow2"
    assert provider.max_name_length == 63
