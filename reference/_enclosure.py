"""Enclosures: intervals [lo, hi] of mpmath raw floats, rounded outward, and their certification.

Arithmetic (+, −, ×, ÷) uses mpmath's directed rounding, which is exact for these operations.
mpmath's elementary functions (exp, log, tanh) are accurate to about one unit in the last place
at the requested precision but their directed rounding is not guaranteed (log(1 + 2^-200)
rounded down at 60 bits comes back as 2^-200, above the true value), so every transcendental
result is widened by four units in the last place before it joins an enclosure.

A result is certified when both ends of its enclosure round to the same float64; since
rounding is monotone, so does every value between them, the exact one included.
"""

from __future__ import annotations

from mpmath import libmp
from mpmath.libmp import fnan, fone, fzero

MPF = tuple  # an mpmath raw float: (sign, mantissa, exponent, bitcount) or a special value

# Values in [2^-1076, 2^-1021) are rounded on float64's subnormal grid (spacing 2^-1074); above,
# float64 rounding is rounding to a 53-bit significand.
_SUBNORMAL_TOP = -1021
_SUBNORMAL_BOTTOM = -1076
_SUBNORMAL_QUANTUM = -1074
_OVERFLOW_MAGNITUDE = 1024  # a 53-bit value ≥ 2^1024 is float64's +inf


def widen_down(x: MPF, prec: int) -> MPF:
    """x minus four units in its last place at ``prec`` bits (exact zeros and infinities stay)."""
    sign, man, exp, bc = x
    if not man:
        return x
    return libmp.mpf_sub(x, (0, 1, exp + bc - prec + 2, 1), prec, "f")


def widen_up(x: MPF, prec: int) -> MPF:
    """x plus four units in its last place at ``prec`` bits (exact zeros and infinities stay)."""
    sign, man, exp, bc = x
    if not man:
        return x
    return libmp.mpf_add(x, (0, 1, exp + bc - prec + 2, 1), prec, "c")


class Enclosure:
    """The exact value lies in [lo, hi]; lo and hi are mpmath raw floats."""

    __slots__ = ("lo", "hi")

    def __init__(self, lo: MPF, hi: MPF) -> None:
        self.lo = lo
        self.hi = hi

    @classmethod
    def exact(cls, x: MPF) -> Enclosure:
        return cls(x, x)

    @classmethod
    def of_float(cls, x: float) -> Enclosure:
        value = libmp.from_float(x)
        return cls(value, value)

    @classmethod
    def of_rational(cls, p: int, q: int, prec: int) -> Enclosure:
        return cls(libmp.from_rational(p, q, prec, "f"), libmp.from_rational(p, q, prec, "c"))

    def __repr__(self) -> str:
        return f"Enclosure({libmp.to_str(self.lo, 20)}, {libmp.to_str(self.hi, 20)})"

    @property
    def is_exact(self) -> bool:
        return self.lo == self.hi

    def add(self, other: Enclosure, prec: int) -> Enclosure:
        return Enclosure(
            libmp.mpf_add(self.lo, other.lo, prec, "f"), libmp.mpf_add(self.hi, other.hi, prec, "c")
        )

    def sub(self, other: Enclosure, prec: int) -> Enclosure:
        return Enclosure(
            libmp.mpf_sub(self.lo, other.hi, prec, "f"), libmp.mpf_sub(self.hi, other.lo, prec, "c")
        )

    def neg(self) -> Enclosure:
        return Enclosure(libmp.mpf_neg(self.hi), libmp.mpf_neg(self.lo))

    def mul(self, other: Enclosure, prec: int) -> Enclosure:
        if self.is_exact and self.lo == fzero or other.is_exact and other.lo == fzero:
            return Enclosure(fzero, fzero)  # 0 × anything, even an unbounded factor, is 0
        corners = [(a, b) for a in (self.lo, self.hi) for b in (other.lo, other.hi)]
        lows = [libmp.mpf_mul(a, b, prec, "f") for a, b in corners]
        highs = [libmp.mpf_mul(a, b, prec, "c") for a, b in corners]
        return Enclosure(_min(lows), _max(highs))

    def div(self, other: Enclosure, prec: int) -> Enclosure:
        if libmp.mpf_sign(other.lo) * libmp.mpf_sign(other.hi) <= 0:
            raise ZeroDivisionError("divisor enclosure contains zero")
        corners = [(a, b) for a in (self.lo, self.hi) for b in (other.lo, other.hi)]
        lows = [libmp.mpf_div(a, b, prec, "f") for a, b in corners]
        highs = [libmp.mpf_div(a, b, prec, "c") for a, b in corners]
        return Enclosure(_min(lows), _max(highs))

    def square(self, prec: int) -> Enclosure:
        if libmp.mpf_sign(self.lo) >= 0:
            return Enclosure(
                libmp.mpf_mul(self.lo, self.lo, prec, "f"),
                libmp.mpf_mul(self.hi, self.hi, prec, "c"),
            )
        if libmp.mpf_sign(self.hi) <= 0:
            return self.neg().square(prec)
        top = _max([libmp.mpf_neg(self.lo), self.hi])
        return Enclosure(fzero, libmp.mpf_mul(top, top, prec, "c"))

    def log(self, prec: int) -> Enclosure:
        """log of a positive enclosure (log 0 = −inf)."""
        return Enclosure(
            widen_down(libmp.mpf_log(self.lo, prec, "f"), prec),
            widen_up(libmp.mpf_log(self.hi, prec, "c"), prec),
        )

    def log1p(self, prec: int) -> Enclosure:
        """log(1 + x) for x ≥ 0, with relative accuracy for tiny x.

        Below 2^-(prec+4), x − x²/2 ≤ log1p(x) ≤ x pins it within 2^-(prec+4) relatively (and
        1 + x would need more bits than memory holds for x = e^-(10^16)); above, 1 + x is formed
        exactly and its log taken.
        """
        return Enclosure(_log1p(self.lo, prec, "f"), _log1p(self.hi, prec, "c"))

    def exp(self, prec: int) -> Enclosure:
        if self.is_exact and self.lo == fzero:
            return Enclosure(fone, fone)  # the one argument whose exponential is exact
        return Enclosure(
            widen_down(libmp.mpf_exp(self.lo, prec, "f"), prec),
            widen_up(libmp.mpf_exp(self.hi, prec, "c"), prec),
        )


