"""Exact integer arithmetic for the fused projection's sums, and its rounding to float64.

A Pair (man, exp) is the dyadic number man·2^exp, exactly; an Interval (lo, hi, s) is the set
[lo·2^s, hi·2^s]. Sums and products of these are exact (Python integers), so the only widening
is where a caller rounds onto a grid (on_grid, divided) or drops a part astronomically below
the rest (plus, of_enclosure: one unit of its size instead of an integer of 10^300 bits).
settle rounds a quotient of an Interval by an exact divisor to float64: exactly for a point
(int/int division rounds once), else where both ends round alike (the integer first step's
rule, _fast.round_interval, then mpmath's certify for subnormals, infinities and ties).
"""

from __future__ import annotations

import math
from itertools import repeat
from operator import add, lshift

from mpmath import libmp

from reference import _fast
from reference._certified import raw_of_float
from reference._enclosure import Enclosure, certify
from reference._precision import MAX_BITS

MPF = tuple
Pair = tuple[int, int]  # man·2^exp, exactly
Interval = tuple[int, int, int]  # [lo, hi]·2^scale
IntervalVector = tuple[list[int], list[int], int]  # [lows[k], highs[k]]·2^exp

#: A term e^-a with a beyond this many bits past a working grid is bounded by 2^-a rather than
#: computed: products of float64 values stay below 2^4200, so 2^-8192 of one is far below any
#: float64 rounding it could decide.
BOUNDED_BEYOND = 8192
#: A part of a sum this many bits below the other is kept as a bound of one unit (see plus):
#: beyond the largest working precision and the terms' own cut-off.
NEGLIGIBLE = 2 * MAX_BITS + BOUNDED_BEYOND
#: Twice the smallest normal float64: a value rounded to 53 bits at or above it was normal.
_NORMAL_ENOUGH = 2.0**-1021


def pair_sum(a: Pair, b: Pair) -> Pair:
    (a_man, a_exp), (b_man, b_exp) = a, b
    if a_exp > b_exp:
        return (a_man << (a_exp - b_exp)) + b_man, b_exp
    return a_man + (b_man << (b_exp - a_exp)), a_exp


def pair_product(a: Pair, b: Pair) -> Pair:
    return a[0] * b[0], a[1] + b[1]


def raw(a: Pair) -> MPF:
    return libmp.from_man_exp(*a)


def exact(a: Pair) -> Interval:
    return a[0], a[0], a[1]


def scaled(interval: Interval, a: Pair) -> Interval:
    lo, hi, scale = interval
    man, exp = a
    if man >= 0:
        return lo * man, hi * man, scale + exp
    return hi * man, lo * man, scale + exp


def magnitude(interval: Interval) -> int:
    """An exponent above |every value|: 2^this > max(|lo|, |hi|)·2^scale."""
    lo, hi, scale = interval
    return max(-lo if lo < 0 else lo, -hi if hi < 0 else hi).bit_length() + scale


def plus(a: Interval, b: Interval) -> Interval:
    """a + b. A part more than NEGLIGIBLE bits below the other is replaced by one unit of that
    size, of its sign (an e^-(10^300) is not shifted into an integer of 10^300 bits)."""
    if not a[0] and not a[1]:
        return b
    if not b[0] and not b[1]:
        return a
    top_a, top_b = magnitude(a), magnitude(b)
    if top_a - top_b > NEGLIGIBLE:
        b = _unit(b, top_a - NEGLIGIBLE)
    elif top_b - top_a > NEGLIGIBLE:
        a = _unit(a, top_b - NEGLIGIBLE)
    return _fast.add(a, b)


def _unit(interval: Interval, scale: int) -> Interval:
    """[0, 1], [−1, 0] or [−1, 1]·2^scale, enclosing an interval of magnitude below 2^scale."""
    lo, hi, _ = interval
    return (-1 if lo < 0 else 0), (1 if hi > 0 else 0), scale


def times(a: Interval, b: Interval) -> Interval:
    corners = [a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1]]
    return min(corners), max(corners), a[2] + b[2]


def of_enclosure(enclosure: Enclosure) -> Interval:
    """The same interval with integer ends (both finite); an end more than NEGLIGIBLE bits
    below the other is moved outward to 0 or to one unit of that size."""
    (lo_sign, lo_man, lo_exp, lo_bits), (hi_sign, hi_man, hi_exp, hi_bits) = (
        enclosure.lo,
        enclosure.hi,
    )
    low, high = (-lo_man if lo_sign else lo_man), (-hi_man if hi_sign else hi_man)
    if not low:
        lo_exp = hi_exp
    elif not high:
        hi_exp = lo_exp
    elif hi_exp + hi_bits - (lo_exp + lo_bits) > NEGLIGIBLE:
        low, lo_exp = (-1 if low < 0 else 0), hi_exp + hi_bits - NEGLIGIBLE
    elif lo_exp + lo_bits - (hi_exp + hi_bits) > NEGLIGIBLE:
        high, hi_exp = (1 if high > 0 else 0), lo_exp + lo_bits - NEGLIGIBLE
    scale = min(lo_exp, hi_exp)
    return low << (lo_exp - scale), high << (hi_exp - scale), scale


