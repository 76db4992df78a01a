"""Azure SDK exceptions -> our error classes, by what the caller should do.

The only module that knows azure-core's and azure-identity's exception types;
``arm.py`` calls ``translate`` at the I/O edge and raises the result ``from`` the
original.

- 429, 5xx, ``RetryableError``, an operation still running elsewhere and lost
  connections: ``TemporaryProviderError`` (with the server's ``Retry-After``);
- 404: ``InstanceNotFound`` (a delete counts it as done);
- quota (``QuotaExceeded``, ``OperationNotAllowed`` naming a quota): ``QuotaExceeded``
  (a permanent error the pod's event names as such);
- ``SkuNotAvailable``, ``AllocationFailed``, ``InvalidParameter``, a missing image,
  rejected credentials or permissions: ``PermanentProviderError`` with Azure's own
  code and message and a hint.
"""

from __future__ import annotations

from typing import Any

from cloud_api_adaptor.errors import (
    AdaptorError,
    InstanceNotFound,
    PermanentProviderError,
    QuotaExceeded,
    TemporaryProviderError,
)

TEMPORARY_CODES = frozenset(
    {
        "RetryableError",
        "InternalServerError",
        "InternalExecutionError",
        "ServiceUnavailable",
        "TooManyRequests",
        "OperationPreempted",
        "AnotherOperationInProgress",
        "Conflict",
        "NetworkingInternalOperationError",
    }
)
#: codes that only wrap the real one in their details
_WRAPPER_CODES = frozenset({"", "InvalidTemplateDeployment", "DeploymentFailed", "Conflict"})
_HINTS = {
    "QuotaExceeded": "raise the subscription's quota in the region or use a smaller AZURE_INSTANCE_SIZE",
    "SkuNotAvailable": "the size is not offered in this region/zone for the subscription; pick another size",
    "AllocationFailed": "Azure has no capacity for this size now; try another size or region",
    "ZonalAllocationFailed": "Azure has no capacity for this size in the zone now",
    "OverconstrainedAllocationRequest": "Azure cannot place this VM with these constraints now",
    "AuthorizationFailed": "grant the identity Contributor (or Virtual Machine Contributor and Network "
    "Contributor) on the resource group",
    "LinkedAuthorizationFailed": "grant the identity rights on the subnet, NSG and image as well",
    "InvalidAuthenticationToken": "check AZURE_TENANT_ID, AZURE_CLIENT_ID and the secret or workload "
    "identity",
}


def _code_and_message(exc: Any) -> tuple[str, str]:
    error = getattr(exc, "error", None)
    code = str(getattr(error, "code", "") or "")
    message = str(getattr(error, "message", "") or getattr(exc, "message", "") or exc)
    details = getattr(error, "details", None) or []
    for detail in details:
        # quota and allocation failures often hide their real code one level down
        inner = str(getattr(detail, "code", "") or "")
        if inner and (code in _WRAPPER_CODES or "Quota" in inner):
            code = inner
            message = str(getattr(detail, "message", "") or message)
    return code, message


def is_quota(code: str, message: str) -> bool:
    return code == "QuotaExceeded" or (code == "OperationNotAllowed" and "quota" in message.lower())


def _retry_after(exc: Any) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("x-ms-retry-after-ms", 0.001), ("Retry-After", 1.0)):
        raw = headers.get(name)
        if raw:
            try:
                return float(raw) * scale
            except (TypeError, ValueError):
                continue
    return None


def classify(
    status: int, code: str, message: str, what: str, retry_after: float | None = None
) -> AdaptorError:
    """The error for an ARM answer (or a failed long-running operation) with ``code``."""
    text = f"azure {what}: {code or status}: {message}"
    if is_quota(code, message):
        return QuotaExceeded(f"{text} ({_HINTS['QuotaExceeded']})")
    if status == 404 or code in ("ResourceNotFound", "NotFound"):
        return InstanceNotFound(text)
    if code == "OperationNotAllowed" and "deletion" in message.lower():
        return TemporaryProviderError(f"{text} (an earlier VM of this name is being deleted)")
    if status == 429 or status >= 500 or code in TEMPORARY_CODES:
        return TemporaryProviderError(text, retry_after=retry_after)
    if code in _HINTS:
        return PermanentProviderError(f"{text} ({_HINTS[code]})")
    if status in (401, 403):
        return PermanentProviderError(f"{text} ({_HINTS['AuthorizationFailed']})")
    return PermanentProviderError(text)


def _from_token_endpoint(exc: Any) -> bool:
    request = getattr(getattr(exc, "response", None), "request", None)
    url = str(getattr(request, "url", "") or "")
    return not url or "/oauth2/" in url or "Microsoft Entra ID error" in str(exc)


def translate(exc: BaseException, what: str) -> AdaptorError:
    """Classify ``exc`` raised by the ARM call ``what``; raise the result ``from exc``."""
    if isinstance(exc, AdaptorError):
        return exc
    # imported here: the plugin loads without the Azure libraries (they load on first cloud call)
    from azure.core import exceptions as core

    if isinstance(exc, core.ClientAuthenticationError) and _from_token_endpoint(exc):
        # azure-identity: the token endpoint refused us
        return PermanentProviderError(
            f"azure {what}: credentials rejected: {exc} ({_HINTS['InvalidAuthenticationToken']})"
        )
    if isinstance(exc, core.HttpResponseError):
        code, message = _code_and_message(exc)
        status = int(getattr(exc, "status_code", 0) or 0)
        return classify(status, code, message, what, _retry_after(exc))
    if isinstance(exc, core.ServiceRequestError | core.ServiceResponseError):
        # the request may or may not have reached ARM: the caller treats the outcome as unknown
        return TemporaryProviderError(f"azure {what}: {exc}")
    try:
        from azure.identity import CredentialUnavailableError
    except ImportError:  # pragma: no cover - azure-identity is a dependency
        CredentialUnavailableError = ()  # type: ignore[assignment,misc]
    if isinstance(exc, CredentialUnavailableError):
        return PermanentProviderError(
            f"azure {what}: no credentials: set AZURE_CLIENT_SECRET, or run with workload identity ({exc})"
        )
    if isinstance(exc, core.AzureError):
        return TemporaryProviderError(f"azure {what}: {exc}")
    if isinstance(exc, OSError | TimeoutError):
        return TemporaryProviderError(f"azure {what}: {exc}")
    return PermanentProviderError(f"azure {what}: unexpected {type(exc).__name__}: {exc}")
