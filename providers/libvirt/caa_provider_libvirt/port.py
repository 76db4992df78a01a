"""The narrow port over libvirt-python: only the calls the provider makes.

``LibvirtPort`` lists them; ``LibvirtConnection`` implements them over one
libvirt connection.  Every blocking libvirt call runs in a worker thread
(``asyncio.to_thread``) and every ``libvirt.libvirtError`` is translated here,
at the edge, by ``errors.translate``.  "Not found" answers the provider expects
(a domain or volume that is not there) come back as ``None``/``False`` rather
than as errors.  A connection error drops the connection; the next call opens
a new one, so a restarted libvirtd or a broken ssh tunnel heals by itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import libvirt

from cloud_api_adaptor.errors import PermanentProviderError
from cloud_api_adaptor.provider import IPAddress

from .errors import (
    NO_DOMAIN,
    NO_NETWORK,
    NO_POOL,
    NO_SUPPORT,
    NO_VOLUME,
    error_code,
    is_connection_error,
    translate,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

AddressSource = Literal["lease", "arp", "agent"]
_SOURCES: dict[str, int] = {
    "lease": libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
    "arp": getattr(libvirt, "VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP", 2),
    "agent": libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
}
_UPLOAD_CHUNK = 256 * 1024


@dataclass(frozen=True)
class DomainRecord:
    """A domain as libvirt describes it (``xml`` is the current definition)."""

    uuid: str
    name: str
    active: bool
    xml: str


@dataclass(frozen=True)
class VolumeRecord:
    """A storage volume; ``capacity`` in bytes, ``format`` as in its target (qcow2, raw, ...)."""

    pool: str
    name: str
    path: str
    capacity: int
    format: str


@dataclass(frozen=True)
class InterfaceAddress:
    """One address libvirt reports for a domain NIC."""

    mac: str
    address: IPAddress


class LibvirtPort(Protocol):
    """What ``LibvirtProvider`` needs from libvirt, and nothing more."""

    async def host_capabilities(self) -> str: ...
    async def domain_capabilities(self, arch: str, virt_type: str) -> str | None: ...
    async def domain_by_uuid(self, uuid: str) -> DomainRecord | None: ...
    async def domain_by_name(self, name: str) -> DomainRecord | None: ...
    async def list_domains(self) -> Sequence[DomainRecord]: ...
    async def define_domain(self, xml: str) -> DomainRecord: ...
    async def start_domain(self, uuid: str) -> None: ...
    async def stop_domain(self, uuid: str) -> bool: ...
    async def undefine_domain(self, uuid: str) -> bool: ...
    async def interface_addresses(self, uuid: str, source: AddressSource) -> Sequence[InterfaceAddress]: ...
    async def pool_exists(self, pool: str) -> bool: ...
    async def network_exists(self, network: str) -> bool: ...
    async def volume(self, pool: str, name: str) -> VolumeRecord | None: ...
    async def create_volume(self, pool: str, xml: str) -> VolumeRecord: ...
    async def upload_volume(self, pool: str, name: str, data: bytes) -> None: ...
    async def delete_volume(self, pool: str, name: str) -> bool: ...
    async def aclose(self) -> None: ...


def _quiet_errors(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; ours are raised and logged instead."""


