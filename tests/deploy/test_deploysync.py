"""`make deploy-sync`: one source of truth for configuration keys, and the drift check."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloud_api_adaptor.options import Option, options_of, settings, text
from cloud_api_adaptor.settings import DAEMON_OPTIONS
from tools import deploysync
from tools.deploysync import (
    CONFIG_DOC_PATH,
    DEPLOY_PROVIDERS,
    MANAGED_KEYS,
    VALUES_PATH,
    DeploySyncError,
    ProviderKeys,
    provider_keys,
)
from tools.provider_keys import PROVIDER_SETTINGS

from .conftest import CHART, OVERLAYS, REPO


@settings
class _FakeAws:
    imageid: str = text("imageid", "PODVM_AMI_ID", "Pod VM AMI.", default="", required=True)
    instance_type: str = text("instance-type", "PODVM_INSTANCE_TYPE", "Default type.", default="m6a.large")
    access_key: str = text("access-key", "AWS_ACCESS_KEY_ID", "Access key.", default="", secret=True)
    profile: str = text("aws-profile", None, "Profile (flag only).", default="")


FAKE_AWS = options_of(_FakeAws)
PROVIDER_OPTIONS = {name: options_of(cls) for name, cls in PROVIDER_SETTINGS.items()}


def _fake_loader(installed: dict[str, Sequence[Option[Any]]]) -> deploysync.PluginLoader:
    def load(name: str) -> Sequence[Option[Any]] | None:
        return installed.get(name)

    return load


def _loader() -> deploysync.PluginLoader:
    """aws and libvirt as fakes; providers whose distribution exists (gcp, ...) as installed."""
    fakes: dict[str, Sequence[Option[Any]]] = {"aws": FAKE_AWS, "libvirt": ()}

    def load(name: str) -> Sequence[Option[Any]] | None:
        return fakes[name] if name in fakes else deploysync.installed_plugin_options(name)

    return load


def _providers() -> list[ProviderKeys]:
    load = _loader()
    return [provider_keys(name, load) for name in DEPLOY_PROVIDERS]


# ----------------------------------------------------------------------------- where keys come from


def test_installed_plugin_options_win_over_the_static_list() -> None:
    keys = provider_keys("azure", _fake_loader({"azure": FAKE_AWS}))
    assert (keys.options, keys.source) == (FAKE_AWS, "plugin")


def test_static_list_stands_in_for_providers_not_written_yet() -> None:
    if not PROVIDER_OPTIONS:
        pytest.skip("every provider has its distribution")
    name = sorted(PROVIDER_OPTIONS)[0]
    keys = provider_keys(name, _fake_loader({}))
    assert (keys.options, keys.source) == (PROVIDER_OPTIONS[name], "static")


def test_a_provider_in_neither_place_fails_loudly() -> None:
    with pytest.raises(DeploySyncError, match="'aws': no installed plugin"):
        provider_keys("aws", _fake_loader({}))


def test_installed_core_plugins_are_read_through_the_entry_points() -> None:
    options = deploysync.installed_plugin_options("fake")
    assert options is not None
    assert deploysync.installed_plugin_options("no-such-provider") is None


def test_static_keys_exist_only_for_providers_without_a_distribution() -> None:
    for name in PROVIDER_OPTIONS:
        assert not (REPO / "providers" / name / "pyproject.toml").exists(), (
            f"providers/{name} exists: delete its stand-in settings from tools/provider_keys.py"
        )


@pytest.mark.parametrize("name", sorted(PROVIDER_OPTIONS))
def test_static_keys_are_unique_and_do_not_clash_with_daemon_flags(name: str) -> None:
    options = PROVIDER_OPTIONS[name]
    envs = [o.env for o in options if o.env]
    assert len(envs) == len(set(envs))
    flags = [o.flag for o in (*DAEMON_OPTIONS, *options)]
    assert len(flags) == len(set(flags))


def test_static_secret_keys_are_the_go_versions_peer_pods_secret_keys() -> None:
    secrets = {name: {o.env for o in options if o.secret} for name, options in PROVIDER_OPTIONS.items()}
    expected = {
        "azure": {"AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID"},
    }
    assert secrets == {name: keys for name, keys in expected.items() if name in PROVIDER_OPTIONS}


def test_azure_keys_follow_the_go_version() -> None:
    """The azure distribution's keys: Go's defaults, and Go's peer-pods-secret keys as secrets."""
    options = deploysync.installed_plugin_options("azure")
    assert options is not None

    def default(provider: str, key: str) -> str:
        return next(o.default_text for o in options if o.env == key)

    assert {o.env for o in options if o.secret} == {
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_TENANT_ID",
    }

    assert default("azure", "AZURE_INSTANCE_SIZE") == "Standard_DC2as_v5"
    assert default("azure", "DISABLECVM") == "false"


# ----------------------------------------------------------------------------- rendering


def _values(providers: list[ProviderKeys]) -> dict[str, Any]:
    current = (REPO / VALUES_PATH).read_text()
    spliced = deploysync.splice_values(current, deploysync.render_values_section(DAEMON_OPTIONS, providers))
    values = yaml.safe_load(spliced)
    assert isinstance(values, dict)
    return values


