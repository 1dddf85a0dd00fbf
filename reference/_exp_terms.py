"""exp(−t) for many t ≥ 0 at once, in integer arithmetic, each to a relative error ≤ 2^-Q.

This is the oracle's hot loop: a softmax over C classes needs C exponentials. mpmath's mpf_exp
costs about 10 µs each; this costs a few table look-ups and integer products, and rarely a
short polynomial.

With G = Q + 6 guard bits, an argument t = D / 2^F (F = G + 8 fraction bits) is split as
t = a + b₁/2^8 + b₂/2^16 + b₃/2^24 + b₄/2^32 + σ with a an integer, b₁…b₄ bytes and
0 ≤ σ < 2^-32:

    exp(−t) = exp(−a) · exp(−b₁/2^8) · exp(−b₂/2^16) · exp(−b₃/2^24) · exp(−b₄/2^32) · exp(−σ)

The five exponentials come from tables made once per G with mpmath at G + 30 bits (an entry
when first needed) and stored as G-bit integers (error ≤ 2 units each); exp(−σ) is its Taylor
polynomial, summed by Horner in G-bit fixed point (≤ 1.5 units: one per truncated step, plus a
remainder below 2^-(G+2)).
Relative errors, as multiples of 2^-G: exp(−a) ≤ 1 (a G+1-bit significand), exp(−b₁/2^8) ≤ 5.5
(it is ≥ e^-1), exp(−b₂/2^16), exp(−b₃/2^24) and exp(−b₄/2^32) ≤ 2.1 each, exp(−σ) ≤ 1.6, and
the five truncating shifts of products that stay ≥ e^-1.01 · 2^G, ≤ 2.8 each: 28.4 in all,
under 2^5. An argument known only to within two units of 2^-F adds 2^(1−F) = 2^(−G−7). So each
term is within 2^(5−G) + 2^(−G−7) < 2^(6−G) = 2^-Q of its value, relatively.

Why four bytes: a float32 logit of magnitude near 1 has its last bit at 2^-23, so m − x_j
usually ends within the third byte and σ is 0: the term costs four products and no polynomial.
A byte or σ that is 0 contributes the factor 1 exactly and is skipped.
"""

from __future__ import annotations

import math
from functools import lru_cache

from mpmath import libmp

#: exp(−b/2^s) is tabled for each byte b at each of these s (bits after the binary point).
_BYTE_SHIFTS = (8, 16, 24, 32)


class ExpTerms:
    """Tables for exp(−t) at working precision Q (relative error ≤ 2^-Q per term)."""

    def __init__(self, precision: int) -> None:
        self.precision = precision
        self.guard_bits = guard = precision + 6
        self.fraction_bits = guard + 8
        table_prec = guard + 30
        self._one = 1 << guard
        self._table_prec = table_prec
        # Filled on first use: at a precision the Ziv loop escalates to, few rows (and so few
        # bytes) are ever needed, and each entry costs an mpf_exp at G + 30 bits.
        self._byte_tables: list[list[int | None]] = [[None] * 256 for _ in _BYTE_SHIFTS]
        self._whole: dict[int, tuple[int, int]] = {}
        # Taylor terms for exp(−σ), σ < 2^-32: the first left out, σ^(n+1)/(n+1)!, is < 2^-(G+2).
        sigma_bits = _BYTE_SHIFTS[-1]
        terms = 1
        while sigma_bits * (terms + 1) + math.log2(math.factorial(terms + 1)) < guard + 2:
            terms += 1
        self._taylor_terms = terms
        self._taylor_divisors = tuple(range(terms, 0, -1))  # Horner's order: n, n − 1, …, 1
        self._sigma_bits = self.fraction_bits - sigma_bits  # σ·2^F's bits: those below b₄
        self._sigma_mask = (1 << self._sigma_bits) - 1

    def _entry(self, table: int, byte: int) -> int:
        """exp(−byte/2^s) for the table's shift s, as a G-bit integer (error ≤ 2 units)."""
        prec = self._table_prec
        shift = _BYTE_SHIFTS[table]
        value = libmp.mpf_exp(libmp.from_rational(-byte, 1 << shift, prec), prec)
        entry = self._byte_tables[table][byte] = libmp.to_fixed(value, self.guard_bits)
        return entry

    def whole(self, a: int) -> tuple[int, int]:
        """exp(−a) as (significand of G+1 bits, exponent), truncated: error < 1 unit."""
        cached = self._whole.get(a)
        if cached is None:
            prec = self.guard_bits + 30 + a.bit_length()
            sign, man, exp, bc = libmp.mpf_exp(libmp.from_int(-a), prec)
            shift = bc - (self.guard_bits + 1)
            significand = man >> shift if shift >= 0 else man << -shift
            cached = (significand, exp + shift)
            self._whole[a] = cached
        return cached

    def exp_neg(self, fixed: int) -> tuple[int, int]:
        """exp(−fixed / 2^F) ≈ significand · 2^exponent, relative error ≤ 2^-Q."""
        fraction_bits = self.fraction_bits
        guard = self.guard_bits
        a = fixed >> fraction_bits
        sigma = fixed & self._sigma_mask
        # whole(a)'s cache read here: a call per term is a good part of a small row's time.
        whole = self._whole.get(a)
        significand, exponent = self.whole(a) if whole is None else whole
        # A zero byte or σ = 0 contributes the factor exactly 1 (2^G / 2^G): skipped, exactly.
        # Logits of few significant bits (bfloat16, float16, float32) leave σ = 0 in most terms.
        first, second, third, fourth = self._byte_tables
        # b₁…b₄ from one small integer (the 32 bits after the point): cheaper than four shifts
        # of the whole argument.
        bytes_ = (fixed >> self._sigma_bits) & 0xFFFFFFFF
        byte = bytes_ >> 24
        if byte:
            significand = (significand * (first[byte] or self._entry(0, byte))) >> guard
        byte = (bytes_ >> 16) & 255
        if byte:
            significand = (significand * (second[byte] or self._entry(1, byte))) >> guard
        byte = (bytes_ >> 8) & 255
        if byte:
            significand = (significand * (third[byte] or self._entry(2, byte))) >> guard
        byte = bytes_ & 255
        if byte:
            significand = (significand * (fourth[byte] or self._entry(3, byte))) >> guard
        if sigma:
            one = self._one
            poly = one
            for k in self._taylor_divisors:
                poly = one - ((sigma * poly) >> fraction_bits) // k
            significand = (significand * poly) >> guard
        return significand, exponent


@lru_cache(maxsize=8)
def exp_terms(precision: int) -> ExpTerms:
    return ExpTerms(precision)
