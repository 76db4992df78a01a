"""Worker-side cloud-config rendering: the Go layout, exact round trips, cloud-init's schema."""

from __future__ import annotations

import base64
import json
import logging
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloud_api_adaptor.errors import InvalidInput
from cloud_api_adaptor.userdata import (
    AUTH_JSON_LIMIT,
    WriteFile,
    build_userdata,
    render_cloud_config,
)

LOADERS = [pytest.param(yaml.SafeLoader, id="pyyaml")]
if hasattr(yaml, "CSafeLoader"):
    # libyaml is what Go's yaml package was ported from; it is stricter about tabs.
    LOADERS.append(pytest.param(yaml.CSafeLoader, id="libyaml"))

APF = {
    "pod-network": {
        "podip": "10.244.1.5/24",
        "pod-hw-addr": "0a:58:0a:f4:01:05",
        "interface": "eth0",
        "worker-node-ip": "192.0.2.10/24",
        "tunnel-type": "vxlan",
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1", "dev": "eth0"}],
        "mtu": 1450,
        "index": 1,
        "vxlan-port": 4789,
        "vxlan-id": 555001,
    },
    "pod-namespace": "default",
    "pod-name": "nginx",
}

# What the Go template produces for the JSON above (MarshalIndent with 4 spaces)
# and an initdata string, with scratch space enabled.
GOLDEN = """\
#cloud-config

write_files:
  - path: /run/peerpod/apf.json
    content: |
      {
          "pod-network": {
              "podip": "10.244.1.5/24",
              "pod-hw-addr": "0a:58:0a:f4:01:05",
              "interface": "eth0",
              "worker-node-ip": "192.0.2.10/24",
              "tunnel-type": "vxlan",
              "routes": [
                  {
                      "dst": "0.0.0.0/0",
                      "gw": "10.244.1.1",
                      "dev": "eth0"
                  }
              ],
              "mtu": 1450,
              "index": 1,
              "vxlan-port": 4789,
              "vxlan-id": 555001
          },
          "pod-namespace": "default",
          "pod-name": "nginx"
      }
  - path: /run/peerpod/auth.json
    content: |
      {"auths":{"registry.example":{"auth":"dXNlcjpwYXNz"}}}
  - path: /run/peerpod/initdata
    content: |
      H4sIAAAAAAAA/ypJLS4BBAAA//8MfjsJBAAAAA==
  - path: /run/peerpod/scratch-space.marker
"""

AUTH = '{"auths":{"registry.example":{"auth":"dXNlcjpwYXNz"}}}'
INITDATA = "H4sIAAAAAAAA/ypJLS4BBAAA//8MfjsJBAAAAA=="


def load(doc: str, loader: Any = yaml.SafeLoader) -> Any:
    return yaml.load(doc, Loader=loader)


def contents(doc: str, loader: Any = yaml.SafeLoader) -> list[tuple[str, str]]:
    """(path, content) pairs as a cloud-init style reader sees them, b64 decoded."""
    out = []
    for entry in load(doc, loader)["write_files"]:
        content = entry.get("content", "")
        if entry.get("encoding") == "b64":
            content = base64.b64decode(content).decode("utf-8")
        out.append((entry["path"], content))
    return out


def test_build_userdata_matches_the_go_layout_byte_for_byte() -> None:
    apf_json = json.dumps(APF, indent=4)  # no trailing newline, like Go's MarshalIndent
    assert build_userdata(apf_json, INITDATA, AUTH, scratch_space=True) == GOLDEN


def test_build_userdata_sends_only_apf_json_without_extras() -> None:
    doc = build_userdata('{\n    "pod-name": "p"\n}', "", None, scratch_space=False)
    assert doc == (
        "#cloud-config\n\nwrite_files:\n"
        "  - path: /run/peerpod/apf.json\n    content: |\n"
        '      {\n          "pod-name": "p"\n      }\n'
    )


