"""The working precision: where the oracle starts, how it escalates, where it gives up.

The oracle evaluates every result as an enclosure at a working precision of Q bits and returns
it once the whole enclosure rounds to one float64 (Ziv's strategy). When it does not, the result
is evaluated again at twice the precision. The starting precision is scoped to a ``with``
block and never touches mpmath's global context.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

#: 43 bits beyond float64's 53: a result escalates when it lies within about 2^-40 of a rounding
#: boundary, so a row of 128,256 gradient elements almost never needs a second pass.
DEFAULT_START_BITS = 96
#: Past this the enclosure still straddles a rounding boundary: the value lies within about
#: 2^-8000 of a float64 rounding boundary, as a midpoint plus e^-(10^30) does. Ordinary inputs
#: need far less; the subnormal and softcap corners reach ~3,300 bits.
MAX_BITS = 1 << 13

_start_bits = contextvars.ContextVar("reference_start_bits", default=DEFAULT_START_BITS)


@contextmanager
def precision(bits: int) -> Iterator[None]:
    """Start every evaluation inside the block at ``bits`` bits of working precision.

    The results are the same correctly rounded floats at any starting precision; a high one
    (``precision(2000)``) is how the tests certify the default fast path.
    """
    if not isinstance(bits, int) or isinstance(bits, bool) or not 32 <= bits <= MAX_BITS:
        raise ValueError(f"precision(bits): bits must be an int in [32, {MAX_BITS}], got {bits!r}")
    token = _start_bits.set(bits)
    try:
        yield
    finally:
        _start_bits.reset(token)


def fast_path_enabled() -> bool:
    """Whether the integer first step (_fast.py) may settle results: only at the default start.

    Started elsewhere (``precision(2000)``), the oracle runs its general path alone, which is how
    the tests check the first step against it.
    """
    return _start_bits.get() == DEFAULT_START_BITS


def working_precisions() -> Iterator[int]:
    """The precisions to try, in order: the scoped start, doubled, and MAX_BITS last."""
    bits = _start_bits.get()
    while bits < MAX_BITS:
        yield bits
        bits *= 2
    yield MAX_BITS


class PrecisionExhausted(ArithmeticError):
    """No working precision up to MAX_BITS decided the rounding of a result."""
