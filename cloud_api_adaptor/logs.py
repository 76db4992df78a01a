"""Logging set-up with a last line of defence for secrets.

Userdata carries the pod VM's TLS private key, SDKs at DEBUG level log whole
request bodies (botocore logs RunInstances' UserData), and pyroute2 at DEBUG dumps
every netlink message.  So records of SDK, HTTP-client and netlink loggers below
INFO are dropped by the handler itself, whatever level a library sets on its own
loggers (pyroute2 configures its own when it is imported, after start-up), and the
whole formatted output, tracebacks included, passes the key redaction.
"""

from __future__ import annotations

import logging
import re
import sys

#: third-party loggers that dump request bodies at DEBUG
_CHATTY = (
    "botocore",
    "boto3",
    "urllib3",
    "s3transfer",
    "azure",
    "google",
    "ibm_cloud_sdk_core",
    "libvirt",
    "pyroute2",
)

_PEM_KEY = re.compile(
    r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----|"
    r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*",
    re.DOTALL,
)


def redact(text: str) -> str:
    """Blank PEM private keys (also truncated ones) in ``text``."""
    if "PRIVATE KEY" not in text:
        return text
    return _PEM_KEY.sub("<redacted private key>", text)


class RedactingFilter(logging.Filter):
    """Scrubs key material from the formatted message of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


class QuietLibraries(logging.Filter):
    """Drops DEBUG records of the chatty third-party loggers (and their children)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.INFO:
            return True
        name = record.name
        return not any(name == top or name.startswith(top + ".") for top in _CHATTY)


class RedactingFormatter(logging.Formatter):
    """Formats, then blanks key material in the whole text (exception tracebacks carry messages too)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(QuietLibraries())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    numeric = getattr(logging, level.upper(), logging.INFO)
    root.setLevel(numeric)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(numeric, logging.INFO))
    logging.getLogger("asyncio").setLevel(max(numeric, logging.INFO))
