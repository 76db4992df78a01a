"""ttrpc status: gRPC status codes and the one exception that carries them.

ttrpc reuses ``google.rpc.Status`` (code, message, details) in every Response.
``RpcError`` is the *expected* error: a handler raises it to choose the status a
peer sees, and the client raises it when a peer answers with a non-OK status.
Anything else a handler raises is a bug or an unclassified failure: the server
sends ``internal_error``'s generic INTERNAL status, whose error id is in the log
line that carries the traceback, and never the exception's own text (it can hold
paths, addresses or SDK payloads).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from enum import IntEnum

from google.protobuf import any_pb2
from google.rpc import status_pb2


class Code(IntEnum):
    """gRPC status codes (google.rpc.Code); ttrpc uses the same numbers."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @classmethod
    def of(cls, value: int) -> Code:
        """The code for a wire value; numbers outside 0-16 count as UNKNOWN, as in gRPC."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


class RpcError(Exception):
    """A call ended with a non-OK status (raised by handlers, raised to callers)."""

    def __init__(self, code: Code, message: str = "", details: Iterable[any_pb2.Any] = ()) -> None:
        super().__init__(code, message)
        self.code = Code(code)
        self.message = message
        self.details: tuple[any_pb2.Any, ...] = tuple(details)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}" if self.message else self.code.name

    def __repr__(self) -> str:
        return f"RpcError({self.code.name}, {self.message!r})"

    def to_status(self) -> status_pb2.Status:
        status = status_pb2.Status(code=int(self.code), message=self.message)
        status.details.extend(self.details)
        return status

    @classmethod
    def from_status(cls, status: status_pb2.Status) -> RpcError:
        return cls(Code.of(status.code), status.message, status.details)


def internal_error(exc: BaseException, where: str, logger: logging.Logger) -> RpcError:
    """Log ``exc`` with a fresh error id and return the generic status a client may see."""
    error_id = uuid.uuid4().hex[:12]
    logger.error("%s failed with an unexpected error (error id %s)", where, error_id, exc_info=exc)
    return RpcError(Code.INTERNAL, f"internal error (error id {error_id}; details are in the daemon's log)")
