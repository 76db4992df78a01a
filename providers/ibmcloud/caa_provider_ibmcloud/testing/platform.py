"""Fake Global Tagging and Global Search over one index of tagged resources.

The VPC and PowerVS fakes register the resources they create (instances, boot
volumes) with their CRN, name, type and user tags; ``/v3/tags/attach`` adds tags
(refusing tag names outside IBM's grammar or over 128 characters, and resources
that do not exist), and ``/v3/resources/search`` answers a Lucene subset:
``field:value`` / ``field:"value"`` terms joined by ``AND``, with parenthesised
``OR`` groups, over ``family``, ``type``, ``name``, ``crn`` and ``tags``.
Anything else is refused (400), so a provider cannot send a query this fake
would silently misread.  Results page with a search cursor.

Not modelled: indexing lag (the real index trails changes by seconds to
minutes; here a change is searchable at once and a deleted resource leaves the
index when its delete is accepted), access and service tags, tag
detach/delete, accounts, ``is_deleted``/``is_reclaimed``, sorting.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from caa_provider_ibmcloud.testing.server import FakeServer, Refusal, Reply, Request

TAG_GRAMMAR = re.compile(r"^[A-Za-z0-9:_ .-]{1,128}$")
SEARCHABLE = frozenset({"family", "type", "name", "crn", "tags"})
_TERM = re.compile(r'^(?P<field>[a-z_]+):(?:"(?P<quoted>[^"\\]*)"|(?P<bare>[^\s()"]+))$')


@dataclass
class Doc:
    crn: str
    name: str
    type: str
    family: str
    creation_date: str
    tags: set[str] = field(default_factory=set)

    def value(self, name: str) -> Iterable[str]:
        if name == "tags":
            return self.tags
        return (str(getattr(self, name)),)


def check_tag(tag: str) -> str:
    if not TAG_GRAMMAR.match(tag):
        raise Refusal(
            400, "invalid_tag", f"tag {tag!r} is not valid: at most 128 of A-Z a-z 0-9 space _ - . :"
        )
    return tag.lower()


class FakePlatform:
    """The tag index, Global Tagging's attach and Global Search's search."""

    def __init__(self) -> None:
        self._docs: dict[str, Doc] = {}
        self._cursors: dict[str, list[Doc]] = {}
        self._lock = threading.Lock()
        self.attach_calls = 0
        self.search_calls = 0

    def install(self, server: FakeServer) -> None:
        server.route("POST", "/v3/tags/attach", self._attach)
        server.route("POST", "/v3/resources/search", self._search)

    # -- called by the other fakes -------------------------------------------------------------------------

    def register(self, doc: Doc) -> None:
        with self._lock:
            self._docs[doc.crn] = doc

    def forget(self, crn: str) -> None:
        with self._lock:
            self._docs.pop(crn, None)

    def tags_of(self, crn: str) -> set[str]:
        with self._lock:
            doc = self._docs.get(crn)
            return set(doc.tags) if doc else set()

    # -- Global Tagging ------------------------------------------------------------------------------------

    def _attach(self, request: Request) -> Reply:
        body = request.json() or {}
        if request.query.get("tag_type", "user") != "user":
            raise Refusal(400, "invalid_tag_type", "only user tags are modelled")
        names = list(body.get("tag_names") or []) + ([body["tag_name"]] if body.get("tag_name") else [])
        if not names:
            raise Refusal(400, "missing_tag_names", "tag_names is required")
        tags = {check_tag(str(t)) for t in names}
        results = []
        with self._lock:
            self.attach_calls += 1
            for resource in body.get("resources") or []:
                crn = str(resource.get("resource_id", ""))
                doc = self._docs.get(crn)
                if doc is None:
                    results.append({"resource_id": crn, "is_error": True, "message": "resource not found"})
                    continue
                doc.tags |= tags
                results.append({"resource_id": crn, "is_error": False})
        return Reply(200, {"results": results})

    # -- Global Search -------------------------------------------------------------------------------------

    def _search(self, request: Request) -> Reply:
        body = request.json() or {}
        limit = int(request.query.get("limit", "10"))
        if not 1 <= limit <= 1000:
            raise Refusal(400, "invalid_limit", f"limit {limit} is outside 1..1000")
        with self._lock:
            self.search_calls += 1
            if body.get("search_cursor"):
                pending = self._cursors.pop(str(body["search_cursor"]), None)
                if pending is None:
                    raise Refusal(400, "invalid_cursor", "search cursor unknown or expired")
                fields: list[str] = ["*"]
            else:
                predicate = parse_query(str(body.get("query", "*")))
                pending = [d for d in self._docs.values() if predicate(d)]
                fields = list(body.get("fields") or ["crn", "name", "type", "family", "account_id"])
            page, rest = pending[:limit], pending[limit:]
            cursor = ""
            if rest:
                cursor = uuid.uuid4().hex
                self._cursors[cursor] = rest
            items = [_item(d, fields) for d in page]
        answer: dict[str, object] = {"items": items, "limit": limit}
        if cursor:
            answer["search_cursor"] = cursor
        return Reply(200, answer)


def _item(doc: Doc, fields: list[str]) -> dict[str, object]:
    full: dict[str, object] = {
        "crn": doc.crn,
        "name": doc.name,
        "type": doc.type,
        "family": doc.family,
        "tags": sorted(doc.tags),
        "creation_date": doc.creation_date,
        "account_id": "fake-account",
    }
    if "*" in fields:
        return full
    return {k: v for k, v in full.items() if k in fields or k == "crn"}


def _term(text: str) -> tuple[str, str]:
    match = _TERM.match(text.strip())
    if match is None or match.group("field") not in SEARCHABLE:
        raise Refusal(400, "invalid_query", f"query term {text!r} is not supported by this fake")
    value = match.group("quoted") if match.group("quoted") is not None else match.group("bare")
    return match.group("field"), value.lower() if match.group("field") == "tags" else value


def parse_query(query: str) -> Callable[[Doc], bool]:
    """A predicate over Docs for the supported query subset (raises Refusal otherwise)."""
    if query.strip() == "*":
        return lambda doc: True
    groups: list[list[tuple[str, str]]] = []
    for raw in query.split(" AND "):
        part = raw.strip()
        if part.startswith("(") and part.endswith(")"):
            groups.append([_term(t) for t in part[1:-1].split(" OR ")])
        else:
            groups.append([_term(part)])

    def predicate(doc: Doc) -> bool:
        return all(any(value in doc.value(name) for name, value in group) for group in groups)

    return predicate
