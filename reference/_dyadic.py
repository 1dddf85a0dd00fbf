"""Exact dyadic numbers man·2^exp: the logits of the fused projection, never rounded.

Every float64 is a dyadic number, and so is every sum of products of them: the logit
z = Σ_d x_d·W_d + b of float inputs is exactly man·2^exp for two integers, however many bits
man needs. The oracle's rows (_row.py, _fast.py) take such a :class:`Dyadic` wherever they take
a float logit: it compares with others of its kind, gives its exact ratio (as_integer_ratio)
and its exact mpmath value, and nothing else. It has no float(): a logit rounded on the way
would be a silent error, so that is a TypeError instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from mpmath import libmp

from reference._enclosure import Enclosure

MPF = tuple


class Dyadic:
    """man·2^exp, kept with man odd (or 0·2^0): equal values have equal fields."""

    __slots__ = ("man", "exp")

    def __init__(self, man: int, exp: int = 0) -> None:
        if man:
            zeros = (man & -man).bit_length() - 1
            man >>= zeros
            exp += zeros
        else:
            exp = 0
        self.man = man
        self.exp = exp

    def __repr__(self) -> str:
        return f"Dyadic({self.man}, {self.exp})"

    def as_integer_ratio(self) -> tuple[int, int]:
        if self.exp >= 0:
            return self.man << self.exp, 1
        return self.man, 1 << -self.exp

    @property
    def raw(self) -> MPF:
        """The exact mpmath raw float."""
        return libmp.from_man_exp(self.man, self.exp)

    def floor_fixed(self, fraction_bits: int) -> tuple[int, bool]:
        """(⌊x·2^F⌋, whether x·2^F is an integer)."""
        shift = self.exp + fraction_bits
        if shift >= 0:
            return self.man << shift, True
        return self.man >> -shift, False  # man is odd: bits are cut

    def _compare(self, other: Dyadic) -> int:
        if self.exp >= other.exp:
            a, b = self.man << (self.exp - other.exp), other.man
        else:
            a, b = self.man, other.man << (other.exp - self.exp)
        return (a > b) - (a < b)

    def __eq__(self, other: object) -> bool:
        if type(other) is not Dyadic:
            return NotImplemented
        return self.man == other.man and self.exp == other.exp

    def __hash__(self) -> int:
        return hash((self.man, self.exp))

    def __lt__(self, other: Dyadic) -> bool:
        if type(other) is not Dyadic:
            return NotImplemented
        return self._compare(other) < 0

    def __le__(self, other: Dyadic) -> bool:
        if type(other) is not Dyadic:
            return NotImplemented
        return self._compare(other) <= 0

    def __gt__(self, other: Dyadic) -> bool:
        if type(other) is not Dyadic:
            return NotImplemented
        return self._compare(other) > 0

    def __ge__(self, other: Dyadic) -> bool:
        if type(other) is not Dyadic:
            return NotImplemented
        return self._compare(other) >= 0


#: A logit as the oracle's rows take it: a float (±inf allowed) or an exact Dyadic.
Logit = float | Dyadic


def enclosure_of(x: Logit) -> Enclosure:
    """The exact value of a float or Dyadic logit, as an enclosure of width 0."""
    if type(x) is Dyadic:
        return Enclosure.exact(x.raw)
    return Enclosure.of_float(x)  # type: ignore[arg-type]


def integer_vector(values: Sequence[float]) -> tuple[list[int], int]:
    """(ints, exp) with values[k] = ints[k]·2^exp exactly, and exp as large as that allows
    (0 for a vector of zeros)."""
    pairs: list[tuple[int, int | None]] = []
    for value in values:
        numerator, denominator = value.as_integer_ratio()
        if denominator > 1:  # numerator is odd
            pairs.append((numerator, 1 - denominator.bit_length()))
        elif numerator:
            zeros = (numerator & -numerator).bit_length() - 1
            pairs.append((numerator >> zeros, zeros))
        else:
            pairs.append((0, None))
    exponents = [exp for _, exp in pairs if exp is not None]
    base = min(exponents, default=0)
    return [0 if exp is None else man << (exp - base) for man, exp in pairs], base
