"""What an agent proxy tells the fd-keeper about a shim connection the keeper relays.

The keeper does the shim's I/O for a resumable session (docs/survival.md, "The
keeper relays") and keeps a replay buffer of what it read from the shim, so it
must learn when the VM acknowledged those bytes, whether the forwarder knows
the session, and whether an EOF on the pair is the VM's FIN.  All one-way
messages on the keeper's local socket; acknowledgements are throttled so that
the hot path never pays a message per frame.
"""

from __future__ import annotations

import asyncio

from cloud_api_adaptor.transport.custody import SocketCustody
from cloud_api_adaptor.transport.resumable import ResumableRelay

#: report acknowledgements once this many bytes more were acknowledged ...
ACK_REPORT_BYTES = 32 << 10
#: ... or this long after the first unreported one
ACK_REPORT_DELAY = 0.1


class KeeperReports:
    """One relayed session's reports: ``acked`` (throttled), ``opened``, ``fin``, ``plain``."""

    def __init__(self, custody: SocketCustody, key: str, relay: ResumableRelay) -> None:
        self.key = key
        self._custody = custody
        self._relay = relay
        self._reported = relay.session.acked
        self._timer: asyncio.TimerHandle | None = None
        relay.on_acked = self.acked
        relay.on_fin = self.fin
        relay.ended.add_done_callback(lambda _f: self.close())

    def acked(self, acked: int) -> None:
        if acked - self._reported >= ACK_REPORT_BYTES:
            self.flush()
        elif self._timer is None and acked > self._reported:
            self._timer = asyncio.get_running_loop().call_later(ACK_REPORT_DELAY, self.flush)

    def flush(self) -> None:
        """Report the acknowledgement now (the keeper trims its replay buffer)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        acked = self._relay.session.acked
        if acked > self._reported:
            self._reported = acked
            self._custody.report("acked", self.key, acked=acked)

    def opened(self) -> None:
        """Before the session's hello goes out: a crash after it must resume, never open anew."""
        self._custody.report("opened", self.key)

    def fin(self) -> None:
        """Before our end of the pair is half-closed for the VM's FIN: that EOF is no death."""
        self._custody.report("fin", self.key)

    def plain(self) -> None:
        """The forwarder does not resume: the keeper stops keeping a replay buffer."""
        self._custody.report("plain", self.key)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
