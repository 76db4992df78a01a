"""The forwarder's frame rewriter, sans I/O: what the agent would receive for given client bytes."""

from __future__ import annotations

import pytest

from cloud_api_adaptor._pb import agent_pb2, health_pb2, ttrpc_pb2
from cloud_api_adaptor.ttrpc.framing import MAX_MESSAGE_LENGTH, FrameDecoder, MessageType, encode_frame
from cloud_api_adaptor.vm.interceptor import FrameRewriter, Interceptor

PODNS = "/run/netns/podns"


def request(service: str, method: str, payload: bytes, **kw: object) -> bytes:
    return ttrpc_pb2.Request(service=service, method=method, payload=payload, **kw).SerializeToString()  # type: ignore[arg-type]


def check_frame(sid: int) -> bytes:
    body = request(
        "grpc.Health", "Check", health_pb2.CheckRequest().SerializeToString(), timeout_nano=30_000_000_000
    )
    return encode_frame(sid, MessageType.REQUEST, body)


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field_bytes(number: int, value: bytes) -> bytes:
    """A length-delimited protobuf field, hand-encoded."""
    return varint(number << 3 | 2) + varint(len(value)) + value


def unknown_field(number: int, value: bytes) -> bytes:
    """A length-delimited field the subset proto does not declare."""
    return field_bytes(number, value)


def run(data: bytes, chunk: int | None = None, pod_namespace: str = PODNS) -> bytes:
    rewriter = FrameRewriter(Interceptor(pod_namespace))
    if chunk is None:
        return bytes(rewriter.feed(data))
    return b"".join(bytes(rewriter.feed(data[i : i + chunk])) for i in range(0, len(data), chunk))


def create_container(namespaces: list[tuple[str, str]], extra: bytes = b"") -> bytes:
    req = agent_pb2.CreateContainerRequest(container_id="ctr-1", exec_id="ctr-1")
    req.OCI.Version = "1.1.0"
    req.OCI.Annotations["io.kubernetes.cri.container-type"] = "container"
    for type_, path in namespaces:
        req.OCI.Linux.Namespaces.add(Type=type_, Path=path)
    return req.SerializeToString() + extra


def agent_view(out: bytes) -> list[tuple[int, bytes]]:
    frames = FrameDecoder().feed(out)
    return [(f.stream_id, f.data) for f in frames]  # type: ignore[union-attr]


def test_plain_frames_pass_through_as_the_same_object() -> None:
    data = check_frame(1) + check_frame(3)
    rewriter = FrameRewriter(Interceptor())
    assert rewriter.feed(data) is data


@pytest.mark.parametrize("chunk", [None, 1, 3, 7, 64])
def test_create_sandbox_loses_its_dns_and_nothing_else(chunk: int | None) -> None:
    sandbox = agent_pb2.CreateSandboxRequest(
        hostname="pod",
        dns=["nameserver 10.96.0.10", "search default.svc"],
        sandbox_id="sb",
        guest_hook_path="/h",
    )
    payload = sandbox.SerializeToString() + unknown_field(7, b"kernel-modules")
    frame = encode_frame(
        5, MessageType.REQUEST, request("grpc.AgentService", "CreateSandbox", payload, timeout_nano=7)
    )
    [(sid, data)] = agent_view(run(check_frame(3) + frame + check_frame(7), chunk)[len(check_frame(3)) :])[:1]
    assert sid == 5
    got = ttrpc_pb2.Request.FromString(data)
    assert got.timeout_nano == 7
    seen = agent_pb2.CreateSandboxRequest.FromString(got.payload)
    assert list(seen.dns) == []
    assert (seen.hostname, seen.sandbox_id, seen.guest_hook_path) == ("pod", "sb", "/h")
    assert unknown_field(7, b"kernel-modules") in got.payload  # unknown fields survive


@pytest.mark.parametrize("chunk", [None, 1, 5, 1000])
def test_create_container_gets_the_pod_network_namespace(chunk: int | None) -> None:
    extra = unknown_field(9, b"storages-and-devices")
    payload = create_container([("pid", ""), ("network", "/proc/1/ns/net"), ("mount", "")], extra)
    frame = encode_frame(9, MessageType.REQUEST, request("grpc.AgentService", "CreateContainer", payload))
    [(_, before), (_, data), (_, after)] = agent_view(run(check_frame(7) + frame + check_frame(11), chunk))
    assert before == after == check_frame(7)[10:]
    seen = agent_pb2.CreateContainerRequest.FromString(ttrpc_pb2.Request.FromString(data).payload)
    assert [(n.Type, n.Path) for n in seen.OCI.Linux.Namespaces] == [
        ("pid", ""),
        ("mount", ""),
        ("network", PODNS),
    ]
    assert seen.OCI.Annotations["io.kubernetes.cri.container-type"] == "container"
    assert seen.container_id == "ctr-1"
    assert extra in ttrpc_pb2.Request.FromString(data).payload


