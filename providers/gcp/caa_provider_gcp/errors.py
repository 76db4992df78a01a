"""Google client exceptions and failed operations -> our error classes, by what the caller should do.

The only module that knows google-api-core's and google-auth's exception types;
``compute.py`` calls ``translate`` at the I/O edge and raises the result ``from``
the original.

- 429, 403 ``rateLimitExceeded``/``userRateLimitExceeded``, 5xx, lost connections
  and timeouts: ``TemporaryProviderError`` (retrying later may succeed);
- 404: ``InstanceNotFound`` (a delete counts it as done);
- 409: ``NameInUse`` (the provider looks at what holds the name);
- quota, exhausted zone capacity, an invalid machine type or image, permission
  denied, bad credentials: ``PermanentProviderError`` with GCP's own message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cloud_api_adaptor.errors import (
    AdaptorError,
    InstanceNotFound,
    PermanentProviderError,
    QuotaExceeded,
    TemporaryProviderError,
)

if TYPE_CHECKING:
    from google.api_core import exceptions as api_exceptions

#: ``errors[].reason`` values of a 403 that mean "slow down"
RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
#: operation error codes that a later retry of the same request may get past
TEMPORARY_OPERATION_CODES = frozenset({"INTERNAL_ERROR", "SERVICE_UNAVAILABLE", "OPERATION_CANCELED"})
#: codes of an exceeded quota (permanent, with its own reason on the pod's event)
QUOTA_CODES = frozenset({"QUOTA_EXCEEDED", "quotaExceeded"})
#: operation error codes for an instance that is not there (a delete counts it as done)
NOT_FOUND_OPERATION_CODES = frozenset({"RESOURCE_NOT_FOUND"})
_HINTS = {
    "QUOTA_EXCEEDED": "raise the quota or use a smaller machine type",
    "quotaExceeded": "raise the quota or use a smaller machine type",
    "ZONE_RESOURCE_POOL_EXHAUSTED": "the zone has no capacity for this machine type now; try another zone",
    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS": "the zone has no capacity now; try another zone",
    "forbidden": "grant the service account roles/compute.instanceAdmin.v1 on the project",
}


class NameInUse(PermanentProviderError):
    """An instance with this name already exists (409 alreadyExists)."""


def _reasons(errors: Sequence[Mapping[str, Any]]) -> list[str]:
    return [str(e.get("reason") or e.get("code") or "") for e in errors]


def _with_hint(text: str, codes: Sequence[str]) -> str:
    for code in codes:
        if code in _HINTS:
            return f"{text} ({_HINTS[code]})"
    return text


def translate(exc: Exception, operation: str) -> AdaptorError:
    """Classify ``exc`` raised by the Compute Engine call ``operation``; raise the result ``from exc``."""
    if isinstance(exc, AdaptorError):
        return exc
    # imported here: the plugin loads without the Google libraries (they load on first cloud call)
    import requests
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions

    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return _from_api_error(exc, operation)
    if isinstance(exc, api_exceptions.RetryError):
        return TemporaryProviderError(f"gcp {operation}: {exc}")
    if isinstance(exc, auth_exceptions.DefaultCredentialsError):
        return PermanentProviderError(
            f"gcp {operation}: no credentials: set GCP_CREDENTIALS to a service account key, "
            f"or run with workload identity ({exc})"
        )
    if isinstance(exc, auth_exceptions.TransportError):
        return TemporaryProviderError(f"gcp {operation}: credential endpoint unreachable: {exc}")
    if isinstance(exc, auth_exceptions.RefreshError):
        if getattr(exc, "retryable", False):
            return TemporaryProviderError(f"gcp {operation}: credential refresh failed: {exc}")
        return PermanentProviderError(f"gcp {operation}: credentials rejected: {exc}")
    if isinstance(exc, auth_exceptions.GoogleAuthError):
        return PermanentProviderError(f"gcp {operation}: credentials: {exc}")
    if isinstance(exc, requests.exceptions.SSLError):
        return PermanentProviderError(f"gcp {operation}: TLS failure: {exc}")
    if isinstance(exc, requests.exceptions.RequestException | OSError):
        # the request may or may not have reached GCP: the caller treats the outcome as unknown
        return TemporaryProviderError(f"gcp {operation}: {exc}")
    return PermanentProviderError(f"gcp {operation}: unexpected {type(exc).__name__}: {exc}")


def _from_api_error(exc: api_exceptions.GoogleAPICallError, operation: str) -> AdaptorError:
    status = int(exc.code or 0)
    reasons = _reasons([e for e in exc.errors if isinstance(e, Mapping)])
    text = f"gcp {operation}: {status} {exc.message}"
    if reasons and any(reasons):
        text += f" [{', '.join(r for r in reasons if r)}]"
    if status == 404:
        return InstanceNotFound(text)
    if status == 409:
        return NameInUse(text)
    if status == 429 or status >= 500 or (status == 403 and RATE_LIMIT_REASONS.intersection(reasons)):
        return TemporaryProviderError(text, retry_after=_retry_after(exc))
    if status == 403 and not reasons:
        reasons = ["forbidden"]
    if QUOTA_CODES.intersection(reasons):
        return QuotaExceeded(_with_hint(text, reasons))
    return PermanentProviderError(_with_hint(text, reasons))


def _retry_after(exc: api_exceptions.GoogleAPICallError) -> float | None:
    response = exc.response
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        return float(headers.get("Retry-After", ""))
    except (TypeError, ValueError):
        return None


def operation_error(operation: Mapping[str, Any], what: str) -> AdaptorError:
    """The error for a zone operation that finished with ``error`` set."""
    errors = [e for e in (operation.get("error") or {}).get("errors") or [] if isinstance(e, Mapping)]
    codes = [str(e.get("code") or "") for e in errors]
    messages = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors) or "unknown error"
    text = f"gcp {what}: operation {operation.get('name')} failed: {messages}"
    if NOT_FOUND_OPERATION_CODES.intersection(codes):
        return InstanceNotFound(text)
    if TEMPORARY_OPERATION_CODES.intersection(codes):
        return TemporaryProviderError(text)
    if QUOTA_CODES.intersection(codes):
        return QuotaExceeded(_with_hint(text, codes))
    return PermanentProviderError(_with_hint(text, codes))
