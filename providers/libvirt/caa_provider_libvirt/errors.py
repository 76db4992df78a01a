"""libvirt errors -> the adaptor's error classes, in one table.

Only ``port.py`` calls ``translate``; nothing above it sees ``libvirt.libvirtError``.
The split follows what the caller should do:

- the connection or the daemon went away (RPC, socket, ssh, timeouts): temporary,
  the next call reconnects;
- the domain does not exist: ``InstanceNotFound`` (delete treats it as done);
- everything else (bad XML, missing pool/volume/network, unsupported feature,
  authentication): permanent, retrying the same call fails the same way.
"""

from __future__ import annotations

from typing import Any

import libvirt

from cloud_api_adaptor.errors import (
    InstanceNotFound,
    PermanentProviderError,
    ProviderError,
    TemporaryProviderError,
)

#: error codes after which the connection is presumed dead (reconnect and retry)
CONNECTION_CODES = frozenset(
    {
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_RPC,
        libvirt.VIR_ERR_OPERATION_TIMEOUT,
        libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
        getattr(libvirt, "VIR_ERR_INVALID_CONN", 6),
    }
)
#: error domains (where the error was raised) that mean transport trouble
CONNECTION_DOMAINS = frozenset({libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE, libvirt.VIR_FROM_SSH})

#: libvirt error codes that name a missing object, per kind (the port returns None for them)
NO_DOMAIN = libvirt.VIR_ERR_NO_DOMAIN
NO_VOLUME = libvirt.VIR_ERR_NO_STORAGE_VOL
NO_POOL = libvirt.VIR_ERR_NO_STORAGE_POOL
NO_NETWORK = libvirt.VIR_ERR_NO_NETWORK
NO_SUPPORT = frozenset(
    {libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED, libvirt.VIR_ERR_OPERATION_UNSUPPORTED}
)


def error_code(exc: BaseException) -> int:
    """The libvirt error code of ``exc`` (0 for anything else)."""
    if isinstance(exc, libvirt.libvirtError):
        code: Any = exc.get_error_code()
        return int(code) if code is not None else 0
    return 0


def is_connection_error(exc: libvirt.libvirtError) -> bool:
    """True when ``exc`` means the connection (not the request) failed."""
    code = error_code(exc)
    if code in CONNECTION_CODES:
        return True
    domain: Any = exc.get_error_domain()
    return code == libvirt.VIR_ERR_SYSTEM_ERROR and domain in CONNECTION_DOMAINS


def translate(exc: libvirt.libvirtError, what: str) -> ProviderError:
    """The adaptor error for a libvirt failure while doing ``what`` (raise it ``from exc``)."""
    message = f"libvirt: {what}: {exc.get_error_message() or exc}"
    if is_connection_error(exc):
        return TemporaryProviderError(message)
    if error_code(exc) == NO_DOMAIN:
        return InstanceNotFound(message)
    return PermanentProviderError(message)
