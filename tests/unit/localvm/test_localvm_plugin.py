"""Building the local provider through its entry point, and the work-directory limits it checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_api_adaptor.errors import ConfigError
from cloud_api_adaptor.localvm.provider import LocalProvider
from cloud_api_adaptor.options import load
from cloud_api_adaptor.plugins import load_plugin
from cloud_api_adaptor.provider import ProviderContext


def context(work_dir: Path) -> ProviderContext:
    return ProviderContext(node_name="n", cluster_id="c", state_dir=work_dir.parent, work_dir=work_dir)


def test_the_entry_point_builds_a_local_provider_with_its_catalogue_as_the_allowlist(short_tmp: Path) -> None:
    plugin = load_plugin("local")
    values = load(
        plugin.settings_class, {"LOCAL_MODE": "loopback", "LOCAL_INSTANCE_TYPES": "b:2:2048,a:1:1024"}
    )
    provider = plugin.build(values, context(short_tmp / "w"))
    assert isinstance(provider, LocalProvider)
    assert provider.default_instance_type == "a"
    assert provider.instance_types == ("b", "a")
    assert provider.userdata_limit is None


def test_a_work_dir_too_deep_for_loopback_sockets_is_refused_at_build(tmp_path: Path) -> None:
    plugin = load_plugin("local")
    deep = tmp_path / ("d" * 60) / "w"
    with pytest.raises(ConfigError) as err:
        plugin.build(load(plugin.settings_class, {"LOCAL_MODE": "loopback"}), context(deep))
    assert err.value.key == "STATE_DIR" and "107" in str(err.value)


@pytest.mark.root
def test_a_netns_work_dir_under_a_path_the_vm_mounts_over_is_refused_at_build() -> None:
    plugin = load_plugin("local")
    with pytest.raises(ConfigError) as err:
        plugin.build(
            load(plugin.settings_class, {"LOCAL_MODE": "netns"}), context(Path("/run/peerpod/state/w"))
        )
    assert err.value.key == "STATE_DIR" and "/run/peerpod" in str(err.value)


def test_instance_ids_are_stable_per_token_and_distinct_per_work_dir(short_tmp: Path) -> None:
    plugin = load_plugin("local")
    values = load(plugin.settings_class, {"LOCAL_MODE": "loopback"})
    one = plugin.build(values, context(short_tmp / "one"))
    two = plugin.build(values, context(short_tmp / "two"))
    assert isinstance(one, LocalProvider) and isinstance(two, LocalProvider)
    assert one.instance_id("tok") == one.instance_id("tok") != one.instance_id("tok2")
    assert one.instance_id("tok") != two.instance_id("tok")
    vm_id = one.instance_id("tok")
    assert len(LocalProvider.netns_name(vm_id)) <= 15  # also the host-side link name
