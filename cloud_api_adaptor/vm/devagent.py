"""A development stand-in for kata-agent: NOT the real agent, and it runs no containers.

It answers what the Kata shim sends over its one agent connection for a pod
with one container, so the peer-pod plumbing (and a real shim, with ``crictl
runp``/``stopp``/``rmp``) can be exercised end to end without a confidential VM
image: ``grpc.Health/Check`` and ``Version``; ``CreateSandbox``,
``GetGuestDetails``, ``CopyFile`` (written below ``--root``), the network calls
(``UpdateInterface``/``UpdateRoutes``/``ListInterfaces``/``ListRoutes``, remembered
and echoed), ``CreateContainer``, ``StartContainer``, the long-polls
``WaitProcess`` and ``GetOOMEvent`` (open until the container is signalled or the
sandbox destroyed), ``SignalProcess``, ``RemoveContainer``,
``RemoveStaleVirtiofsShareMounts`` and ``DestroySandbox``.  What each does is in
``cloud_api_adaptor.vm.devagent_pod``.  Every other agent RPC is UNIMPLEMENTED,
which is what a client sees from a real agent built without it.

Tests can number their requests (ttrpc metadata ``devagent-seq: <stream>/<n>``):
a duplicate is refused at once with DATA_LOSS, a gap makes ``DestroySandbox``
fail with DATA_LOSS, so bytes lost or replayed between the shim and the agent
show up as errors the client sees.

Run it as ``python -m cloud_api_adaptor.vm.devagent [--socket PATH] [--root DIR]``.
The socket defaults to ``KATA_AGENT_SERVER_ADDR`` (a ``unix://`` address, as
kata-agent reads it) or ``/run/kata-containers/agent.sock`` (where
agent-protocol-forwarder looks).
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
from typing import Any

from google.protobuf import empty_pb2
from google.protobuf.message import Message

from cloud_api_adaptor import __version__
from cloud_api_adaptor._pb import agent_pb2, health_pb2
from cloud_api_adaptor.ttrpc import CallContext, Server, UnaryMethod
from cloud_api_adaptor.vm.devagent_pod import Pod

logger = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/run/kata-containers/agent.sock")
AGENT_VERSION = f"caa-devagent {__version__}"
MEMORY_BLOCK_SIZE = 128 << 20  # what x86 guests report; only used to answer GetGuestDetails


def build_server(pod: Pod | None = None) -> Server:
    """A ttrpc Server with the dev agent's services registered (not yet listening)."""
    pod = pod if pod is not None else Pod(Path("/"))
    server = Server()
    server.add_service("grpc.Health", _numbered(pod, _health_methods()))
    server.add_service("grpc.AgentService", _numbered(pod, _agent_methods(pod)))
    return server


def _numbered(pod: Pod, methods: dict[str, UnaryMethod[Any]]) -> dict[str, UnaryMethod[Any]]:
    """Every handler first checks the request's sequence number (see ``devagent_pod``)."""

    def wrap(method: UnaryMethod[Any]) -> UnaryMethod[Any]:
        handler = method.handler

        async def checked(request: Any, ctx: CallContext) -> Message:
            pod.sequence.observe(ctx.metadata)
            return await handler(request, ctx)

        return UnaryMethod(method.request_type, checked)

    return {name: wrap(method) for name, method in methods.items()}


def _health_methods() -> dict[str, UnaryMethod[Any]]:
    async def check(request: health_pb2.CheckRequest, ctx: CallContext) -> Message:
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def version(request: health_pb2.CheckRequest, ctx: CallContext) -> Message:
        return health_pb2.VersionCheckResponse(grpc_version="ttrpc", agent_version=AGENT_VERSION)

    return {
        "Check": UnaryMethod(health_pb2.CheckRequest, check),
        "Version": UnaryMethod(health_pb2.CheckRequest, version),
    }


