"""Request/Response envelopes and metadata, checked against hand-built wire bytes."""

from __future__ import annotations

import pytest
from google.rpc import status_pb2

from cloud_api_adaptor._pb import ttrpc_pb2
from cloud_api_adaptor.ttrpc.messages import (
    EnvelopeError,
    Metadata,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    encode_status,
)

# An annotated Version request (metadata and a timeout), as containerd/ttrpc's Go server accepts it.
PROBE_REQUEST = (
    b"\x0a\x15hypervisor.Hypervisor"
    b"\x12\x07Version"
    b"\x1a\x0c\x0a\x0awire-probe"
    b"\x20\x80\xe4\x97\xd0\x12"
    b"\x2a\x0f\x0a\x09probe-key\x12\x02v1"
)


def test_decodes_the_annotated_go_request() -> None:
    envelope = decode_request(PROBE_REQUEST)
    assert envelope.service == "hypervisor.Hypervisor"
    assert envelope.method == "Version"
    assert envelope.payload == b"\x0a\x0awire-probe"
    assert envelope.timeout == 5.0
    assert envelope.metadata.pairs() == (("probe-key", "v1"),)


def test_encodes_the_annotated_go_request_byte_for_byte() -> None:
    data = encode_request(
        "hypervisor.Hypervisor",
        "Version",
        b"\x0a\x0awire-probe",
        timeout=5.0,
        metadata=Metadata([("probe-key", "v1")]),
    )
    assert data == PROBE_REQUEST


def test_zero_timeout_nano_means_no_deadline() -> None:
    assert decode_request(encode_request("s", "m", b"")).timeout is None
    raw = ttrpc_pb2.Request(service="s", method="m", timeout_nano=-5).SerializeToString()
    assert decode_request(raw).timeout is None


def test_tiny_positive_timeout_is_not_sent_as_no_deadline() -> None:
    request = ttrpc_pb2.Request.FromString(encode_request("s", "m", b"", timeout=1e-12))
    assert request.timeout_nano == 1


def test_undecodable_request_is_an_envelope_error() -> None:
    with pytest.raises(EnvelopeError, match="unmarshal request error"):
        decode_request(b"\xff\xff\xff")


def test_metadata_is_a_case_insensitive_multimap_keeping_order() -> None:
    md = Metadata([("Trace-Id", "a"), ("other", "x"), ("trace-id", "b")])
    assert md["TRACE-ID"] == ("a", "b")
    assert md.first("trace-id") == "a"
    assert md.first("missing") is None
    assert "Other" in md
    assert list(md) == ["trace-id", "other"]
    assert md.pairs() == (("trace-id", "a"), ("other", "x"), ("trace-id", "b"))
    wire = ttrpc_pb2.Request.FromString(encode_request("s", "m", b"", metadata=md))
    assert [(kv.key, kv.value) for kv in wire.metadata] == list(md.pairs())


def test_metadata_coerces_mappings_and_pairs() -> None:
    assert Metadata.coerce({"A": "1", "b": ["2", "3"]}).pairs() == (("a", "1"), ("b", "2"), ("b", "3"))
    assert Metadata.coerce([("K", "v")])["k"] == ("v",)
    assert len(Metadata.coerce(None)) == 0


def test_success_response_omits_status() -> None:
    assert encode_response(b"\x0a\x050.0.0") == b"\x12\x07\x0a\x050.0.0"


@pytest.mark.parametrize(
    "wire",
    [
        b"\x12\x07\x0a\x050.0.0",  # ttrpc 1.1: no status field
        b"\x0a\x00\x12\x07\x0a\x050.0.0",  # ttrpc 1.2: empty status
        b"\x0a\x02\x08\x00\x12\x07\x0a\x050.0.0",  # explicit code 0
    ],
)
def test_absent_empty_and_zero_status_all_mean_ok(wire: bytes) -> None:
    assert decode_response(wire) == (None, b"\x0a\x050.0.0")


def test_error_response_carries_the_status() -> None:
    wire = encode_status(status_pb2.Status(code=12, message="service nope"))
    status, payload = decode_response(wire)
    assert status is not None
    assert (status.code, status.message, payload) == (12, "service nope", b"")
