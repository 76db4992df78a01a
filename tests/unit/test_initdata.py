"""The initdata codec: gzip+base64 transport, the decompression cap, strict parsing, digests."""

from __future__ import annotations

import base64
import gzip
import tracemalloc
import zlib

import pytest

from cloud_api_adaptor.errors import InvalidInput
from cloud_api_adaptor.initdata import (
    DEFAULT_MAX_BYTES,
    DUMMY_INITDATA_TOML,
    INITDATA_ANNOTATION,
    INITDATA_SETTING,
    decode_initdata,
    digest,
    encode_initdata,
    load_initdata,
    parse_initdata,
    select_initdata,
)

SAMPLE = 'algorithm = "sha384"\nversion = "0.1.0"\n\n[data]\n"aa.toml" = """\n[token_configs]\n"""\n'
# Computed with coreutils sha256sum / sha384sum / sha512sum over SAMPLE.
SAMPLE_DIGESTS = {
    "sha256": "ba6807e9b37bb1d9462f284d76be8cf251a0d7a63333d9ef5af2fe54934d41dd",
    "sha384": "8e3f1d88edfca4473acd9ac2bb191644e81a826747178fadad9fbd6fd5cad70a"
    "4c4586f9cb5545be7d4ed2885855c975",
    "sha512": "de41fdfad00f7e6fd8707ea63241442729bb789e7e2b29f92d7a53ccb257a943"
    "76e3df4ccabe0c4aa0b6fff4c92cb7f1c35aca017c0641bd0f9ffa1cdd833f1c",
}


def gzip_b64(data: bytes) -> str:
    return base64.b64encode(gzip.compress(data)).decode()


