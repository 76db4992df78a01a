"""Errors, classified by what the caller should do about them.

Every error the daemon raises on purpose derives from ``AdaptorError``.  Foreign
exceptions (botocore, libvirt, ssl, OSError, ...) are translated at the I/O edge
with ``raise Ours(...) from exc``; nothing above a provider adapter sees them.
The mapping to ttrpc status codes lives in exactly one place:
``cloud_api_adaptor.hypervisor.status_map``.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


class AdaptorError(Exception):
    """Root of every error this project raises deliberately."""


class ConfigError(AdaptorError):
    """The configuration is invalid; the daemon must not start.

    ``key`` names the flag or environment variable at fault.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.reason = message


class PluginNotFound(ConfigError):
    """No provider is installed under the requested name."""

    def __init__(self, name: str, installed: list[str]) -> None:
        listing = ", ".join(sorted(installed)) or "none"
        super().__init__("CLOUD_PROVIDER", f"Unsupported cloud provider: {name} (installed: {listing})")
        self.name = name
        self.installed = sorted(installed)


class InvalidInput(AdaptorError):
    """A request carries a bad value; retrying the same request cannot succeed.

    ``field`` names the request field or annotation at fault.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class NotFound(AdaptorError):
    """The named object does not exist."""


class AlreadyExists(AdaptorError):
    """A different object already exists under this name."""


class FailedPrecondition(AdaptorError):
    """The system is not in a state where the request can run (e.g. sandbox stopping)."""


class DeadlineExceeded(AdaptorError):
    """The caller's deadline (or ours) passed before the work finished."""


class ProviderError(AdaptorError):
    """A cloud provider call failed."""


class TemporaryProviderError(ProviderError):
    """Throttling, 5xx, connection errors: retrying later may succeed."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentProviderError(ProviderError):
    """Auth, validation, quota errors: retrying the same call will fail again."""


class QuotaExceeded(PermanentProviderError):
    """The account's quota (instances, vCPUs, addresses) does not allow the create."""


class ImageNotFound(PermanentProviderError):
    """The pod VM image does not exist or cannot be used."""


class CapacityUnavailable(TemporaryProviderError):
    """The cloud has no capacity for the instance type right now (another zone or later may work)."""


class InstanceNotFound(PermanentProviderError):
    """The instance does not exist (for delete, this counts as deleted)."""


class StateWriteError(AdaptorError):
    """A sandbox record could not be written to the state directory (full disk, quota, I/O error).

    ``no_space`` is true for ENOSPC and EDQUOT: the caller may retry once space is freed.
    """

    def __init__(self, directory: Path, cause: OSError) -> None:
        reason = cause.strerror or os.strerror(cause.errno or 0) or str(cause)
        super().__init__(f"cannot write sandbox state in {directory}: {reason}")
        self.directory = directory
        self.errno = cause.errno

    @property
    def no_space(self) -> bool:
        return self.errno in (errno.ENOSPC, errno.EDQUOT)
