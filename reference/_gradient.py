"""cross_entropy_grad: ∂ cross_entropy / ∂ logits, every element correctly rounded.

For a counted row i with target t, scale c_i (grad_output, divided by Σ w_y for the mean, per
row for "none"), class weights w (W = Σ_j w_j), smoothing ε over C classes and z-loss z:

    ∂/∂x_j = c_i·[A·p_j − B_j]·tanh′_j,   A = w_t(1 − ε) + (ε/C)·W + 2z·w_t·lse,
                                          B_j = w_t(1 − ε)·[j = t] + (ε/C)·w_j

with tanh′_j = sech²(x_j/s) under a softcap s (1 without). Three forms keep every element's
relative accuracy:
- in general c_i·A·p_j = (c_i·A/S)·e_j, minus the pieces of B_j that are not exactly 0;
- for the class that may hold more than half the probability, c_i·[(A − B_j) − A·(1 − p_j)] with
  A − B_j = w_t(1 − ε)·[j ≠ t] + (ε/C)(W − w_j) + 2z·w_t·lse assembled from its exact pieces and
  1 − p_j summed directly: no cancellation as p_j → 1;
- when all finite logits of a row are equal, p_j = 1/k is rational and so is every element
  before tanh′ (without z-loss): exact rational arithmetic, so that a 0 is exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import mpmath
from mpmath import libmp
from mpmath.libmp import fone, fzero

from reference import _fast, _validate
from reference._batch import Batch, counted_weight, prepare, smoothing_share
from reference._certified import certified
from reference._dyadic import Logit, enclosure_of
from reference._enclosure import Enclosure
from reference._row import Row
from reference._validate import DEFAULT_IGNORE_INDEX

MPF = tuple


def cross_entropy_grad(
    logits: Sequence[Sequence[float]],
    targets: Sequence[int],
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    weight: Sequence[float] | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    grad_output: float | Sequence[float] | None = None,
    as_float: bool = False,
) -> list[list[mpmath.mpf]] | list[list[float]]:
    """∂ cross_entropy / ∂ logits (N rows of C), each element correctly rounded.

    ``grad_output`` is the upstream gradient: a number for "mean" and "sum", N numbers for
    "none" (default 1). Ignored rows are exactly zero. With reduction="mean" and no counted row
    the gradient is zero (the loss is NaN, but no element depends on it); counted rows whose
    target weights sum to 0 are NaN, as in PyTorch. With ``as_float`` the elements are Python
    floats (the same float64 values) instead of mpf objects.
    """
    batch = prepare(
        logits, targets, ignore_index, reduction, label_smoothing, weight, z_loss, softcap
    )
    options = batch.options
    upstream = _validate.grad_output(grad_output, options.reduction, len(batch.rows))
    zero, nan = (0.0, math.nan) if as_float else (mpmath.mpf(0), mpmath.mpf("nan"))
    gradient: list[list] = [[zero] * batch.classes for _ in batch.rows]
    if not batch.counted:
        return gradient
    denominator = counted_weight(batch) if options.reduction == "mean" else fone
    if denominator == fzero:
        for i in batch.counted:
            gradient[i] = [nan] * batch.classes
        return gradient
    first_step = None
    if options.softcap is None and _fast.enabled():
        first_step = _fast.LossTerms(
            batch.classes, options.smoothing, options.z_loss, options.weight
        )
    # A row repeated with the same target and upstream value has the same gradient row: a tall
    # batch of a few distinct rows costs a few rows (the mpf results are immutable, so shared).
    repeated: dict[tuple[tuple[Logit, ...], int, float], list] = {}
    for i in batch.counted:
        if options.z_loss != 0 and options.softcap is None and math.inf in batch.rows[i]:
            raise ValueError(f"logits[{i}] holds +inf: with z_loss its gradient is undefined")
        numerator = upstream[0] if options.reduction != "none" else upstream[i]
        key = (tuple(batch.rows[i]), batch.targets[i], numerator)
        if key in repeated:
            gradient[i] = list(repeated[key])
            continue
        settled = None
        if first_step is not None:
            settled = _fast.row_gradient(
                first_step,
                key[0],  # the row as a tuple: the first step's cache key, not built again
                batch.targets[i],
                numerator,
                _fast.dyadic_of(denominator),
            )
        gradient[i] = _row_gradient(
            batch, i, libmp.from_float(numerator), denominator, settled, as_float=as_float
        )
        repeated[key] = gradient[i]
    return gradient


def _row_gradient(
    batch: Batch,
    i: int,
    numerator: MPF,
    denominator: MPF,
    settled: list[float | None] | None = None,
    *,
    as_float: bool = False,
) -> list[mpmath.mpf] | list[float]:
    """The row's elements; those ``settled`` by the integer first step are taken as they are."""
    constants: dict[int, _RowConstants] = {}

    def evaluate(bits: int, pending: Sequence[int]) -> dict[int, Enclosure]:
        if bits not in constants:
            constants[bits] = _RowConstants.of(
                batch, i, Row(batch.rows[i], bits, batch.options.softcap), numerator, denominator
            )
        row_constants = constants[bits]
        return {j: row_constants.element(j) for j in pending}

    return certified(
        evaluate,
        batch.classes,
        "cross_entropy_grad",
        settled=dict(enumerate(settled)) if settled is not None else None,
        as_float=as_float,
    )


