"""The one place where our errors become RPC status codes.

The ttrpc server takes ``to_rpc_error`` as its error translator; the gRPC socket
and ``plan`` use ``to_status``.  Handlers never choose codes themselves, and an
exception that is not ours reaches a client only as a generic internal error
with an id that the daemon's log names.
"""

from __future__ import annotations

import logging

from cloud_api_adaptor.errors import (
    AdaptorError,
    AlreadyExists,
    ConfigError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    PermanentProviderError,
    TemporaryProviderError,
)
from cloud_api_adaptor.ttrpc.status import Code, RpcError, internal_error

logger = logging.getLogger(__name__)

_CODES: tuple[tuple[type[BaseException], Code], ...] = (
    (InvalidInput, Code.INVALID_ARGUMENT),
    (NotFound, Code.NOT_FOUND),
    (AlreadyExists, Code.ALREADY_EXISTS),
    (FailedPrecondition, Code.FAILED_PRECONDITION),
    (ConfigError, Code.FAILED_PRECONDITION),
    (DeadlineExceeded, Code.DEADLINE_EXCEEDED),
    (TimeoutError, Code.DEADLINE_EXCEEDED),
    (TemporaryProviderError, Code.UNAVAILABLE),
    (PermanentProviderError, Code.FAILED_PRECONDITION),
)


def to_rpc_error(exc: Exception) -> RpcError | None:
    """The status for one of our errors; None for anything else (a bug: the server reports it)."""
    if isinstance(exc, InvalidInput) and exc.field not in str(exc):
        # Every INVALID_ARGUMENT names the field or annotation at fault.
        return RpcError(Code.INVALID_ARGUMENT, f"{exc.field}: {exc}")
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return RpcError(code, str(exc))
    if isinstance(exc, AdaptorError):
        return RpcError(Code.UNKNOWN, str(exc))
    return None


def to_status(exc: Exception, where: str = "request") -> tuple[Code, str]:
    """(code, message) for any exception, for callers outside the ttrpc server (gRPC, ``plan``)."""
    error = to_rpc_error(exc) or internal_error(exc, where, logger)
    return error.code, error.message
