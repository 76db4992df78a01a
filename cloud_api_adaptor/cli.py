"""Command line: ``cloud-api-adaptor serve|demo|plan|doctor|version``.

The only place that reads argv and the environment.  Every ``serve`` option
also reads the Go version's environment variable, so an existing
``peer-pods-cm`` works unchanged; ``cloud-api-adaptor <provider>`` works as the
Go entrypoint does.  Flags are accepted with one dash (Go style) or two.
``serve`` runs on uvloop when it is installed; ``CAA_EVENT_LOOP=asyncio`` selects
the stock asyncio loop instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from cloud_api_adaptor import __version__
from cloud_api_adaptor.aio import EVENT_LOOP_ENV, loop_factory, run
from cloud_api_adaptor.errors import AdaptorError, ConfigError
from cloud_api_adaptor.options import Option, load, options_of
from cloud_api_adaptor.plugins import installed_providers, load_plugin
from cloud_api_adaptor.settings import DAEMON_OPTIONS, Settings

logger = logging.getLogger("cloud_api_adaptor")

COMMANDS = ("serve", "demo", "plan", "doctor", "version", "help", "webhook", "controller")


def _add_options(parser: argparse.ArgumentParser, options: Sequence[Option[Any]], title: str) -> None:
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


def _cli_values(ns: argparse.Namespace) -> dict[str, str | None]:
    return {k.removeprefix("opt:"): v for k, v in vars(ns).items() if k.startswith("opt:")}


def _provider_name(argv: Sequence[str], env: Mapping[str, str], positional: str | None) -> str:
    for i, arg in enumerate(argv):
        for flag in ("-provider", "--provider"):
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    return positional or env.get("CLOUD_PROVIDER", "") or "local"


def _parser(command: str, provider_options: Sequence[Option[Any]], provider: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"cloud-api-adaptor {command}",
        allow_abbrev=False,
        description="Peer-pods cloud API adaptor: Kata remote hypervisor service over ttrpc.",
    )
    _add_options(parser, DAEMON_OPTIONS, "daemon options")
    _add_options(parser, provider_options, f"{provider} provider options")
    if command == "plan":
        parser.add_argument(
            "--annotation",
            "-annotation",
            action="append",
            default=[],
            metavar="K=V",
            help="a CreateVM annotation (repeatable)",
        )
        parser.add_argument("--id", default="plan0000000000", help="sandbox id to plan for")
    if command == "demo":
        parser.add_argument("--pods", type=int, default=3, help="sandboxes to run at once")
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ if env is None else env)
    command = "serve"
    positional_provider: str | None = None
    if argv and argv[0] in COMMANDS:
        command = argv.pop(0)
    elif argv and not argv[0].startswith("-"):
        positional_provider = argv.pop(0)  # Go style: cloud-api-adaptor <provider> [options]
    elif argv and argv[0] in {"-h", "--help", "-help"}:
        command = "help"
    if command in {"webhook", "controller"}:
        from cloud_api_adaptor.clustercli import main as cluster_main

        return cluster_main(command, argv, env)
    if command == "help":
        print(
            "usage: cloud-api-adaptor {serve,demo,plan,doctor,version,webhook,controller} [options]\n"
            "       cloud-api-adaptor <provider> [options]   (same as serve)\n\n"
            "  serve    run the daemon (Kata remote hypervisor service)\n"
            "  demo     run three pod sandboxes end to end on the local provider\n"
            "  plan     dry-run CreateVM for --annotation k=v: instance type, image, userdata size\n"
            "  doctor   check the provider configuration against the real cloud\n"
            "  webhook  the admission webhook (pod resources become VM-size annotations)\n"
            "  controller  the cluster controller (no VM outlives its pod or node; --check)\n"
            "  version  print the version\n\n"
            f"installed providers: {', '.join(installed_providers()) or 'none'}\n"
            "Run 'cloud-api-adaptor serve --help' for the options."
        )
        return 0
    if command == "version":
        print(f"cloud-api-adaptor {__version__}")
        return 0
    if command == "demo":
        # The demo prints its own table; the daemon's logs stay quiet unless asked for.
        env = {k: v for k, v in env.items() if k != "CLOUD_PROVIDER"}
        env.setdefault("LOG_LEVEL", "warning")
    provider = "local" if command == "demo" else _provider_name(argv, env, positional_provider)
    try:
        plugin = load_plugin(provider)
        parser = _parser(command, options_of(plugin.settings_class), provider)
        if argv and argv[0] in {"-help"}:
            argv[0] = "--help"
        ns = parser.parse_args(argv)
        values = _cli_values(ns)
        values["provider"] = provider
        settings = load(Settings, env, values)
        provider_config = load(plugin.settings_class, env, values)
        event_loop = env.get(EVENT_LOOP_ENV, "")
        loop_factory(event_loop)  # an unknown CAA_EVENT_LOOP is a configuration error
    except ConfigError as exc:
        print(f"cloud-api-adaptor: {exc}", file=sys.stderr)
        return 2
    _setup_logging(settings.log_level)
    try:
        if command == "serve":
            # uvloop unless CAA_EVENT_LOOP=asyncio: the ttrpc frame loop and the agent relays live in it.
            return run(_serve(settings, provider_config), event_loop=event_loop)
        if command == "plan":
            from cloud_api_adaptor.plan import plan

            result, ok = asyncio.run(plan(settings, provider_config, ns.id, _annotations(ns.annotation)))
            print(json.dumps(result, indent=2))
            return 0 if ok else 1
        if command == "doctor":
            from cloud_api_adaptor.doctor import doctor

            return asyncio.run(doctor(settings, provider_config))
        if command == "demo":
            from cloud_api_adaptor.demo import run_demo

            return asyncio.run(run_demo(provider_config, env, pods=ns.pods))
    except AdaptorError as exc:
        print(f"cloud-api-adaptor: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


def _annotations(pairs: Sequence[str]) -> dict[str, str]:
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError("--annotation", f"expected K=V, got {pair!r}")
        result[key] = value
    return result


async def _serve(settings: Settings, provider_config: Any) -> int:
    from cloud_api_adaptor.daemon import install_signal_handlers, serve

    _raise_fd_limit()
    logger.info("event loop: %s", type(asyncio.get_running_loop()).__module__.partition(".")[0])
    stop = asyncio.Event()
    install_signal_handlers(stop)
    await serve(settings, provider_config, stop)
    return 0


def _raise_fd_limit() -> None:
    """Every sandbox holds a listening socket and relays: lift the soft fd limit to the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _setup_logging(level: str) -> None:
    from cloud_api_adaptor.logs import setup_logging

    setup_logging(level)
