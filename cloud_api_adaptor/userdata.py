"""Rendering the cloud-config user data a pod VM boots with (worker side, pure).

The layout is the Go CAA's, byte for byte, whenever the content allows it::

    #cloud-config

    write_files:
      - path: /run/peerpod/apf.json
        content: |
          {
              "pod-name": "..."
          }

Both cloud-init (IBM Cloud and other images without process-user-data) and
``process-user-data`` read it, and the Go ``process-user-data`` parses it
strictly (unknown keys are errors), so we add nothing the content does not need.

The Go template only splits the content into lines, which silently changes some
contents.  Here the content survives ``yaml.safe_load`` exactly:

- Trailing line breaks: one gives the plain ``|`` of the Go layout; none gives
  ``|-``; several give ``|+``.  ``build_userdata`` ends its text files with a
  newline, which is exactly what a Go-built VM ends up with, so its output keeps
  the Go layout.
- A first line starting with a space would be read as deeper indentation (and
  libyaml refuses a leading tab there), so the header then carries an
  indentation indicator (``|2``: six columns, two more than the ``content`` key).
- Empty lines are written without the six spaces of indentation (same value).
- Characters a YAML literal block cannot carry unchanged (CR, so CRLF too; NEL,
  U+2028/U+2029, which YAML 1.1 treats as line breaks; control characters; BOM)
  are neither normalised nor rejected: such a file goes as ``encoding: b64``,
  which cloud-init and our ``process-user-data`` accept.  A Go
  ``process-user-data`` would reject that document, but the files CAA sends
  (JSON and base64 text) never contain these characters.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cloud_api_adaptor.errors import InvalidInput

logger = logging.getLogger(__name__)

PEERPOD_DIR = "/run/peerpod"
APF_CONFIG_PATH = f"{PEERPOD_DIR}/apf.json"
AUTH_JSON_PATH = f"{PEERPOD_DIR}/auth.json"
INITDATA_PATH = f"{PEERPOD_DIR}/initdata"
SCRATCH_MARKER_PATH = f"{PEERPOD_DIR}/scratch-space.marker"
AA_TOML_PATH = f"{PEERPOD_DIR}/aa.toml"
CDH_TOML_PATH = f"{PEERPOD_DIR}/cdh.toml"
POLICY_PATH = f"{PEERPOD_DIR}/policy.rego"
INITDATA_DIGEST_PATH = f"{PEERPOD_DIR}/initdata.digest"

#: auth.json larger than this (bytes) is not sent (Go ``cloudinit.DefaultAuthfileLimit``)
AUTH_JSON_LIMIT = 12288

#: ``encoding`` value used when content cannot go as a literal block
B64_ENCODING = "b64"

_HEADER = "#cloud-config"
_CONTENT_INDENT = " " * 6
# A path is written as a plain YAML scalar, so only characters that can never
# start a YAML construct are allowed.
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/+@=,-]*\Z")
# Characters that do not come back unchanged from a YAML literal block: anything
# outside YAML's printable set, CR and NEL (folded into LF), U+2028/U+2029 (line
# breaks in YAML 1.1) and the BOM (special-cased by some parsers).
_NOT_LITERAL = re.compile(
    "[^\t\n\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
)


@dataclass(frozen=True)
class WriteFile:
    """One ``write_files`` entry: an absolute path and its text content."""

    path: str
    content: str = ""


def render_cloud_config(files: Sequence[WriteFile]) -> str:
    """Render ``files`` as a ``#cloud-config`` document in the Go layout.

    Raises ``InvalidInput("write_files", ...)`` for a path that is not a plain
    absolute path or content that is not encodable as UTF-8 (lone surrogates).
    """
    if not files:
        return _HEADER + "\n"
    out = [_HEADER, "", "write_files:"]
    for wf in files:
        if not _SAFE_PATH.match(wf.path):
            raise InvalidInput("write_files", f"path {wf.path!r} is not a plain absolute path")
        out.append(f"  - path: {wf.path}")
        if not wf.content:
            continue
        if _NOT_LITERAL.search(wf.content):
            out.extend(_b64_entry(wf))
        else:
            out.extend(_literal_entry(wf.content))
    return "\n".join(out) + "\n"


def _literal_entry(content: str) -> list[str]:
    trailing = len(content) - len(content.rstrip("\n"))
    first = content.lstrip("\n")
    # Clip (plain `|`) keeps one final newline; strip (`-`) none; keep (`+`) all.
    # Clip of a block with no text at all yields "", so all-newline content keeps.
    chomp = "-" if trailing == 0 else "" if trailing == 1 and first else "+"
    # Explicit indentation (content two columns deeper than `content:`) when the
    # first text starts with blanks: auto-detection would take leading spaces as
    # indentation, and libyaml (hence Go's yaml) refuses a leading tab there.
    indicator = "2" if not first or first[0] in " \t" else ""
    lines = content.split("\n")
    if trailing:
        lines.pop()  # the text after the last newline is empty
    body = [_CONTENT_INDENT + line if line else "" for line in lines]
    return [f"    content: |{indicator}{chomp}", *body]


def _b64_entry(wf: WriteFile) -> list[str]:
    try:
        raw = wf.content.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput("write_files", f"content of {wf.path} is not valid text: {exc}") from exc
    logger.info("%s: content cannot travel as a YAML literal block; sending it base64-encoded", wf.path)
    return [f"    encoding: {B64_ENCODING}", f"    content: {base64.b64encode(raw).decode('ascii')}"]


def _as_text_file(content: str) -> str:
    """End non-empty text with a newline: what a Go-built VM writes, and the Go layout's ``|``."""
    if content and not content.endswith("\n"):
        return content + "\n"
    return content


def build_userdata(apf_json: str, initdata: str, auth_json: str | None, scratch_space: bool) -> str:
    """The cloud-config CreateVM hands to the provider.

    ``apf_json`` is the forwarder config (indented JSON), ``initdata`` the
    gzip+base64 initdata (empty: none), ``auth_json`` the registry credentials
    (``None`` or empty: none; dropped above ``AUTH_JSON_LIMIT`` bytes).
    """
    files = [WriteFile(APF_CONFIG_PATH, _as_text_file(apf_json))]
    if auth_json:
        size = len(auth_json.encode("utf-8", "surrogatepass"))
        if size > AUTH_JSON_LIMIT:
            logger.warning(
                "auth.json is %d bytes, more than the %d byte limit; not sending it to the pod VM",
                size,
                AUTH_JSON_LIMIT,
            )
        else:
            files.append(WriteFile(AUTH_JSON_PATH, _as_text_file(auth_json)))
    if initdata:
        files.append(WriteFile(INITDATA_PATH, _as_text_file(initdata)))
    if scratch_space:
        files.append(WriteFile(SCRATCH_MARKER_PATH, ""))
    return render_cloud_config(files)