class LibvirtConnection:
    """``LibvirtPort`` over libvirt-python, lazily connected to ``uri``."""

    def __init__(self, uri: str) -> None:
        self._uri = uri
        self._conn: Any = None
        self._lock = threading.Lock()
        libvirt.registerErrorHandler(_quiet_errors, None)

    # -- plumbing ----------------------------------------------------------------------------

    def _connection(self) -> Any:
        with self._lock:
            if self._conn is None:
                logger.debug("opening libvirt connection %s", self._uri)
                self._conn = libvirt.open(self._uri)
            return self._conn

    def _drop(self, conn: Any) -> None:
        with self._lock:
            if self._conn is conn:
                self._conn = None
        try:
            conn.close()
        except libvirt.libvirtError:
            logger.debug("closing a broken libvirt connection failed", exc_info=True)

    def _run(self, what: str, body: Callable[[Any], T]) -> T:
        """Run ``body(conn)`` in the calling (worker) thread, translating libvirt errors."""
        conn = None
        try:
            conn = self._connection()
            return body(conn)
        except libvirt.libvirtError as exc:
            if conn is not None and is_connection_error(exc):
                self._drop(conn)
            raise translate(exc, what) from exc

    async def _call(self, what: str, body: Callable[[Any], T]) -> T:
        return await asyncio.to_thread(self._run, what, body)

    # -- host ----------------------------------------------------------------------------------

    async def host_capabilities(self) -> str:
        return await self._call("reading host capabilities", lambda c: str(c.getCapabilities()))

    async def domain_capabilities(self, arch: str, virt_type: str) -> str | None:
        def body(conn: Any) -> str | None:
            try:
                return str(conn.getDomainCapabilities(None, arch, None, virt_type, 0))
            except libvirt.libvirtError as exc:
                if error_code(exc) in NO_SUPPORT:
                    return None  # e.g. the test driver
                raise

        return await self._call(f"reading domain capabilities ({arch}, {virt_type})", body)

    # -- domains -------------------------------------------------------------------------------

    @staticmethod
    def _record(dom: Any) -> DomainRecord:
        return DomainRecord(
            uuid=dom.UUIDString(), name=dom.name(), active=bool(dom.isActive()), xml=dom.XMLDesc(0)
        )

    @staticmethod
    def _lookup_uuid(conn: Any, uuid: str) -> Any:
        try:
            return conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            if error_code(exc) == NO_DOMAIN:
                return None
            raise

    async def domain_by_uuid(self, uuid: str) -> DomainRecord | None:
        def body(conn: Any) -> DomainRecord | None:
            dom = self._lookup_uuid(conn, uuid)
            return None if dom is None else self._record(dom)

        return await self._call(f"looking up domain {uuid}", body)

    async def domain_by_name(self, name: str) -> DomainRecord | None:
        def body(conn: Any) -> DomainRecord | None:
            try:
                dom = conn.lookupByName(name)
            except libvirt.libvirtError as exc:
                if error_code(exc) == NO_DOMAIN:
                    return None
                raise
            return self._record(dom)

        return await self._call(f"looking up domain {name!r}", body)

    async def list_domains(self) -> Sequence[DomainRecord]:
        def body(conn: Any) -> list[DomainRecord]:
            records = []
            for dom in conn.listAllDomains(0):
                try:
                    records.append(self._record(dom))
                except libvirt.libvirtError as exc:
                    if error_code(exc) != NO_DOMAIN:  # undefined while we looked
                        raise
            return records

        return await self._call("listing domains", body)

    async def define_domain(self, xml: str) -> DomainRecord:
        return await self._call("defining a domain", lambda c: self._record(c.defineXML(xml)))

    async def start_domain(self, uuid: str) -> None:
        def body(conn: Any) -> None:
            dom = conn.lookupByUUIDString(uuid)
            if not dom.isActive():
                dom.create()

        await self._call(f"starting domain {uuid}", body)

    async def stop_domain(self, uuid: str) -> bool:
        """Destroy (power off) the domain if it runs or is paused; False when it does not exist."""

        def body(conn: Any) -> bool:
            dom = self._lookup_uuid(conn, uuid)
            if dom is None:
                return False
            if dom.isActive():
                try:
                    dom.destroy()
                except libvirt.libvirtError as exc:
                    if error_code(exc) != libvirt.VIR_ERR_OPERATION_INVALID:  # stopped meanwhile
                        raise
            return True

        return await self._call(f"stopping domain {uuid}", body)

    async def undefine_domain(self, uuid: str) -> bool:
        """Undefine with its NVRAM (plain undefine where that flag is refused); False when gone."""

        def body(conn: Any) -> bool:
            dom = self._lookup_uuid(conn, uuid)
            if dom is None:
                return False
            try:
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            except libvirt.libvirtError as exc:
                if error_code(exc) == NO_DOMAIN:
                    return False
                logger.debug("undefine with NVRAM failed for %s (%s); plain undefine", uuid, exc)
                dom.undefine()
            return True

        return await self._call(f"undefining domain {uuid}", body)

    async def interface_addresses(self, uuid: str, source: AddressSource) -> Sequence[InterfaceAddress]:
        """Addresses from one source; a source the domain or driver cannot serve gives none."""

        def body(conn: Any) -> list[InterfaceAddress]:
            dom = conn.lookupByUUIDString(uuid)
            try:
                found = dom.interfaceAddresses(_SOURCES[source], 0) or {}
            except libvirt.libvirtError as exc:
                if is_connection_error(exc) or error_code(exc) == NO_DOMAIN:
                    raise
                # no guest agent, source unsupported by the driver, domain not running: no answer
                logger.debug("no %s addresses for %s: %s", source, uuid, exc)
                return []
            result = []
            for iface in found.values():
                mac = str(iface.get("hwaddr") or "").lower()
                for entry in iface.get("addrs") or ():
                    try:
                        address = ipaddress.ip_address(str(entry.get("addr", "")))
                    except ValueError:
                        continue
                    result.append(InterfaceAddress(mac=mac, address=address))
            return result

        return await self._call(f"reading {source} addresses of domain {uuid}", body)

    # -- pools, networks, volumes ----------------------------------------------------------------

    @staticmethod
    def _pool(conn: Any, pool: str) -> Any:
        try:
            return conn.storagePoolLookupByName(pool)
        except libvirt.libvirtError as exc:
            if error_code(exc) == NO_POOL:
                raise PermanentProviderError(f"libvirt: storage pool {pool!r} does not exist") from exc
            raise

    async def pool_exists(self, pool: str) -> bool:
        def body(conn: Any) -> bool:
            try:
                conn.storagePoolLookupByName(pool)
            except libvirt.libvirtError as exc:
                if error_code(exc) == NO_POOL:
                    return False
                raise
            return True

        return await self._call(f"looking up storage pool {pool!r}", body)

    async def network_exists(self, network: str) -> bool:
        def body(conn: Any) -> bool:
            try:
                conn.networkLookupByName(network)
            except libvirt.libvirtError as exc:
                if error_code(exc) == NO_NETWORK:
                    return False
                raise
            return True

        return await self._call(f"looking up network {network!r}", body)

    @staticmethod
    def _volume_record(pool: str, vol: Any) -> VolumeRecord:
        fmt = ET.fromstring(vol.XMLDesc(0)).find("./target/format")
        _kind, capacity, _allocation = vol.info()
        return VolumeRecord(
            pool=pool,
            name=vol.name(),
            path=vol.path(),
            capacity=int(capacity),
            format=fmt.get("type", "") if fmt is not None else "",
        )

    @staticmethod
    def _lookup_volume(pool_obj: Any, name: str) -> Any:
        try:
            return pool_obj.storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            if error_code(exc) == NO_VOLUME:
                return None
            raise

    async def volume(self, pool: str, name: str) -> VolumeRecord | None:
        def body(conn: Any) -> VolumeRecord | None:
            vol = self._lookup_volume(self._pool(conn, pool), name)
            return None if vol is None else self._volume_record(pool, vol)

        return await self._call(f"looking up volume {name!r} in pool {pool!r}", body)

    async def create_volume(self, pool: str, xml: str) -> VolumeRecord:
        """Create a volume from XML; an existing volume of that name is returned as it is."""

        def body(conn: Any) -> VolumeRecord:
            pool_obj = self._pool(conn, pool)
            name = ET.fromstring(xml).findtext("name", "")
            vol = self._lookup_volume(pool_obj, name)
            if vol is None:
                try:
                    vol = pool_obj.createXML(xml, 0)
                except libvirt.libvirtError as exc:
                    # drivers disagree on the code for "exists" (VOL_EXIST, OPERATION_FAILED):
                    # a concurrent creator won if the volume is there now
                    if is_connection_error(exc):
                        raise
                    vol = self._lookup_volume(pool_obj, name)
                    if vol is None:
                        raise
            return self._volume_record(pool, vol)

        return await self._call(f"creating a volume in pool {pool!r}", body)

    async def upload_volume(self, pool: str, name: str, data: bytes) -> None:
        """Replace the volume's first ``len(data)`` bytes through a virStream (works over remote URIs)."""
        await self._call(f"uploading volume {name!r}", lambda c: self._upload(c, pool, name, data))

    def _upload(self, conn: Any, pool: str, name: str, data: bytes) -> None:
        vol = self._pool(conn, pool).storageVolLookupByName(name)
        stream = conn.newStream(0)
        try:
            vol.upload(stream, 0, len(data), 0)
            view = memoryview(data)
            while view:
                sent = stream.send(bytes(view[:_UPLOAD_CHUNK]))
                if sent < 0:
                    raise libvirt.libvirtError("stream send failed")
                view = view[sent:]
            stream.finish()
        except BaseException:
            try:
                stream.abort()
            except libvirt.libvirtError:
                logger.debug("aborting the upload stream failed", exc_info=True)
            raise

    async def download_volume(self, pool: str, name: str) -> bytes:
        """The volume's content (used by the tests to read back what was uploaded)."""

        def body(conn: Any) -> bytes:
            vol = self._pool(conn, pool).storageVolLookupByName(name)
            _kind, capacity, _allocation = vol.info()
            stream = conn.newStream(0)
            vol.download(stream, 0, capacity, 0)
            chunks = []
            while True:
                chunk = stream.recv(_UPLOAD_CHUNK)
                if not chunk:
                    break
                chunks.append(bytes(chunk))
            stream.finish()
            return b"".join(chunks)

        return await self._call(f"downloading volume {name!r}", body)

    async def delete_volume(self, pool: str, name: str) -> bool:
        """Delete the volume; False when it (or its pool) does not exist."""

        def body(conn: Any) -> bool:
            try:
                pool_obj = conn.storagePoolLookupByName(pool)
            except libvirt.libvirtError as exc:
                if error_code(exc) == NO_POOL:
                    return False
                raise
            vol = self._lookup_volume(pool_obj, name)
            if vol is None:
                return False
            try:
                vol.delete(0)
            except libvirt.libvirtError as exc:
                if error_code(exc) == NO_VOLUME:
                    return False
                raise
            return True

        return await self._call(f"deleting volume {name!r} from pool {pool!r}", body)

    async def aclose(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.to_thread(self._close, conn)

    @staticmethod
    def _close(conn: Any) -> None:
        try:
            conn.close()
        except libvirt.libvirtError:
            logger.debug("closing the libvirt connection failed", exc_info=True)
