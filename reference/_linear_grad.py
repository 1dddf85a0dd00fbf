"""The gradient of the fused projection + loss: ∂L/∂input and ∂L/∂W, every element correctly
rounded (∂L/∂b is the last column of ∂L/∂W: the bias is a column of ones in the input).

With g_ij = ∂L/∂z_ij at the exact logits, as cross_entropy_grad defines it (_gradient.py):

    ∂L/∂x_id = Σ_j g_ij·W_jd,     ∂L/∂W_jd = Σ_i g_ij·x_id,     g_ij = c_i·(A·p_ij − B_ij)·tanh′_ij

with c_i = u_i/den (u the upstream gradient, den = Σ w_y for the mean, else 1). Each result is
an integer interval over one exact divisor applied last (den·C², or den·C·n₀ for ∂L/∂x, see
_linear_rows.py), evaluated at a working precision Q and again at 2Q wherever it does not round
to one float64, up to MAX_BITS (Ziv's loop, _precision.py); the exact parts are never rounded.
What keeps the sums exact where they must be:

1. Counted rows with the same logits (up to a common shift where neither z-loss nor a softcap
   makes g depend on it) and the same target weight share the transcendental part of g,
   computed once (_linear_rows.Group): their coefficients Σ_i u_i·x_id are summed exactly first,
   so rows x and x with upstream +u and −u cancel to 0, and so do such rows' irrational parts
   under different targets.
2. A row whose logits are all equal has p_j = 1/C and, without z-loss and at tanh′ = 1, a
   rational g: taken exactly. Otherwise g splits into exact parts (α, β) and the rest
   (_linear_rows.py); ∂L/∂W sums the exact parts over the batch exactly (Σ_g H_gj·X_gd, a few
   sums by target and by top class) and the rest as integer intervals, each element to its own
   relative accuracy, on a grid per class that follows the largest element of that class, one
   integer dot product per class, column and block of groups.
3. ∂L/∂x is taken relative to the classes tied with the top (_linear_rows.py): a constant column
   of W gives exactly 0, and an exact value, or a midpoint plus e^-6000, keeps an exact end.

A sum whose terms are all exactly 0 (an ignored row, a zero upstream gradient, a zero column of
x or W) is exactly 0. Any other exact cancellation (two different rows whose irrational parts
cancel) is not recognised: such an element raises PrecisionExhausted, as the rest of the oracle
does.

Cost (measured by the command in _linear.py's docstring): per call, about one integer
multiply-add per N·C·D for the logits, for ∂L/∂x and for ∂L/∂W, a softmax row per distinct
counted row (the general path's integer terms, _row.py), and a few microseconds per result.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from operator import add, mul

import mpmath

from reference import _fast
from reference._batch import Batch
from reference._intervals import (
    NEGLIGIBLE,
    Interval,
    Pair,
    exact,
    magnitude,
    on_grid,
    pair_product,
    pair_sum,
    plus,
    scaled,
    settle,
)
from reference._linear_rows import Constants, Group, GroupSoftmax, WeightColumns, shifted_key
from reference._precision import MAX_BITS, PrecisionExhausted, working_precisions
from reference._projection import Projection

#: Groups whose elements of ∂L/∂W are gathered before they are summed (one dot product per
#: class, column and block): enough to amortise the Python loop, few enough to keep little.
_BLOCK_GROUPS = 64


class LinearGradient:
    """∂L/∂input (N × D) and ∂L/∂W (C × D', the bias last), certified (see the module docstring)."""

    def __init__(
        self,
        batch: Batch,
        projection: Projection,
        logits: list[tuple[list[int], int]],
        features: int,
        upstream: list[float],
    ) -> None:
        self.batch = batch
        self.softcap = batch.options.softcap
        self.projection = projection
        self.features = features
        self.width = projection.width
        self.classes = classes = batch.classes
        options = batch.options
        terms = _fast.LossTerms(classes, options.smoothing, options.z_loss, options.weight)
        self.constants = Constants(terms, classes)
        self.weights = WeightColumns.of(projection, features, terms)
        self.denominator: Pair = (
            _fast.counted_weight(terms, batch.targets, batch.counted)
            if options.reduction == "mean"
            else (1, 0)
        )
        pairs = [_fast.dyadic(u) for u in upstream]
        self.upstream_exp = min((exp for man, exp in pairs if man), default=0)
        upstream_ints = [man << (exp - self.upstream_exp) if man else 0 for man, exp in pairs]
        self.upstream = (
            upstream_ints if options.reduction == "none" else upstream_ints * len(batch.rows)
        )
        #: the exponent of each column of the coefficients X_d = Σ_i u_i·x_id
        self.column_exps = [self.upstream_exp + exp for _, exp in projection.input_columns]
        self.groups: list[Group] = []
        self.group_of: dict[int, Group] = {}
        self._group_rows(logits)

    def _group_rows(self, logits: list[tuple[list[int], int]]) -> None:
        options, batch = self.batch.options, self.batch
        shift_invariant = options.z_loss == 0 and options.softcap is None
        by_key: dict[tuple, Group] = {}
        columns = [ints for ints, _ in self.projection.input_columns]
        for i in batch.counted:
            if not self.upstream[i]:
                continue  # a zero upstream gradient: the row adds exactly 0 everywhere
            integers, exponent = logits[i]
            target = batch.targets[i]
            sharing = target if self.softcap is not None else self.constants.terms.weight_of(target)
            if shift_invariant:
                key: tuple = (sharing, shifted_key(integers, exponent))
            else:
                key = (sharing, tuple(batch.rows[i]))
            group = by_key.get(key)
            if group is None:
                dyadic_logits: list = list(batch.rows[i])
                group = Group(dyadic_logits, integers, exponent, target, self.width)
                by_key[key] = group
                self.groups.append(group)
            group.add_row(i, target, self.upstream[i], [column[i] for column in columns])
            self.group_of[i] = group
        for group in self.groups:
            group.magnitudes = list(map(abs, group.coefficients))
            group.kind = self._kind(group)

    def _kind(self, group: Group) -> str:
        untouched = self.softcap is None or group.top_value[0] == 0  # tanh′(0) = 1
        exact_lse = not self.constants.kappa(group.target)[0] or self.classes == 1  # lse = m
        if group.tied and untouched and exact_lse:
            return "exact"
        return "split" if self.softcap is None else "capped"

    # ---- the whole gradient ------------------------------------------------------------------

    def evaluate(self) -> tuple[list[list[mpmath.mpf]], list[list[mpmath.mpf]]]:
        rows, classes, features, width = (
            len(self.batch.rows),
            self.classes,
            self.features,
            self.width,
        )
        zero = mpmath.mpf(0)
        grad_input = [[zero] * features for _ in range(rows)]
        grad_weight = [[zero] * width for _ in range(classes)]
        if not self.batch.counted:
            return grad_input, grad_weight
        if not self.denominator[0]:  # a mean over counted weights that sum to 0: NaN, as torch
            nan = mpmath.mpf("nan")
            for i in self.batch.counted:
                grad_input[i] = [nan] * features
            return grad_input, [[nan] * width for _ in range(classes)]
        self.grad_input, self.grad_weight = grad_input, grad_weight
        #: the columns of each row of ∂L/∂x still undecided
        pending_input = {i: set(range(features)) for i in self.group_of} if features else {}
        for group in self.groups:
            if group.kind == "exact":
                numerators = {
                    t: group.exact_numerators(self.constants, self.weights, t) for t in group.rows
                }
                self._settle_inputs(
                    group, list(range(features)), numerators, classes, pending_input
                )
        exact_part = self._exact_part()
        pending_weight = {j: list(range(width)) for j in range(classes)} if width else {}
        self.vanishing: dict[int, set[int]] = {id(g): set() for g in self.groups}
        self.tested: set[tuple[int, int]] = set()
        for bits in working_precisions():
            self._pass(bits, pending_input, pending_weight, exact_part)
            if not pending_input and not pending_weight:
                return grad_input, grad_weight
        if pending_input:
            i = min(pending_input)
            where = f"grad_input[{i}][{min(pending_input[i])}]"
        else:
            j = min(pending_weight)
            d = pending_weight[j][0]
            where = f"grad_weight[{j}][{d}]" if d < features else f"grad_bias[{j}]"
        raise PrecisionExhausted(
            f"linear_cross_entropy_grad: the rounding of {where} was still undecided at "
            f"{MAX_BITS} bits"
        )

    # ---- ∂L/∂x -------------------------------------------------------------------------------

    def _settle_inputs(
        self,
        group: Group,
        columns: list[int],
        numerators: dict[int, list[Interval]],
        count: int,
        pending: dict[int, set[int]],
    ) -> None:
        """u_i·numerator_d / (den·C·count) for each row i of the group still pending at d (the
        numerators of its target)."""
        divisor = (self.denominator[0] * self.classes * count, self.denominator[1])
        for t, rows in group.rows.items():
            for i in rows:
                left = pending.get(i)
                if not left:
                    continue
                upstream = (self.upstream[i], self.upstream_exp)
                unit = upstream == (1, 0)
                found = self.grad_input[i]
                for d, numerator in zip(columns, numerators[t], strict=True):
                    if d in left:
                        value = settle(numerator if unit else scaled(numerator, upstream), divisor)
                        if value is not None:
                            found[d] = mpmath.mp.make_mpf(value)
                            left.discard(d)
                if not left:
                    del pending[i]

    def _inputs(
        self, group: Group, softmax: GroupSoftmax, columns: set[int], pending: dict[int, set[int]]
    ) -> None:
        """Settle what this precision decides: first with cheap bounds on the terms, then with
        sharp ones (GroupSoftmax.input_numerators), then (once) with the rest tested for
        vanishing."""
        vanishing = self.vanishing[id(group)]
        ordered = sorted(columns)
        rows = [i for members in group.rows.values() for i in members]
        for sharp in (False, True):
            numerators, count = softmax.input_numerators(ordered, sharp, vanishing)
            self._settle_inputs(group, ordered, numerators, count, pending)
            ordered = [d for d in ordered if any(d in pending.get(i, ()) for i in rows)]
            if not ordered:
                return
        if group.kind != "split" or group.tied:
            return
        found = []
        for d in ordered:
            if (id(group), d) not in self.tested:
                self.tested.add((id(group), d))
                if group.rest_vanishes(d, self.weights):
                    vanishing.add(d)
                    found.append(d)
        if found:
            numerators, count = softmax.input_numerators(found, True, vanishing)
            self._settle_inputs(group, found, numerators, count, pending)

    # ---- ∂L/∂W -------------------------------------------------------------------------------

    def _exact_part(self) -> list[_ExactSum]:
        """Σ_g H_gj·X_gd scaled by C², for every class j, with C·H_gj = −C·β_gj + C·[j = k_g]·α_g
        for a split group (α only where its top class k_g takes the complement form) and
        α_g + κ_g·m_g − C·β_gj for an exact one (κ·m only for C = 1):
        −C²·w_j(1 − ε)·Σ_{t_g = j} X_gd − C·ε·w_j·Σ_g X_gd + C·Σ_{split, k_g = j} α_g·X_gd
        + Σ_{exact} (α_g + κ_g·m_g)·X_gd."""
        c, width = self.classes, self.width
        constants, terms = self.constants, self.constants.terms
        by_target: dict[int, _ExactSum] = {}
        by_top: dict[int, _ExactSum] = {}
        everything = _ExactSum(width)
        exact_rows = _ExactSum(width)
        for group in self.groups:
            if group.kind == "capped":
                continue
            for t, coefficients in group.parts.items():
                by_target.setdefault(t, _ExactSum(width)).add((1, 0), coefficients)
            everything.add((1, 0), group.coefficients)
            alpha = constants.alpha(group.target)
            if group.kind == "split":
                if group.complement:
                    by_top.setdefault(group.top, _ExactSum(width)).add(alpha, group.coefficients)
            else:
                m = pair_product(constants.kappa(group.target), group.top_value)
                exact_rows.add(pair_sum(alpha, m), group.coefficients)
        parts = []
        keep_man, keep_exp = terms.keep
        eps_man, eps_exp = terms.smoothing
        for j in range(c):
            w_man, w_exp = terms.weight_of(j)
            part = _ExactSum(width)
            if j in by_target:
                part.add_sum((-c * c * keep_man * w_man, keep_exp + w_exp), by_target[j])
            part.add_sum((-c * eps_man * w_man, eps_exp + w_exp), everything)
            if j in by_top:
                part.add_sum((c, 0), by_top[j])
            part.add_sum((1, 0), exact_rows)
            parts.append(part)
        return parts

    # ---- one pass at one precision -------------------------------------------------------------

    def _pass(
        self,
        bits: int,
        pending_input: dict[int, set[int]],
        pending_weight: dict[int, list[int]],
        exact_part: list[_ExactSum],
    ) -> None:
        grid_bits = bits + self.classes.bit_length() + len(self.batch.rows).bit_length() + 8
        input_columns: dict[int, set[int]] = {}
        for i, left in pending_input.items():
            input_columns.setdefault(id(self.group_of[i]), set()).update(left)
        sums = {j: _ClassSum(columns, grid_bits) for j, columns in pending_weight.items()}
        block: list[tuple[Group, list[Interval]]] = []
        for group in self.groups:
            wanted = input_columns.get(id(group))
            weighted = bool(sums) and group.kind != "exact"
            if wanted is None and not weighted:
                continue
            softmax = GroupSoftmax(
                group, self.constants, self.weights, self.softcap, bits, grid_bits
            )
            if wanted is not None:
                self._inputs(group, softmax, wanted, pending_input)
            if weighted:
                block.append((group, [softmax.element(j) for j in sums]))
                if len(block) == _BLOCK_GROUPS:
                    _add_block(block, sums)
                    block = []
        if block:
            _add_block(block, sums)
        for j, class_sum in sums.items():
            undecided = self._settle_class(j, class_sum, exact_part[j])
            if undecided:
                pending_weight[j] = undecided
            else:
                del pending_weight[j]

    def _settle_class(self, j: int, class_sum: _ClassSum, part: _ExactSum) -> list[int]:
        """∂L/∂W_jd = (Σ_g H_gj·X_gd + C·Σ_g M_gj·X_gd) / (den·C²) for the class's columns
        d; the columns left undecided. The two sums' exponents differ by the same amount in
        every column, so they are aligned once."""
        classes = self.classes
        divisor = (self.denominator[0] * classes * classes, self.denominator[1])
        found = self.grad_weight[j]
        column_exps = self.column_exps
        exacts = [part.ints[d] for d in class_sum.columns]
        numerators: list[Interval]  # less each column's exponent
        if class_sum.scale is None:  # no transcendental part: exact
            numerators = [(v, v, part.exp) for v in exacts]
        else:
            # 2·Σ M·X ∈ [mid − rad, mid + rad]·2^scale, so C·Σ M·X ∈ C·[…]·2^(scale − 1)
            shift, exp = class_sum.scale - 1 - part.exp, min(class_sum.scale - 1, part.exp)
            pairs = zip(class_sum.mid, class_sum.rad, exacts, strict=True)
            if abs(shift) > NEGLIGIBLE:
                numerators = [
                    plus(
                        ((m - r) * classes, (m + r) * classes, class_sum.scale - 1),
                        exact((v, part.exp)),
                    )
                    for m, r, v in pairs
                ]
            elif shift >= 0:
                numerators = [
                    (((m - r) * classes << shift) + v, ((m + r) * classes << shift) + v, exp)
                    for m, r, v in pairs
                ]
            else:
                numerators = [
                    ((m - r) * classes + (v << -shift), (m + r) * classes + (v << -shift), exp)
                    for m, r, v in pairs
                ]
        undecided = []
        for d, (lo, hi, exp) in zip(class_sum.columns, numerators, strict=True):
            value = settle((lo, hi, exp + column_exps[d]), divisor)
            if value is None:
                undecided.append(d)
            else:
                found[d] = mpmath.mp.make_mpf(value)
        return undecided


def _add_block(block: list[tuple[Group, list[Interval]]], sums: dict[int, _ClassSum]) -> None:
    groups = _Block([group for group, _ in block])
    for index, class_sum in enumerate(sums.values()):
        class_sum.add_block([elements[index] for _, elements in block], groups)


class _ExactSum:
    """Σ (dyadic coefficient)·vector, exactly: value_d = ints[d]·2^(exp + the column's exponent)."""

    __slots__ = ("ints", "exp")

    def __init__(self, width: int) -> None:
        self.ints = [0] * width
        self.exp = 0

    def add(self, coefficient: Pair, vector: Sequence[int]) -> None:
        man, exp = coefficient
        if not man:
            return
        if exp < self.exp:
            shift = self.exp - exp
            self.ints = [v << shift for v in self.ints]
            self.exp = exp
        man <<= exp - self.exp
        self.ints = list(map(add, self.ints, map(mul, repeat(man), vector)))

    def add_sum(self, coefficient: Pair, other: _ExactSum) -> None:
        self.add((coefficient[0], coefficient[1] + other.exp), other.ints)


class _ClassSum:
    """Σ_g M_gj·X_gd over the groups, for one class j and some columns d, as integer intervals
    on a grid 2^scale that follows the largest element so far (grid_bits below it):
    2·sum_d ∈ [mid_d − rad_d, mid_d + rad_d]·2^(scale + the column's exponent)."""

    __slots__ = ("columns", "grid_bits", "mid", "rad", "scale")

    def __init__(self, columns: list[int], grid_bits: int) -> None:
        self.columns = columns
        self.grid_bits = grid_bits
        self.mid = [0] * len(columns)
        self.rad = [0] * len(columns)
        self.scale: int | None = None

    def add_block(self, elements: list[Interval], block: _Block) -> None:
        """Add Σ_g M_g·X_gd over a block of groups (their elements M_g for this class)."""
        sizes = [magnitude(e) for e in elements if e[0] or e[1]]
        if not sizes:
            return
        grid = max(sizes) - self.grid_bits
        if self.scale is None:
            self.scale = grid
        elif grid > self.scale:  # a coarser grid: floor the mids, widen the radii where cut
            shift = grid - self.scale  # (m & -m) is m's lowest set bit: below 2^shift, it is cut
            self.rad = [
                -((-r) >> shift) + (1 if m and (m & -m).bit_length() <= shift else 0)
                for m, r in zip(self.mid, self.rad, strict=True)
            ]
            self.mid = [m >> shift for m in self.mid]
            self.scale = grid
        mids, radii = [], []
        for element in elements:
            low, high = on_grid(element, self.scale)
            mids.append(low + high)
            radii.append(high - low)
        if len(elements) < len(self.columns):  # few groups, many columns: by group
            rows = block.rows(self.columns)
            for (x_row, size_row), m, r in zip(rows, mids, radii, strict=True):
                if m:
                    self.mid = list(map(add, self.mid, map(mul, repeat(m), x_row)))
                if r:
                    self.rad = list(map(add, self.rad, map(mul, repeat(r), size_row)))
            return
        coefficients, magnitudes = block.columns(self.columns)  # by column: a dot product each
        inexact = any(radii)
        for index, column in enumerate(coefficients):
            self.mid[index] += sum(map(mul, mids, column))
            if inexact:
                self.rad[index] += sum(map(mul, radii, magnitudes[index]))


class _Block:
    """A few groups' coefficients X_gd by column (the other factor of _ClassSum's products)."""

    def __init__(self, groups: list[Group]) -> None:
        self.groups = groups
        self._columns: dict[tuple[int, ...], tuple[list[list[int]], list[list[int]]]] = {}
        self._rows: dict[tuple[int, ...], list[tuple[list[int], list[int]]]] = {}

    def rows(self, columns: list[int]) -> list[tuple[list[int], list[int]]]:
        """(X_gd, |X_gd|) over the columns, for each group g."""
        key = tuple(columns)
        cached = self._rows.get(key)
        if cached is None:
            cached = self._rows[key] = [
                ([g.coefficients[d] for d in columns], [g.magnitudes[d] for d in columns])
                for g in self.groups
            ]
        return cached

    def columns(self, columns: list[int]) -> tuple[list[list[int]], list[list[int]]]:
        """([X_gd over the groups], [|X_gd| over the groups]) for each column d."""
        key = tuple(columns)
        cached = self._columns.get(key)
        if cached is None:
            picked = [[g.coefficients[d] for g in self.groups] for d in columns]
            sizes = [[g.magnitudes[d] for g in self.groups] for d in columns]
            cached = self._columns[key] = (picked, sizes)
        return cached