def test_values_offer_every_key_once_in_its_place_with_empty_defaults() -> None:
    values = _values(_providers())

    daemon_keys = {o.env for o in DAEMON_OPTIONS if o.env and o.env not in MANAGED_KEYS}
    assert set(values["config"]) == daemon_keys
    assert values["providerConfigs"]["aws"] == {"PODVM_AMI_ID": "", "PODVM_INSTANCE_TYPE": ""}
    assert values["providerSecrets"]["aws"] == {"AWS_ACCESS_KEY_ID": ""}
    assert values["providerConfigs"]["libvirt"] == {}
    azure = {o.env for o in deploysync.installed_plugin_options("azure") or () if o.env and not o.secret}
    assert set(values["providerConfigs"]["azure"]) == azure
    # The hand-written part survives the splice.
    assert values["secrets"]["mode"] == "create"


def test_keys_the_daemonset_sets_itself_are_not_offered() -> None:
    values = _values(_providers())
    offered = set(values["config"])
    for section in ("providerConfigs", "providerSecrets"):
        for keys in values[section].values():
            offered |= set(keys)
    assert not offered & set(MANAGED_KEYS)


def test_splice_needs_exactly_one_pair_of_markers() -> None:
    with pytest.raises(DeploySyncError, match="expected one"):
        deploysync.splice_values("provider: aws\n", "x\n")


def test_env_files_make_required_keys_placeholders_and_comment_out_the_rest() -> None:
    aws = provider_keys("aws", _fake_loader({"aws": FAKE_AWS}))
    cm, secret = deploysync.render_env_files(DAEMON_OPTIONS, aws)

    active = [line for line in cm.splitlines() if line and not line.startswith("#")]
    assert active == ["CLOUD_PROVIDER=aws", "PODVM_AMI_ID="]
    assert "# PODVM_INSTANCE_TYPE=m6a.large" in cm.splitlines()
    assert "# VXLAN_PORT=4789" in cm.splitlines()
    assert "# AWS_ACCESS_KEY_ID=" in secret.splitlines()
    assert not [line for line in secret.splitlines() if line and not line.startswith("#")]
    assert "aws-profile" not in cm  # flag-only options cannot live in a ConfigMap


def test_configuration_reference_has_a_row_per_key_and_says_where_it_lives() -> None:
    doc = deploysync.render_configuration_doc(DAEMON_OPTIONS, _providers())

    for option in (*DAEMON_OPTIONS, *FAKE_AWS):
        assert f"`-{option.flag}`" in doc
    rows = {line.split("|")[1].strip(): line for line in doc.splitlines() if line.startswith("| `")}
    assert "peer-pods-secret" in rows["`AWS_ACCESS_KEY_ID`"]
    assert "**required**" in rows["`PODVM_AMI_ID`"]
    assert "downward API" in rows["`NODE_NAME`"]
    assert "## Provider `gcp`" in doc


def test_required_keys_template_lists_non_secret_required_keys() -> None:
    tpl = deploysync.render_generated_tpl(DAEMON_OPTIONS, _providers())
    assert '"aws": ["PODVM_AMI_ID"]' in tpl
    assert '"libvirt": []' in tpl


# ----------------------------------------------------------------------------- drift


def test_generated_files_match_the_option_definitions() -> None:
    """Fails when an option changed and `make deploy-sync` was not run (or a generated file was edited)."""
    providers = [provider_keys(name) for name in DEPLOY_PROVIDERS]
    files = deploysync.render_all(REPO, DAEMON_OPTIONS, providers)
    assert deploysync.drifted(REPO, files) == [], "run `make deploy-sync` and commit the result"


def _scratch_repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / VALUES_PATH).parent.mkdir(parents=True)
    shutil.copy(CHART / "values.yaml", root / VALUES_PATH)
    return root


def test_main_writes_the_files_and_check_then_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _scratch_repo(tmp_path)
    load = _loader()

    assert deploysync.main(["--check", "--root", str(root)], load) == 1
    assert deploysync.main(["--root", str(root)], load) == 0
    assert deploysync.main(["--check", "--root", str(root)], load) == 0

    assert (
        (root / OVERLAYS.relative_to(REPO) / "gcp/peer-pods-cm.env").read_text().startswith("# peer-pods-cm")
    )
    assert "## Provider `aws`" in (root / CONFIG_DOC_PATH).read_text()
    capsys.readouterr()
    (root / CONFIG_DOC_PATH).write_text("edited by hand\n")
    assert deploysync.main(["--check", "--root", str(root)], load) == 1
    assert "docs/configuration.md is out of date" in capsys.readouterr().err


def test_main_reports_an_unknown_provider_instead_of_skipping_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _scratch_repo(tmp_path)
    assert deploysync.main(["--root", str(root)], _fake_loader({})) == 2
    assert "'aws': no installed plugin" in capsys.readouterr().err
    assert not (root / CONFIG_DOC_PATH).exists()


def test_install_guide_names_every_required_key() -> None:
    guide = (REPO / "docs/install.md").read_text()
    for name in DEPLOY_PROVIDERS:
        for option in provider_keys(name).options:
            if option.required and not option.secret:
                assert f"providerConfigs.{name}.{option.env}=" in guide, option.env
