"""Owner tags in Azure's tag grammar.

Azure tag names may not contain ``<>%&\\?/``, are at most 512 characters and may
not start with the reserved prefixes ``microsoft``, ``azure`` or ``windows``;
values are at most 256 characters; a resource carries at most 50 tags.  The
daemon's owner tag keys (``caa.confidentialcontainers.org/cluster``, ...) contain
``/``, so they travel under fixed names; a value longer than 256 characters is
replaced by a one-way ``sha256:<hex>`` digest (a list still matches it exactly).
``caa-token`` carries a digest of the create token, so an instance found by name
is known to be this request's.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

from cloud_api_adaptor.errors import InvalidInput
from cloud_api_adaptor.provider import TAG_CLUSTER, TAG_NODE, TAG_SANDBOX

MAX_TAGS = 50
MAX_NAME = 512
MAX_VALUE = 256
FORBIDDEN = re.compile(r"[<>%&\\?/]")
RESERVED_PREFIXES = ("microsoft", "azure", "windows")

OWNER_TAGS: Mapping[str, str] = {
    TAG_CLUSTER: "caa-cluster",
    TAG_NODE: "caa-node",
    TAG_SANDBOX: "caa-sandbox",
}
TOKEN_TAG = "caa-token"


def tag_name(key: str) -> str:
    """The Azure tag name for a daemon or ``TAGS`` key (forbidden characters become ``_``)."""
    if key in OWNER_TAGS:
        return OWNER_TAGS[key]
    return FORBIDDEN.sub("_", key)


def encode_value(value: str) -> str:
    """A value as stored: verbatim up to 256 characters, else ``sha256:`` and its digest."""
    if len(value) <= MAX_VALUE:
        return value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:32]


def tags_for(tags: Mapping[str, str], token: str) -> dict[str, str]:
    """The VM's tags: the daemon's owner tags, the user's ``TAGS`` and the token digest.

    Raises ``InvalidInput("tags")`` for what Azure would refuse (reserved or
    overlong names, two keys that collide once encoded, more than 50 tags).
    """
    out: dict[str, str] = {}
    for key, value in tags.items():
        name = tag_name(key)
        if not name.strip():
            raise InvalidInput("tags", f"empty tag name {key!r}")
        if len(name) > MAX_NAME:
            raise InvalidInput("tags", f"tag name {key[:40]!r}... is longer than {MAX_NAME} characters")
        if key not in OWNER_TAGS and name.lower().startswith(RESERVED_PREFIXES):
            raise InvalidInput(
                "tags", f"tag name {key!r} uses a prefix Azure reserves (microsoft, azure, windows)"
            )
        if name in out:
            raise InvalidInput("tags", f"tag names {key!r} and another one are both {name!r} in Azure")
        out[name] = encode_value(value)
    out[TOKEN_TAG] = token_digest(token)
    if len(out) > MAX_TAGS:
        raise InvalidInput("tags", f"{len(out)} tags; an Azure resource carries at most {MAX_TAGS}")
    return out


def matches(vm_tags: Mapping[str, str], owner_tags: Mapping[str, str]) -> bool:
    """Whether a VM's Azure tags carry every one of the daemon's ``owner_tags``."""
    return all(vm_tags.get(tag_name(k)) == encode_value(v) for k, v in owner_tags.items())


def decode(vm_tags: Mapping[str, str]) -> dict[str, str]:
    """The daemon's view of a VM's tags (owner tag names mapped back)."""
    back = {v: k for k, v in OWNER_TAGS.items()}
    return {back.get(k, k): v for k, v in vm_tags.items() if k != TOKEN_TAG}