def on_grid(interval: Interval, grid: int) -> tuple[int, int]:
    """[lo, hi]·2^scale rounded outward onto multiples of 2^grid."""
    lo, hi, scale = interval
    shift = scale - grid
    if shift >= 0:
        return lo << shift, hi << shift
    return lo >> -shift, -((-hi) >> -shift)


def settle(numerator: Interval, divisor: Pair) -> MPF | None:
    """round64 of every value in numerator / divisor (a nonzero dyadic), or None (undecided)."""
    lo, hi, scale = numerator
    quotient, quotient_exp = divisor
    if quotient < 0:
        lo, hi, quotient = -hi, -lo, -quotient
    scale -= quotient_exp
    if lo == hi:  # an exact rational: int/int division rounds it once, subnormals included
        size = abs(lo).bit_length() + scale - quotient.bit_length()  # log2|value| ± 1
        if not lo or size < -1100:
            return libmp.fzero
        if size > 1100:
            return libmp.finf if lo > 0 else libmp.fninf
        num, den = (lo << scale, quotient) if scale >= 0 else (lo, quotient << -scale)
        try:
            return raw_of_float(num / den)
        except OverflowError:
            return libmp.finf if lo > 0 else libmp.fninf
    decided = _rounded_quotients(lo, hi, quotient, scale)
    if decided is not None:
        return raw_of_float(decided)
    if quotient != 1:  # outward, 8 bits finer than the divisor: the interval barely widens
        extra = quotient.bit_length() + 8
        lo, hi, scale = (lo << extra) // quotient, -((-hi << extra) // quotient), scale - extra
    value = _fast.round_interval(lo, hi, scale)
    if value is not None:
        return raw_of_float(value)
    return certify(Enclosure(libmp.from_man_exp(lo, scale), libmp.from_man_exp(hi, scale)))


def _rounded_quotients(lo: int, hi: int, quotient: int, scale: int) -> float | None:
    """The float64 both lo·2^s/q and hi·2^s/q round to, when both are well inside the normal
    range, else None.

    int/int division rounds once, correctly; scaling a normal float by 2^s into the normal
    range is exact, so round64(lo/q)·2^s = round64(lo·2^s/q) there. Equal roundings of the
    two ends are the rounding of everything between them (rounding is monotone).
    """
    try:
        low, high = lo / quotient, hi / quotient
    except OverflowError:
        return None
    if low != high or not _NORMAL_ENOUGH <= abs(low) < math.inf:
        return None
    try:
        value = math.ldexp(low, scale)
    except OverflowError:
        return None
    return value if _NORMAL_ENOUGH <= abs(value) < math.inf else None


def vector_sum(*parts: tuple[list[int], int]) -> tuple[list[int], int]:
    """Σ of exact vectors (integers, exponent), on the smallest exponent."""
    exp = min(e for _, e in parts)
    total = [0] * len(parts[0][0])
    for ints, e in parts:
        total = list(map(add, total, (v << (e - exp) for v in ints)))
    return total, exp


def interval_vector_sum(parts: list[IntervalVector]) -> list[Interval]:
    """Σ of interval vectors, exactly on the smallest exponent where the exponents are close,
    else element by element through plus."""
    exps = [exp for _, _, exp in parts]
    base = min(exps)
    first_lows, first_highs, first_exp = parts[0]
    if max(exps) - base > NEGLIGIBLE:
        found = [(lo, hi, first_exp) for lo, hi in zip(first_lows, first_highs, strict=True)]
        for lows, highs, exp in parts[1:]:
            found = [plus(a, (lo, hi, exp)) for a, lo, hi in zip(found, lows, highs, strict=True)]
        return found
    total_lows, total_highs = [0] * len(first_lows), [0] * len(first_lows)
    for lows, highs, exp in parts:
        shift = repeat(exp - base)
        total_lows = list(map(add, total_lows, map(lshift, lows, shift)))
        total_highs = list(map(add, total_highs, map(lshift, highs, shift)))
    return [(lo, hi, base) for lo, hi in zip(total_lows, total_highs, strict=True)]


def negated(interval: Interval) -> Interval:
    return -interval[1], -interval[0], interval[2]


def divided(interval: Interval, divisor: int, extra_bits: int) -> Interval:
    """interval / divisor (a positive integer), rounded outward, ``extra_bits`` finer."""
    lo, hi, scale = interval
    return (lo << extra_bits) // divisor, -((-hi << extra_bits) // divisor), scale - extra_bits
