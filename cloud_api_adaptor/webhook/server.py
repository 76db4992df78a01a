"""The webhook's HTTPS server (aiohttp): ``POST /mutate-v1-pod``, and health and metrics on plain HTTP.

The mutation itself is ``mutation.review``; this module only moves JSON and
keeps the certificate current (``certs``).  The API server calls
``/mutate-v1-pod?timeout=10s``: routing is on the path alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from lightkube import AsyncClient
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from cloud_api_adaptor.aio import TaskSupervisor
from cloud_api_adaptor.webhook import certs
from cloud_api_adaptor.webhook.mutation import UnreadablePod, review
from cloud_api_adaptor.webhook.settings import WebhookSettings

logger = logging.getLogger(__name__)

MUTATE_PATH = "/mutate-v1-pod"
#: how often the certificate (files or Secret) and the caBundle are checked
REFRESH_SECONDS = 60.0
MAX_BODY = 8 * 1024 * 1024


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.admissions = Counter(
            "caa_webhook_admissions",
            "Admission requests answered, by outcome (mutated, unchanged, warned, rejected)",
            ["outcome"],
            registry=registry,
        )
        self.seconds = Histogram(
            "caa_webhook_admission_seconds",
            "Time to answer an admission request",
            registry=registry,
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0),
        )


def make_app(settings: WebhookSettings, metrics: WebhookMetrics) -> web.Application:
    config = settings.mutation

    async def mutate(request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            body: Any = json.loads(await request.read())
            if not isinstance(body, dict):
                raise UnreadablePod("the body is not an AdmissionReview")
            answer = review(body, config)
        except (ValueError, UnreadablePod) as exc:
            metrics.admissions.labels("rejected").inc()
            return web.json_response({"error": f"bad AdmissionReview: {exc}"}, status=400)
        response = answer["response"]
        if "warnings" in response:
            outcome = "warned"
            logger.warning("webhook: %s", "; ".join(response["warnings"]))
        else:
            outcome = "mutated" if "patch" in response else "unchanged"
        metrics.admissions.labels(outcome).inc()
        metrics.seconds.observe(time.perf_counter() - started)
        return web.json_response(answer)

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post(MUTATE_PATH, mutate)
    return app


def make_health_app(registry: CollectorRegistry, ready: asyncio.Event) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        return web.Response(text="ok") if ready.is_set() else web.Response(status=503, text="no certificate")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


@dataclass
class WebhookServer:
    """A running webhook; ``port`` and ``health_port`` are the bound ones (useful with port 0)."""

    settings: WebhookSettings
    client: AsyncClient | None
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    refresh_seconds: float = REFRESH_SECONDS
    port: int = 0
    health_port: int = 0
    ca_pem: bytes = b""

    def __post_init__(self) -> None:
        self._certificate = certs.ServerCertificate(self.settings.tls_profile())
        self._supervisor = TaskSupervisor("webhook")
        self._runners: list[web.AppRunner] = []
        self._ready = asyncio.Event()

    @property
    def uses_cert_manager(self) -> bool:
        return self._certificate.load_dir_if_changed(self.settings.cert_dir)

    async def start(self) -> None:
        s = self.settings
        if self.uses_cert_manager:
            self._supervisor.keep_running(self._reload_files, name="webhook-cert-files")
        else:
            if self.client is None:
                raise RuntimeError("the webhook needs the Kubernetes API to manage its own certificate")
            await self._refresh_own_chain()
            self._supervisor.keep_running(self._keep_own_chain, name="webhook-own-cert")
        self._ready.set()
        metrics = WebhookMetrics(self.registry)
        self.port = await self._serve(make_app(s, metrics), s.bind_address, s.port, secure=True)
        if s.health_port >= 0:
            health = make_health_app(self.registry, self._ready)
            self.health_port = await self._serve(health, s.bind_address, s.health_port, secure=False)
        logger.info("webhook: serving %s on %s:%d", MUTATE_PATH, s.bind_address, self.port)

    async def _serve(self, app: web.Application, host: str, port: int, *, secure: bool) -> int:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, host, port, ssl_context=self._certificate.context if secure else None)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only here
        assert isinstance(server, asyncio.base_events.Server)
        return int(server.sockets[0].getsockname()[1])

    async def _refresh_own_chain(self) -> None:
        assert self.client is not None
        s = self.settings
        hosts = certs.service_hosts(s.service_name, s.namespace, s.cert_hosts)
        chain = await certs.shared_chain(self.client, s.cert_secret, s.namespace, hosts)
        if chain.ca_pem != self.ca_pem:
            self._certificate.load_pair(chain.pair)
            self.ca_pem = chain.ca_pem
        if not await certs.patch_ca_bundle(self.client, s.config_name, chain.ca_pem):
            logger.warning("webhook: MutatingWebhookConfiguration %s not found (yet)", s.config_name)

    async def _keep_own_chain(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            await self._refresh_own_chain()

    async def _reload_files(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            self._certificate.load_dir_if_changed(self.settings.cert_dir)

    async def refresh_now(self) -> None:
        """Check the certificate and caBundle at once (tests; the loop does it every ``refresh_seconds``)."""
        await self._refresh_own_chain()

    async def close(self) -> None:
        await self._supervisor.aclose()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()


async def run_webhook(settings: WebhookSettings, client: AsyncClient | None, stop: asyncio.Event) -> None:
    server = WebhookServer(settings, client)
    try:
        await server.start()
        await stop.wait()
    finally:
        await asyncio.shield(server.close())