def bomb(size: int) -> str:
    """``size`` zero bytes, gzip-compressed (about 1000:1) without building them in memory."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    parts = [compressor.compress(chunk) for _ in range(size >> 20)]
    parts.append(compressor.flush())
    return base64.b64encode(b"".join(parts)).decode()


def test_encode_is_gzip_then_standard_base64_and_deterministic() -> None:
    encoded = encode_initdata(SAMPLE)
    assert gzip.decompress(base64.b64decode(encoded, validate=True)) == SAMPLE.encode()
    assert encode_initdata(SAMPLE) == encoded


def test_decode_reverses_encode_and_accepts_line_breaks() -> None:
    encoded = encode_initdata(SAMPLE)
    assert decode_initdata(encoded) == SAMPLE.encode()
    wrapped = "\n".join(encoded[i : i + 20] for i in range(0, len(encoded), 20)) + "\r\n"
    assert decode_initdata(wrapped) == SAMPLE.encode()


def test_decode_accepts_what_the_gzip_and_base64_tools_produce() -> None:
    # `cat a b | gzip | base64 -w0`, and concatenated members as `cat a.gz b.gz` gives.
    assert decode_initdata(gzip_b64(SAMPLE.encode())) == SAMPLE.encode()
    two_members = base64.b64encode(gzip.compress(b"ab") + gzip.compress(b"cd")).decode()
    assert decode_initdata(two_members) == b"abcd"


@pytest.mark.parametrize(
    ("encoded", "reason"),
    [
        ("", "empty"),
        ("not base64!", "not valid base64"),
        (base64.b64encode(b"plain text").decode(), "not valid gzip"),
        (base64.b64encode(gzip.compress(SAMPLE.encode())[:-12]).decode(), "not valid gzip"),
    ],
    ids=["empty", "bad base64", "not gzip", "truncated gzip"],
)
def test_decode_errors_name_the_callers_field(encoded: str, reason: str) -> None:
    with pytest.raises(InvalidInput) as info:
        decode_initdata(encoded, field=INITDATA_ANNOTATION)
    assert info.value.field == INITDATA_ANNOTATION
    assert reason in str(info.value)


def test_a_gzip_bomb_is_refused_without_inflating_it() -> None:
    encoded = bomb(64 << 20)  # 64 MiB of zeros in about 64 KiB
    assert len(encoded) < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput) as info:
            decode_initdata(encoded, field=INITDATA_SETTING)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.field == INITDATA_SETTING
    assert f"more than {DEFAULT_MAX_BYTES} bytes" in str(info.value)
    assert peak < 8 * DEFAULT_MAX_BYTES  # the input plus a few buffers, never the 64 MiB


def test_the_cap_is_inclusive() -> None:
    assert len(decode_initdata(gzip_b64(b"a" * 1000), max_bytes=1000)) == 1000
    with pytest.raises(InvalidInput):
        decode_initdata(gzip_b64(b"a" * 1001), max_bytes=1000)


def test_parse_reads_algorithm_version_and_data() -> None:
    doc = parse_initdata(SAMPLE.encode())
    assert (doc.algorithm, doc.version) == ("sha384", "0.1.0")
    assert dict(doc.data) == {"aa.toml": "[token_configs]\n"}


def test_parse_ignores_unknown_top_level_keys_and_missing_data() -> None:
    doc = parse_initdata(b'algorithm = "sha256"\nversion = "0.2.0"\nfuture = 1\n')
    assert doc.version == "0.2.0"
    assert dict(doc.data) == {}


@pytest.mark.parametrize(
    ("toml", "reason"),
    [
        (b'version = "0.1.0"\n', "algorithm must be a string"),
        (b'algorithm = "md5"\nversion = "0.1.0"\n', "unsupported algorithm 'md5'"),
        (b'algorithm = "SHA256"\nversion = "0.1.0"\n', "unsupported algorithm"),
        (b'algorithm = 256\nversion = "0.1.0"\n', "algorithm must be a string"),
        (b'algorithm = "sha256"\n', "version must be a string"),
        (b'algorithm = "sha256"\nversion = 0.1\n', "version must be a string"),
        (b'algorithm = "sha256"\nversion = "0.1.0"\ndata = "x"\n', "data must be a table"),
        (
            b'algorithm = "sha256"\nversion = "0.1.0"\n[data]\n"aa.toml" = 1\n',
            "data.aa.toml must be a string",
        ),
        (b'algorithm = "sha256"\nversion = "0.1.0"\n[data.x]\ny = "z"\n', "data.x must be a string"),
        (b'algorithm = "sha256"\nversion = "0.1.0"\n[data\n', "not valid TOML"),
        (b'algorithm = "sha256"\nversion = "\xff"\n', "not UTF-8"),
    ],
)
def test_parse_refuses_malformed_documents_naming_the_field(toml: bytes, reason: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_initdata(toml, field=INITDATA_ANNOTATION)
    assert info.value.field == INITDATA_ANNOTATION
    assert reason in str(info.value)


@pytest.mark.parametrize("algorithm", sorted(SAMPLE_DIGESTS))
def test_digest_is_the_hex_hash_of_the_decompressed_toml(algorithm: str) -> None:
    assert digest(SAMPLE.encode(), algorithm) == SAMPLE_DIGESTS[algorithm]


def test_digest_refuses_other_algorithms() -> None:
    with pytest.raises(InvalidInput):
        digest(b"", "md5")


def test_load_returns_the_bytes_the_digest_covers() -> None:
    toml_bytes, doc = load_initdata(encode_initdata(SAMPLE))
    assert digest(toml_bytes, doc.algorithm) == SAMPLE_DIGESTS["sha384"]


def test_the_dummy_document_parses_to_an_empty_aa_toml() -> None:
    doc = parse_initdata(DUMMY_INITDATA_TOML.encode())
    assert (doc.algorithm, doc.version, dict(doc.data)) == ("sha256", "0.1.0", {"aa.toml": ""})
    assert digest(DUMMY_INITDATA_TOML.encode(), "sha256") == (
        "0a209162d070762caad74cbb48121f194707abb105c2f77950c8ec00b05c37b3"
    )


def test_select_prefers_the_annotation_and_falls_back_to_the_default() -> None:
    default = encode_initdata(DUMMY_INITDATA_TOML)
    assert decode_initdata(select_initdata(SAMPLE, default)) == SAMPLE.encode()
    assert select_initdata("", default) == default
    assert select_initdata("", "") == ""


def test_encoding_text_that_is_not_unicode_names_the_annotation() -> None:
    with pytest.raises(InvalidInput) as info:
        encode_initdata("lone \ud800")
    assert info.value.field == INITDATA_ANNOTATION
