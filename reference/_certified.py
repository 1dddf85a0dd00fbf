"""Ziv's loop: evaluate enclosures, keep those that round to one float64, refine the rest."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import mpmath
from mpmath import libmp

from reference._enclosure import Enclosure, certify
from reference._precision import MAX_BITS, PrecisionExhausted, working_precisions


def certified(
    evaluate: Callable[[int, Sequence[int]], dict[int, Enclosure]], count: int, what: str
) -> list[mpmath.mpf]:
    """Correctly rounded values of ``count`` results.

    ``evaluate(bits, pending)`` returns an enclosure of each pending result at a working
    precision of ``bits``; results whose enclosure is too wide are evaluated again at twice the
    precision, the others are kept.
    """
    results: list[tuple | None] = [None] * count
    pending: Sequence[int] = range(count)
    widths: dict[int, tuple] = {}
    for bits in working_precisions():
        enclosures = evaluate(bits, pending)
        undecided = []
        for k in pending:
            enclosure = enclosures[k]
            value = certify(enclosure)
            if value is not None:
                results[k] = value
                continue
            width = libmp.mpf_sub(enclosure.hi, enclosure.lo, 32, "u")
            if k in widths and not libmp.mpf_lt(libmp.mpf_shift(width, 1), widths[k]):
                # Doubling the precision did not even halve the enclosure: what keeps it open is
                # an exact term that more bits do not reach (a midpoint plus e^-(10^30), say).
                raise PrecisionExhausted(
                    f"{what}: result {k} lies too close to a float64 rounding midpoint to be decided "
                    f"(its enclosure stopped shrinking at {bits} bits)"
                )
            widths[k] = width
            undecided.append(k)
        if not undecided:
            return [mpmath.mp.make_mpf(value) for value in results]
        pending = undecided
    raise PrecisionExhausted(
        f"{what}: the rounding of result {pending[0]} was still undecided at {MAX_BITS} bits"
    )


def certified_scalar(evaluate: Callable[[int], Enclosure], what: str) -> mpmath.mpf:
    return certified(lambda bits, pending: {0: evaluate(bits)}, 1, what)[0]
