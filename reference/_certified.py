"""Ziv's loop: evaluate enclosures, keep those that round to one float64, refine the rest."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import cast

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
    as_float: bool = False,
) -> list[mpmath.mpf] | list[float]:
    """Correctly rounded values of ``count`` results.

    ``evaluate(bits, pending)`` returns an enclosure of each pending result at a working
    precision of ``bits``; results whose enclosure is too wide are evaluated again at twice the
    precision, the others are kept. The results are float64 values, or with ``unbounded``
    53-bit values of any exponent (see round_to_float64). ``settled`` holds results already
    decided elsewhere (the integer first step, _fast.py): those that are not None are taken as
    they are and only the others evaluated. With ``as_float`` the results are Python floats
    (each the float64 an mpf result holds exactly, so the same number) instead of mpf objects.
    """
    results: list[tuple | float | None] = [None] * count
    pending: Sequence[int] = range(count)
    if settled:
        for k, decided in settled.items():
            if decided is not None:
                results[k] = decided if as_float else raw_of_float(decided)
        pending = [k for k in range(count) if results[k] is None]
        if not pending:
            return _finished(results, as_float)
    for bits in working_precisions():
        enclosures = evaluate(bits, pending)
        undecided = []
        for k in pending:
            value = certify(enclosures[k], unbounded)
            if value is None:
                undecided.append(k)
            else:
                # The value is a float64 (unbounded results are never asked for as floats), so
                # to_float is exact: it only reassembles the number.
                results[k] = libmp.to_float(value) if as_float else value
        if not undecided:
            return _finished(results, as_float)
        pending = undecided
    raise PrecisionExhausted(
        f"{what}: the rounding of result {pending[0]} was still undecided at {MAX_BITS} bits"
    )


def _finished(results: list, as_float: bool) -> list:
    """Every result decided: as they are (floats) or as mpf objects (from raw mpmath floats)."""
    if as_float:
        return results
    return [mpmath.mp.make_mpf(value) for value in results]


def certified_scalar(
    evaluate: Callable[[int], Enclosure], what: str, unbounded: bool = False
) -> mpmath.mpf:
    return cast(
        mpmath.mpf, certified(lambda bits, pending: {0: evaluate(bits)}, 1, what, unbounded)[0]
    )


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
