"""The narrow Compute Engine port ``GcpProvider`` uses, and its google-cloud-compute adapter.

``ComputePort`` lists only the calls the provider makes, with camelCase dicts as
they are on the wire, so a test can stand in any implementation.
``GoogleCompute`` drives the real REST clients, each blocking call on its own
thread pool, and translates every exception at this edge (``errors.translate``).

The client's own retries are off (``retry=None`` on every call): ``retry.RetryPolicy``
is the one retry policy, and an insert is only ever resent with the same
``requestId``.  ``insert``/``delete`` use the ``*_unary`` forms, whose answer is the
zone operation; the provider waits for it with ``zoneOperations.wait`` on the
configured endpoint (the extended-operation helpers would poll the public one).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from caa_provider_gcp.config import GcpConfig
from caa_provider_gcp.errors import translate
from cloud_api_adaptor.errors import ConfigError, PermanentProviderError

T = TypeVar("T")
Json = dict[str, Any]

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
#: per-call HTTP timeout (seconds); ``zoneOperations.wait`` itself answers within about two minutes
CALL_TIMEOUT = 60.0
WAIT_TIMEOUT = 150.0

_IMAGE = re.compile(r"(?:https://[^/]+/compute/v1/)?projects/([^/]+)/global/images/(family/)?([^/]+)$")
_NETWORK = re.compile(r"(?:https://[^/]+/compute/v1/)?projects/([^/]+)/global/networks/([^/]+)$")
_SUBNETWORK = re.compile(
    r"(?:https://[^/]+/compute/v1/)?projects/([^/]+)/regions/([^/]+)/subnetworks/([^/]+)$"
)


class ComputePort(Protocol):
    """The Compute Engine calls the GCP provider makes; every error is one of ours."""

    async def insert_instance(self, body: Json, request_id: str) -> Json:
        """instances.insert; the zone operation."""
        ...

    async def wait_operation(self, name: str) -> Json:
        """zoneOperations.wait: the operation once done, or as it stands after the server's wait."""
        ...

    async def get_instance(self, name: str) -> Json: ...

    async def delete_instance(self, name: str, request_id: str) -> Json: ...

    async def list_instances(self, filter_: str) -> list[Json]:
        """instances.list in the zone, every page."""
        ...

    async def get_machine_type(self, name: str) -> Json: ...

    async def get_image(self, url: str) -> Json:
        """images.get, or images.getFromFamily for ``.../images/family/<f>``."""
        ...

    async def get_project(self) -> Json: ...

    async def get_zone(self) -> Json: ...

    async def get_region(self) -> Json: ...

    async def get_network(self, url: str) -> Json: ...

    async def get_subnetwork(self, url: str) -> Json: ...

    async def aclose(self) -> None: ...


def make_credentials(config: GcpConfig) -> Any:
    """The service account key from ``GCP_CREDENTIALS`` (in memory only), else application default."""
    import google.auth
    from google.oauth2 import service_account

    try:
        if config.credentials:
            info = json.loads(config.credentials)
            if info.get("type") == "service_account":
                return service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                    info, scopes=list(SCOPES)
                )
            credentials, _ = google.auth.load_credentials_from_dict(  # type: ignore[no-untyped-call]
                info, scopes=list(SCOPES)
            )
            return credentials
        credentials, _ = google.auth.default(scopes=list(SCOPES))
        return credentials
    except ValueError as exc:
        # the message of a malformed key names fields, never their values
        raise ConfigError("GCP_CREDENTIALS", f"unusable credentials: {type(exc).__name__}") from None
    except Exception as exc:
        raise translate(exc, "credentials") from exc


def _json(message: Any) -> Json:
    """A proto-plus message as the camelCase JSON object it was on the wire."""
    text = type(message).to_json(message, use_integers_for_enums=False)
    return dict(json.loads(text))


def _match(pattern: re.Pattern[str], url: str, what: str) -> tuple[str, ...]:
    found = pattern.search(url)
    if found is None:
        raise PermanentProviderError(f"cannot parse {what} {url!r}")
    return found.groups()


def _widen_pool(client: Any, size: int) -> None:
    """Keep up to ``size`` connections per host (requests keeps 10): a burst of pod creates
    would otherwise open, and throw away, a connection per call beyond ten."""
    import requests.adapters

    session = getattr(client.transport, "_session", None)
    if session is None:
        return
    for prefix in ("https://", "http://"):
        session.mount(prefix, requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=size))


