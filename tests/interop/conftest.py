"""Session fixture: the Go interop binaries, built once (and only when their inputs changed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .gobuild import build_interop_binaries


@pytest.fixture(scope="session")
def interop_bin() -> Path:
    """Directory with ``kata-sim`` and ``ttrpc-bench-server`` (see build.sh)."""
    return build_interop_binaries()