def test_files_land_in_the_go_order_and_text_files_end_with_a_newline() -> None:
    doc = build_userdata("{}", INITDATA, AUTH, scratch_space=True)
    assert contents(doc) == [
        ("/run/peerpod/apf.json", "{}\n"),
        ("/run/peerpod/auth.json", AUTH + "\n"),
        ("/run/peerpod/initdata", INITDATA + "\n"),
        ("/run/peerpod/scratch-space.marker", ""),
    ]
    marker = load(doc)["write_files"][3]
    assert "content" not in marker


def test_auth_json_above_the_limit_is_dropped_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    secret = "c2VjcmV0"
    big = '{"auths":{"r":{"auth":"' + secret + "x" * AUTH_JSON_LIMIT + '"}}}'
    with caplog.at_level(logging.WARNING, logger="cloud_api_adaptor.userdata"):
        doc = build_userdata("{}", "", big, scratch_space=False)
    assert [p for p, _ in contents(doc)] == ["/run/peerpod/apf.json"]
    assert "auth.json" in caplog.text and str(AUTH_JSON_LIMIT) in caplog.text
    assert secret not in caplog.text


def test_auth_json_at_exactly_the_limit_is_sent() -> None:
    auth = "x" * AUTH_JSON_LIMIT
    doc = build_userdata("{}", "", auth, scratch_space=False)
    assert contents(doc)[1] == ("/run/peerpod/auth.json", auth + "\n")


def test_no_files_render_just_the_header() -> None:
    assert render_cloud_config([]) == "#cloud-config\n"
    assert load(render_cloud_config([])) is None


TRICKY = {
    "leading spaces on the first line": "    indented\nnot\n",
    "leading tab on the first line": "\tkey = 1\nother\n",
    "leading empty lines then spaces": "\n\n  x\n",
    "whitespace-only first line": "   \nabc\n",
    "lines starting with #": "# not a comment\n#!/bin/sh\n",
    "document markers": "---\n...\n--- |\n",
    "yaml-looking text": "key: value\n- item\n{flow: [1, 2]}\n&anchor *alias !tag\n",
    "quotes and escapes": "'single' \"double\" \\n \\\\ %\n",
    "unicode": "héllo wörld ✓ 日本語 😀\n",
    "no trailing newline": '{\n    "a": 1\n}',
    "several trailing newlines": "a\n\n\n",
    "only newlines": "\n\n",
    "a single newline": "\n",
    "trailing spaces": "a   \nb \t\n",
    "whitespace-only lines": "a\n   \n\t\nb\n",
    "very long line": "x" * 100_000 + "\n",
    "json with 4-space indentation": json.dumps(APF, indent=4) + "\n",
    "CRLF line ends": "a\r\nb\r\n",
    "lone CR": "a\rb\n",
    "NEL and Unicode line separators": "a\x85b\u2028c\u2029d\n",
    "control characters": "a\x00b\x07c\x1b[0m\x7f\n",
    "byte order mark": "\ufeffbom\n",
}


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("content", TRICKY.values(), ids=TRICKY.keys())
def test_tricky_content_survives_yaml_exactly(content: str, loader: Any) -> None:
    files = [WriteFile("/run/peerpod/a", content), WriteFile("/run/peerpod/b", "after\n")]
    doc = render_cloud_config(files)
    assert contents(doc, loader) == [(f.path, f.content) for f in files]


def test_chomping_and_indentation_indicators_appear_only_when_needed() -> None:
    def header(content: str) -> str:
        doc = render_cloud_config([WriteFile("/f", content)])
        return doc.splitlines()[4].strip()

    assert header("a\n") == "content: |"
    assert header("a") == "content: |-"
    assert header("a\n\n") == "content: |+"
    assert header("  a\n") == "content: |2"
    assert header("  a") == "content: |2-"
    assert header("\n") == "content: |2+"


def test_content_a_literal_block_cannot_carry_goes_base64() -> None:
    doc = render_cloud_config([WriteFile("/f", "a\r\nb\r\n")])
    assert doc == "#cloud-config\n\nwrite_files:\n  - path: /f\n    encoding: b64\n    content: YQ0KYg0K\n"


