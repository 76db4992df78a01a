"""An fd-keeper serving in a thread of the test process (the real ``FdKeeper``, no subprocess)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from cloud_api_adaptor.fdkeeper import FdKeeper


@contextlib.contextmanager
def keeper_in_thread(path: Path) -> Iterator[FdKeeper]:
    """Serve an ``FdKeeper`` on ``path`` until the block ends; it must stop and remove its socket."""
    keeper = FdKeeper(path)
    thread = threading.Thread(target=keeper.serve, daemon=True, name="fd-keeper")
    thread.start()
    try:
        yield keeper
    finally:
        keeper.stop()
        thread.join(10)
    assert not thread.is_alive(), "the fd-keeper did not stop"
    assert not path.exists(), "the fd-keeper left its socket behind"
