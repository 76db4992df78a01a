"""VXLAN network identifier (VNI) allocation.

A VNI must be unique among the tunnels on a node: the kernel refuses a second
VXLAN device with the same one (or, worse, traffic mixes).  The daemon passes the
VNIs its live sandbox records hold (they persist them) and gets the lowest free
one, so VNIs are unique among live sandboxes, survive restarts (a counter in
memory would start again at the first VNI), and are reused after StopVM.
"""

from __future__ import annotations

from collections.abc import Collection

from cloud_api_adaptor.errors import FailedPrecondition, InvalidInput
from cloud_api_adaptor.wire import VXLAN_MIN_ID

MAX_VNI = (1 << 24) - 1


def allocate_vni(in_use: Collection[int], minimum: int = VXLAN_MIN_ID) -> int:
    """The lowest VNI >= ``minimum`` not in ``in_use``.

    ``in_use`` may hold VNIs below ``minimum`` (e.g. allocated before
    VXLAN_MIN_ID changed); they are simply never candidates.  Raises
    ``FailedPrecondition`` when the 24-bit space above ``minimum`` is full.
    """
    if not 0 <= minimum <= MAX_VNI:
        raise InvalidInput("VXLAN_MIN_ID", f"VXLAN_MIN_ID: {minimum} is outside 0..{MAX_VNI}")
    taken = {v for v in in_use if v >= minimum}
    # At most len(taken) candidates are taken, so one of the first len(taken)+1 is free.
    for vni in range(minimum, min(minimum + len(taken), MAX_VNI) + 1):
        if vni not in taken:
            return vni
    raise FailedPrecondition(f"no free VXLAN network identifier between {minimum} and {MAX_VNI}")
