"""One row of logits at one working precision: its softmax terms, their sums, lse, NLL, p.

Everything is measured from the row's largest logit m: the terms are e_j = exp(x_j − m) ∈ (0, 1]
and S = Σ_j e_j ∈ [1, C], so lse = m + log S never overflows and log S never cancels. Each term
is an integer significand with a relative error ≤ ρ = 2^(1−Q) (see _exp_terms.py; the extra
factor 2 covers the rounding of a softcapped logit), and a sum of such positive terms, formed
exactly in integers, keeps that relative error.

Two quantities would lose their relative accuracy if formed naively, and are formed otherwise:
- the NLL of a target near the top, −log p_t = log(1 + R_t/e_t) with R_t = Σ_{j≠t} e_j, taken
  through log1p so that a loss of 3.7e-44 (logits [100, 0], target 0) keeps all its digits;
- 1 − p_t = R_t/S, for the gradient at the target.
R_t is S − e_t unless e_t > S/2 (then it is summed directly): the subtraction keeps its relative
accuracy whenever it removes at most half of S, and at most one term can exceed S/2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mpmath import libmp

from reference._dyadic import Dyadic, Logit, enclosure_of
from reference._enclosure import Enclosure, widen_down, widen_up
from reference._exp_terms import exp_terms

MPF = tuple


class IntegerSum:
    """A positive quantity in [lo·2^exp, hi·2^exp] with integer lo ≤ hi."""

    __slots__ = ("lo", "hi", "exp")

    def __init__(self, lo: int, hi: int, exp: int) -> None:
        self.lo = lo
        self.hi = hi
        self.exp = exp

    def enclosure(self) -> Enclosure:
        return Enclosure(
            libmp.from_man_exp(self.lo, self.exp), libmp.from_man_exp(self.hi, self.exp)
        )


class Row:
    """A row of logits (floats, −inf allowed, at most one +inf; or exact Dyadic values, the fused
    projection's) at working precision Q."""

    def __init__(
        self, logits: Sequence[Logit], precision: int, softcap: float | None = None
    ) -> None:
        self.precision = precision
        self.prec = precision + 16  # for the enclosure arithmetic on top of the terms
        self.table = exp_terms(precision)
        self.size = len(logits)
        self.logits = logits
        positive_infinite = [j for j, x in enumerate(logits) if x == math.inf]
        if len(positive_infinite) > 1:
            raise ValueError(
                f"row has +inf logits at classes {positive_infinite[:4]}: "
                "with more than one +inf the softmax is undefined"
            )
        #: the class holding all the probability when one logit is +inf (no softcap)
        self.point_mass: int | None = (
            positive_infinite[0] if positive_infinite and softcap is None else None
        )
        self.softcap = softcap
        if softcap is None:
            self.finite = [j for j, x in enumerate(logits) if x != -math.inf and x != math.inf]
            self.capped: dict[int, Enclosure] = {}
        else:
            self.finite = list(range(self.size))  # s·tanh(x/s) maps ±inf to ±s
            self.capped = {j: self._cap(x) for j, x in enumerate(logits)}
        self._terms: dict[int, tuple[int, int, bool]] = {}
        self._total: IntegerSum | None = None
        self._log_total: Enclosure | None = None
        self._per_total: dict[tuple, Enclosure] = {}
        self._rests: dict[int, IntegerSum] = {}
        if self.finite and self.point_mass is None:
            self._fix_arguments()

    # ---- logits, capped or not -------------------------------------------------------------

    def _cap(self, x: Logit) -> Enclosure:
        """s·tanh(x/s), to an absolute accuracy below 2^-(F+4).

        tanh comes back within about 2^(4−prec) (four widened units and the rounded quotient);
        times s < 2^k that is 2^(4−prec+k), below 2^-(F+4) at prec = F + k + 8. The softcapped
        arguments D_j are then still within two units of their values, as _exp_terms assumes.
        """
        s = libmp.from_float(self.softcap)
        if isinstance(x, float) and math.isinf(x):
            return Enclosure.exact(s if x > 0 else libmp.mpf_neg(s))
        prec = self.table.fraction_bits + 8 + max(0, s[2] + s[3])
        ratio = enclosure_of(x).div(Enclosure.exact(s), prec)
        tanh = Enclosure(
            widen_down(libmp.mpf_tanh(ratio.lo, prec, "f"), prec),
            widen_up(libmp.mpf_tanh(ratio.hi, prec, "c"), prec),
        )
        return tanh.mul(Enclosure.exact(s), prec)

    def logit(self, j: int) -> Enclosure:
        """x_j after the softcap, if any."""
        if self.softcap is not None:
            return self.capped[j]
        return enclosure_of(self.logits[j])

    # ---- the terms e_j = exp(x_j − m) -----------------------------------------------------

    def _fix_arguments(self) -> None:
        """D_j: an integer within two units below (m − x_j)·2^F (exact where that is an integer)."""
        fraction_bits = self.table.fraction_bits
        if self.softcap is None:
            values = self.logits
            largest = max(values[j] for j in self.finite)
            self.top = enclosure_of(largest)
            self.top_index = next(j for j in self.finite if values[j] == largest)
            top_fixed, top_exact = _floor_fixed(largest, fraction_bits)
            fixed: dict[int, int] = {}
            exact: dict[int, bool] = {}
            for j in self.finite:
                x_fixed, x_exact = _floor_fixed(values[j], fraction_bits)
                if top_exact and x_exact:
                    fixed[j] = top_fixed - x_fixed
                    exact[j] = True
                else:  # both floors are within one unit below their values
                    fixed[j] = max(top_fixed - x_fixed - 1, 0)
                    exact[j] = False
            self._fixed = fixed
            self._fixed_exact = exact
        else:
            self.top_index = 0
            for j in self.finite:
                if libmp.mpf_lt(self.capped[self.top_index].hi, self.capped[j].hi):
                    self.top_index = j
            capped_top = self.capped[self.top_index]
            top_logit = self.logits[self.top_index]
            self.top = capped_top
            # Measured from the capped top logit itself: a logit equal to it has the exact term 1.
            # Otherwise (m − x_j)·2^F ≥ (lo_top − hi_j)·2^F, rounded down (and at least 0, as the
            # true argument is), within (hi − lo)·2^F·2 + 1 < 2 units of the truth.
            self._fixed = {}
            self._fixed_exact = {}
            for j in self.finite:
                if self.logits[j] == top_logit:
                    self._fixed[j], self._fixed_exact[j] = 0, True
                else:
                    gap = libmp.mpf_sub(capped_top.lo, self.capped[j].hi)
                    self._fixed[j] = max(libmp.to_fixed(gap, fraction_bits), 0)
                    self._fixed_exact[j] = False

    def all_tied(self) -> bool:
        """Whether every finite logit equals the largest (all terms exactly 1, p_j = 1/k)."""
        return all(self._fixed[j] == 0 and self._fixed_exact[j] for j in self.finite)

    def whole_part(self, j: int) -> int:
        """⌊m − x_j⌋ (up to one unit): the integer part of the term's argument."""
        return self._fixed[j] >> self.table.fraction_bits

    def term(self, j: int) -> tuple[int, int, bool]:
        """e_j ≈ significand·2^exponent (relative error ≤ ρ), and whether it is exact (e_j = 1)."""
        cached = self._terms.get(j)
        if cached is None:
            fixed = self._fixed[j]
            if fixed == 0 and self._fixed_exact[j]:
                guard = self.table.guard_bits
                cached = (1 << guard, -guard, True)
            else:
                significand, exponent = self.table.exp_neg(fixed)
                cached = (significand, exponent, False)
            self._terms[j] = cached
        return cached

    def term_bounds(self, j: int) -> tuple[int, int, int]:
        """e_j ∈ [lo·2^exp, hi·2^exp]."""
        significand, exponent, exact = self.term(j)
        if exact:
            return significand, significand, exponent
        slack = (significand >> (self.precision - 1)) + 1
        return significand - slack, significand + slack, exponent

    def sum_terms(self, indices: list[int]) -> IntegerSum:
        """Σ_{j ∈ indices} e_j, exact but for the terms' own errors and those too small to matter.

        Terms below e^-(cut) of the largest (cut ≈ (Q + log2 n + 10)·ln 2) are left out and their
        total, at most n·2^-(Q + log2 n + 8) of the largest, is added to the upper end.
        """
        if not indices:
            return IntegerSum(0, 0, 0)
        fraction_bits = self.table.fraction_bits
        fixed = self._fixed
        nearest = min(fixed[j] for j in indices) >> fraction_bits
        cut = (
            nearest + 2 + math.ceil((self.precision + len(indices).bit_length() + 10) * math.log(2))
        )
        kept = [j for j in indices if fixed[j] >> fraction_bits <= cut]
        dropped = len(indices) - len(kept)
        terms = [self.term(j) for j in kept]
        base = min(exponent for _, exponent, _ in terms)
        exact_total = 0
        inexact_total = 0
        for significand, exponent, exact in terms:
            if exact:
                exact_total += significand << (exponent - base)
            else:
                inexact_total += significand << (exponent - base)
        slack = (inexact_total >> (self.precision - 1)) + 1 if inexact_total else 0
        total = exact_total + inexact_total
        dropped_bound = (total >> (self.precision + 8)) + 1 if dropped else 0
        return IntegerSum(total - slack, total + slack + dropped_bound, base)

    # ---- S, lse, NLL, p ---------------------------------------------------------------------

    @property
    def total(self) -> IntegerSum:
        """S = Σ_j e_j ∈ [1, C]."""
        if self._total is None:
            self._total = self.sum_terms(self.finite)
        return self._total

    def log_total(self) -> Enclosure:
        """log S: exactly 0 with one finite logit, relatively accurate when the top term is exactly 1.

        Then S = 1 + R with R = Σ_{j≠top} e_j, and log1p(R) keeps every digit of a tiny log S.
        """
        if self._log_total is None:
            if len(self.finite) == 1:
                self._log_total = Enclosure.exact(libmp.fzero)
            elif self.term(self.top_index)[2]:
                self._log_total = self.rest(self.top_index).enclosure().log1p(self.prec)
            else:
                self._log_total = self.total.enclosure().log(self.prec)
        return self._log_total

    def lse(self) -> Enclosure:
        """log Σ_j exp(x_j) = m + log S (the logit itself when it is the only finite one)."""
        if self.point_mass is not None:
            return Enclosure.exact(libmp.finf)
        if not self.finite:
            return Enclosure.exact(libmp.fninf)
        if len(self.finite) == 1:
            return self.logit(self.finite[0])
        return self.top.add(self.log_total(), self.prec)

    def dominates(self, t: int) -> bool:
        """Whether e_t may exceed S/2 (p_t > 1/2): at most one class of a row does."""
        if self.point_mass is not None:
            return t == self.point_mass
        if self.is_masked(t) or self._fixed[t] >> self.table.fraction_bits:
            return False  # masked, or e_t ≤ e^-1 < 1/2 ≤ S/2
        total = self.total
        _, hi, exponent = self.term_bounds(t)
        shift = exponent - total.exp
        return shift >= 0 and (hi << shift) * 2 > total.lo

    def rest(self, t: int) -> IntegerSum:
        """R_t = Σ_{j≠t} e_j (t finite), with its relative accuracy (kept for the row)."""
        cached = self._rests.get(t)
        if cached is None:
            cached = self._rests[t] = self._rest(t)
        return cached

    def _rest(self, t: int) -> IntegerSum:
        if self.dominates(t):
            return self.sum_terms([j for j in self.finite if j != t])
        # e_t ≤ S/2: subtracting it loses at most one bit of relative accuracy
        total = self.total
        lo, hi, exponent = self.term_bounds(t)
        shift = exponent - total.exp
        if shift < 0:  # a term below the smallest one kept in S
            return IntegerSum((total.lo << -shift) - hi, (total.hi << -shift) - lo, exponent)
        return IntegerSum(total.lo - (hi << shift), total.hi - (lo << shift), total.exp)

    def is_masked(self, j: int) -> bool:
        """A −inf logit (no softcap): probability exactly 0."""
        return self.softcap is None and self.logits[j] == -math.inf

    def nll(self, t: int) -> Enclosure:
        """−log p_t."""
        if self.point_mass is not None:
            return Enclosure.exact(libmp.fzero if t == self.point_mass else libmp.finf)
        if self.is_masked(t):
            return Enclosure.exact(libmp.finf)
        if self._fixed[t] >> self.table.fraction_bits == 0:
            # near the top (m − x_t < 1): log1p(R_t / e_t) keeps the relative accuracy of tiny losses
            rest = self.rest(t)
            if rest.hi == 0:
                return Enclosure.exact(libmp.fzero)
            lo, hi, exponent = self.term_bounds(t)
            ratio = rest.enclosure().div(
                Enclosure(libmp.from_man_exp(lo, exponent), libmp.from_man_exp(hi, exponent)),
                self.prec,
            )
            return ratio.log1p(self.prec)
        # m − x_t ≥ 1 and log S ≥ 0: no cancellation
        return self.top.sub(self.logit(t), self.prec).add(self.log_total(), self.prec)

    def probability(self, j: int) -> Enclosure:
        """p_j = e_j / S."""
        if self.point_mass is not None:
            return Enclosure.exact(libmp.fone if j == self.point_mass else libmp.fzero)
        if self.is_masked(j):
            return Enclosure.exact(libmp.fzero)
        lo, hi, exponent = self.term_bounds(j)
        term = Enclosure(libmp.from_man_exp(lo, exponent), libmp.from_man_exp(hi, exponent))
        return term.div(self.total.enclosure(), self.prec)

    def per_total(self, factor: Enclosure) -> Enclosure:
        """factor / S, kept for the row (the gradient divides every element by the same S)."""
        key = (factor.lo, factor.hi)
        cached = self._per_total.get(key)
        if cached is None:
            cached = self._per_total[key] = factor.div(self.total.enclosure(), self.prec)
        return cached

    def complement(self, t: int) -> Enclosure:
        """1 − p_t = R_t / S, without cancellation."""
        if self.point_mass is not None:
            return Enclosure.exact(libmp.fzero if t == self.point_mass else libmp.fone)
        if self.is_masked(t):
            return Enclosure.exact(libmp.fone)
        rest = self.rest(t)
        if rest.hi == 0:
            return Enclosure.exact(libmp.fzero)
        return rest.enclosure().div(self.total.enclosure(), self.prec)


def _floor_fixed(x: Logit, fraction_bits: int) -> tuple[int, bool]:
    """(⌊x·2^F⌋, whether x·2^F is an integer), exactly."""
    if isinstance(x, Dyadic):
        return x.floor_fixed(fraction_bits)
    try:
        scaled = math.ldexp(x, fraction_bits)
    except OverflowError:
        numerator, denominator = x.as_integer_ratio()
        shifted = numerator << fraction_bits
        return shifted // denominator, shifted % denominator == 0
    floor = math.floor(scaled)
    return floor, floor == scaled
