"""A development stand-in for kata-agent: NOT the real agent, and it runs no containers.

It answers just enough of the agent's ttrpc API for the peer-pod plumbing to be
exercised end to end without a confidential VM image: the runtime's connect-time
health check (``grpc.Health/Check`` -> SERVING), ``grpc.Health/Version``,
``grpc.AgentService/GetGuestDetails``, ``CreateSandbox`` and ``DestroySandbox``
(logged, then answered with ``google.protobuf.Empty``).  Every other agent RPC is
UNIMPLEMENTED, which is what a client sees from a real agent built without it.

Run it as ``python -m cloud_api_adaptor.vm.devagent [--socket PATH]``.  The socket
defaults to ``KATA_AGENT_SERVER_ADDR`` (a ``unix://`` address, as kata-agent reads
it) or ``/run/kata-containers/agent.sock`` (where agent-protocol-forwarder looks).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from google.protobuf import empty_pb2

from cloud_api_adaptor import __version__
from cloud_api_adaptor._pb import agent_pb2, health_pb2
from cloud_api_adaptor.ttrpc import CallContext, Server, UnaryMethod

logger = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/run/kata-containers/agent.sock")
AGENT_VERSION = f"caa-devagent {__version__}"
MEMORY_BLOCK_SIZE = 128 << 20  # what x86 guests report; only used to answer GetGuestDetails


async def _check(request: health_pb2.CheckRequest, ctx: CallContext) -> health_pb2.HealthCheckResponse:
    return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


async def _version(request: health_pb2.CheckRequest, ctx: CallContext) -> health_pb2.VersionCheckResponse:
    return health_pb2.VersionCheckResponse(grpc_version="ttrpc", agent_version=AGENT_VERSION)


async def _guest_details(
    request: agent_pb2.GuestDetailsRequest, ctx: CallContext
) -> agent_pb2.GuestDetailsResponse:
    return agent_pb2.GuestDetailsResponse(
        mem_block_size_bytes=MEMORY_BLOCK_SIZE if request.mem_block_size else 0,
        agent_details=agent_pb2.AgentDetails(version=AGENT_VERSION, init_daemon=False),
        support_mem_hotplug_probe=False,
    )


async def _create_sandbox(request: agent_pb2.CreateSandboxRequest, ctx: CallContext) -> empty_pb2.Empty:
    logger.info(
        "CreateSandbox sandbox_id=%s hostname=%s dns=%s sandbox_pidns=%s guest_hook_path=%r",
        request.sandbox_id,
        request.hostname,
        list(request.dns),
        request.sandbox_pidns,
        request.guest_hook_path,
    )
    return empty_pb2.Empty()


async def _destroy_sandbox(request: agent_pb2.DestroySandboxRequest, ctx: CallContext) -> empty_pb2.Empty:
    logger.info("DestroySandbox")
    return empty_pb2.Empty()


def build_server() -> Server:
    """A ttrpc Server with the dev agent's services registered (not yet listening)."""
    server = Server()
    server.add_service(
        "grpc.Health",
        {
            "Check": UnaryMethod(health_pb2.CheckRequest, _check),
            "Version": UnaryMethod(health_pb2.CheckRequest, _version),
        },
    )
    server.add_service(
        "grpc.AgentService",
        {
            "GetGuestDetails": UnaryMethod(agent_pb2.GuestDetailsRequest, _guest_details),
            "CreateSandbox": UnaryMethod(agent_pb2.CreateSandboxRequest, _create_sandbox),
            "DestroySandbox": UnaryMethod(agent_pb2.DestroySandboxRequest, _destroy_sandbox),
        },
    )
    return server


async def run_devagent(path: Path, stop: asyncio.Event) -> None:
    """Serve on the unix socket ``path`` until ``stop`` is set; the socket is removed on exit."""
    async with build_server() as server:
        await server.start_unix(path)
        logger.info("devagent (%s) serving on %s", AGENT_VERSION, path)
        await stop.wait()
        logger.info("devagent stopping")


def socket_from_env(environ: Mapping[str, str]) -> Path:
    """The socket kata-agent would listen on: ``KATA_AGENT_SERVER_ADDR`` (unix only) or the default."""
    address = environ.get("KATA_AGENT_SERVER_ADDR", "")
    if not address:
        return DEFAULT_SOCKET
    if address.startswith("unix://"):
        address = address[len("unix://") :]
    elif "://" in address:
        raise ValueError(f"KATA_AGENT_SERVER_ADDR: only unix:// addresses are supported, got {address!r}")
    if not address:
        raise ValueError("KATA_AGENT_SERVER_ADDR: empty unix socket path")
    return Path(address)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cloud_api_adaptor.vm.devagent",
        description="Development stand-in for kata-agent (health, guest details, sandbox no-ops).",
    )
    parser.add_argument(
        "--socket",
        type=Path,
        help=f"unix socket to serve on (default: $KATA_AGENT_SERVER_ADDR or {DEFAULT_SOCKET})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        path = args.socket or socket_from_env(os.environ if environ is None else environ)
    except ValueError as exc:
        print(f"devagent: {exc}", file=sys.stderr)
        return 2

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await run_devagent(path, stop)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    try:
        asyncio.run(serve())
    except OSError as exc:
        print(f"devagent: cannot serve on {path}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