@dataclass(frozen=True)
class _TiedRow:
    """Exact rationals for a row whose finite logits are all equal (no z-loss)."""

    scale: Fraction
    a: Fraction
    nll_factor: Fraction
    share: Fraction
    probability: Fraction


@dataclass(frozen=True)
class _RowConstants:
    batch: Batch
    i: int
    row: Row
    scale: Enclosure  # c_i
    a: Enclosure  # A
    share: Enclosure  # ε/C
    nll_factor: Enclosure  # w_t(1 − ε), exact
    z_top: Enclosure  # 2z·w_t·m       (2z·w_t·lse = 2z·w_t·m + 2z·w_t·log S)
    z_log: Enclosure  # 2z·w_t·log S
    weight_total: MPF  # W, exact
    scale_a: Enclosure  # c_i·A
    scale_nll_factor: Enclosure  # c_i·w_t(1 − ε)
    scale_share: Enclosure  # c_i·ε/C
    tied: _TiedRow | None

    @classmethod
    def of(cls, batch: Batch, i: int, row: Row, numerator: MPF, denominator: MPF) -> _RowConstants:
        options = batch.options
        prec = row.prec
        w_t = libmp.from_float(batch.weight_of(batch.targets[i]))
        scale = Enclosure.exact(numerator).div(Enclosure.exact(denominator), prec)
        share = smoothing_share(batch, prec)
        weight_total = fzero
        for j in range(batch.classes):
            weight_total = libmp.mpf_add(weight_total, libmp.from_float(batch.weight_of(j)))
        nll_factor = Enclosure.exact(
            libmp.mpf_mul(w_t, libmp.mpf_sub(fone, libmp.from_float(options.smoothing)))
        )
        z_top = z_log = Enclosure.exact(fzero)
        if options.z_loss != 0 and w_t != fzero:
            two_z_w = Enclosure.exact(
                libmp.mpf_mul(libmp.mpf_shift(libmp.from_float(options.z_loss), 1), w_t)
            )
            if len(row.finite) == 1:
                z_top = row.lse().mul(two_z_w, prec)
            else:
                z_top = row.top.mul(two_z_w, prec)
                z_log = row.log_total().mul(two_z_w, prec)
        z_term = z_top.add(z_log, prec)
        a = nll_factor.add(share.mul(Enclosure.exact(weight_total), prec), prec).add(z_term, prec)
        return cls(
            batch=batch,
            i=i,
            row=row,
            scale=scale,
            a=a,
            share=share,
            nll_factor=nll_factor,
            z_top=z_top,
            z_log=z_log,
            weight_total=weight_total,
            scale_a=scale.mul(a, prec),
            scale_nll_factor=scale.mul(nll_factor, prec),
            scale_share=scale.mul(share, prec),
            tied=_tied_row(batch, i, row, numerator, denominator),
        )

    def element(self, j: int) -> Enclosure:
        """c_i·(A·p_j − B_j)·tanh′_j, in the form that keeps its relative accuracy.

        The parts that may be exact (w_t(1 − ε), (ε/C)·w, 2z·w_t·m) are combined first and the
        small transcendental rest is added last, so that an exact float64 midpoint plus a rest
        of e^-(10^30) leaves the midpoint as an end of the enclosure (see certify).
        """
        batch, row, prec = self.batch, self.row, self.row.prec
        target = j == batch.targets[self.i]
        smoothing = batch.options.smoothing != 0
        w_j = libmp.from_float(batch.weight_of(j)) if smoothing else fzero
        if self.tied is not None:
            element = _tied_element(batch, self.i, self.tied, j, prec)
        elif row.dominates(j):
            head = self.z_top
            if not target:
                head = head.add(self.nll_factor, prec)
            rest_of_weight = libmp.mpf_sub(self.weight_total, w_j)
            if smoothing and rest_of_weight != fzero:  # (ε/C)(W − w_j)
                head = head.add(self.share.mul(Enclosure.exact(rest_of_weight), prec), prec)
            rest = self.z_log.sub(self.a.mul(row.complement(j), prec), prec)
            element = self.scale.mul(head, prec).add(self.scale.mul(rest, prec), prec)
        elif not target and (not smoothing or w_j == fzero) and row.softcap is None:
            return _scale_probability(self.scale_a, row, j, rounded=True)
        else:
            offset = Enclosure.exact(fzero)
            if target:
                offset = offset.add(self.scale_nll_factor, prec)
            if smoothing and w_j != fzero:
                offset = offset.add(self.scale_share.mul(Enclosure.exact(w_j), prec), prec)
            element = _scale_probability(self.scale_a, row, j).sub(offset, prec)
        if row.softcap is not None:
            element = element.mul(tanh_derivative(batch.rows[self.i][j], row.softcap, prec), prec)
        return element


