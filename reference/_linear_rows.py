"""Rows of the fused projection that share one g = ∂L/∂z, and one such group's softmax at one
working precision: the pieces ∂L/∂x and ∂L/∂W are summed from (_linear_grad.py).

Scaled by C every constant of cross_entropy_grad's g (_gradient.py) is a dyadic number:
α = C·w_t(1 − ε) + ε·W, β_j = C·w_t(1 − ε)·[j = t] + ε·w_j, κ = 2z·w_t·C, C·A = α + κ·lse, and
with K = C·A/S, k the top class and R = Σ_{j≠k} e_j (no cancellation as p_k → 1):

    C·g_j / (c·tanh′_j) = K·e_j − β_j                     (j ≠ k, or every j when k is tied)
    C·g_k / (c·tanh′_k) = (α − β_k) + κ·lse − K·R          (k the only largest logit)

Without a softcap the α and β parts are exact, and _linear_grad sums them exactly over the
batch; an element here is the rest (K·e_j, or κ·lse − K·R), each to its own relative accuracy.
Which form a class takes depends on the exact logits only, never on the precision: the second
where p_k may approach 1, the first where classes tie with the top (then p_k ≤ 1/2, and the
bounds of K = C·A/S, S ≥ n₀ exactly, keep an exact end, as cross_entropy_grad's do).

∂L/∂x_id = Σ_j g_ij·W_jd is taken relative to the classes G₀ tied with the top (n₀ of them,
U₀_d = Σ_{j∈G₀} W_jd, terms exactly 1): Σ_j p_j·W_jd = U₀_d/n₀ + Σ_{j∉G₀} p_j·(W_jd − U₀_d/n₀),
and Σ_j β_j = α, so

    n₀·Σ_j C·g_j·W_jd / c = (α·U₀_d − n₀·Σ_j β_j·W_jd) + κ·lse·U₀_d + K·Σ_{j∉G₀} e_j·(n₀·W_jd − U₀_d)

(times tanh′ for a row of equal logits under a softcap; a softcapped row of unequal logits is
summed element by element). Its first part is exact, the rest small where p is concentrated
on G₀ and exactly 0 where W's column is constant: an exact value, or a float64 midpoint plus
e^-6000, keeps an exact end. The rest also vanishes when every set of equal logits outside G₀
has the same mean of W_jd as G₀ (Group.rest_vanishes), and then the value is exact (without
z-loss); otherwise, by Lindemann–Weierstrass (the e_j are exponentials of distinct rationals),
the value is irrational without z-loss, so that Ziv's loop settles it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from operator import add, mul

from reference._dyadic import Dyadic
from reference._enclosure import Enclosure
from reference._fast import LossTerms
from reference._gradient import tanh_derivative
from reference._intervals import (
    BOUNDED_BEYOND,
    Interval,
    IntervalVector,
    Pair,
    divided,
    exact,
    interval_vector_sum,
    magnitude,
    negated,
    of_enclosure,
    on_grid,
    pair_product,
    pair_sum,
    plus,
    raw,
    scaled,
    times,
    vector_sum,
)
from reference._projection import Projection
from reference._row import Row


class Constants:
    """The loss options as exact dyadic numbers, scaled by C, for a row with target t."""

    def __init__(self, terms: LossTerms, classes: int) -> None:
        self.terms = terms
        self.classes = classes

    def target_part(self, t: int) -> Pair:
        """C·w_t(1 − ε): β_t less its smoothing part."""
        man, exp = pair_product(self.terms.weight_of(t), self.terms.keep)
        return man * self.classes, exp

    def alpha(self, t: int) -> Pair:
        """α = C·w_t(1 − ε) + ε·W = Σ_j β_j."""
        terms = self.terms
        return pair_sum(self.target_part(t), pair_product(terms.smoothing, terms.weight_total))

    def beta(self, t: int, j: int) -> Pair:
        part = pair_product(self.terms.smoothing, self.terms.weight_of(j))
        return pair_sum(part, self.target_part(t)) if j == t else part

    def beta_parts(self, t: int) -> tuple[int, int, int]:
        """(a, b, e): C·w_t(1 − ε) = a·2^e and ε·w_j = b·(w_j's integer)·2^e, so that
        Σ_j β_j·W_jd = (a·W_td + b·Σ_j w_j·W_jd)·2^e on W's own scale."""
        terms = self.terms
        target_man, target_exp = self.target_part(t)
        eps_man, eps_exp = terms.smoothing
        eps_exp += terms.weight_scale
        exp = min(target_exp, eps_exp)
        return target_man << (target_exp - exp), eps_man << (eps_exp - exp), exp

    def kappa(self, t: int) -> Pair:
        """κ = 2z·w_t·C."""
        man, exp = pair_product(self.terms.z_loss, self.terms.weight_of(t))
        return 2 * self.classes * man, exp


@dataclass(frozen=True)
class WeightColumns:
    """W by columns on one exponent (W_jd = columns[d][j]·2^exp), and per column Σ_j W_jd,
    Σ_j w_j·W_jd (w_j the class weights' integers) and Σ_j |W_jd|."""

    columns: list[list[int]]
    exp: int
    sums: list[int]
    weighted_sums: list[int]
    absolute_sums: list[int]

    @classmethod
    def of(cls, projection: Projection, features: int, terms: LossTerms) -> WeightColumns:
        given = projection.weight_columns[:features]
        exp = min((e for ints, e in given if any(ints)), default=0)
        columns = [[v << (e - exp) for v in ints] if any(ints) else ints for ints, e in given]
        weights = [terms.weight_of(j)[0] for j in range(len(projection.weight_rows))]
        return cls(
            columns=columns,
            exp=exp,
            sums=[sum(column) for column in columns],
            weighted_sums=[sum(map(mul, weights, column)) for column in columns],
            absolute_sums=[sum(map(abs, column)) for column in columns],
        )


class Group:
    """Counted rows that share the transcendental part of g: the same logits (up to a common
    shift where g does not depend on it) and the same target weight w_t (without a softcap; the
    same target with one). α and κ depend on the target through w_t only, so the targets differ
    in their exact parts β alone. Holds the representative's logits (exact, as Dyadic values and
    as integers·2^exponent) and the coefficients X_d = Σ_i u_i·x_id of the rows, in all and by
    target (integers on each input column's exponent)."""

    def __init__(
        self, logits: list[Dyadic], integers: list[int], exponent: int, target: int, width: int
    ) -> None:
        self.logits = logits
        self.integers = integers
        self.exponent = exponent
        self.target = target  # one of them: for α and κ
        self.width = width
        self.rows: dict[int, list[int]] = {}  # by target
        self.parts: dict[int, list[int]] = {}  # X_d by target
        self.coefficients = [0] * width
        self.magnitudes: list[int] = []
        largest = max(integers)
        self.top = integers.index(largest)
        #: G₀, the classes whose logit equals the largest
        self.leaders = [j for j, z in enumerate(integers) if z == largest]
        self.tied = len(self.leaders) == len(integers)
        #: whether the top class's element takes the complement form (k alone at the top)
        self.complement = len(self.leaders) == 1
        self.kind = "split"  # "exact" (a rational g) or "capped" (a softcap, not exact)
        self._leader_sums: list[int] | None = None
        self._heads: dict[int, tuple[list[int], int]] = {}
        self._ties: list[list[int]] | None = None

    def add_row(self, i: int, target: int, upstream: int, row: Sequence[int]) -> None:
        self.rows.setdefault(target, []).append(i)
        terms = [upstream * x for x in row]
        part = self.parts.get(target, [0] * self.width)
        self.parts[target] = list(map(add, part, terms))
        self.coefficients = list(map(add, self.coefficients, terms))

    @property
    def top_value(self) -> Pair:
        return self.integers[self.top], self.exponent

    def leader_sums(self, weights: WeightColumns) -> list[int]:
        """U₀_d = Σ_{j∈G₀} W_jd for every column (on W's exponent)."""
        if self._leader_sums is None:
            if self.tied:
                self._leader_sums = weights.sums
            else:
                self._leader_sums = [sum(c[j] for j in self.leaders) for c in weights.columns]
        return self._leader_sums

    def heads(self, constants: Constants, weights: WeightColumns, t: int) -> tuple[list[int], int]:
        """α·U₀_d − n₀·Σ_j β_j·W_jd for every column and target t, as integers·2^(exp + W's
        exponent)."""
        if t not in self._heads:
            alpha_man, alpha_exp = constants.alpha(t)
            a, b, beta_exp = constants.beta_parts(t)
            count = len(self.leaders)
            betas = [
                -count * (a * column[t] + b * weighted)
                for column, weighted in zip(weights.columns, weights.weighted_sums, strict=True)
            ]
            sums = self.leader_sums(weights)
            heads = vector_sum(([alpha_man * u for u in sums], alpha_exp), (betas, beta_exp))
            self._heads[t] = heads
        return self._heads[t]

    def exact_numerators(
        self, constants: Constants, weights: WeightColumns, t: int
    ) -> list[Interval]:
        """C·Σ_j C·g_j·W_jd / c for a row of equal logits with a rational g (κ = 0, or C = 1
        where lse = m) and target t: the heads plus κ·m·U_d, exactly."""
        ints, exp = self.heads(constants, weights, t)
        kappa = pair_product(constants.kappa(t), self.top_value)
        if kappa[0]:
            ints, exp = vector_sum((ints, exp), ([kappa[0] * u for u in weights.sums], kappa[1]))
        return [(v, v, exp + weights.exp) for v in ints]

    def ties(self) -> list[list[int]]:
        """The classes outside G₀, in sets of equal logits (whose terms e_j are equal)."""
        if self._ties is None:
            classes: dict[int, list[int]] = {}
            leaders = set(self.leaders)
            for j, z in enumerate(self.integers):
                if j not in leaders:
                    classes.setdefault(z, []).append(j)
            self._ties = list(classes.values())
        return self._ties

    def rest_vanishes(self, d: int, weights: WeightColumns) -> bool:
        """Whether Σ_{j∉G₀} e_j·(n₀·W_jd − U₀_d) is exactly 0: every set of equal logits
        outside G₀ has the mean of W_jd that G₀ has (Lindemann–Weierstrass: only then)."""
        column, count = weights.columns[d], len(self.leaders)
        total = self.leader_sums(weights)[d]
        return all(sum(column[j] for j in tie) * count == total * len(tie) for tie in self.ties())


def shifted_key(integers: list[int], exponent: int) -> tuple[int, tuple[int, ...]]:
    """The logits less their largest, in lowest terms: equal for rows equal up to a shift."""
    largest = max(integers)
    gaps = [largest - z for z in integers]
    common = 0
    for gap in gaps:
        common |= gap
    if not common:
        return 0, tuple(gaps)
    zeros = (common & -common).bit_length() - 1
    return exponent + zeros, tuple(gap >> zeros for gap in gaps)


class GroupSoftmax:
    """One group's softmax at one working precision: lse, K = (α + κ·lse)/S, R = Σ_{j≠k} e_j and
    the terms, as integer intervals, and from them the group's elements (∂L/∂W) and its
    n₀·Σ_j C·g_j·W_jd / c (∂L/∂x)."""

    def __init__(
        self,
        group: Group,
        constants: Constants,
        weights: WeightColumns,
        softcap: float | None,
        bits: int,
        grid_bits: int,
    ) -> None:
        self.group = group
        self.constants = constants
        self.weights = weights
        self.softcap = softcap
        self.grid_bits = grid_bits
        self.row = row = Row(group.logits, bits, softcap)
        self.prec = prec = row.prec
        self.top = row.top_index
        self.alpha = constants.alpha(group.target)
        self.kappa = constants.kappa(group.target)
        lse = row.lse()
        self.lse = of_enclosure(lse)
        ca = Enclosure.exact(raw(self.alpha))
        if self.kappa[0]:
            ca = ca.add(lse.mul(Enclosure.exact(raw(self.kappa)), prec), prec)
        self.k = of_enclosure(ca.div(row.total.enclosure(), prec))
        rest = row.rest(self.top)  # R = S − e_k, summed directly where p_k may exceed 1/2
        self.rest = (rest.lo, rest.hi, rest.exp)
        self._elements: dict[int, Interval] = {}
        self._tanh: dict[int, Interval] = {}
        self._grid: dict[bool, tuple[list[int], list[int], int]] = {}

    # ---- the elements of C·g/c ----------------------------------------------------------------

    def _term(self, j: int) -> Interval:
        """e_j, or [0, 2^-a] where a = ⌊m − x_j⌋ puts it far below anything that matters."""
        whole = self.row.whole_part(j)
        if whole > self.grid_bits + BOUNDED_BEYOND:
            return 0, 1, -whole
        return self.row.term_bounds(j)

    def _tanh_derivative(self, j: int) -> Interval:
        assert self.softcap is not None
        key = self.top if self.group.tied else j
        if key not in self._tanh:
            derivative = tanh_derivative(self.group.logits[key], self.softcap, self.prec)
            self._tanh[key] = of_enclosure(derivative)
        return self._tanh[key]

    def element(self, j: int) -> Interval:
        """M_j, the part of C·g_j/c that is not summed exactly (all of it with a softcap)."""
        cached = self._elements.get(j)
        if cached is None:
            if self.softcap is not None:
                cached = times(self._capped(j), self._tanh_derivative(j))
            elif j != self.top or not self.group.complement:
                cached = times(self.k, self._term(j))  # K·e_j
            else:  # κ·lse − K·R
                cached = plus(scaled(self.lse, self.kappa), negated(times(self.k, self.rest)))
            self._elements[j] = cached
        return cached

    def _capped(self, j: int) -> Interval:
        """C·g_j/(c·tanh′_j) with a softcap: K·e_j − β_j or (α − β_k) + κ·lse − K·R as above,
        or, for a row of equal logits, ((α − C·β_j) + κ·lse)/C with its exact part exact."""
        classes = self.constants.classes
        beta = self.constants.beta(self.group.target, j)
        lse_part = scaled(self.lse, self.kappa)
        if self.group.tied:
            head = pair_sum(self.alpha, (-classes * beta[0], beta[1]))
            return divided(plus(exact(head), lse_part), classes, self.grid_bits)
        if j != self.top or not self.group.complement:
            return plus(times(self.k, self._term(j)), exact((-beta[0], beta[1])))
        head = pair_sum(self.alpha, (-beta[0], beta[1]))
        return plus(plus(exact(head), negated(times(self.k, self.rest))), lse_part)

    # ---- Σ_j C·g_j·W_jd / c -------------------------------------------------------------------

    def input_numerators(
        self, columns: list[int], sharp: bool, vanishing: set[int]
    ) -> tuple[dict[int, list[Interval]], int]:
        """({target: [n·Σ_j C·g_j·W_jd / c for each column d]}, n): n = n₀ in the form of the
        module docstring (its rest 0 on the ``vanishing`` columns), n = 1 element by element for
        a softcapped row of unequal logits. Unless ``sharp`` the terms' widths are bounded by
        the largest times Σ_j |…| and terms far below the top by a bound: cheaper, but wider
        where W's entries are 0 or equal, or where the exact part is a rounding boundary."""
        group, weights = self.group, self.weights
        if self.softcap is not None and not group.tied:
            return {group.target: self._element_sums(columns, sharp)}, 1
        sums = group.leader_sums(weights)
        shared: list[IntervalVector] = []
        kappa_man, kappa_exp = self.kappa
        if kappa_man:  # κ·lse·U₀_d
            lse_lo, lse_hi, lse_exp = self.lse
            factors = [kappa_man * sums[d] for d in columns]
            ends = [
                (lse_lo * f, lse_hi * f) if f >= 0 else (lse_hi * f, lse_lo * f) for f in factors
            ]
            shared.append(
                ([e[0] for e in ends], [e[1] for e in ends], lse_exp + kappa_exp + weights.exp)
            )
        if not group.tied:  # K·Σ_{j∉G₀} e_j·(n₀·W_jd − U₀_d)
            shared.append(self._rest(columns, sharp, vanishing))
        found = {}
        for t in group.rows:
            heads, head_exp = group.heads(self.constants, weights, t)
            picked = [heads[d] for d in columns]
            values = interval_vector_sum([(picked, picked, head_exp + weights.exp), *shared])
            if self.softcap is not None:
                values = [times(value, self._tanh_derivative(self.top)) for value in values]
            found[t] = values
        return found, len(group.leaders)

    def _rest(self, columns: list[int], sharp: bool, vanishing: set[int]) -> IntervalVector:
        group, weights = self.group, self.weights
        mids, radii, grid = self._terms_on_grid(sharp)
        largest, mid_total = max(radii), sum(mids)
        k_lo, k_hi, k_exp = self.k
        count, classes = len(group.leaders), len(group.logits)
        sums = group.leader_sums(weights)
        lows, highs = [], []
        for d in columns:
            if d in vanishing:
                lows.append(0)
                highs.append(0)
                continue
            column, pivot = weights.columns[d], sums[d]
            product = count * sum(map(mul, mids, column)) - pivot * mid_total
            if sharp:  # equal logits have equal terms: their coefficients add first
                radius = sum(
                    radii[tie[0]] * abs(sum(count * column[j] - pivot for j in tie))
                    for tie in group.ties()
                )
            else:
                radius = largest * (count * weights.absolute_sums[d] + classes * abs(pivot))
            lo, hi = product - radius, product + radius
            if k_lo >= 0:  # K ≥ 0, the usual case: two products
                lows.append(k_lo * lo if lo >= 0 else k_hi * lo)
                highs.append(k_hi * hi if hi >= 0 else k_lo * hi)
            else:
                corners = (k_lo * lo, k_lo * hi, k_hi * lo, k_hi * hi)
                lows.append(min(corners))
                highs.append(max(corners))
        return lows, highs, k_exp + grid - 1 + weights.exp

    def _terms_on_grid(self, sharp: bool) -> tuple[list[int], list[int], int]:
        """The terms e_j outside G₀ (0 on G₀) on one grid 2^γ, grid_bits below the largest,
        doubled: 2·e_j ∈ [mid_j − rad_j, mid_j + rad_j]·2^γ; (mids, rads, γ). ``sharp``: the
        grid follows the largest term however small it is, not a bound far below it (where the
        exact part is a rounding boundary, the sign of these terms' sum decides)."""
        if self._grid.get(sharp) is None:
            row = self.row
            size = len(self.group.logits)
            leaders = set(self.group.leaders)
            others = [j for j in range(size) if j not in leaders]
            mids, radii = [0] * size, [0] * size
            nearest = min(others, key=row.whole_part)
            if sharp:  # computed however small (e^-(10^300) takes tens of milliseconds)
                lo, hi, exp = row.term_bounds(nearest)
            else:
                lo, hi, exp = self._term(nearest)
            grid = hi.bit_length() + exp - self.grid_bits if lo else exp
            for j in others:
                if row.whole_part(j) >= -grid:  # e_j ≤ e^-a ≤ 2^-a ≤ 2^γ: one unit at most
                    low, high = 0, 1
                else:
                    low, high = on_grid(row.term_bounds(j), grid)
                mids[j], radii[j] = low + high, high - low
            self._grid[sharp] = (mids, radii, grid)
        return self._grid[sharp]

    def _element_sums(self, columns: list[int], sharp: bool) -> list[Interval]:
        """Σ_j M_j·W_jd for a softcapped row, the elements on one grid grid_bits below the
        largest."""
        weights = self.weights
        elements = [self.element(j) for j in range(len(self.group.logits))]
        sizes = [magnitude(e) for e in elements if e[0] or e[1]]
        grid = max(sizes, default=self.grid_bits) - self.grid_bits
        mids, radii = [], []
        for element in elements:
            low, high = on_grid(element, grid)
            mids.append(low + high)
            radii.append(high - low)
        largest = max(radii)
        found = []
        for d in columns:
            column = weights.columns[d]
            product = sum(map(mul, mids, column))
            if sharp:
                radius = sum(map(mul, radii, map(abs, column)))
            else:
                radius = largest * weights.absolute_sums[d]
            found.append((product - radius, product + radius, grid - 1 + weights.exp))
        return found
