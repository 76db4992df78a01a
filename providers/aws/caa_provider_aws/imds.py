"""The EC2 instance metadata service (IMDSv2), read to fill unset settings on EC2.

When the daemon runs on an EC2 worker, an unset region, subnet, security groups
or key pair default to the worker's own (the Go version does the same).  IMDSv2
means a session token from ``PUT /latest/api/token`` first, then reads carrying it.

Not being on EC2 is normal (a laptop, another cloud): an unreachable service
yields ``None`` quickly, never an error.  Proxies from the environment are
ignored, since the service is link-local.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass

from caa_provider_aws.config import AwsConfig

logger = logging.getLogger(__name__)

TOKEN_PATH = "/latest/api/token"
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"


@dataclass(frozen=True)
class ImdsFacts:
    """What the metadata service says about this worker (empty strings when it does not say)."""

    region: str = ""
    subnet_id: str = ""
    security_group_ids: tuple[str, ...] = ()
    key_name: str = ""


class ImdsClient:
    """A minimal IMDSv2 reader; ``base_url`` is injectable for tests."""

    def __init__(self, base_url: str, *, timeout: float = 1.0, token_ttl: int = 300) -> None:
        self._base = base_url.rstrip("/")
        self._timeout = timeout
        self._token_ttl = token_ttl
        # the service is link-local: never route it through an HTTP proxy from the environment
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    async def facts(self) -> ImdsFacts | None:
        """The worker's region, subnet, security groups and key, or None when not on EC2."""
        return await asyncio.to_thread(self._facts)

    def _facts(self) -> ImdsFacts | None:
        try:
            token = self._request("PUT", TOKEN_PATH, {TOKEN_TTL_HEADER: str(self._token_ttl)})
        except (OSError, urllib.error.URLError) as exc:
            logger.debug("instance metadata unreachable at %s (%s): not on EC2", self._base, exc)
            return None
        if token is None:
            logger.warning("instance metadata at %s refused a session token", self._base)
            return None

        def read(path: str) -> str:
            try:
                return (
                    self._request("GET", "/latest/meta-data/" + path, {TOKEN_HEADER: token}) or ""
                ).strip()
            except (OSError, urllib.error.URLError) as exc:
                logger.warning("instance metadata read %s failed: %s", path, exc)
                return ""

        mac = read("mac")
        base = f"network/interfaces/macs/{mac}/" if mac else ""
        keys = read("public-keys/")
        return ImdsFacts(
            region=read("placement/region"),
            subnet_id=read(base + "subnet-id") if base else "",
            security_group_ids=tuple(read(base + "security-group-ids").split()) if base else (),
            key_name=_first_key_name(keys),
        )

    def _request(self, method: str, path: str, headers: dict[str, str]) -> str | None:
        """The body of a 200 answer; None for a 4xx (e.g. no key pair), OSError for no answer."""
        req = urllib.request.Request(self._base + path, method=method, headers=headers)
        try:
            with self._opener.open(req, timeout=self._timeout) as response:
                return bytes(response.read()).decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code >= 500:
                raise OSError(f"metadata service answered {exc.code}") from exc
            return None


def _first_key_name(listing: str) -> str:
    """``0=my-key`` lines of ``public-keys/``: the name of key 0."""
    for line in listing.splitlines():
        index, sep, name = line.partition("=")
        if sep and index.strip() == "0":
            return name.strip()
    return ""


async def fill_from_imds(config: AwsConfig, client: ImdsClient) -> AwsConfig:
    """``config`` with unset region/subnet/security groups/key taken from the metadata service."""
    if not config.needs_metadata():
        return config
    facts = await client.facts()
    if facts is None:
        return config
    filled = config.with_defaults(
        region=facts.region,
        subnet_id=facts.subnet_id,
        security_group_ids=facts.security_group_ids,
        key_name=facts.key_name,
    )
    if filled != config:
        logger.info(
            "from instance metadata: region=%s subnet=%s security groups=%s key=%s",
            filled.region,
            filled.subnet_id,
            ",".join(filled.security_group_ids),
            filled.key_name,
        )
    return filled
