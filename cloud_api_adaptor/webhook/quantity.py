"""Kubernetes resource quantities (``500m``, ``1.5Gi``, ``2e3``) as exact fractions.

The webhook must round exactly as the Go ``resource.Quantity`` does
(``Value()`` rounds up to an integer, ``RoundUpToMiB`` rounds bytes up to whole
MiB), so quantities are parsed into ``Fraction`` and never through floats.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}
_QUANTITY = re.compile(r"^([+-]?)(\d+(?:\.\d*)?|\.\d+)(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)$")
MIB = 2**20


class QuantityError(ValueError):
    """Text that is not a Kubernetes quantity."""


def parse_quantity(value: object) -> Fraction:
    """``"250m"`` -> 1/4; a bare number (the API stores ints as such in JSON) is accepted too."""
    if isinstance(value, bool):
        raise QuantityError(f"not a quantity: {value!r}")
    if isinstance(value, int):
        return Fraction(value)
    if not isinstance(value, str):
        raise QuantityError(f"not a quantity: {value!r}")
    match = _QUANTITY.match(value.strip())
    if match is None:
        raise QuantityError(f"not a quantity: {value!r}")
    sign, number, exponent, suffix = match.groups()
    amount = Fraction(number)
    if exponent:
        amount *= Fraction(10) ** int(exponent[1:])
    elif suffix in _BINARY:
        amount *= _BINARY[suffix]
    else:
        amount *= _DECIMAL[suffix or ""]
    return -amount if sign == "-" else amount


def ceil_value(amount: Fraction) -> int:
    """Go's ``Quantity.Value()``: the integer value, rounded up (200m -> 1, 1.2 -> 2)."""
    return math.ceil(amount)


def ceil_mib(amount: Fraction) -> int:
    """Go's ``RoundUpToMiB``: bytes rounded up to an integer, then to whole MiB."""
    return math.ceil(Fraction(math.ceil(amount), MIB))


def format_quantity(amount: Fraction) -> str:
    """Canonical text for a sum of quantities: an integer as is, else in milli-units (``1500m``)."""
    if amount.denominator == 1:
        return str(amount.numerator)
    return f"{math.ceil(amount * 1000)}m"