def _tied_row(batch: Batch, i: int, row: Row, numerator: MPF, denominator: MPF) -> _TiedRow | None:
    if batch.options.z_loss != 0 or row.point_mass is not None or not row.all_tied():
        return None
    smoothing = Fraction(batch.options.smoothing)
    weights = [Fraction(batch.weight_of(j)) for j in range(batch.classes)]
    nll_factor = weights[batch.targets[i]] * (1 - smoothing)
    share = smoothing / batch.classes
    return _TiedRow(
        scale=Fraction(*libmp.to_rational(numerator)) / Fraction(*libmp.to_rational(denominator)),
        a=nll_factor + share * sum(weights),
        nll_factor=nll_factor,
        share=share,
        probability=Fraction(1, len(row.finite)),
    )


def _tied_element(batch: Batch, i: int, tied: _TiedRow, j: int, prec: int) -> Enclosure:
    masked = batch.options.softcap is None and batch.rows[i][j] == -math.inf
    value = tied.a * (0 if masked else tied.probability) - tied.share * Fraction(batch.weight_of(j))
    if j == batch.targets[i]:
        value -= tied.nll_factor
    value *= tied.scale
    if value == 0:
        return Enclosure.exact(fzero)
    return Enclosure.of_rational(value.numerator, value.denominator, prec)


def _scale_probability(factor: Enclosure, row: Row, j: int, rounded: bool = False) -> Enclosure:
    """factor·p_j = (factor/S)·e_j, from the integer bounds of e_j (the gradient's hot path).

    With ``rounded``, where the product is the whole element, an enclosure that rounds to one
    float64 comes back as that float64 (an exact enclosure), decided in integers.
    """
    if row.is_masked(j) or row.point_mass is not None:
        return factor.mul(row.probability(j), row.prec)
    per_term = row.per_total(factor)
    term_lo, term_hi, exponent = row.term_bounds(j)
    if libmp.mpf_sign(per_term.lo) >= 0:
        low, high = (per_term.lo, term_lo), (per_term.hi, term_hi)
    elif libmp.mpf_sign(per_term.hi) <= 0:
        low, high = (per_term.lo, term_hi), (per_term.hi, term_lo)
    else:
        low, high = (per_term.lo, term_hi), (per_term.hi, term_hi)
    if rounded and per_term.lo[0] == per_term.hi[0] and per_term.lo[1] and per_term.hi[1]:
        decided = _round_product(low, high, exponent)
        if decided is not None:
            return Enclosure(decided, decided)
    return Enclosure(_scaled(*low, exponent), _scaled(*high, exponent))


def _round_product(low: tuple[MPF, int], high: tuple[MPF, int], exponent: int) -> MPF | None:
    """The float64 both x·a·2^e and y·b·2^e round to, for same-signed finite x, y (None: undecided
    here, or outside float64's normal range; the general certification then decides)."""
    (sign, man_low, exp_low, _), integer_low = low
    (_, man_high, exp_high, _), integer_high = high
    base = min(exp_low, exp_high)
    ends = sorted(
        (
            (man_low << (exp_low - base)) * integer_low,
            (man_high << (exp_high - base)) * integer_high,
        )
    )
    small, large = ends
    bits = small.bit_length()
    dropped = bits - 53
    scale = base + exponent
    if large.bit_length() != bits or dropped < 2 or not -1022 <= scale + bits - 1 < 1023:
        return None
    prefix = small >> (dropped - 1)  # 53 bits and the rounding bit
    if prefix != large >> (dropped - 1):
        return None
    quotient = prefix >> 1
    if prefix & 1:  # at or above halfway: up, unless an exact tie rounds to an even quotient
        if quotient & 1 == 0 and not small & ((1 << (dropped - 1)) - 1):
            if small != large:
                return None
        else:
            quotient += 1
    return libmp.from_man_exp(-quotient if sign else quotient, scale + dropped)


def _scaled(x: MPF, integer: int, exponent: int) -> MPF:
    """x·integer·2^exponent, exactly."""
    sign, man, exp, bc = x
    if not man:
        return x  # 0, or an infinity times a positive term
    return libmp.from_man_exp(-man * integer if sign else man * integer, exp + exponent)


def tanh_derivative(x: Logit, cap: float, prec: int) -> Enclosure:
    """d/dx s·tanh(x/s) = sech²(x/s) = 4v/(1 + v)² with v = exp(−2|x/s|) (0 at ±inf), for a
    float or an exact Dyadic logit.

    Formed from v rather than as 1 − tanh², which cancels to nothing for large |x/s| while the
    derivative, about 4·e^(−2|x|/s), still has a float64 value (or a 53-bit one) to round.
    """
    if x in (math.inf, -math.inf):
        return Enclosure.exact(fzero)
    argument = enclosure_of(x)
    if libmp.mpf_sign(argument.lo) < 0:
        argument = argument.neg()
    ratio = argument.div(Enclosure.of_float(cap), prec)
    v = ratio.neg().add(ratio.neg(), prec).exp(prec)
    one_plus_v = Enclosure.exact(fone).add(v, prec)
    four_v = v.mul(Enclosure.exact(libmp.from_int(4)), prec)
    return four_v.div(one_plus_v.square(prec), prec)
