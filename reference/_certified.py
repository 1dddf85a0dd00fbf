"""Ziv's loop: evaluate enclosures, keep those that round to one float64, refine the rest."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import mpmath

from reference._enclosure import Enclosure, certify
from reference._precision import MAX_BITS, PrecisionExhausted, working_precisions


def certified(
    evaluate: Callable[[int, Sequence[int]], dict[int, Enclosure]],
    count: int,
    what: str,
    unbounded: bool = False,
) -> list[mpmath.mpf]:
    """Correctly rounded values of ``count`` results.

    ``evaluate(bits, pending)`` returns an enclosure of each pending result at a working
    precision of ``bits``; results whose enclosure is too wide are evaluated again at twice the
    precision, the others are kept. The results are float64 values, or with ``unbounded``
    53-bit values of any exponent (see round_to_float64).
    """
    results: list[tuple | None] = [None] * count
    pending: Sequence[int] = range(count)
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