class GoogleCompute:
    """``ComputePort`` over the google-cloud-compute REST clients."""

    def __init__(self, config: GcpConfig, credentials: Any, *, max_workers: int = 32) -> None:
        from google.api_core.client_options import ClientOptions
        from google.cloud import compute_v1

        self._compute = compute_v1
        self._project = config.project_id
        self._zone = config.zone
        self._region = config.region
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="gce")
        options = ClientOptions(api_endpoint=config.compute_endpoint)

        def client(cls: Any) -> Any:
            made = cls(credentials=credentials, transport="rest", client_options=options)
            _widen_pool(made, max_workers)
            return made

        self._instances = client(compute_v1.InstancesClient)
        self._operations = client(compute_v1.ZoneOperationsClient)
        self._machine_types = client(compute_v1.MachineTypesClient)
        self._images = client(compute_v1.ImagesClient)
        self._projects = client(compute_v1.ProjectsClient)
        self._zones = client(compute_v1.ZonesClient)
        self._regions = client(compute_v1.RegionsClient)
        self._networks = client(compute_v1.NetworksClient)
        self._subnetworks = client(compute_v1.SubnetworksClient)

    async def _call(self, operation: str, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn)
        except Exception as exc:
            raise translate(exc, operation) from exc

    def _where(self) -> dict[str, str]:
        return {"project": self._project, "zone": self._zone}

    async def insert_instance(self, body: Json, request_id: str) -> Json:
        c = self._compute
        request = c.InsertInstanceRequest(
            **self._where(),
            instance_resource=c.Instance.from_json(json.dumps(body)),
            request_id=request_id,
        )
        return _json(
            await self._call(
                "instances.insert",
                lambda: self._instances.insert_unary(request=request, retry=None, timeout=CALL_TIMEOUT),
            )
        )

    async def wait_operation(self, name: str) -> Json:
        return _json(
            await self._call(
                "zoneOperations.wait",
                lambda: self._operations.wait(
                    **self._where(), operation=name, retry=None, timeout=WAIT_TIMEOUT
                ),
            )
        )

    async def get_instance(self, name: str) -> Json:
        return _json(
            await self._call(
                "instances.get",
                lambda: self._instances.get(**self._where(), instance=name, retry=None, timeout=CALL_TIMEOUT),
            )
        )

    async def delete_instance(self, name: str, request_id: str) -> Json:
        request = self._compute.DeleteInstanceRequest(**self._where(), instance=name, request_id=request_id)
        return _json(
            await self._call(
                "instances.delete",
                lambda: self._instances.delete_unary(request=request, retry=None, timeout=CALL_TIMEOUT),
            )
        )

    async def list_instances(self, filter_: str) -> list[Json]:
        request = self._compute.ListInstancesRequest(**self._where(), filter=filter_)

        def every_page() -> list[Json]:
            pager = self._instances.list(request=request, retry=None, timeout=CALL_TIMEOUT)
            return [_json(item) for item in pager]

        return await self._call("instances.list", every_page)

    async def get_machine_type(self, name: str) -> Json:
        return _json(
            await self._call(
                "machineTypes.get",
                lambda: self._machine_types.get(
                    **self._where(), machine_type=name, retry=None, timeout=CALL_TIMEOUT
                ),
            )
        )

    async def get_image(self, url: str) -> Json:
        project, family, name = _match(_IMAGE, url, "image")
        if family:
            return _json(
                await self._call(
                    "images.getFromFamily",
                    lambda: self._images.get_from_family(
                        project=project, family=name, retry=None, timeout=CALL_TIMEOUT
                    ),
                )
            )
        return _json(
            await self._call(
                "images.get",
                lambda: self._images.get(project=project, image=name, retry=None, timeout=CALL_TIMEOUT),
            )
        )

    async def get_project(self) -> Json:
        return _json(
            await self._call(
                "projects.get",
                lambda: self._projects.get(project=self._project, retry=None, timeout=CALL_TIMEOUT),
            )
        )

    async def get_zone(self) -> Json:
        return _json(
            await self._call(
                "zones.get",
                lambda: self._zones.get(**self._where(), retry=None, timeout=CALL_TIMEOUT),
            )
        )

    async def get_region(self) -> Json:
        return _json(
            await self._call(
                "regions.get",
                lambda: self._regions.get(
                    project=self._project, region=self._region, retry=None, timeout=CALL_TIMEOUT
                ),
            )
        )

    async def get_network(self, url: str) -> Json:
        project, name = _match(_NETWORK, url, "network")
        return _json(
            await self._call(
                "networks.get",
                lambda: self._networks.get(project=project, network=name, retry=None, timeout=CALL_TIMEOUT),
            )
        )

    async def get_subnetwork(self, url: str) -> Json:
        project, region, name = _match(_SUBNETWORK, url, "subnetwork")
        return _json(
            await self._call(
                "subnetworks.get",
                lambda: self._subnetworks.get(
                    project=project, region=region, subnetwork=name, retry=None, timeout=CALL_TIMEOUT
                ),
            )
        )

    async def aclose(self) -> None:
        """Close the HTTP sessions and the worker threads."""
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        for client in (
            self._instances,
            self._operations,
            self._machine_types,
            self._images,
            self._projects,
            self._zones,
            self._regions,
            self._networks,
            self._subnetworks,
        ):
            client.transport.close()
