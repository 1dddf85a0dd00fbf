"""cross_entropy, with the semantics of torch.nn.functional.cross_entropy.

For a counted row i (target t = y_i ≠ ignore_index), with class weights w (all 1 without),
smoothing ε, z-loss z and C classes:

    ℓ_i = w_t·((1 − ε)·nll_t + z·lse²) + (ε/C)·Σ_j w_j·nll_j,      nll_j = lse − x_j

reduction "sum" is Σ_i ℓ_i, "mean" is Σ_i ℓ_i / Σ_i w_{y_i} (NaN with no counted row, or when
those weights sum to 0), "none"
the ℓ_i (0 for ignored rows). A weight of exactly 0 removes its term even where nll is +inf
(torch computes 0·inf = NaN there). With a softcap s every x_j is s·tanh(x_j/s) first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import mpmath
from mpmath import libmp
from mpmath.libmp import fnan, fone, fzero

from reference import _fast
from reference._batch import Batch, counted_weight, prepare
from reference._certified import certified, certified_scalar, mpf_of_float
from reference._enclosure import Enclosure
from reference._row import Row
from reference._validate import DEFAULT_IGNORE_INDEX

MPF = tuple


def cross_entropy(
    logits: Sequence[Sequence[float]],
    targets: Sequence[int],
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    weight: Sequence[float] | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    as_float: bool = False,
) -> mpmath.mpf | list[mpmath.mpf] | float | list[float]:
    """The cross-entropy loss of N rows of C logits, correctly rounded (see the module docstring).

    With ``as_float`` the result is a Python float (a list for reduction="none"): the same
    float64, without building an mpf for each value (the property suite asks for thousands).
    """
    batch = prepare(
        logits, targets, ignore_index, reduction, label_smoothing, weight, z_loss, softcap
    )
    return batch_loss(batch, "cross_entropy", as_float=as_float)


def batch_loss(
    batch: Batch, what: str, *, as_float: bool = False
) -> mpmath.mpf | list[mpmath.mpf] | float | list[float]:
    """The loss of a checked batch (its rows floats or exact Dyadic logits); ``what`` names the
    caller in PrecisionExhausted's message; ``as_float`` as for cross_entropy."""
    options = batch.options
    first = _fast_losses(batch)
    if options.reduction == "none":
        counted = set(batch.counted)

        def evaluate(bits: int, pending: Sequence[int]) -> dict[int, Enclosure]:
            return {
                i: _row_loss(batch, i, Row(batch.rows[i], bits, options.softcap), bits)
                if i in counted
                else Enclosure.exact(fzero)
                for i in pending
            }

        settled: dict[int, float | None] = {}
        if first is not None:
            rounded: dict[_fast.Interval, float | None] = {}  # repeated rows share an interval
            for i, loss in first[1].items():
                if loss is not None:
                    if loss not in rounded:
                        rounded[loss] = _fast.round_interval(*loss)
                    settled[i] = rounded[loss]
            settled.update((i, 0.0) for i in range(len(batch.rows)) if i not in counted)
        return certified(evaluate, len(batch.rows), what, settled=settled, as_float=as_float)
    if options.reduction == "mean" and not batch.counted:
        return math.nan if as_float else mpmath.mpf("nan")
    if first is not None:
        terms, losses = first
        denominator = _fast.counted_weight(terms, batch.targets, batch.counted)
        value = _fast.reduce(losses, options.reduction, denominator)
        if value is not None:
            return value if as_float else mpf_of_float(value)
    loss = certified_scalar(lambda bits: _reduced_loss(batch, bits), what)
    return float(loss) if as_float else loss


def _fast_losses(
    batch: Batch,
) -> tuple[_fast.LossTerms, dict[int, _fast.Interval | None]] | None:
    """Each counted row's loss from the integer first step (None where it does not apply)."""
    options = batch.options
    if options.softcap is not None or not _fast.enabled():
        return None
    terms = _fast.LossTerms(batch.classes, options.smoothing, options.z_loss, options.weight)
    # A row repeated with the same target has the same loss: a tall batch of a few distinct rows
    # costs a few rows. The row's tuple is also the first step's cache key (tuple() of a tuple
    # is itself), so it is built once.
    rows, targets = batch.rows, batch.targets
    keys = [(tuple(rows[i]), targets[i]) for i in batch.counted]
    losses = {key: terms.row_loss(*key) for key in dict.fromkeys(keys)}
    return terms, {i: losses[key] for i, key in zip(batch.counted, keys, strict=True)}