def _agent_methods(pod: Pod) -> dict[str, UnaryMethod[Any]]:
    empty = empty_pb2.Empty

    async def guest_details(request: agent_pb2.GuestDetailsRequest, ctx: CallContext) -> Message:
        return agent_pb2.GuestDetailsResponse(
            mem_block_size_bytes=MEMORY_BLOCK_SIZE if request.mem_block_size else 0,
            agent_details=agent_pb2.AgentDetails(version=AGENT_VERSION, init_daemon=False),
            support_mem_hotplug_probe=False,
        )

    async def create_sandbox(request: agent_pb2.CreateSandboxRequest, ctx: CallContext) -> Message:
        logger.info(
            "CreateSandbox sandbox_id=%s hostname=%s dns=%s sandbox_pidns=%s guest_hook_path=%r",
            request.sandbox_id,
            request.hostname,
            list(request.dns),
            request.sandbox_pidns,
            request.guest_hook_path,
        )
        await asyncio.to_thread(pod.create_sandbox, request.sandbox_id)
        return empty()

    async def destroy_sandbox(request: agent_pb2.DestroySandboxRequest, ctx: CallContext) -> Message:
        logger.info("DestroySandbox (requests received: %s)", pod.sequence.received())
        pod.destroy_sandbox()
        return empty()

    async def create_container(request: agent_pb2.CreateContainerRequest, ctx: CallContext) -> Message:
        logger.info("CreateContainer %s exec_id=%s", request.container_id, request.exec_id)
        pod.create_container(request.container_id, request.exec_id)
        return empty()

    async def start_container(request: agent_pb2.StartContainerRequest, ctx: CallContext) -> Message:
        pod.start_container(request.container_id)
        return empty()

    async def signal_process(request: agent_pb2.SignalProcessRequest, ctx: CallContext) -> Message:
        logger.info("SignalProcess %s/%s signal %d", request.container_id, request.exec_id, request.signal)
        pod.signal_process(request.container_id, request.exec_id, request.signal)
        return empty()

    async def wait_process(request: agent_pb2.WaitProcessRequest, ctx: CallContext) -> Message:
        status = await pod.wait_process(request.container_id, request.exec_id)
        return agent_pb2.WaitProcessResponse(status=status)

    async def remove_container(request: agent_pb2.RemoveContainerRequest, ctx: CallContext) -> Message:
        pod.remove_container(request.container_id)
        return empty()

    async def remove_stale_mounts(
        request: agent_pb2.RemoveStaleVirtiofsShareMountsRequest, ctx: CallContext
    ) -> Message:
        return empty()  # no virtio-fs share in a remote-hypervisor pod

    async def update_interface(request: agent_pb2.UpdateInterfaceRequest, ctx: CallContext) -> Message:
        pod.interfaces[request.interface.name] = request.interface.SerializeToString()
        return request.interface

    async def update_routes(request: agent_pb2.UpdateRoutesRequest, ctx: CallContext) -> Message:
        pod.routes = request.routes.SerializeToString()
        return request.routes

    async def list_interfaces(request: agent_pb2.ListInterfacesRequest, ctx: CallContext) -> Message:
        found = [agent_pb2.Interface.FromString(raw) for raw in pod.interfaces.values()]
        return agent_pb2.Interfaces(Interfaces=found)

    async def list_routes(request: agent_pb2.ListRoutesRequest, ctx: CallContext) -> Message:
        return agent_pb2.Routes.FromString(pod.routes)

    async def copy_file(request: agent_pb2.CopyFileRequest, ctx: CallContext) -> Message:
        await asyncio.to_thread(
            pod.copy_file,
            request.path,
            request.file_size,
            request.file_mode,
            request.dir_mode,
            request.offset,
            request.data,
        )
        return empty()

    async def oom_event(request: agent_pb2.GetOOMEventRequest, ctx: CallContext) -> Message:
        return agent_pb2.OOMEvent(container_id=await pod.next_oom_event())

    a = agent_pb2
    return {
        "GetGuestDetails": UnaryMethod(a.GuestDetailsRequest, guest_details),
        "CreateSandbox": UnaryMethod(a.CreateSandboxRequest, create_sandbox),
        "DestroySandbox": UnaryMethod(a.DestroySandboxRequest, destroy_sandbox),
        "CreateContainer": UnaryMethod(a.CreateContainerRequest, create_container),
        "StartContainer": UnaryMethod(a.StartContainerRequest, start_container),
        "SignalProcess": UnaryMethod(a.SignalProcessRequest, signal_process),
        "WaitProcess": UnaryMethod(a.WaitProcessRequest, wait_process),
        "RemoveContainer": UnaryMethod(a.RemoveContainerRequest, remove_container),
        "RemoveStaleVirtiofsShareMounts": UnaryMethod(
            a.RemoveStaleVirtiofsShareMountsRequest, remove_stale_mounts
        ),
        "UpdateInterface": UnaryMethod(a.UpdateInterfaceRequest, update_interface),
        "UpdateRoutes": UnaryMethod(a.UpdateRoutesRequest, update_routes),
        "ListInterfaces": UnaryMethod(a.ListInterfacesRequest, list_interfaces),
        "ListRoutes": UnaryMethod(a.ListRoutesRequest, list_routes),
        "CopyFile": UnaryMethod(a.CopyFileRequest, copy_file),
        "GetOOMEvent": UnaryMethod(a.GetOOMEventRequest, oom_event),
    }


async def run_devagent(
    path: Path, stop: asyncio.Event, root: Path = Path("/"), *, like_kata_agent: bool = False
) -> None:
    """Serve on the unix socket ``path`` until ``stop`` is set; the socket is removed on exit.

    ``root`` is the guest's filesystem as the agent sees it: ``/`` in a VM (or a
    local VM with its own mounts), a per-VM directory for a loopback local VM.
    ``like_kata_agent``: CreateSandbox removes the agent's socket, as kata-agent
    does when it empties /run/kata-containers (open connections keep working).
    """
    async with build_server(Pod(root, path if like_kata_agent else None)) as server:
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
        description="Development stand-in for kata-agent: answers a one-container pod, runs nothing.",
    )
    parser.add_argument(
        "--socket",
        type=Path,
        help=f"unix socket to serve on (default: $KATA_AGENT_SERVER_ADDR or {DEFAULT_SOCKET})",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        help="the guest filesystem the agent writes to (CopyFile, /run/sandbox-ns); default /",
    )
    parser.add_argument(
        "--remove-socket-at-create-sandbox",
        action="store_true",
        help="like kata-agent: CreateSandbox removes the agent's socket (no second connection can open)",
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
            await run_devagent(path, stop, args.root, like_kata_agent=args.remove_socket_at_create_sandbox)
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
