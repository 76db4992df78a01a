"""The provider against a real libvirtd with qemu (TCG, domain type ``qemu``).

The module starts its own ``virtlogd`` + ``libvirtd`` as root in private network
and mount namespaces (``PrivateLibvirtd``), with a transient isolated network
(192.0.2.0/24, no forward: nothing leaves the namespace), a transient dir pool
and a tiny empty qcow2 base volume.  Domains are defined and really started; no
OS boots, so the DHCP lease the pod VM would get is written the way libvirt's
lease helper would (a stand-in for dnsmasq).  Everything goes away with the
daemon: pool, network and volumes live only in its namespaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import libvirt
import pytest
from caa_provider_libvirt import (
    AddressPolicy,
    InstanceAddressTimeout,
    LibvirtConfig,
    LibvirtConnection,
    LibvirtProvider,
)
from caa_provider_libvirt.domain import domain_mac, domain_uuid
from caa_provider_libvirt.seed_iso import read_cidata_iso
from caa_provider_libvirt.testing import PrivateLibvirtd

from cloud_api_adaptor.errors import PermanentProviderError
from cloud_api_adaptor.provider import TAG_CLUSTER, TAG_NODE, TAG_SANDBOX, CreateRequest, InstanceSpec

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: starts libvirtd and makes a network namespace"),
]

NETWORK = "caa-test-net"
BRIDGE = "caatest0"
POOL = "caa-test-pool"
BASE = "podvm-base.qcow2"
VM_IP = "192.0.2.10"


@dataclass
class Libvirtd:
    daemon: PrivateLibvirtd
    conn: Any

    @property
    def uri(self) -> str:
        return self.daemon.uri

    def volumes(self) -> set[str]:
        return set(self.conn.storagePoolLookupByName(POOL).listVolumes())

    def domains(self) -> list[Any]:
        return list(self.conn.listAllDomains())


@pytest.fixture(scope="module")
def libvirtd() -> Iterator[Libvirtd]:
    daemon = PrivateLibvirtd()
    daemon.start()
    try:
        libvirt.registerErrorHandler(lambda _c, _e: None, None)
        conn = libvirt.open(daemon.uri)
        try:
            conn.networkCreateXML(
                f"<network><name>{NETWORK}</name><bridge name='{BRIDGE}' stp='off'/><dns enable='no'/>"
                "<ip address='192.0.2.1' prefix='24'/></network>"
            )
            pool = conn.storagePoolCreateXML(
                f"<pool type='dir'><name>{POOL}</name>"
                f"<target><path>/var/lib/libvirt/images/{POOL}</path></target></pool>",
                libvirt.VIR_STORAGE_POOL_CREATE_WITH_BUILD,
            )
            pool.createXML(
                f"<volume><name>{BASE}</name><capacity unit='MiB'>64</capacity>"
                "<target><format type='qcow2'/></target></volume>",
                0,
            )
            yield Libvirtd(daemon, conn)
        finally:
            for dom in conn.listAllDomains():  # whatever a failed test left behind
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
            for name in (POOL,):
                with contextlib.suppress(libvirt.libvirtError):
                    conn.storagePoolLookupByName(name).destroy()
            with contextlib.suppress(libvirt.libvirtError):
                conn.networkLookupByName(NETWORK).destroy()
            conn.close()
    finally:
        daemon.stop()


@pytest.fixture(autouse=True)
def _leave_the_daemon_clean(libvirtd: Libvirtd) -> Iterator[None]:
    """Whatever a failing test left (domains, volumes) must not break the next one."""
    yield
    for dom in libvirtd.domains():
        if dom.isActive():
            dom.destroy()
        dom.undefine()
    pool = libvirtd.conn.storagePoolLookupByName(POOL)
    for name in libvirtd.volumes() - {BASE}:
        pool.storageVolLookupByName(name).delete(0)


def config(uri: str, attempts: int = 600, interval: float = 0.05) -> LibvirtConfig:
    return LibvirtConfig(
        uri=uri,
        pool=POOL,
        network=NETWORK,
        vol_name=BASE,
        efi_firmware="",  # no OVMF here: SeaBIOS
        vcpus=1,
        memory_mib=128,
        root_disk_gib=1,
        # no domain type: chosen from the capabilities, and this libvirtd sees no KVM (TCG, 'qemu')
        address_policy=AddressPolicy(attempts=attempts, interval=interval),
    )


def make_request(token: str, name: str) -> CreateRequest:
    return CreateRequest(
        name=name,
        sandbox_id=f"sandbox-{token}",
        token=token,
        spec=InstanceSpec(),
        userdata="#cloud-config\nwrite_files:\n  - path: /run/peerpod/apf.json\n    content: |\n      {}\n",
        tags={TAG_CLUSTER: "c1", TAG_NODE: "n1", TAG_SANDBOX: f"sandbox-{token}"},
    )


@pytest.mark.asyncio
async def test_create_starts_a_qemu_domain_with_the_seed_and_delete_leaves_nothing(
    libvirtd: Libvirtd,
) -> None:
    provider = LibvirtProvider(config(libvirtd.uri), LibvirtConnection(libvirtd.uri))
    reader = LibvirtConnection(libvirtd.uri)
    request = make_request("lifecycle-1", "podvm-lifecycle")
    dom_id = domain_uuid(request.token)
    try:
        creating = asyncio.create_task(provider.create_instance(request))

        # the guest runs no OS: once qemu runs, hand out the lease dnsmasq would have given it
        async def running() -> bool:
            record = await reader.domain_by_uuid(dom_id)
            return (record is not None and record.active) or creating.done()

        for _ in range(2000):  # bounded: 20 s
            if await running():
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("qemu never ran the domain")
        libvirtd.daemon.write_dhcp_lease(BRIDGE, domain_mac(dom_id), VM_IP, request.name)
        instance = await creating

        assert instance.id == dom_id
        assert [str(ip) for ip in instance.ips] == [VM_IP]
        dom = libvirtd.conn.lookupByUUIDString(dom_id)
        assert dom.isActive()
        xml = ET.fromstring(dom.XMLDesc(0))
        assert xml.get("type") == "qemu"
        cdrom = xml.find("./devices/disk[@device='cdrom']/source")
        assert cdrom is not None and cdrom.get("volume") == "podvm-lifecycle-cloudinit.iso"
        root_disk = xml.find("./devices/disk[@device='disk']")
        assert root_disk is not None
        backing = root_disk.find("./backingStore/source")
        assert backing is not None and backing.get("file", "").endswith(f"/{BASE}")
        assert libvirtd.volumes() == {BASE, "podvm-lifecycle-root.qcow2", "podvm-lifecycle-cloudinit.iso"}
        label, files = read_cidata_iso(await reader.download_volume(POOL, "podvm-lifecycle-cloudinit.iso"))
        assert label == "cidata"
        assert files["user-data"] == request.userdata.encode()
        assert files["meta-data"] == b"local-hostname: podvm-lifecycle\n"

        again = await provider.create_instance(request)
        assert again.id == dom_id and len(libvirtd.domains()) == 1

        await provider.delete_instance(dom_id)
        assert libvirtd.domains() == []
        assert libvirtd.volumes() == {BASE}
        daemons = {libvirtd.daemon.pid_of("libvirtd"), libvirtd.daemon.pid_of("virtlogd")}
        assert set(libvirtd.daemon.netns_pids()) <= daemons | {libvirtd.daemon.shell_pid}, "qemu still runs"
    finally:
        await provider.aclose()
        await reader.aclose()


@pytest.mark.asyncio
async def test_a_domain_that_gets_no_address_is_reported_and_deletable(libvirtd: Libvirtd) -> None:
    provider = LibvirtProvider(
        config(libvirtd.uri, attempts=3, interval=0.01), LibvirtConnection(libvirtd.uri)
    )
    request = make_request("no-ip-1", "podvm-no-ip")
    try:
        with pytest.raises(InstanceAddressTimeout) as info:
            await provider.create_instance(request)
        assert info.value.instance is not None
        assert libvirtd.conn.lookupByUUIDString(info.value.instance.id).isActive()
        listed = await provider.list_instances({TAG_SANDBOX: request.sandbox_id})
        assert [i.id for i in listed] == [info.value.instance.id]
        await provider.delete_instance(info.value.instance.id)
        assert libvirtd.domains() == []
        assert libvirtd.volumes() == {BASE}
    finally:
        await provider.aclose()


@pytest.mark.asyncio
async def test_verify_passes_and_sev_snp_is_refused_on_this_host(libvirtd: Libvirtd) -> None:
    provider = LibvirtProvider(config(libvirtd.uri), LibvirtConnection(libvirtd.uri))
    try:
        checks = await provider.verify()
        assert [c for c in checks if not c.ok] == []
    finally:
        await provider.aclose()
    cvm = LibvirtConfig(**{**config(libvirtd.uri).__dict__, "disable_cvm": False})
    provider = LibvirtProvider(cvm, LibvirtConnection(libvirtd.uri))
    try:
        with pytest.raises(PermanentProviderError, match="sev-snp"):
            await provider.create_instance(make_request("cvm-1", "podvm-cvm"))
        assert libvirtd.domains() == []
    finally:
        await provider.aclose()
