import logging

import pytest

from cloud_api_adaptor.logs import RedactingFilter, redact, setup_logging

KEY = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB\n-----END EC PRIVATE KEY-----"


def test_pem_private_keys_are_blanked_even_inside_json_or_truncated() -> None:
    assert "MHcCAQEEIB" not in redact(f'{{"tls-server-key": "{KEY}", "x": 1}}')
    assert "MHcCAQEEIB" not in redact(KEY[:40] + "MHcCAQEEIB")
    assert redact("no secrets here") == "no secrets here"


def test_the_filter_scrubs_formatted_arguments() -> None:
    record = logging.LogRecord("botocore", logging.DEBUG, __file__, 1, "body: %s", (KEY,), None)
    assert RedactingFilter().filter(record)
    assert "MHcCAQEEIB" not in record.getMessage()


def test_sdk_loggers_never_log_request_bodies_at_debug(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("botocore").level)
    try:
        setup_logging("debug")
        logging.getLogger("botocore.endpoint").debug("Making request with UserData=%s", "secret-userdata")
        logging.getLogger("cloud_api_adaptor.test").debug("ours at debug: %s", KEY)
        err = capsys.readouterr().err
        assert "secret-userdata" not in err
        assert "ours at debug" in err and "MHcCAQEEIB" not in err
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        logging.getLogger("botocore").setLevel(saved[2])


def test_debug_never_turns_on_netlink_dumps_and_tracebacks_are_redacted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    netlink = logging.getLogger("pyroute2.netlink.core")
    try:
        setup_logging("debug")
        netlink.setLevel(logging.DEBUG)  # what pyroute2 may do to its own loggers on import
        netlink.debug("message {'attrs': [('IFLA_INET6_STATS', ...)]}")
        try:
            raise ValueError(f"bad userdata {KEY}")
        except ValueError:
            logging.getLogger("cloud_api_adaptor.test").exception("create failed")
        err = capsys.readouterr().err
        assert "IFLA_INET6_STATS" not in err
        assert "create failed" in err and "ValueError" in err
        assert "MHcCAQEEIB" not in err
    finally:
        root.handlers[:], root.level = saved
        netlink.setLevel(logging.NOTSET)
