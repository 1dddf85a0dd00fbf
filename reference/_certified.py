"""Ziv's loop: evaluate enclosures, keep those that round to one float64, refine the rest."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import mpmath
from mpmath import libmp

from reference._enclosure import Enclosure, certify
from reference._precision import MAX_BITS, PrecisionExhausted, working_precisions


def certified(
    evaluate: Callable[[int, Sequence[int]], dict[int, Enclosure]],
    count: int,
    what: str,
    unbounded: bool = False,
    settled: Mapping[int, float | None] | None = None,
) -> list[mpmath.mpf]:
    """Correctly rounded values of ``count`` results.

    ``evaluate(bits, pending)`` returns an enclosure of each pending result at a working
    precision of ``bits``; results whose enclosure is too wide are evaluated again at twice the
    precision, the others are kept. The results are float64 values, or with ``unbounded``
    53-bit values of any exponent (see round_to_float64). ``settled`` holds results already
    decided elsewhere (the integer first step, _fast.py): those that are not None are taken as
    they are and only the others evaluated.
    """
    results: list[tuple | None] = [None] * count
    pending: Sequence[int] = range(count)
    if settled:
        for k, decided in settled.items():
            if decided is not None:
                results[k] = raw_of_float(decided)
        pending = [k for k in range(count) if results[k] is None]
        if not pending:
            return [mpmath.mp.make_mpf(value) for value in results]
    for bits in working_precisions():
        enclosures = evaluate(bits, pending)
        undecided = []
        for k in pending:
            value = certify(enclosures[k], unbounded)
            if value is None:
                undecided.append(k)
            else:
                results[k] = value
        if not undecided:
            return [mpmath.mp.make_mpf(value) for value in results]
        pending = undecided
    raise PrecisionExhausted(
        f"{what}: the rounding of result {pending[0]} was still undecided at {MAX_BITS} bits"
    )


def certified_scalar(
    evaluate: Callable[[int], Enclosure], what: str, unbounded: bool = False
) -> mpmath.mpf:
    return certified(lambda bits, pending: {0: evaluate(bits)}, 1, what, unbounded)[0]


def raw_of_float(x: float) -> tuple:
    """The mpmath raw float of a finite float64 (libmp.from_float, without its generality)."""
    if x == 0.0:
        return libmp.fzero
    fraction, exponent = math.frexp(x)  # x = fraction·2^exponent, 1/2 ≤ |fraction| < 1
    man = int(fraction * 9007199254740992.0)  # ·2^53: an exact integer
    sign = 0
    if man < 0:
        sign, man = 1, -man
    zeros = (man & -man).bit_length() - 1
    man >>= zeros
    return (sign, man, exponent - 53 + zeros, man.bit_length())


def mpf_of_float(x: float) -> mpmath.mpf:
    """An mpf holding exactly the float x (mpmath.mpf(x) rounds to the caller's precision)."""
    return mpmath.mp.make_mpf(raw_of_float(x))
