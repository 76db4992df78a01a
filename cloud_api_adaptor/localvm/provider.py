"""The local provider: each pod "VM" is a process tree on this machine.

A VM's life, as a cloud would run it:

- ``create_instance`` reserves an id (derived from the idempotency token), its
  addresses and a record on disk (the intent), writes the VM's cidata
  (``user-data`` verbatim, ``meta-data``, empty ``vendor-data``, as libvirt's
  cidata ISO carries them) and its launch spec, starts the guest launcher in a
  session of its own, records the launcher's pid and start time, plugs in its
  NIC (netns mode), and returns once the VM's address is live (a dial is then
  refused at once, never left unanswered), like RunInstances: it does not wait
  for the forwarder (the daemon's agent proxy does that);
- ``delete_instance`` stops every process of the VM, removes its veth, its netns
  name, its files and finally its record;
- ``list_instances`` reads the records, so a provider built after a daemon
  restart finds every VM, and the VMs themselves never noticed the restart.

Everything blocking (files, /proc scans, netlink) runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cloud_api_adaptor
from cloud_api_adaptor.aio import shielded
from cloud_api_adaptor.errors import PermanentProviderError, TemporaryProviderError
from cloud_api_adaptor.localvm.checks import CheckInputs, run_checks
from cloud_api_adaptor.localvm.config import DEVAGENT_MODULE, LocalConfig
from cloud_api_adaptor.localvm.guest import LOG_DIR, SPEC_FILE, STATUS_FILE, LaunchSpec
from cloud_api_adaptor.localvm.netns import NETNS_RUN_DIR
from cloud_api_adaptor.localvm.placement import netns_name, placement_for
from cloud_api_adaptor.localvm.procs import VmIdentity, stop_vm
from cloud_api_adaptor.localvm.records import RecordStore, VmRecord, VmState
from cloud_api_adaptor.provider import (
    CheckResult,
    CreateRequest,
    Instance,
    InstanceTypeInfo,
    Provider,
    ProviderContext,
)

logger = logging.getLogger(__name__)

GUEST_MODULE = "cloud_api_adaptor.localvm.guest"


class LocalProvider(Provider):
    """Pod VMs as local process trees, in namespaces of their own when root."""

    max_name_length = 63
    userdata_limit = None

    def __init__(self, config: LocalConfig, context: ProviderContext) -> None:
        self.config = config
        self.context = context
        self.default_instance_type = config.default_instance_type
        self.instance_types = tuple(t.name for t in config.catalogue)
        self.records = RecordStore(context.work_dir / "records")
        self.vms_dir = context.work_dir / "vms"
        self._reserve_lock = asyncio.Lock()
        self.placement = placement_for(config, context.work_dir, context.forwarder_port)
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        bin_dir = str(Path(config.programs.python).parent)
        self._env = {
            "PATH": f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            # so ``python -m`` finds this package even when it runs from a source tree
            "PYTHONPATH": str(Path(cloud_api_adaptor.__file__).resolve().parent.parent),
        }

    # -- naming ---------------------------------------------------------------------------------------

    def instance_id(self, token: str) -> str:
        """Stable for a token (idempotency), distinct between work directories (two daemons, one machine)."""
        digest = hashlib.sha256(f"{self.context.work_dir}\0{token}".encode()).hexdigest()
        return f"local-{digest[:10]}"

    @staticmethod
    def netns_name(vm_id: str) -> str:
        """Also the host-side veth name: at most 15 bytes, as link names must be."""
        return netns_name(vm_id)

    def vm_dir(self, vm_id: str) -> Path:
        return self.vms_dir / vm_id

    def _lock(self, vm_id: str) -> asyncio.Lock:
        lock = self._locks.get(vm_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[vm_id] = lock
        return lock

    # -- Provider -------------------------------------------------------------------------------------

    async def create_instance(self, request: CreateRequest) -> Instance:
        vm_id = self.instance_id(request.token)
        lock = self._lock(vm_id)
        async with lock:
            record = await asyncio.to_thread(self.records.get, vm_id)
            if record is not None:
                if record.token != request.token:
                    raise PermanentProviderError(f"local VM id {vm_id} collides with another token")
                if record.state is VmState.LAUNCHED:
                    return _instance(record)
                if record.state is VmState.DELETING:
                    raise TemporaryProviderError(f"local VM {vm_id} is being deleted", retry_after=1.0)
                # An interrupted create (the daemon died before recording the launch): undo
                # whatever it left, found through the launcher's own status file, and redo it.
                logger.info("local VM %s: redoing an interrupted create", vm_id)
                await shielded(asyncio.to_thread(self._teardown, record))
            record = await self._reserve(vm_id, request)
            try:
                record = await self._launch(record, request)
            except BaseException:
                await shielded(self._undo(record))
                raise
        logger.info("local VM %s (%s) launched at %s", vm_id, request.name, record.address)
        return _instance(record)

    async def delete_instance(self, instance_id: str) -> None:
        lock = self._lock(instance_id)
        async with lock:
            record = await asyncio.to_thread(self.records.get, instance_id)
            if record is None:
                return  # never ours, or already gone: deleted either way
            if record.state is not VmState.DELETING:
                record = record.evolve(state=VmState.DELETING)
                await asyncio.to_thread(self.records.put, record)
            await shielded(asyncio.to_thread(self._teardown, record))
        logger.info("local VM %s deleted", instance_id)

    async def list_instances(self, owner_tags: Mapping[str, str]) -> Sequence[Instance]:
        records = await asyncio.to_thread(self.records.all)
        wanted = dict(owner_tags)
        return [_instance(r) for r in records if all(r.tags.get(k) == v for k, v in wanted.items())]

    async def verify(self) -> Sequence[CheckResult]:
        inputs = CheckInputs(
            config=self.config,
            work_dir=self.context.work_dir,
            dirs=(self.vms_dir, self.records.root),
            own_links=lambda: {r.host_ifname for r in self.records.all() if r.host_ifname},
            endpoint=self.tunnel_endpoint(),
        )
        return await asyncio.to_thread(run_checks, inputs)

    async def describe_instance_types(self) -> Sequence[InstanceTypeInfo]:
        return self.config.catalogue

    async def aclose(self) -> None:
        """Nothing to release; running VMs are left alone (the daemon may only be restarting)."""

    # -- the pod network tunnel ---------------------------------------------------------------------

    def tunnel_endpoint(self) -> ipaddress.IPv4Address | None:
        """``TunnelEndpointProvider``: the node's tunnel address on this provider's own subnet (netns mode).

        Loopback VMs share the host's namespaces and cannot carry a tunnel: None.
        """
        return self.placement.tunnel_endpoint()

    # -- create steps ---------------------------------------------------------------------------------

    async def _reserve(self, vm_id: str, request: CreateRequest) -> VmRecord:
        """Allocate addresses and persist the intent, serialised so two VMs never get one address."""
        async with self._reserve_lock:
            return await asyncio.to_thread(self._reserve_sync, vm_id, request)

    def _reserve_sync(self, vm_id: str, request: CreateRequest) -> VmRecord:
        records = self.records.all()
        record = VmRecord(
            id=vm_id,
            name=request.name,
            token=request.token,
            sandbox_id=request.sandbox_id,
            mode=self.placement.mode,
            address="",
            created_at=time.time(),
            tags=dict(request.tags),
            spec=asdict(request.spec),
        )
        record = self.placement.place(record, records)
        self.records.put(record)
        return record

    async def _launch(self, record: VmRecord, request: CreateRequest) -> VmRecord:
        spec = self.launch_spec(record)
        await asyncio.to_thread(self._write_vm_files, record, request, spec)
        proc = await self._start_guest(record)
        try:
            async with asyncio.timeout(self.config.launch_timeout):
                assert proc.stdout is not None
                identity = _report(record, await proc.stdout.readline(), expect="pid")
                record = record.evolve(pid=int(identity["pid"]), start_time=int(identity["start_time"]))
                # Shielded: a timeout or cancellation must not undo the VM while a thread still builds it.
                await shielded(asyncio.to_thread(self.records.put, record))
                await shielded(asyncio.to_thread(self.placement.plug, record))
                _report(record, await proc.stdout.read(), expect="ready")  # once the VM's address is live
        except TimeoutError:
            raise TemporaryProviderError(
                f"local VM {record.id} did not start within {self.config.launch_timeout:g}s"
            ) from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()  # the launcher's short-lived parent, never the VM
                await shielded(proc.wait())
        record = record.evolve(state=VmState.LAUNCHED)
        await asyncio.to_thread(self.records.put, record)
        return record

    def launch_spec(self, record: VmRecord) -> LaunchSpec:
        """The launcher's instructions: the real default paths in netns mode, per-VM paths on loopback."""
        cfg = self.config
        vm_dir = self.vm_dir(record.id)
        paths = self.placement.guest_paths(record, vm_dir)
        sock = paths.agent_socket
        # the built-in agent writes the guest's files below the VM's own root: "/" when the VM has
        # its own mounts (netns), its directory on loopback, where it shares the host's
        guest_root = "/" if self.placement.mode == "netns" else str(vm_dir / "root")
        agent = cfg.programs.agent or (
            cfg.programs.python,
            "-m",
            DEVAGENT_MODULE,
            "--socket",
            sock,
            "--root",
            guest_root,
        )
        return LaunchSpec(
            vm_id=record.id,
            name=record.name,
            mode=self.placement.mode,
            vm_dir=str(vm_dir),
            agent_socket=sock,
            process_user_data=paths.process_user_data,
            agent=tuple(agent),
            forwarder=(*paths.forwarder, *cfg.forwarder_extra_args),
            env=dict(self._env),
            agent_env={"KATA_AGENT_SERVER_ADDR": f"unix://{sock}"},
            boot_delay=cfg.boot_delay,
            agent_socket_timeout=cfg.agent_socket_timeout,
            stop_timeout=cfg.stop_timeout,
            netns_path=str(NETNS_RUN_DIR / record.netns) if record.netns else None,
            cidata_dir=paths.cidata_dir,
            vm_address=paths.vm_address,
            host_address=record.host_address,
            prefixlen=record.prefixlen,
        )

    def _write_vm_files(self, record: VmRecord, request: CreateRequest, spec: LaunchSpec) -> None:
        vm_dir = self.vm_dir(record.id)
        try:
            for sub in ("cidata", LOG_DIR, "root"):
                (vm_dir / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
            _write(vm_dir / "cidata" / "user-data", request.userdata.encode())
            _write(
                vm_dir / "cidata" / "meta-data",
                f"instance-id: {record.id}\nlocal-hostname: {record.name}\n".encode(),
            )
            _write(vm_dir / "cidata" / "vendor-data", b"")
            _write(vm_dir / SPEC_FILE, spec.to_json())
        except OSError as exc:
            raise TemporaryProviderError(f"cannot write local VM {record.id} files: {exc}") from exc

    async def _start_guest(self, record: VmRecord) -> asyncio.subprocess.Process:
        """Start the launcher; it detaches at once and reports on stdout (see ``guest.main``)."""
        vm_dir = self.vm_dir(record.id)
        try:
            with open(vm_dir / LOG_DIR / "guest.log", "ab") as log:
                return await asyncio.create_subprocess_exec(
                    self.config.programs.python,
                    "-m",
                    GUEST_MODULE,
                    str(vm_dir / SPEC_FILE),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log,
                    cwd=vm_dir,
                    env=self._env,
                )
        except OSError as exc:
            raise PermanentProviderError(f"cannot start local VM {record.id}: {exc}") from exc

    async def _undo(self, record: VmRecord) -> None:
        """A failed create leaves nothing behind; if even that fails, the record stays for a later delete."""
        try:
            await asyncio.to_thread(self._teardown, record)
        except Exception:
            logger.exception("local VM %s: cleanup after a failed create failed; it stays listed", record.id)

    # -- delete ---------------------------------------------------------------------------------------

    def _teardown(self, record: VmRecord) -> None:
        """Stop the processes, unplug, unname the netns, remove the files, and last the record."""
        vm_dir = self.vm_dir(record.id)
        pid, start_time = record.pid, record.start_time
        if pid is None:  # crashed between launch and record update: the launcher wrote its own identity
            pid, start_time = _status_identity(vm_dir / STATUS_FILE)
        netns_path = NETNS_RUN_DIR / record.netns if record.netns else None
        left = stop_vm(VmIdentity.resolve(pid, start_time, netns_path), timeout=self.config.stop_timeout)
        if left:
            raise TemporaryProviderError(
                f"local VM {record.id}: processes {left} did not exit", retry_after=5.0
            )
        if record.host_ifname:
            from pyroute2.netlink.exceptions import NetlinkError

            from cloud_api_adaptor.localvm import netns

            try:
                netns.remove_link(record.host_ifname)
            except (OSError, NetlinkError) as exc:
                raise TemporaryProviderError(f"cannot remove link {record.host_ifname}: {exc}") from exc
            if netns_path is not None:
                netns.remove_netns(netns_path)
        try:
            shutil.rmtree(vm_dir)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise TemporaryProviderError(f"cannot remove {vm_dir}: {exc}") from exc
        self.records.remove(record.id)
        self.placement.released(record, self.records.all)


def _instance(record: VmRecord) -> Instance:
    return Instance(
        id=record.id,
        name=record.name,
        ips=(ipaddress.IPv4Address(record.address),),
        tags=dict(record.tags),
        created_at=record.created_at,
    )


def _report(record: VmRecord, raw: bytes, *, expect: str) -> dict[str, Any]:
    """The launcher's last JSON line; an error report (or none at all) means the VM did not start."""
    lines = raw.decode(errors="replace").strip().splitlines()
    try:
        body = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        body = {}
    if not isinstance(body, dict) or expect not in body:
        reason = body.get("error") if isinstance(body, dict) else None
        where = f"see {record.id}/logs/guest.log"
        raise PermanentProviderError(f"local VM {record.id} failed to start: {reason or where}")
    return body


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _status_identity(path: Path) -> tuple[int | None, int | None]:
    try:
        body = json.loads(path.read_bytes())
        return int(body["pid"]), int(body["start_time"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, None