def _reduced_loss(batch: Batch, bits: int) -> Enclosure:
    prec = bits + 16 + len(batch.rows).bit_length()
    total = Enclosure.exact(fzero)
    for i in batch.counted:
        total = total.add(
            _row_loss(batch, i, Row(batch.rows[i], bits, batch.options.softcap), bits), prec
        )
    if batch.options.reduction == "sum":
        return total
    return _divide(total, counted_weight(batch), prec)


def _divide(numerator: Enclosure, denominator: MPF, prec: int) -> Enclosure:
    """The weighted mean; NaN when the counted weights sum to 0 (PyTorch's 0/0 in its NLL part)."""
    if denominator == fzero:
        return Enclosure.exact(fnan)
    return numerator.div(Enclosure.exact(denominator), prec)


def _row_loss(batch: Batch, i: int, row: Row, bits: int) -> Enclosure:
    """ℓ_i of a counted row."""
    options = batch.options
    prec = row.prec
    t = batch.targets[i]
    w_t = batch.weight_of(t)
    loss = Enclosure.exact(fzero)
    if w_t != 0 and options.smoothing != 1:
        factor = libmp.mpf_mul(
            libmp.from_float(w_t), libmp.mpf_sub(fone, libmp.from_float(options.smoothing))
        )
        loss = loss.add(row.nll(t).mul(Enclosure.exact(factor), prec), prec)
    if w_t != 0 and options.z_loss != 0:
        factor = libmp.mpf_mul(libmp.from_float(w_t), libmp.from_float(options.z_loss))
        loss = loss.add(row.lse().square(prec).mul(Enclosure.exact(factor), prec), prec)
    if options.smoothing != 0:
        loss = loss.add(_smoothing_term(batch, row, prec), prec)
    return loss


def _smoothing_term(batch: Batch, row: Row, prec: int) -> Enclosure:
    """(ε/C)·Σ_j w_j·nll_j, as (ε·Σ_j w_j·nll_j)/C.

    The product with ε is exact (53 more bits than the sum's ends), so the division by C is the
    only inexact step. Where the logits are huge and nearly tied, the sum is an exact part (the
    gaps m − x_j) plus a rest of order e^-gap that no precision resolves; if the exact part over
    C is a float64 rounding boundary, the enclosure's lower end is then exactly that boundary
    and the rounding is decided (an end the exact value cannot equal). Multiplying by ε/C,
    rounded outward, would straddle the boundary at every precision.
    """
    epsilon = Enclosure.exact(libmp.from_float(batch.options.smoothing))
    classes = Enclosure.exact(libmp.from_int(batch.classes))
    return _weighted_nll_sum(batch, row, prec).mul(epsilon, prec + 64).div(classes, prec)


def _weighted_nll_sum(batch: Batch, row: Row, prec: int) -> Enclosure:
    """Σ_j w_j·nll_j, nll_j = (m − x_j) + log S over the finite x_j, ±inf for masked ones."""
    infinite_signs = set()
    finite_classes = []
    for j in range(batch.classes):
        w_j = batch.weight_of(j)
        masked = row.is_masked(j) or (row.point_mass is not None and j != row.point_mass)
        if masked:
            if w_j != 0:
                infinite_signs.add(w_j > 0)
        elif w_j != 0:
            finite_classes.append(j)
    if infinite_signs:
        if len(infinite_signs) == 2:
            return Enclosure.exact(fnan)
        return Enclosure.exact(libmp.finf if True in infinite_signs else libmp.fninf)
    if row.point_mass is not None or len(row.finite) == 1:
        return Enclosure.exact(fzero)  # a single class left, with nll 0
    # Σ_{j≠top} w_j·(m − x_j) + (Σ_{j≠top} w_j)·log S + w_top·nll_top: the top class's own NLL,
    # which may be tiny, is taken whole so that the sum keeps its relative accuracy.
    top = row.top_index
    other_weights = fzero
    gaps = Enclosure.exact(fzero)
    sum_prec = prec + len(finite_classes).bit_length()
    for j in finite_classes:
        if j == top or row.logits[j] == row.logits[top]:  # a tie: m − x_j is exactly 0
            if j != top:
                other_weights = libmp.mpf_add(other_weights, libmp.from_float(batch.weight_of(j)))
            continue
        w_j = libmp.from_float(batch.weight_of(j))
        other_weights = libmp.mpf_add(other_weights, w_j)
        gaps = gaps.add(
            row.top.sub(row.logit(j), sum_prec).mul(Enclosure.exact(w_j), sum_prec), sum_prec
        )
    total = gaps.add(row.log_total().mul(Enclosure.exact(other_weights), prec), prec)
    w_top = batch.weight_of(top)
    if w_top != 0:
        total = total.add(row.nll(top).mul(Enclosure.of_float(w_top), prec), prec)
    return total
