"""Global Tagging and Global Search: owner tags on resources, and the server-side query that finds them.

Shared by both IBM providers.  Tags are attached as ``user`` tags; a search asks
only for the fields the providers read (crn, name, type, tags) and follows the
search cursor until a page comes back short.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from caa_provider_ibmcloud.calls import SdkCalls
from cloud_api_adaptor.errors import TemporaryProviderError

SEARCH_FIELDS = ("crn", "name", "type", "tags", "creation_date")
PAGE = 100


@dataclass(frozen=True)
class SearchHit:
    """One Global Search item."""

    crn: str
    name: str
    type: str
    tags: tuple[str, ...]
    creation_date: str = ""

    @property
    def resource_id(self) -> str:
        """The resource's own id: the CRN's last segment after ``<type>:``."""
        return self.crn.rsplit(":", 1)[-1]


class PlatformPort:
    """Global Tagging and Global Search over the platform-services SDK."""

    def __init__(self, authenticator: Any, tagging_url: str, search_url: str, calls: SdkCalls) -> None:
        from ibm_platform_services.global_search_v2 import GlobalSearchV2
        from ibm_platform_services.global_tagging_v1 import GlobalTaggingV1

        self._tagging = GlobalTaggingV1(authenticator=authenticator)
        self._tagging.set_service_url(tagging_url)
        self._search = GlobalSearchV2(authenticator=authenticator)
        self._search.set_service_url(search_url)
        self._calls = calls

    async def attach_tags(self, crn: str, tags: Sequence[str]) -> None:
        """Attach user tags to one resource (attaching a tag it has is a no-op)."""
        from ibm_platform_services.global_tagging_v1 import Resource

        call = functools.partial(
            self._tagging.attach_tag,
            resources=[Resource(resource_id=crn)],
            tag_names=list(tags),
            tag_type="user",
        )
        result = (await self._calls.call("global tagging attach", call)).get_result() or {}
        failed = [r for r in result.get("results", []) if r.get("is_error")]
        if failed:
            raise TemporaryProviderError(f"global tagging attach: {crn}: {failed[0]}")

    async def search(self, query: str) -> list[SearchHit]:
        """Every resource matching ``query`` (all pages)."""
        return await self._calls.call("global search", functools.partial(self._search_all, query))

    def _search_all(self, query: str) -> list[SearchHit]:
        hits: list[SearchHit] = []
        cursor: str | None = None
        while True:
            if cursor is None:
                page = self._search.search(query=query, fields=list(SEARCH_FIELDS), limit=PAGE).get_result()
            else:
                page = self._search.search(search_cursor=cursor, limit=PAGE).get_result()
            items = page.get("items", [])
            hits.extend(
                SearchHit(
                    crn=str(item.get("crn", "")),
                    name=str(item.get("name", "")),
                    type=str(item.get("type", "")),
                    tags=tuple(str(t) for t in item.get("tags", []) or []),
                    creation_date=str(item.get("creation_date", "") or ""),
                )
                for item in items
            )
            cursor = page.get("search_cursor")
            if not cursor or len(items) < PAGE:
                return hits
