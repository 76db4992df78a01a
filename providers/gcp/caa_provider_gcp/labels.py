"""Owner tags as GCP labels: the grammar Compute Engine accepts, encoded reversibly where possible.

GCP label keys match ``[a-z][a-z0-9_-]{0,62}`` and values ``[a-z0-9_-]{0,63}``; an
instance carries at most 64 labels.  Our owner tag keys
(``caa.confidentialcontainers.org/sandbox`` ...) do not fit, so each maps to a
fixed label key (``caa_sandbox`` ...).  Values are kept verbatim when they already
fit and contain no underscore; otherwise they are encoded, and the underscore that
no verbatim value contains marks the encoding:

- ``_h`` + base32 of the bytes of an even-length lowercase hex string (a 64-hex
  sandbox id becomes 54 characters);
- ``_b`` + base32 of the UTF-8 text (anything up to 38 bytes);
- ``_s`` + base32 of the SHA-256 of the text, for longer values: one-way, but a
  label filter still matches it exactly, and ``list_instances`` answers with the
  value it was asked for.

base32 here is lower-case and unpadded, so every encoded value fits the grammar.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping

from cloud_api_adaptor.provider import TAG_CLUSTER, TAG_NODE, TAG_SANDBOX

MAX_LABELS = 64
MAX_LABEL_LENGTH = 63
KEY_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,62}")
VALUE_PATTERN = re.compile(r"[a-z0-9_-]{0,63}")

#: the fixed label key of each owner tag
OWNER_LABELS: Mapping[str, str] = {
    TAG_CLUSTER: "caa_cluster",
    TAG_NODE: "caa_node",
    TAG_SANDBOX: "caa_sandbox",
}
#: a digest of the create request's token: a 409 on our name is adopted only when it matches
TOKEN_LABEL = "caa_token"
RESERVED_KEYS = frozenset({*OWNER_LABELS.values(), TOKEN_LABEL})
_TAG_OF_LABEL = {label: tag for tag, label in OWNER_LABELS.items()}

_VERBATIM = re.compile(r"[a-z0-9-]{0,63}")
_EVEN_HEX = re.compile(r"(?:[0-9a-f]{2})+")
_INVALID_KEY_CHARS = re.compile(r"[^a-z0-9_-]")


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def _unb32(text: str) -> bytes:
    padded = text.upper() + "=" * (-len(text) % 8)
    return base64.b32decode(padded)


def encode_value(value: str) -> str:
    """``value`` as a label value (verbatim, ``_h``, ``_b`` or one-way ``_s``)."""
    if _VERBATIM.fullmatch(value):
        return value
    if _EVEN_HEX.fullmatch(value):
        candidate = "_h" + _b32(bytes.fromhex(value))
    else:
        candidate = "_b" + _b32(value.encode("utf-8"))
    if len(candidate) <= MAX_LABEL_LENGTH:
        return candidate
    return "_s" + _b32(hashlib.sha256(value.encode("utf-8")).digest())


def decode_value(label: str) -> str | None:
    """The original of a label value; None for a one-way (``_s``) or malformed encoding."""
    if not label.startswith("_"):
        return label
    kind, body = label[1:2], label[2:]
    try:
        if kind == "h":
            return _unb32(body).hex()
        if kind == "b":
            return _unb32(body).decode("utf-8")
    except ValueError:
        return None
    return None


def label_key(tag_key: str) -> str:
    """The label key for a tag key: owner tags have fixed keys, user keys are made to fit."""
    if tag_key in OWNER_LABELS:
        return OWNER_LABELS[tag_key]
    key = _INVALID_KEY_CHARS.sub("_", tag_key.lower())
    if not key or not key[0].isalpha() or not key[0].isascii():
        key = "t_" + key
    return key[:MAX_LABEL_LENGTH]


def token_digest(token: str) -> str:
    """The ``caa_token`` label value: 26 base32 characters of the token's SHA-256."""
    return _b32(hashlib.sha256(token.encode("utf-8")).digest()[:16])


def labels_for(tags: Mapping[str, str], token: str) -> dict[str, str]:
    """Labels for an instance carrying ``tags`` (owner tags and the user's TAGS) and the token digest.

    User tags whose label key would collide with an owner label are dropped; the
    caller checks the count against ``MAX_LABELS``.
    """
    labels: dict[str, str] = {}
    for key, value in tags.items():
        if key in OWNER_LABELS:
            continue
        name = label_key(key)
        if name not in RESERVED_KEYS:
            labels[name] = encode_value(value)
    for key, value in tags.items():
        if key in OWNER_LABELS:
            labels[OWNER_LABELS[key]] = encode_value(value)
    labels[TOKEN_LABEL] = token_digest(token)
    return labels


def tags_from_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Tags read back from an instance's labels (owner keys restored, values decoded where possible)."""
    tags: dict[str, str] = {}
    for key, value in labels.items():
        if key == TOKEN_LABEL:
            continue
        decoded = decode_value(value)
        tags[_TAG_OF_LABEL.get(key, key)] = value if decoded is None else decoded
    return tags


def label_filter(tags: Mapping[str, str]) -> str:
    """An ``instances.list`` filter matching instances that carry every one of ``tags`` (owner tags)."""
    terms = []
    for key, value in sorted(tags.items()):
        terms.append(f'(labels.{label_key(key)} = "{encode_value(value)}")')
    return " AND ".join(terms)


def is_valid_label(key: str, value: str) -> bool:
    return bool(KEY_PATTERN.fullmatch(key)) and bool(VALUE_PATTERN.fullmatch(value))