def test_create_container_without_namespaces_gets_one() -> None:
    payload = create_container([])
    frame = encode_frame(1, MessageType.REQUEST, request("grpc.AgentService", "CreateContainer", payload))
    [(_, data)] = agent_view(run(frame, pod_namespace="/run/netns/other"))
    seen = agent_pb2.CreateContainerRequest.FromString(ttrpc_pb2.Request.FromString(data).payload)
    assert [(n.Type, n.Path) for n in seen.OCI.Linux.Namespaces] == [("network", "/run/netns/other")]


def test_other_agent_calls_pass_byte_identical() -> None:
    calls = [
        (
            "grpc.AgentService",
            "StartContainer",
            agent_pb2.StartContainerRequest(container_id="c").SerializeToString(),
        ),
        ("grpc.AgentService", "CreateSandboxX", b"\x12\x03abc"),
        ("grpc.AgentService", "DestroySandbox", b""),
        ("grpc.Health", "Version", b""),
    ]
    data = b"".join(encode_frame(2 * i + 1, MessageType.REQUEST, request(*c)) for i, c in enumerate(calls))
    assert run(data) == data
    assert run(data, chunk=2) == data


def test_a_request_with_fields_out_of_order_is_still_intercepted() -> None:
    sandbox = agent_pb2.CreateSandboxRequest(dns=["1.1.1.1"], hostname="h").SerializeToString()
    # method (2), payload (3), then service (1): legal protobuf, unusual order
    body = field_bytes(2, b"CreateSandbox") + field_bytes(3, sandbox) + field_bytes(1, b"grpc.AgentService")
    [(_, data)] = agent_view(run(encode_frame(1, MessageType.REQUEST, body)))
    got = ttrpc_pb2.Request.FromString(data)
    assert list(agent_pb2.CreateSandboxRequest.FromString(got.payload).dns) == []


def test_undecodable_intercepted_frames_pass_through_unchanged() -> None:
    body = b"\x0a\x11grpc.AgentService\x12\x0fCreateContainer\x1a\x05\xff\xff\xff\xff\xff"
    frame = encode_frame(1, MessageType.REQUEST, body)
    assert run(frame + check_frame(3)) == frame + check_frame(3)


def test_oversized_frames_stream_through_without_buffering() -> None:
    length = MAX_MESSAGE_LENGTH + 10
    header = (length).to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes([MessageType.REQUEST, 0])
    body = b"\x0a\x11grpc.AgentService\x12\x0fCreateContainer" + b"x" * (length - 35)
    data = header + body + check_frame(3)
    rewriter = FrameRewriter(Interceptor())
    out = b"".join(bytes(rewriter.feed(data[i : i + 65536])) for i in range(0, len(data), 65536))
    assert out == data


def test_responses_and_data_frames_are_not_touched() -> None:
    data = encode_frame(1, MessageType.RESPONSE, b"\x0a\x11grpc.AgentService\x12\x0dCreateSandbox")
    data += encode_frame(3, MessageType.DATA, b"payload", flags=1)
    assert run(data) == data
    assert run(data, chunk=1) == data


def test_empty_request_frames_pass() -> None:
    data = encode_frame(1, MessageType.REQUEST, b"") + check_frame(3)
    assert run(data) == data


def test_counter_reports_rewritten_frames() -> None:
    rewriter = FrameRewriter(Interceptor())
    payload = create_container([])
    rewriter.feed(
        encode_frame(1, MessageType.REQUEST, request("grpc.AgentService", "CreateContainer", payload))
    )
    rewriter.feed(check_frame(3))
    assert rewriter.frames_rewritten == 1


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_views_of_a_reused_read_buffer_are_copied_where_kept(chunk: int) -> None:
    """The relay feeds views of one buffer that it overwrites after each call (a BufferedProtocol)."""
    sandbox = agent_pb2.CreateSandboxRequest(hostname="pod", dns=["nameserver 10.96.0.10"], sandbox_id="sb")
    big = request("test.Echo", "Echo", bytes(range(256)) * 300)  # plain, spans many chunks
    create = request("grpc.AgentService", "CreateSandbox", sandbox.SerializeToString())
    data = (
        check_frame(1)
        + encode_frame(3, MessageType.REQUEST, big)
        + encode_frame(5, MessageType.REQUEST, create)
        + check_frame(7)
    )
    rewriter = FrameRewriter(Interceptor())
    buffer = bytearray(chunk)
    out = bytearray()
    for i in range(0, len(data), chunk):
        piece = data[i : i + chunk]
        buffer[: len(piece)] = piece
        out += rewriter.feed(memoryview(buffer)[: len(piece)])  # written out at once, as the relay does
        buffer[:] = b"\xff" * chunk  # the next read overwrites it
    frames = agent_view(bytes(out))
    assert [sid for sid, _ in frames] == [1, 3, 5, 7]
    assert frames[1][1] == big
    seen = agent_pb2.CreateSandboxRequest.FromString(ttrpc_pb2.Request.FromString(frames[2][1]).payload)
    assert (list(seen.dns), seen.hostname) == ([], "pod")
    assert frames[3][1] == check_frame(7)[10:]
