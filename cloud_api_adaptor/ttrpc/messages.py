"""ttrpc envelopes, sans-I/O: the Request/Response protobufs carried in frame data.

A Request names the fully-qualified service and the bare method, carries the
serialized request message, an optional relative deadline (``timeout_nano``, 0 =
none) and string metadata.  A Response carries a ``google.rpc.Status`` and the
serialized reply.  Peers differ on how they say "OK": containerd/ttrpc 1.1 omits
the status field, 1.2 sends an empty Status (``0a 00``); both decode as OK here,
and this side omits it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from cloud_api_adaptor._pb import ttrpc_pb2

_NANOS = 1_000_000_000


class EnvelopeError(ValueError):
    """Frame data is not a valid ttrpc Request/Response protobuf."""


class Metadata(Mapping[str, tuple[str, ...]]):
    """Immutable case-insensitive multi-map, as ``ttrpc.MD`` (``map[string][]string``).

    Keys are lower-cased; a key sent several times keeps every value in arrival
    order.  ``pairs()`` gives the flattened (key, value) list in arrival order,
    which is also the order put on the wire.
    """

    __slots__ = ("_index", "_pairs")

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        flat = tuple((key.lower(), value) for key, value in pairs)
        index: dict[str, list[str]] = {}
        for key, value in flat:
            index.setdefault(key, []).append(value)
        self._pairs = flat
        self._index = {key: tuple(values) for key, values in index.items()}

    @classmethod
    def coerce(cls, value: MetadataLike | None) -> Metadata:
        """Accept a Metadata, a mapping of key -> value(s), or (key, value) pairs."""
        if value is None:
            return EMPTY_METADATA
        if isinstance(value, Metadata):
            return value
        if isinstance(value, Mapping):
            pairs: list[tuple[str, str]] = []
            for key, item in value.items():
                if isinstance(item, str):
                    pairs.append((key, item))
                else:
                    pairs.extend((key, v) for v in item)
            return cls(pairs)
        return cls(value)

    def __getitem__(self, key: str) -> tuple[str, ...]:
        return self._index[key.lower()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return f"Metadata({list(self._pairs)!r})"

    def first(self, key: str) -> str | None:
        """The first value sent for ``key``, or None."""
        values = self._index.get(key.lower())
        return values[0] if values else None

    def pairs(self) -> tuple[tuple[str, str], ...]:
        return self._pairs


MetadataLike: TypeAlias = Metadata | Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]]
EMPTY_METADATA = Metadata()


@dataclass(frozen=True, slots=True)
class RequestEnvelope:
    """A decoded ttrpc Request."""

    service: str
    method: str
    payload: bytes
    timeout: float | None
    """Seconds the caller allows, counted from receipt; None when it set no deadline."""
    metadata: Metadata


def timeout_to_nanos(timeout: float | None) -> int:
    """Relative seconds -> ``timeout_nano``; a positive timeout never rounds down to 0 (= none)."""
    if timeout is None:
        return 0
    return max(1, int(timeout * _NANOS))


def encode_request(
    service: str,
    method: str,
    payload: bytes,
    *,
    timeout: float | None = None,
    metadata: Metadata = EMPTY_METADATA,
) -> bytes:
    request = ttrpc_pb2.Request(
        service=service, method=method, payload=payload, timeout_nano=timeout_to_nanos(timeout)
    )
    if metadata:
        request.metadata.extend(ttrpc_pb2.KeyValue(key=k, value=v) for k, v in metadata.pairs())
    return request.SerializeToString()


def decode_request(data: bytes) -> RequestEnvelope:
    try:
        request = ttrpc_pb2.Request.FromString(data)
    except DecodeError as exc:
        raise EnvelopeError(f"unmarshal request error: {exc}") from exc
    nanos = request.timeout_nano
    metadata = Metadata((kv.key, kv.value) for kv in request.metadata) if request.metadata else EMPTY_METADATA
    return RequestEnvelope(
        service=request.service,
        method=request.method,
        payload=request.payload,
        timeout=nanos / _NANOS if nanos > 0 else None,
        metadata=metadata,
    )


def encode_response(payload: bytes) -> bytes:
    """A successful Response: payload only, the status field omitted."""
    return ttrpc_pb2.Response(payload=payload).SerializeToString()


def encode_status(status: status_pb2.Status) -> bytes:
    """A failed Response: status only."""
    return ttrpc_pb2.Response(status=status).SerializeToString()


def decode_response(data: bytes) -> tuple[status_pb2.Status | None, bytes]:
    """-> (status, payload); status is None when the call succeeded (absent or code 0)."""
    try:
        response = ttrpc_pb2.Response.FromString(data)
    except DecodeError as exc:
        raise EnvelopeError(f"unmarshal response error: {exc}") from exc
    if response.HasField("status") and response.status.code != 0:
        return response.status, response.payload
    return None, response.payload
