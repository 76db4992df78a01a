"""provision-files: strict parsing, retries, allow-listed writes under a root, initdata, PCR extend."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_api_adaptor.errors import InvalidInput
from cloud_api_adaptor.initdata import DUMMY_INITDATA_TOML, digest, encode_initdata
from cloud_api_adaptor.userdata import WriteFile, build_userdata, render_cloud_config
from cloud_api_adaptor.vm.metadata import FileSource, MetadataError
from cloud_api_adaptor.vm.provision import (
    CloudConfigError,
    FetchFailed,
    FileEntry,
    ProvisionConfig,
    RetryPolicy,
    apply_initdata,
    extend_pcr,
    fetch_cloud_config,
    parse_cloud_config,
    provision,
    write_files,
)

INITDATA_TOML = (
    'algorithm = "sha512"\nversion = "0.1.0"\n\n[data]\n'
    '"aa.toml" = """\n[token_configs.kbs]\nurl = "http://198.51.100.7:8080"\n"""\n'
    '"cdh.toml" = "socket = \'unix:///run/confidential-containers/cdh.sock\'\\n"\n'
    '"policy.rego" = "package agent_policy\\ndefault AllowRequestsFailingPolicy := true\\n"\n'
    '"evil.sh" = "rm -rf /"\n'
    '"../../etc/passwd" = "root::0:0::/:/bin/sh"\n'
)
APF_JSON = json.dumps({"pod-name": "nginx", "pod-namespace": "default"}, indent=4)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by its logical path."""
    return {"/" + str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def strict_umask() -> Iterator[None]:
    """A umask that would strip the modes we promise, so the test shows we set them."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


class ScriptedSource:
    """Answers (or fails) from a script; ``hang`` waits forever."""

    name = "scripted"

    def __init__(self, *outcomes: bytes | Exception | str) -> None:
        self._outcomes = list(outcomes)
        self.calls = 0

    async def fetch(self) -> bytes:
        self.calls += 1
        outcome = self._outcomes.pop(0) if len(self._outcomes) > 1 else self._outcomes[0]
        if outcome == "hang":
            await asyncio.Event().wait()
        if isinstance(outcome, Exception):
            raise outcome
        assert isinstance(outcome, bytes)
        return outcome


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


# --- parsing -------------------------------------------------------------------------------------


def test_parse_reads_entries_in_order() -> None:
    doc = build_userdata(APF_JSON, "H4sI", None, scratch_space=True).encode()
    assert parse_cloud_config(doc) == [
        FileEntry("/run/peerpod/apf.json", (APF_JSON + "\n").encode()),
        FileEntry("/run/peerpod/initdata", b"H4sI\n"),
        FileEntry("/run/peerpod/scratch-space.marker", b""),
    ]


def test_parse_accepts_empty_documents() -> None:
    assert parse_cloud_config(b"#cloud-config\n") == []
    assert parse_cloud_config(b"") == []
    assert parse_cloud_config(b"write_files:\n") == []


def test_parse_accepts_the_b64_encoding_the_worker_emits() -> None:
    doc = render_cloud_config([WriteFile("/run/peerpod/auth.json", "a\r\nb")]).encode()
    assert parse_cloud_config(doc) == [FileEntry("/run/peerpod/auth.json", b"a\r\nb")]
    alias = b"write_files:\n  - path: /x\n    encoding: base64\n    content: eA==\n"
    assert parse_cloud_config(alias) == [FileEntry("/x", b"x")]


@pytest.mark.parametrize(
    ("doc", "key", "reason"),
    [
        ("users: []\n", "users", "unknown key"),
        ("write_files:\n  - path: /a\n    owner: root\n", "write_files[0].owner", "unknown key"),
        (
            "write_files:\n  - path: /a\n  - path: /b\n    permissions: '0600'\n",
            "write_files[1].permissions",
            "",
        ),
        ("write_files:\n  - path: /a\n    content: 12\n", "write_files[0].content", "expected a string"),
        ("write_files:\n  - path: 7\n", "write_files[0].path", "non-empty string"),
        ("write_files:\n  - content: x\n", "write_files[0].path", "non-empty string"),
        ("write_files:\n  - /a\n", "write_files[0]", "expected a mapping"),
        ("write_files: /a\n", "write_files", "expected a list"),
        ("- a\n", "", "expected a mapping"),
        ("write_files:\n  - path: /a\n    encoding: gz\n    content: x\n", "write_files[0].encoding", "gz"),
        (
            "write_files:\n  - path: /a\n    encoding: b64\n    content: '!!'\n",
            "write_files[0].content",
            "base64",
        ),
        ("write_files:\n  - path: /a\n    path: /b\n", "", "duplicate key 'path'"),
        ("x: &a [1]\nwrite_files: *a\n", "", "aliases are not allowed"),
        ("write_files: [\n", "", "invalid YAML"),
    ],
)
def test_parse_is_strict_and_names_the_key(doc: str, key: str, reason: str) -> None:
    with pytest.raises(CloudConfigError) as info:
        parse_cloud_config(doc.encode())
    assert info.value.key == key
    assert reason in str(info.value)


def test_a_null_content_is_an_empty_file() -> None:
    assert parse_cloud_config(b"write_files:\n  - path: /a\n    content:\n") == [FileEntry("/a", b"")]


# --- writing -------------------------------------------------------------------------------------


def test_rendered_files_come_back_byte_for_byte(tmp_path: Path, strict_umask: None) -> None:
    files = [
        WriteFile("/run/peerpod/apf.json", APF_JSON),  # no trailing newline: |- keeps it exact
        WriteFile("/run/peerpod/auth.json", '  {"auths": {}}\r\n'),
        WriteFile("/run/peerpod/aa.toml", "# comment\n\n[x]\n\ty = 'ünïcödé'\n\n\n"),
        WriteFile("/run/peerpod/scratch-space.marker"),
    ]
    written, refused = write_files(parse_cloud_config(render_cloud_config(files).encode()), tmp_path)
    assert written == [f.path for f in files] and refused == []
    assert tree(tmp_path) == {f.path: f.content.encode() for f in files}
    for rel in ("run", "run/peerpod"):
        assert stat.S_IMODE((tmp_path / rel).stat().st_mode) == 0o755
    for f in files:
        assert stat.S_IMODE((tmp_path / f.path.lstrip("/")).stat().st_mode) == 0o644


def test_paths_outside_the_allowlist_are_logged_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    entries = [
        FileEntry("/etc/passwd", b"root::0:0::/:/bin/sh"),
        FileEntry("/run/peerpod/../../etc/shadow", b"x"),
        FileEntry("/run/peerpod/policy.rego", b"package x"),  # only initdata may set the policy
        FileEntry("/run/peerpod/apf.json", b"{}"),
    ]
    with caplog.at_level(logging.WARNING):
        written, refused = write_files(entries, tmp_path)
    assert written == ["/run/peerpod/apf.json"]
    assert refused == ["/etc/passwd", "/run/peerpod/../../etc/shadow", "/run/peerpod/policy.rego"]
    assert tree(tmp_path) == {"/run/peerpod/apf.json": b"{}"}
    assert "File: /etc/passwd is not allowed in WriteFiles." in caplog.messages


def test_an_existing_file_is_replaced(tmp_path: Path) -> None:
    write_files([FileEntry("/run/peerpod/apf.json", b"old")], tmp_path)
    write_files([FileEntry("/run/peerpod/apf.json", b"new")], tmp_path)
    assert tree(tmp_path) == {"/run/peerpod/apf.json": b"new"}


# --- initdata ------------------------------------------------------------------------------------


def test_missing_initdata_gets_the_dummy(tmp_path: Path) -> None:
    hex_digest, written, refused = apply_initdata(tmp_path, 1 << 20)
    assert hex_digest == digest(DUMMY_INITDATA_TOML.encode(), "sha256")
    assert (written, refused) == (["/run/peerpod/aa.toml"], [])
    files = tree(tmp_path)
    assert files["/run/peerpod/aa.toml"] == b""
    assert files["/run/peerpod/initdata.digest"] == hex_digest.encode()
    assert set(files) == {"/run/peerpod/aa.toml", "/run/peerpod/initdata", "/run/peerpod/initdata.digest"}


@pytest.mark.parametrize("algorithm", ["sha256", "sha384", "sha512"])
def test_initdata_files_and_digest_are_written(
    tmp_path: Path, algorithm: str, caplog: pytest.LogCaptureFixture
) -> None:
    toml = INITDATA_TOML.replace('"sha512"', f'"{algorithm}"')
    write_files([FileEntry("/run/peerpod/initdata", encode_initdata(toml).encode() + b"\n")], tmp_path)
    with caplog.at_level(logging.WARNING):
        hex_digest, written, refused = apply_initdata(tmp_path, 1 << 20)
    assert hex_digest == digest(toml.encode(), algorithm)
    assert len(hex_digest) == {"sha256": 64, "sha384": 96, "sha512": 128}[algorithm]
    assert sorted(written) == ["/run/peerpod/aa.toml", "/run/peerpod/cdh.toml", "/run/peerpod/policy.rego"]
    assert refused == ["evil.sh", "../../etc/passwd"]
    assert "File: evil.sh is not allowed in initdata." in caplog.messages
    files = tree(tmp_path)
    assert files["/run/peerpod/aa.toml"] == b'[token_configs.kbs]\nurl = "http://198.51.100.7:8080"\n'
    assert (
        files["/run/peerpod/policy.rego"]
        == b"package agent_policy\ndefault AllowRequestsFailingPolicy := true\n"
    )
    assert files["/run/peerpod/initdata.digest"] == hex_digest.encode()
    assert not any(p.startswith("/etc") or "evil" in p for p in files)


def test_an_initdata_gzip_bomb_is_refused(tmp_path: Path) -> None:
    toml = 'algorithm = "sha256"\nversion = "0.1.0"\n[data]\n"aa.toml" = "' + "a" * 4096 + '"\n'
    write_files([FileEntry("/run/peerpod/initdata", encode_initdata(toml).encode())], tmp_path)
    with pytest.raises(InvalidInput) as info:
        apply_initdata(tmp_path, 1024)
    assert info.value.field == "/run/peerpod/initdata"
    assert "more than 1024 bytes" in str(info.value)
    assert not (tmp_path / "run/peerpod/aa.toml").exists()
    assert not (tmp_path / "run/peerpod/initdata.digest").exists()


def test_broken_initdata_is_an_error_naming_the_file(tmp_path: Path) -> None:
    write_files([FileEntry("/run/peerpod/initdata", b"%%% not base64")], tmp_path)
    with pytest.raises(InvalidInput) as info:
        apply_initdata(tmp_path, 1 << 20)
    assert info.value.field == "/run/peerpod/initdata"


# --- fetching ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_fetch_retries_failures_and_bad_documents_with_a_fixed_delay() -> None:
    good = render_cloud_config([WriteFile("/run/peerpod/apf.json", "{}\n")]).encode()
    source = ScriptedSource(MetadataError("connection refused"), b"owner: root\n", good)
    sleeps = Sleeps()
    entries = await fetch_cloud_config(source, RetryPolicy(attempts=10, delay=5.0), 180.0, sleep=sleeps)
    assert entries == [FileEntry("/run/peerpod/apf.json", b"{}\n")]
    assert source.calls == 3
    assert sleeps.delays == [5.0, 5.0]


@pytest.mark.asyncio
async def test_fetch_gives_up_after_the_attempts_with_the_last_error() -> None:
    source = ScriptedSource(MetadataError("first"), MetadataError("GET x: HTTP 503"))
    sleeps = Sleeps()
    with pytest.raises(FetchFailed, match=r"^GET x: HTTP 503$"):
        await fetch_cloud_config(source, RetryPolicy(attempts=4, delay=0.5), 180.0, sleep=sleeps)
    assert source.calls == 4
    assert sleeps.delays == [0.5, 0.5, 0.5]


@pytest.mark.asyncio
async def test_fetch_is_bounded_by_the_whole_run_timeout() -> None:
    source = ScriptedSource(MetadataError("refused"), "hang")
    with pytest.raises(FetchFailed, match=r"no user data within .*last error: refused"):
        await fetch_cloud_config(source, RetryPolicy(attempts=10, delay=0.0), 0.05)


def test_retry_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(delay=-1)


# --- PCR extend ----------------------------------------------------------------------------------


def fake_tool(tmp_path: Path, exit_code: int = 0) -> tuple[str, Path]:
    record = tmp_path / "pcr-args"
    tool = tmp_path / "fake-pcrextend"
    tool.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\necho failing >&2\nexit {exit_code}\n')
    tool.chmod(0o755)
    return str(tool), record


@pytest.mark.asyncio
async def test_pcr_8_is_extended_with_the_first_64_hex_digits(tmp_path: Path) -> None:
    tool, record = fake_tool(tmp_path)
    sha512 = "ab" * 64
    assert await extend_pcr(tool, sha512)
    assert record.read_text() == f"8:sha256={'ab' * 32}\n"


@pytest.mark.asyncio
async def test_pcr_extend_failures_are_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tool, record = fake_tool(tmp_path, exit_code=3)
    with caplog.at_level(logging.WARNING):
        assert not await extend_pcr(tool, "cd" * 32)
    assert record.exists() and "failing" in caplog.text
    assert not await extend_pcr(str(tmp_path / "absent-tool"), "cd" * 32)
    assert not await extend_pcr(None, "cd" * 32)


# --- the whole job -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_provision_from_a_cidata_file(tmp_path: Path) -> None:
    cidata = tmp_path / "cidata"
    cidata.mkdir()
    user_data = build_userdata(APF_JSON, encode_initdata(INITDATA_TOML), '{"auths":{}}', scratch_space=True)
    (cidata / "user-data").write_text(user_data)
    tool, record = fake_tool(tmp_path)
    root = tmp_path / "root"
    config = ProvisionConfig(root=root, pcr_tool=tool)
    result = await provision(config, FileSource(cidata / "user-data"), sleep=Sleeps())
    expected_digest = digest(INITDATA_TOML.encode(), "sha512")
    assert result.source == "file"
    assert result.digest == expected_digest
    assert result.pcr_extended
    assert record.read_text() == f"8:sha256={expected_digest[:64]}\n"
    files = tree(root)
    assert files["/run/peerpod/apf.json"] == (APF_JSON + "\n").encode()
    assert files["/run/peerpod/auth.json"] == b'{"auths":{}}\n'
    assert files["/run/peerpod/scratch-space.marker"] == b""
    assert files["/run/peerpod/initdata.digest"] == expected_digest.encode()
    assert set(files) == {
        "/run/peerpod/apf.json",
        "/run/peerpod/auth.json",
        "/run/peerpod/initdata",
        "/run/peerpod/scratch-space.marker",
        "/run/peerpod/aa.toml",
        "/run/peerpod/cdh.toml",
        "/run/peerpod/policy.rego",
        "/run/peerpod/initdata.digest",
    }


@pytest.mark.asyncio
async def test_provision_without_a_source_only_processes_initdata(tmp_path: Path) -> None:
    result = await provision(ProvisionConfig(root=tmp_path), None)
    assert result.source is None
    assert result.written == ("/run/peerpod/aa.toml",)
    assert not result.pcr_extended
