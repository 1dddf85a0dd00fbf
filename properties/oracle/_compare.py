"""Bit-for-bit comparison of results after float64 rounding, with messages that name the call."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import mpmath
from mpmath import libmp, mpf

#: Binary exponents beyond which an mpf is surely ±inf or ±0 as a float64 (2^1024, 2^-1075).
_OVERFLOW_EXPONENT, _UNDERFLOW_EXPONENT = 1100, -1100


def round64(value: mpf) -> float:
    """The float64 nearest to ``value`` (ties to even), subnormals included.

    mpmath's float() rounds to 53 bits and then to the subnormal grid, which rounds twice:
    (2/3)·2^-1022 comes back one subnormal ulp off. Python's int/int division rounds once.
    """
    sign, mantissa, exponent, _ = value._mpf_
    if not mantissa:
        return float(value)
    magnitude = exponent + mantissa.bit_length()
    if magnitude > _OVERFLOW_EXPONENT:
        return -math.inf if sign else math.inf
    if magnitude < _UNDERFLOW_EXPONENT:
        return -0.0 if sign else 0.0
    exact = Fraction(mantissa) * Fraction(2) ** exponent
    try:
        return float(-exact if sign else exact)
    except OverflowError:
        return -math.inf if sign else math.inf


def rounded(result: Any) -> Any:
    """float() of an mpf, or of every mpf in a (nested) list: what a user of the oracle sees."""
    if isinstance(result, list):
        return [rounded(item) for item in result]
    return float(result)


def rounded_exactly(result: Any) -> Any:
    """round64 of an mpf, or of every mpf in a (nested) list."""
    if isinstance(result, list):
        return [rounded_exactly(item) for item in result]
    return round64(result)


def same_float(a: float, b: float) -> bool:
    """Equal floats, NaN equal to NaN (a mean over no counted token is NaN)."""
    return a == b or (math.isnan(a) and math.isnan(b))


def _mismatches(actual: Any, expected: Any, where: str = "") -> list[str]:
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{where or 'result'}: {actual!r} has not the shape of {expected!r}"]
        found = []
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            found += _mismatches(a, e, f"{where}[{i}]")
        return found
    if isinstance(expected, frozenset):
        if any(same_float(actual, e) for e in expected):
            return []
        either = " or ".join(map(repr, sorted(expected)))
        return [f"{where or 'result'}: {actual!r} != {either}"]
    if same_float(actual, expected):
        return []
    return [f"{where or 'result'}: {actual!r} != {expected!r}"]


def roundings_within(value: mpf, error: mpf) -> frozenset[float]:
    """The float64 roundings of every number within ``error`` of ``value``: one float, or two
    where a witness known only to that accuracy lies a hair from a rounding boundary (a midpoint
    the exact value misses by e^-huge, which no finite precision of the witness resolves)."""
    if not mpmath.isfinite(value):
        return frozenset({round64(value)})
    # value ∓ error rounded outward, 64 bits finer than the error: the interval only widens, by
    # far less than the error, and the integers stay small even when value is 2^-(10^19).
    prec = 64 if not value else max(64, int(mpmath.mag(value)) - int(mpmath.mag(error)) + 64)
    low = libmp.mpf_sub(value._mpf_, error._mpf_, prec, libmp.round_floor)
    high = libmp.mpf_add(value._mpf_, error._mpf_, prec, libmp.round_ceiling)
    return frozenset({round64(mpmath.mp.make_mpf(low)), round64(mpmath.mp.make_mpf(high))})


def assert_rounds_alike(
    actual: Any, expected: Any, call: str, reference_name: str, *, witness_error: mpf | None = None
) -> None:
    """Assert float(actual) == round64(expected) everywhere; the message names the call.

    ``witness_error``: how far each expected value may be from the exact one; where that
    interval straddles a rounding boundary, the float on either side is accepted (and only
    there: anywhere else the two roundings are one float).
    """
    if witness_error is None:
        wanted = rounded_exactly(expected)
    else:
        wanted = _roundings(expected, witness_error)
    found = _mismatches(rounded(actual), wanted)
    shown = "\n  ".join(found[:5])
    more = f"\n  ... and {len(found) - 5} more" if len(found) > 5 else ""
    assert not found, f"{call} disagrees with {reference_name} after rounding:\n  {shown}{more}"


def _roundings(result: Any, error: mpf) -> Any:
    if isinstance(result, list):
        return [_roundings(item, error) for item in result]
    return roundings_within(result, error)


def describe(name: str, *args: Any, **keywords: Any) -> str:
    """A reproducible call string: cross_entropy([[0.0, 1.0]], [1], reduction='sum')."""
    shown = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in keywords.items()]
    return f"{name}({', '.join(shown)})"