def test_empty_lines_carry_no_trailing_blanks() -> None:
    doc = render_cloud_config([WriteFile("/f", "a\n\nb\n")])
    assert "      a\n\n      b\n" in doc
    assert not any(line.endswith(" ") for line in doc.splitlines())


@pytest.mark.parametrize("loader", LOADERS)
def test_random_content_round_trips(loader: Any) -> None:
    pieces = [
        "a",
        "Z",
        " ",
        "  ",
        "\t",
        "\n",
        "\n\n",
        "#",
        "-",
        ":",
        "|",
        ">",
        "'",
        '"',
        "é",
        "😀",
        "\r",
        "\x85",
    ]
    rng = random.Random(20240601)
    for _ in range(1500):
        files = [
            WriteFile(f"/run/peerpod/f{i}", "".join(rng.choice(pieces) for _ in range(rng.randint(0, 10))))
            for i in range(rng.randint(1, 3))
        ]
        doc = render_cloud_config(files)
        assert contents(doc, loader) == [(f.path, f.content) for f in files], doc


@pytest.mark.parametrize("path", ["relative/path", "/a b", "/a: b", "/a#b", "", "/x\n- path: /etc/passwd"])
def test_paths_that_are_not_plain_absolute_paths_are_refused(path: str) -> None:
    with pytest.raises(InvalidInput) as info:
        render_cloud_config([WriteFile(path, "x\n")])
    assert info.value.field == "write_files"


def test_content_that_is_not_encodable_text_is_refused() -> None:
    with pytest.raises(InvalidInput):
        render_cloud_config([WriteFile("/f", "lone \ud800 surrogate")])


# --- cloud-init's own schema ---------------------------------------------------------------------


def _cloud_init_schema() -> Path | None:
    if shutil.which("dpkg") is None:
        return None
    listing = subprocess.run(["dpkg", "-L", "cloud-init"], capture_output=True, text=True, check=False)
    if listing.returncode != 0:
        return None
    for line in listing.stdout.splitlines():
        if line.endswith("schema-cloud-config-v1.json"):
            return Path(line)
    return None


SCHEMA = _cloud_init_schema()
needs_cloud_init = pytest.mark.skipif(
    SCHEMA is None, reason="cloud-init is not installed (scripts/apt-packages.txt)"
)


def _sample_documents() -> list[str]:
    return [
        render_cloud_config([]),
        build_userdata(json.dumps(APF, indent=4), INITDATA, AUTH, scratch_space=True),
        render_cloud_config([WriteFile(f"/run/peerpod/t{i}", c) for i, c in enumerate(TRICKY.values())]),
    ]


@needs_cloud_init
def test_rendered_documents_validate_against_the_cloud_init_schema() -> None:
    import jsonschema  # type: ignore[import-untyped]

    assert SCHEMA is not None
    validator = jsonschema.Draft4Validator(json.loads(SCHEMA.read_text()))
    for doc in _sample_documents():
        assert doc.startswith("#cloud-config\n")
        errors = [e.message for e in validator.iter_errors(load(doc) or {})]
        assert errors == [], doc[:200]
    # The validator does catch what cloud-init would refuse.
    bad = {"write_files": [{"path": "/f", "content": "x", "encoding": "rot13", "owner": 5}]}
    assert list(validator.iter_errors(bad))


@needs_cloud_init
def test_cloud_init_schema_command_accepts_the_rendered_document(tmp_path: Path) -> None:
    cloud_init = shutil.which("cloud-init")
    assert cloud_init is not None
    doc = render_cloud_config(
        [
            WriteFile("/run/peerpod/apf.json", json.dumps(APF, indent=4) + "\n"),
            WriteFile("/run/peerpod/lead", "  lead\n"),
            WriteFile("/run/peerpod/crlf", "a\r\n"),
            WriteFile("/run/peerpod/scratch-space.marker"),
        ]
    )
    path = tmp_path / "user-data"
    path.write_text(doc, encoding="utf-8")
    done = subprocess.run(
        [cloud_init, "schema", "--config-file", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Valid cloud-config" in done.stdout
