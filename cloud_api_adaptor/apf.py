"""apf.json: the forwarder's configuration, written by the daemon and read in the pod VM.

One model for both sides so they cannot drift.  The JSON is byte-compatible
with the Go adaptor's ``json.MarshalIndent(cfg, "", "    ")`` (field order,
omitempty, base64 for byte fields, HTML-safe escaping), so a Go forwarder reads
what we write and we read what a Go adaptor writes.  Decoding is strict about
types (the error names the field) but ignores unknown keys, so an older
forwarder still boots a VM configured by a newer daemon.

The ``pod-network`` object belongs to the pod-network code
(``cloud_api_adaptor.podnetwork.models``); here it stays a raw mapping.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cloud_api_adaptor.errors import InvalidInput
from cloud_api_adaptor.jsontypes import json_type_name

logger = logging.getLogger(__name__)

DEFAULT_APF_CONFIG_PATH = "/run/peerpod/apf.json"

_STR_FIELDS = {
    "pod-namespace": "pod_namespace",
    "pod-name": "pod_name",
    "tls-server-key": "tls_server_key",
    "tls-server-cert": "tls_server_cert",
    "tls-client-ca": "tls_client_ca",
    "tls-min-version": "tls_min_version",
}
_BYTES_FIELDS = {"sc-pp-prv": "sc_pp_prv", "sc-wn-pub": "sc_wn_pub"}
_KNOWN = {"pod-network", "tls-cipher-suites", *_STR_FIELDS, *_BYTES_FIELDS}
# Dead SecureComms keys an older Go adaptor may still write; accepted silently.
_LEGACY = {"sc-inbounds", "sc-outbounds", "sc"}


@dataclass(frozen=True)
class ApfConfig:
    """The contents of apf.json; keys, certificates and SecureComms bytes never appear in a repr."""

    pod_namespace: str = ""
    pod_name: str = ""
    pod_network: Mapping[str, Any] | None = None
    tls_server_key: str = field(default="", repr=False)
    tls_server_cert: str = field(default="", repr=False)
    tls_client_ca: str = field(default="", repr=False)
    tls_min_version: str = ""
    tls_cipher_suites: tuple[str, ...] = ()
    sc_pp_prv: bytes = field(default=b"", repr=False)
    sc_wn_pub: bytes = field(default=b"", repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, in Go's field order, with Go's omitempty rules."""
        out: dict[str, Any] = {
            "pod-network": dict(self.pod_network) if self.pod_network is not None else None,
            "pod-namespace": self.pod_namespace,
            "pod-name": self.pod_name,
        }
        optional: list[tuple[str, Any]] = [
            ("tls-server-key", self.tls_server_key),
            ("tls-server-cert", self.tls_server_cert),
            ("tls-client-ca", self.tls_client_ca),
            ("tls-min-version", self.tls_min_version),
            ("tls-cipher-suites", list(self.tls_cipher_suites)),
            ("sc-pp-prv", base64.b64encode(self.sc_pp_prv).decode() if self.sc_pp_prv else ""),
            ("sc-wn-pub", base64.b64encode(self.sc_wn_pub).decode() if self.sc_wn_pub else ""),
        ]
        for key, value in optional:
            if value:
                out[key] = value
        return out

    def to_json(self) -> str:
        """Indented by four spaces, escaped like Go's encoding/json."""
        text = json.dumps(self.to_dict(), indent=4, ensure_ascii=False)
        return _go_escape(text)

    @classmethod
    def from_mapping(cls, obj: Mapping[str, Any]) -> ApfConfig:
        """Build from a JSON-shaped mapping (Go key names); wrong types name the field."""
        unknown = sorted(k for k in obj if k not in _KNOWN and k not in _LEGACY)
        if unknown:
            logger.info("apf.json: ignoring unknown keys %s", ", ".join(unknown))
        kwargs: dict[str, Any] = {}
        for key, attr in _STR_FIELDS.items():
            value = obj.get(key)
            if value is None:
                continue
            if not isinstance(value, str):
                raise InvalidInput(key, f"{key}: expected a string, got {json_type_name(value)}")
            kwargs[attr] = value
        network = obj.get("pod-network")
        if network is not None:
            if not isinstance(network, Mapping):
                raise InvalidInput(
                    "pod-network", f"pod-network: expected an object, got {json_type_name(network)}"
                )
            kwargs["pod_network"] = dict(network)
        suites = obj.get("tls-cipher-suites")
        if suites is not None:
            if not isinstance(suites, list | tuple) or not all(isinstance(s, str) for s in suites):
                raise InvalidInput(
                    "tls-cipher-suites",
                    f"tls-cipher-suites: expected a list of strings, got {json_type_name(suites)}",
                )
            kwargs["tls_cipher_suites"] = tuple(suites)
        for key, attr in _BYTES_FIELDS.items():
            value = obj.get(key)
            if value is None:
                continue
            if isinstance(value, bytes):
                kwargs[attr] = value
                continue
            if not isinstance(value, str):
                raise InvalidInput(key, f"{key}: expected a base64 string, got {json_type_name(value)}")
            try:
                kwargs[attr] = base64.b64decode(value, validate=True)
            except binascii.Error as exc:
                raise InvalidInput(key, f"{key}: invalid base64: {exc}") from exc
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str | bytes) -> ApfConfig:
        """Parse apf.json; malformed JSON or a non-object is an ``InvalidInput`` too."""
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidInput("apf.json", f"invalid JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise InvalidInput("apf.json", f"expected a JSON object, got {json_type_name(obj)}")
        return cls.from_mapping(obj)


def _go_escape(text: str) -> str:
    # encoding/json escapes these for safe embedding in HTML; json.dumps leaves them.
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )
