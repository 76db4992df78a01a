"""botocore exceptions -> our error classes, by what the caller should do.

This is the only module that knows botocore's exception types; ``ec2.py`` calls
``translate`` at the I/O edge and raises the result ``from`` the original, so
nothing above the adapter ever sees a botocore exception.

- throttling, capacity, 5xx, connection and timeout errors: ``TemporaryProviderError``
  (retrying later may succeed);
- ``InvalidInstanceID.NotFound``: ``InstanceNotFound`` (a delete counts it as done);
- a malformed instance id: ``InvalidInput``;
- auth, validation, missing credentials or region, everything else: ``PermanentProviderError``.
"""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectionError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    SSLError,
)
from botocore.parsers import ResponseParserError

from cloud_api_adaptor.errors import (
    AdaptorError,
    CapacityUnavailable,
    ImageNotFound,
    InstanceNotFound,
    InvalidInput,
    PermanentProviderError,
    QuotaExceeded,
    TemporaryProviderError,
)

#: error codes that mean "slow down" or "not now"; retrying later may succeed
TEMPORARY_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "SlowDown",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
        "InsufficientInstanceCapacity",
        "InsufficientAddressCapacity",
        "InsufficientCapacity",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
    }
)

#: account limits: permanent until the limit is raised (a typed reason on the pod's event)
QUOTA_CODES = frozenset({"InstanceLimitExceeded", "VcpuLimitExceeded", "AddressLimitExceeded"})
#: EC2 has no capacity for the type in the zone now: temporary
CAPACITY_CODES = frozenset(
    {"InsufficientInstanceCapacity", "InsufficientAddressCapacity", "InsufficientCapacity"}
)
#: the pod VM image does not exist or is not usable
IMAGE_CODES = frozenset({"InvalidAMIID.NotFound", "InvalidAMIID.Unavailable"})

#: codes meaning the instance does not exist (a delete treats these as done)
NOT_FOUND_CODES = frozenset({"InvalidInstanceID.NotFound"})

#: codes meaning an address (or its association) is already gone
ADDRESS_NOT_FOUND_CODES = frozenset({"InvalidAllocationID.NotFound", "InvalidAssociationID.NotFound"})

#: codes meaning the id is not even shaped like an instance id
MALFORMED_ID_CODES = frozenset({"InvalidInstanceID.Malformed"})


class AddressNotFound(PermanentProviderError):
    """The elastic IP (or its association) no longer exists: releasing it is already done."""


def error_code(exc: ClientError) -> str:
    """The AWS error code of a ClientError ("" if absent)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def translate(exc: Exception, operation: str) -> AdaptorError:
    """Classify ``exc`` raised by the EC2 call ``operation``; the caller raises the result ``from exc``."""
    if isinstance(exc, AdaptorError):
        return exc
    if isinstance(exc, ClientError):
        code = error_code(exc)
        message = str(exc.response.get("Error", {}).get("Message", "")) or str(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        text = f"ec2 {operation}: {code}: {message}"
        if code in NOT_FOUND_CODES:
            return InstanceNotFound(text)
        if code in ADDRESS_NOT_FOUND_CODES:
            return AddressNotFound(text)
        if code in MALFORMED_ID_CODES:
            return InvalidInput("instance_id", text)
        if code in QUOTA_CODES:
            return QuotaExceeded(text)
        if code in CAPACITY_CODES:
            return CapacityUnavailable(text)
        if code in IMAGE_CODES:
            return ImageNotFound(text)
        if code in TEMPORARY_CODES or status >= 500:
            return TemporaryProviderError(text)
        return PermanentProviderError(text)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return PermanentProviderError(
            f"ec2 {operation}: no usable AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            f"a profile, or a role): {exc}"
        )
    if isinstance(exc, NoRegionError):
        return PermanentProviderError(f"ec2 {operation}: no region: set AWS_REGION")
    if isinstance(exc, SSLError):
        return PermanentProviderError(f"ec2 {operation}: TLS failure: {exc}")
    if isinstance(exc, ConnectionError | ConnectionClosedError | HTTPClientError | ResponseParserError):
        # the request may or may not have reached EC2: the caller must treat the outcome as unknown
        return TemporaryProviderError(f"ec2 {operation}: {exc}")
    if isinstance(exc, BotoCoreError):
        return PermanentProviderError(f"ec2 {operation}: {exc}")
    if isinstance(exc, OSError):
        return TemporaryProviderError(f"ec2 {operation}: {exc}")
    return PermanentProviderError(f"ec2 {operation}: unexpected {type(exc).__name__}: {exc}")
