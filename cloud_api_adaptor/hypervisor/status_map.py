"""The one place where our errors become RPC status codes.

Both transports (ttrpc for Kata, gRPC on the optional second socket) use
``to_status``; handlers never choose codes themselves.
"""

from __future__ import annotations

import asyncio
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
from cloud_api_adaptor.ttrpc.status import Code

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


def to_status(exc: BaseException) -> tuple[Code, str]:
    """(code, message) for an exception raised by the lifecycle."""
    if isinstance(exc, asyncio.CancelledError):
        return Code.CANCELLED, "cancelled"
    if isinstance(exc, InvalidInput) and exc.field not in str(exc):
        # Every INVALID_ARGUMENT names the field or annotation at fault.
        return Code.INVALID_ARGUMENT, f"{exc.field}: {exc}"
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code, str(exc)
    if isinstance(exc, AdaptorError):
        return Code.UNKNOWN, str(exc)
    logger.error("unexpected error", exc_info=exc)
    return Code.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
