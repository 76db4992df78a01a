"""Owner tags in IBM Cloud's tag grammar, and the Global Search queries that find them.

IBM user tags are single strings of at most 128 characters from ``A-Z a-z 0-9
space _ - . :``, case-insensitive (the platform stores them lower-cased); a
``key:value`` shape is a convention.  The daemon's owner tag keys
(``caa.confidentialcontainers.org/...``) do not fit, so each becomes a short
``caa-<kind>:<value>`` tag.  A value outside ``[a-z0-9_.-]`` (or too long) is
replaced by a digest, which a query can still match exactly but a listing cannot
read back; node names, sandbox ids and usual cluster ids stay readable.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping

from cloud_api_adaptor.provider import TAG_CLUSTER, TAG_NODE, TAG_SANDBOX

MAX_TAG_LENGTH = 128
#: the grammar the Global Tagging API accepts
TAG_GRAMMAR = re.compile(r"^[A-Za-z0-9:_ .-]{1,128}$")
#: the Go version's tag: ``coco-pod-vm:<cluster id>``
GO_CLUSTER_PREFIX = "coco-pod-vm"
#: marks the create attempt a resource was made by (a digest of the request token)
TOKEN_PREFIX = "caa-token"

OWNER_PREFIXES: Mapping[str, str] = {
    TAG_CLUSTER: "caa-cluster",
    TAG_NODE: "caa-node",
    TAG_SANDBOX: "caa-sandbox",
}
_READABLE = re.compile(r"^[a-z0-9_.-]+$")
_UNSAFE = re.compile(r"[^a-z0-9_ .:-]")
_DIGEST_MARK = "sha-"


def _value(prefix: str, value: str) -> str:
    fits = len(prefix) + 1 + len(value) <= MAX_TAG_LENGTH
    if fits and _READABLE.match(value) and not value.startswith(_DIGEST_MARK):
        return value
    return _DIGEST_MARK + hashlib.sha256(value.encode()).hexdigest()[:40]


def owner_tag(key: str, value: str) -> str:
    """One owner tag (a daemon tag key) or user tag (any other key) as an IBM tag."""
    prefix = OWNER_PREFIXES.get(key)
    if prefix is not None:
        return f"{prefix}:{_value(prefix, value)}"
    return user_tag(key, value)


def user_tag(key: str, value: str) -> str:
    """A user's TAGS entry: ``key:value`` lower-cased, characters outside the grammar as ``-``."""
    raw = f"{key}:{value}" if value else key
    return _UNSAFE.sub("-", raw.lower())[:MAX_TAG_LENGTH]


def token_tag(token: str) -> str:
    """The tag marking a resource as made for this request token."""
    return f"{TOKEN_PREFIX}:{hashlib.sha256(token.encode()).hexdigest()[:40]}"


def go_cluster_tag(cluster_id: str) -> str:
    """The Go version's ``coco-pod-vm:<cluster>`` tag, within the grammar."""
    return user_tag(GO_CLUSTER_PREFIX, cluster_id)


def request_tags(tags: Mapping[str, str]) -> list[str]:
    """Every IBM tag for a create request's tags (owner tags and the user's TAGS), without repeats."""
    return list(dict.fromkeys(owner_tag(k, v) for k, v in tags.items()))


def read_owner_tags(attached: Iterable[str], asked: Mapping[str, str] = {}) -> dict[str, str]:
    """The daemon's tag mapping from the IBM tags on a resource.

    Readable owner values are decoded; each ``asked`` pair whose encoding is
    attached is reported as asked (so digested values match too).
    """
    present = {t.lower() for t in attached}
    found: dict[str, str] = {}
    for key, prefix in OWNER_PREFIXES.items():
        for tag in present:
            if tag.startswith(prefix + ":"):
                value = tag[len(prefix) + 1 :]
                if not value.startswith(_DIGEST_MARK):
                    found[key] = value
    for key, value in asked.items():
        if owner_tag(key, value) in present:
            found[key] = value
    return found


def search_query(tags: Mapping[str, str], kinds: Iterable[str], family: str) -> str:
    """A Global Search (Lucene) query for ``family`` resources of ``kinds`` carrying every tag."""
    types = " OR ".join(f"type:{kind}" for kind in kinds)
    terms = [f"family:{family}", f"({types})"]
    terms += [f'tags:"{owner_tag(k, v)}"' for k, v in sorted(tags.items())]
    return " AND ".join(terms)
