"""IBM Cloud SDK exceptions -> our error classes, for both IBM providers.

The only module that knows ``ApiException`` and the requests exceptions; the SDK
ports call ``translate`` at the I/O edge and raise the result ``from`` the
original.  Classification by what the caller should do:

- 429, 5xx, lost connections, timeouts: ``TemporaryProviderError`` carrying the
  server's ``Retry-After`` when it sent one;
- 404: ``InstanceNotFound`` (a delete counts it as done);
- a name another resource already has: ``NameInUse``;
- quota, capacity, a bad profile or image, 401/403, every other 4xx:
  ``PermanentProviderError`` with the cloud's own message.
"""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

from cloud_api_adaptor.errors import (
    AdaptorError,
    InstanceNotFound,
    PermanentProviderError,
    QuotaExceeded,
    TemporaryProviderError,
)

#: error codes (VPC ``errors[].code``) that mean "the name is taken"
NAME_IN_USE_CODES = frozenset({"validation_unique_failed", "instance_name_duplicate", "conflict"})
#: substrings of error codes or messages that mean a quota or capacity limit
QUOTA_HINTS = ("quota", "limit_exceeded", "insufficient", "capacity")
#: those that name a quota (the pod's event says PeerPodQuotaExceeded)
QUOTA_ONLY_HINTS = ("quota", "limit_exceeded")


class NameInUse(PermanentProviderError):
    """Another resource already has the requested name."""


def retry_after(headers: Any) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date), or None."""
    raw = headers.get("Retry-After") if headers is not None else None
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_code(response: Any) -> str:
    """The first ``errors[].code`` (VPC) or ``error``/``code`` (PowerVS) of an error body."""
    if response is None:
        return ""
    try:
        body = json.loads(response.text or "{}")
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return str(errors[0].get("code", ""))
    return str(body.get("code") or body.get("error") or "")


def translate(exc: Exception, operation: str) -> AdaptorError:
    """Classify ``exc`` raised by ``operation``; the caller raises the result ``from exc``."""
    from ibm_cloud_sdk_core import ApiException
    from requests import exceptions as http

    if isinstance(exc, AdaptorError):
        return exc
    if isinstance(exc, ApiException):
        status = int(exc.status_code or 0)
        response = exc.http_response
        code = _error_code(response)
        text = f"{operation}: {exc.message or 'no message'} (HTTP {status}{', ' + code if code else ''})"
        if status == 429 or status >= 500:
            headers = response.headers if response is not None else None
            return TemporaryProviderError(text, retry_after=retry_after(headers))
        if status == 404:
            return InstanceNotFound(text)
        if code in NAME_IN_USE_CODES:
            return NameInUse(text)
        if status in (401, 403):
            return PermanentProviderError(f"{text}: check the API key or trusted profile and its IAM access")
        if any(hint in code.lower() for hint in QUOTA_ONLY_HINTS):
            return QuotaExceeded(f"{text}: a quota limit; free resources or raise it")
        if any(hint in code.lower() for hint in QUOTA_HINTS):
            return PermanentProviderError(f"{text}: a quota or capacity limit; free resources or raise it")
        return PermanentProviderError(text)
    if isinstance(exc, http.SSLError):
        return PermanentProviderError(f"{operation}: TLS failure: {exc}")
    if isinstance(exc, http.ConnectionError | http.Timeout | http.ChunkedEncodingError):
        # the request may or may not have reached the cloud: the outcome is unknown
        return TemporaryProviderError(f"{operation}: {exc}")
    if isinstance(exc, http.RequestException | OSError):
        return TemporaryProviderError(f"{operation}: {exc}")
    if isinstance(exc, ValueError):
        # the SDK raises ValueError for arguments it refuses before sending anything
        return PermanentProviderError(f"{operation}: {exc}")
    return PermanentProviderError(f"{operation}: unexpected {type(exc).__name__}: {exc}")
