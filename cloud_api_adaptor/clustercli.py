"""``cloud-api-adaptor webhook`` and ``cloud-api-adaptor controller``: the cluster-side programs.

They run as Deployments, not on the worker node, and never touch the daemon's
sandboxes: this module keeps them out of ``cli`` (whose imports are the
daemon's) and builds their settings, Kubernetes client and (for the
controller) the provider plugin, exactly as ``serve`` loads a provider.
``controller --check`` prints the controller's checks instead of running.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud_api_adaptor.errors import AdaptorError, ConfigError
from cloud_api_adaptor.options import Option, load, options_of
from cloud_api_adaptor.plugins import load_plugin

if TYPE_CHECKING:
    from lightkube import AsyncClient

    from cloud_api_adaptor.controller.settings import ControllerSettings
    from cloud_api_adaptor.provider import Provider
    from cloud_api_adaptor.webhook.settings import WebhookSettings

logger = logging.getLogger("cloud_api_adaptor")


def _parser(command: str, groups: Sequence[tuple[str, Sequence[Option[Any]]]]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"cloud-api-adaptor {command}", allow_abbrev=False)
    for title, options in groups:
        group = parser.add_argument_group(title)
        for option in options:
            env = f" [env {option.env}]" if option.env else ""
            default = "" if option.secret else f" (default {option.default_text!r})"
            group.add_argument(
                f"-{option.flag}",
                f"--{option.flag}",
                dest=f"opt:{option.flag}",
                metavar=option.kind.upper() if option.kind != "bool" else "BOOL",
                nargs="?" if option.kind == "bool" else None,
                const="true" if option.kind == "bool" else None,
                default=None,
                help=f"{option.help}{env}{default}",
            )
    if command == "controller":
        parser.add_argument("--check", action="store_true", help="print the controller's checks and exit")
    return parser


def _values(ns: argparse.Namespace) -> dict[str, str | None]:
    return {k.removeprefix("opt:"): v for k, v in vars(ns).items() if k.startswith("opt:")}


def kube_client(field_manager: str) -> AsyncClient:
    """In-cluster config, else $KUBECONFIG or ~/.kube/config (lightkube's own resolution)."""
    from lightkube import AsyncClient, KubeConfig
    from lightkube.core.exceptions import ConfigError as KubeConfigError

    try:
        return AsyncClient(KubeConfig.from_env(), field_manager=field_manager)
    except KubeConfigError as exc:
        raise ConfigError("KUBECONFIG", f"no Kubernetes API configuration: {exc}") from None


def build_provider(settings: ControllerSettings, provider_config: Any) -> Provider:
    from cloud_api_adaptor.fsutil import make_private_dirs
    from cloud_api_adaptor.provider import ProviderContext

    state = Path(settings.state_dir)
    context = ProviderContext(
        node_name="peerpod-controller",
        cluster_id=settings.cluster_id or "default",
        state_dir=state,
        work_dir=state / "providers" / settings.provider,
    )
    make_private_dirs(context.work_dir)
    return load_plugin(settings.provider).build(provider_config, context)


def main(command: str, argv: Sequence[str], env: Mapping[str, str]) -> int:
    from cloud_api_adaptor.logs import setup_logging

    try:
        if command == "webhook":
            from cloud_api_adaptor.webhook.settings import WebhookSettings

            ns = _parser(command, [("webhook options", options_of(WebhookSettings))]).parse_args(argv)
            webhook_settings = load(WebhookSettings, env, _values(ns))
            setup_logging(webhook_settings.log_level)
            return asyncio.run(_webhook(webhook_settings))
        from cloud_api_adaptor.controller.settings import ControllerSettings

        provider = _flag(argv, "provider") or env.get("CLOUD_PROVIDER", "")
        if not provider and {"-h", "--help", "-help"} & set(argv):
            _parser(command, [("controller options", options_of(ControllerSettings))]).print_help()
            return 0
        if not provider:
            raise ConfigError("CLOUD_PROVIDER", "the controller needs the provider of the pod VMs")
        plugin = load_plugin(provider)
        groups = [("controller options", options_of(ControllerSettings)),
                  (f"{provider} provider options", options_of(plugin.settings_class))]  # fmt: skip
        ns = _parser(command, groups).parse_args(argv)
        values = _values(ns)
        settings = load(ControllerSettings, env, values)
        provider_config = load(plugin.settings_class, env, values)
        setup_logging(settings.log_level)
        return asyncio.run(_controller(settings, provider_config, check_only=ns.check))
    except ConfigError as exc:
        print(f"cloud-api-adaptor {command}: {exc}", file=sys.stderr)
        return 2
    except AdaptorError as exc:
        print(f"cloud-api-adaptor {command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _flag(argv: Sequence[str], name: str) -> str:
    for i, arg in enumerate(argv):
        for flag in (f"-{name}", f"--{name}"):
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    return ""


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _webhook(settings: WebhookSettings) -> int:
    from cloud_api_adaptor.webhook.server import WebhookServer, run_webhook

    stop = _stop_on_signals()
    probe = WebhookServer(settings, None)
    client = None if probe.uses_cert_manager else kube_client("peer-pods-webhook")
    try:
        await run_webhook(settings, client, stop)
    finally:
        if client is not None:
            await client.close()
    return 0


async def _controller(settings: ControllerSettings, provider_config: Any, *, check_only: bool) -> int:
    from cloud_api_adaptor.controller.check import check, format_table
    from cloud_api_adaptor.controller.runner import run_controller

    client = kube_client("peerpod-controller")
    provider = build_provider(settings, provider_config)
    try:
        if check_only:
            results = await check(settings, client, provider)
            print(format_table(results))
            return 0 if all(r.ok for r in results) else 1
        await run_controller(settings, client, provider, _stop_on_signals())
        return 0
    finally:
        await provider.aclose()
        await client.close()
