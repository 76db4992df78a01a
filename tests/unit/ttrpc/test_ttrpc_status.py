"""Status codes and RpcError <-> google.rpc.Status."""

from __future__ import annotations

from google.protobuf import any_pb2
from google.rpc import status_pb2

from cloud_api_adaptor.ttrpc import Code, RpcError


def test_codes_have_the_grpc_numbers() -> None:
    assert [c.value for c in Code] == list(range(17))
    assert int(Code.UNIMPLEMENTED) == 12
    assert int(Code.RESOURCE_EXHAUSTED) == 8


def test_rpc_error_round_trips_through_status_with_details() -> None:
    detail = any_pb2.Any(type_url="type.googleapis.com/x.Y", value=b"\x01")
    error = RpcError(Code.NOT_FOUND, "sandbox abc", [detail])
    status = error.to_status()
    assert status == status_pb2.Status(code=5, message="sandbox abc", details=[detail])
    back = RpcError.from_status(status_pb2.Status.FromString(status.SerializeToString()))
    assert (back.code, back.message, back.details) == (Code.NOT_FOUND, "sandbox abc", (detail,))
    assert str(back) == "NOT_FOUND: sandbox abc"


def test_unknown_wire_code_becomes_unknown() -> None:
    error = RpcError.from_status(status_pb2.Status(code=99, message="future"))
    assert error.code is Code.UNKNOWN
    assert error.message == "future"