def _log1p(x: MPF, prec: int, rounding: str) -> MPF:
    sign, man, exp, bc = x
    if man and exp + bc < -(prec + 4):
        if rounding == "c":
            return x
        return libmp.mpf_sub(x, (0, 1, 2 * (exp + bc), 1), prec, "f")  # x − x²/2 > x − 2^(2·mag)
    one_plus_x = libmp.mpf_add(fone, x)
    if rounding == "c":
        return widen_up(libmp.mpf_log(one_plus_x, prec, "c"), prec)
    return widen_down(libmp.mpf_log(one_plus_x, prec, "f"), prec)


def _min(values: list[MPF]) -> MPF:
    if fnan in values:
        return fnan
    best = values[0]
    for v in values[1:]:
        if libmp.mpf_lt(v, best):
            best = v
    return best


def _max(values: list[MPF]) -> MPF:
    if fnan in values:
        return fnan
    best = values[0]
    for v in values[1:]:
        if libmp.mpf_lt(best, v):
            best = v
    return best


def round_to_float64(x: MPF, mode: str = "n", unbounded: bool = False) -> MPF:
    """x rounded as float64 would: mode "n" nearest-even, "f" floor, "c" ceiling.

    The result is a float64 value (±inf past the largest, 0 below half the smallest subnormal).
    With ``unbounded`` the exponent range is unbounded instead: the 53-bit rounding, whose
    float() is still the correctly rounded float64 (a sequence probability of 2^-10000 stays
    2^-10000).
    """
    sign, man, exp, bc = x
    if not man:
        return x
    magnitude = exp + bc  # 2^(magnitude-1) <= |x| < 2^magnitude
    if _SUBNORMAL_BOTTOM <= magnitude < _SUBNORMAL_TOP:
        return _round_to_subnormal_grid(sign, man, exp, mode)
    if magnitude < _SUBNORMAL_BOTTOM and not unbounded:
        return fzero  # below 2^-1076: nearer 0 than the smallest subnormal (mpmath has no −0)
    rounded = libmp.normalize(sign, man, exp, bc, 53, mode)
    if not unbounded and rounded[2] + rounded[3] > _OVERFLOW_MAGNITUDE:
        return libmp.fninf if sign else libmp.finf
    return rounded


def _round_to_subnormal_grid(sign: int, man: int, exp: int, mode: str) -> MPF:
    """Round ±man·2^exp to a multiple of 2^-1074, float64's spacing below 2^-1021."""
    shift = _SUBNORMAL_QUANTUM - exp
    if shift <= 0:
        return libmp.from_man_exp(-man if sign else man, exp)
    quotient = man >> shift
    remainder = man - (quotient << shift)
    half = 1 << (shift - 1)
    if mode == "n":
        away = remainder > half or (remainder == half and quotient & 1)
    elif mode == "f":
        away = bool(sign) and remainder != 0
    else:
        away = not sign and remainder != 0
    quotient += away
    return libmp.from_man_exp(-quotient if sign else quotient, _SUBNORMAL_QUANTUM)


def _is_midpoint(x: MPF) -> bool:
    """Whether x lies exactly halfway between two neighbouring float64 values."""
    sign, man, exp, bc = x
    if not man:
        return False
    if _SUBNORMAL_BOTTOM <= exp + bc < _SUBNORMAL_TOP:
        return exp == _SUBNORMAL_QUANTUM - 1
    return bc == 54


def certify(enclosure: Enclosure, unbounded: bool = False) -> MPF | None:
    """The common float64 rounding of every value in the enclosure, or None when they differ.

    An end of an inexact enclosure that is exactly a rounding midpoint is taken as open: the
    exact value lies strictly inside, being no dyadic number (the value involves exp or log of
    the inputs, and where those vanish the oracle computes exactly). Without this, a midpoint
    minus e^-(10^33) could never be decided at any precision.
    """
    lo, hi = enclosure.lo, enclosure.hi
    rounded_lo = round_to_float64(lo, "n", unbounded)
    if rounded_lo == fnan:
        return fnan
    rounded_hi = round_to_float64(hi, "n", unbounded)
    if rounded_lo == rounded_hi:
        return rounded_lo
    if lo != hi:
        if _is_midpoint(hi) and round_to_float64(hi, "f", unbounded) == rounded_lo:
            return rounded_lo
        if _is_midpoint(lo) and round_to_float64(lo, "c", unbounded) == rounded_hi:
            return rounded_hi
    return None
