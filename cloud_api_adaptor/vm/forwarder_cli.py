"""``agent-protocol-forwarder`` command line: Go-compatible flags, signals, exit codes.

The podvm image's unit runs
``agent-protocol-forwarder -pod-namespace /run/netns/podns -kata-agent-socket ... $TLS_OPTIONS $OPTIONS``,
so the single-dash flags of the Go binary are accepted as they are (``-flag v``,
``-flag=v``, and ``--flag`` too).  New here: ``-resume-window`` (how long a
resumable agent session outlives its link; 0 turns resumability off) and
SIGHUP, which restarts the TLS listener (every resumable link drops and is
resumed by the worker; agent connections stay).  This is the only place the environment is
read (``NOTIFY_SOCKET``, and ``CAA_EVENT_LOOP=asyncio`` to run without uvloop).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from cloud_api_adaptor.aio import EVENT_LOOP_ENV, run
from cloud_api_adaptor.apf import DEFAULT_APF_CONFIG_PATH, ApfConfig
from cloud_api_adaptor.errors import ConfigError
from cloud_api_adaptor.options import parse_bool, parse_duration
from cloud_api_adaptor.vm.forwarder import (
    DEFAULT_AGENT_SOCKET,
    DEFAULT_LISTEN,
    DEFAULT_POD_NAMESPACE,
    ForwarderSettings,
    NetworkSetup,
    run_forwarder,
)

logger = logging.getLogger("cloud_api_adaptor.vm.forwarder")
PROG = "agent-protocol-forwarder"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("cloud-api-adaptor")
    except Exception:  # pragma: no cover - not installed
        return "unknown"


def _bool(raw: str) -> bool:
    try:
        return parse_bool("flag", raw)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(f"invalid boolean value {raw!r}") from exc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, allow_abbrev=False, description="Relays the kata agent protocol.")

    def flag(name: str, **kwargs: object) -> None:
        p.add_argument(f"-{name}", f"--{name}", dest=name.replace("-", "_"), **kwargs)  # type: ignore[arg-type]

    def switch(name: str, help: str) -> None:
        flag(name, nargs="?", const=True, default=False, type=_bool, metavar="BOOL", help=help)

    switch("version", "Show version")
    flag("config", default=DEFAULT_APF_CONFIG_PATH, help="Path to a daemon config file")
    flag("listen", default=DEFAULT_LISTEN, help="Listen address")
    flag("kata-agent-socket", default=DEFAULT_AGENT_SOCKET, help="Path to a kata agent socket")
    flag(
        "pod-namespace",
        default=DEFAULT_POD_NAMESPACE,
        help="Path to the network namespace where the pod runs",
    )
    flag("host-interface", default="", help="Network interface name used as a tunnel endpoint")
    flag("ca-cert-file", default="", help="CA certificate file verifying clients")
    flag("cert-file", default="", help="Server certificate file")
    flag("cert-key", default="", help="Server key file")
    flag("tls-min-version", default="", help="VersionTLS12 or VersionTLS13 (overrides apf.json)")
    flag("tls-cipher-suites", default="", help="Comma-separated IANA suite names (overrides apf.json)")
    switch("tls-skip-verify", "Skip TLS verification")
    switch("disable-tls", "Disable TLS (must match the worker)")
    flag(
        "resume-window",
        default="10m",
        help="How long a resumable agent session waits for the worker after its link drops (0: off)",
    )
    return p


def settings_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> ForwarderSettings:
    env = os.environ if environ is None else environ
    return ForwarderSettings(
        config_path=Path(args.config),
        listen=args.listen,
        kata_agent_socket=Path(args.kata_agent_socket),
        pod_namespace=args.pod_namespace,
        host_interface=args.host_interface,
        ca_cert_file=args.ca_cert_file,
        cert_file=args.cert_file,
        cert_key=args.cert_key,
        skip_verify=args.tls_skip_verify,
        disable_tls=args.disable_tls,
        tls_min_version=args.tls_min_version.strip(),
        tls_cipher_suites=tuple(s.strip() for s in args.tls_cipher_suites.split(",") if s.strip()),
        notify_socket=env.get("NOTIFY_SOCKET", ""),
        event_loop=env.get(EVENT_LOOP_ENV, ""),
        resume_window=_duration("resume-window", args.resume_window),
    )


def _duration(flag: str, raw: str) -> float:
    try:
        value = parse_duration(flag, raw)
    except ConfigError as exc:
        raise ConfigError(flag, f"-{flag}: {exc.reason}") from exc
    if value < 0:
        raise ConfigError(flag, f"-{flag}: must not be negative")
    return value


def build_network_setup(settings: ForwarderSettings) -> NetworkSetup | None:
    """The pod network hook: the VM side of the VXLAN tunnel, in ``-pod-namespace``.

    ``run_forwarder`` calls it before listening, only when apf.json carries a
    ``pod-network`` object; netlink code is imported only then.
    """

    async def setup(apf: ApfConfig) -> None:
        from cloud_api_adaptor.podnetwork import forwarder_network_setup

        await forwarder_network_setup(apf, settings.pod_namespace)

    return setup


async def _serve(settings: ForwarderSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    logger.info("event loop: %s", type(loop).__module__.partition(".")[0])
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    restart = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, restart.set)
    try:
        await run_forwarder(settings, stop, network_setup=build_network_setup(settings), restart=restart)
    finally:
        for sig in (*signals, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.version:
        print(f"{PROG} version {_version()}")
        return 0
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s [forwarder] %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = settings_from_args(args)
        run(_serve(settings), event_loop=settings.event_loop)
    except ConfigError as exc:
        print(f"{PROG}: {exc.reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # pragma: no cover - the handler normally catches SIGINT
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
