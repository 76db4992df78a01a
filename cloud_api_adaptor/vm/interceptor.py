"""The forwarder's request interception, sans-I/O: client bytes in, bytes for the agent out.

Two calls must change on their way to the kata-agent:

- ``grpc.AgentService/CreateSandbox``: ``dns`` is stripped, so the agent does not
  overwrite the VM's ``/etc/resolv.conf`` with the worker pod's resolvers;
- ``grpc.AgentService/CreateContainer``: a Linux ``network`` namespace pointing at
  the pod namespace (``/run/netns/podns``) replaces any network namespace in the
  OCI spec, so containers join the tunnelled pod network.

Everything else passes byte-identical, and cheaply: the rewriter walks frame
headers over the incoming chunk and forwards slices of it; only a Request whose
service/method prefix names an intercepted call is collected and decoded.  The
prefix test relies on Go and Rust protobuf writing fields in number order
(service = 1, method = 2); a Request that does not start with field 1 is
decoded in full, so out-of-order encoders are still handled correctly.

Oversized frames are streamed through untouched (the agent answers them), and a
frame that does not decode is forwarded as it came: the interceptor never
breaks the connection.  ``ttrpc.framing.FrameDecoder`` is not used because it
discards oversized frames, and because buffering every frame would copy every
byte of every call.

The messages come from ``cloud_api_adaptor._pb.agent_pb2``, a field-number-correct
subset of kata's agent.proto; protobuf keeps unknown fields through a decode and
re-encode, so nothing the real agent needs is lost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from cloud_api_adaptor._pb import agent_pb2, ttrpc_pb2
from cloud_api_adaptor.ttrpc.framing import HEADER, HEADER_LENGTH, MAX_MESSAGE_LENGTH, MessageType

logger = logging.getLogger(__name__)

AGENT_SERVICE = "grpc.AgentService"
_INTERCEPTED = frozenset({"CreateSandbox", "CreateContainer"})
_INTERCEPTED_BYTES = frozenset(m.encode() for m in _INTERCEPTED)
# Field 1 (service), length 17, "grpc.AgentService", then the tag of field 2 (method).
_AGENT_PREFIX = b"\x0a\x11grpc.AgentService\x12"
# Enough of the body to see the prefix, the method length and the longest intercepted name.
_PEEK = len(_AGENT_PREFIX) + 1 + max(len(m) for m in _INTERCEPTED)


@dataclass(frozen=True)
class Interceptor:
    """The per-call rewrites; pure functions of the request payload."""

    pod_namespace: str = "/run/netns/podns"

    def rewrite(self, method: str, payload: bytes) -> bytes | None:
        """The new payload for an AgentService call, or None to leave it unchanged."""
        if method == "CreateSandbox":
            sandbox = agent_pb2.CreateSandboxRequest.FromString(payload)
            if not sandbox.dns:
                return None
            logger.info("CreateSandbox: removing %d DNS entries from the request", len(sandbox.dns))
            del sandbox.dns[:]
            return sandbox.SerializeToString()
        if method == "CreateContainer":
            container = agent_pb2.CreateContainerRequest.FromString(payload)
            if not container.HasField("OCI"):
                return None
            namespaces = container.OCI.Linux.Namespaces
            for i in reversed(range(len(namespaces))):
                if namespaces[i].Type == "network":
                    del namespaces[i]
            namespaces.add(Type="network", Path=self.pod_namespace)
            logger.info(
                "CreateContainer %s: network namespace %s", container.container_id, self.pod_namespace
            )
            return container.SerializeToString()
        return None


def _is_candidate(body: bytes | bytearray | memoryview) -> bool | None:
    """True: an intercepted AgentService call; False: certainly not; None: decode to know."""
    if bytes(body[: len(_AGENT_PREFIX)]) == _AGENT_PREFIX:
        pos = len(_AGENT_PREFIX)
        if len(body) <= pos:
            return False
        n = body[pos]
        return bytes(body[pos + 1 : pos + 1 + n]) in _INTERCEPTED_BYTES
    if len(body) and body[0] == 0x0A:
        return False  # service comes first and is not grpc.AgentService
    return None


class FrameRewriter:
    """Per-connection state for the client-to-agent direction; ``feed`` is the whole API.

    States: reading a header (``_header``), streaming a body through
    (``_passthrough`` bytes left), or collecting a Request body (``_collect``),
    first just far enough to peek at its service/method, then, for an
    intercepted call, in full.
    """

    __slots__ = (
        "_body",
        "_collect",
        "_decided",
        "_header",
        "_interceptor",
        "_passthrough",
        "frames_rewritten",
    )

    def __init__(self, interceptor: Interceptor) -> None:
        self._interceptor = interceptor
        self._header = bytearray()
        self._passthrough = 0
        self._collect: tuple[int, int, int, int] | None = None
        self._decided = False
        self._body = bytearray()
        self.frames_rewritten = 0

    def feed(self, data: bytes | memoryview) -> bytes | memoryview:
        """Bytes to forward for ``data``; usually ``data`` itself, without a copy.

        ``data`` may be a view of the relay's read buffer: everything kept across
        calls (a partial header, a collected body) is copied.
        """
        if not self._header and not self._passthrough and self._collect is None and _all_plain(data):
            return data
        out = self._slow(data)
        # One piece (e.g. the rest of a large frame streaming through) goes out as it is.
        return out[0] if len(out) == 1 else b"".join(out)

    def _slow(self, data: bytes | memoryview) -> list[bytes | memoryview]:
        out: list[bytes | memoryview] = []
        mv = memoryview(data)
        pos, end = 0, len(data)
        while pos < end:
            if self._passthrough:
                n = min(self._passthrough, end - pos)
                out.append(mv[pos : pos + n])
                pos += n
                self._passthrough -= n
                continue
            if self._collect is not None:
                length = self._collect[0]
                n = min(length - len(self._body), end - pos)
                self._body += mv[pos : pos + n]
                pos += n
                if not self._decided:
                    if len(self._body) < min(length, _PEEK):
                        continue
                    if _is_candidate(self._body[:_PEEK]) is False:
                        out.append(HEADER.pack(*self._collect) + bytes(self._body))
                        self._passthrough = length - len(self._body)
                        self._collect = None
                        self._body = bytearray()
                        continue
                    self._decided = True
                if len(self._body) == length:
                    out.append(self._finish())
                continue
            take = min(HEADER_LENGTH - len(self._header), end - pos)
            self._header += mv[pos : pos + take]
            pos += take
            if len(self._header) < HEADER_LENGTH:
                break
            length, sid, type_, flags = HEADER.unpack(self._header)
            self._header.clear()
            if type_ != MessageType.REQUEST or length > MAX_MESSAGE_LENGTH:
                out.append(HEADER.pack(length, sid, type_, flags))
                self._passthrough = length
                continue
            self._collect = (length, sid, type_, flags)
            self._decided = False
            self._body = bytearray()
            if length == 0:
                out.append(self._finish())
        return out

    def _finish(self) -> bytes:
        assert self._collect is not None
        length, sid, type_, flags = self._collect
        body = bytes(self._body)
        self._collect = None
        self._body = bytearray()
        new = self._rewrite(body)
        if new is None:
            return HEADER.pack(length, sid, type_, flags) + body
        self.frames_rewritten += 1
        return HEADER.pack(len(new), sid, type_, flags) + new

    def _rewrite(self, body: bytes) -> bytes | None:
        try:
            req = ttrpc_pb2.Request.FromString(body)
            if req.service != AGENT_SERVICE or req.method not in _INTERCEPTED:
                return None
            payload = self._interceptor.rewrite(req.method, req.payload)
            if payload is None:
                return None
            req.payload = payload
            new = req.SerializeToString()
        except DecodeError as exc:
            logger.warning("forwarding an undecodable request frame unchanged: %s", exc)
            return None
        if len(new) > MAX_MESSAGE_LENGTH:
            logger.warning(
                "rewritten %s request would exceed the frame limit; forwarding it unchanged", req.method
            )
            return None
        return new


def _all_plain(data: bytes | memoryview) -> bool:
    """Fast path: ``data`` is whole frames, none of which is intercepted."""
    pos, end = 0, len(data)
    mv = memoryview(data)
    unpack = HEADER.unpack_from
    while pos < end:
        if end - pos < HEADER_LENGTH:
            return False
        length, _sid, type_, _flags = unpack(data, pos)
        body_start = pos + HEADER_LENGTH
        pos = body_start + length
        if pos > end:
            return False  # the frame continues in the next chunk
        if (
            type_ == MessageType.REQUEST
            and length <= MAX_MESSAGE_LENGTH
            and _is_candidate(mv[body_start : body_start + min(length, _PEEK)]) is not False
        ):
            return False
    return True
