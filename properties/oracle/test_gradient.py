"""The gradient: softmax − one-hot, scaled; a finite difference of the loss; ignored rows; row sums."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import mpmath
from hypothesis import assume, given
from hypothesis import strategies as st
from mpmath import mpf

import reference
from properties.oracle import _naive
from properties.oracle._batches import (
    batches,
    grad_outputs,
    loss_options,
    moderate_values,
    oracle_settings,
    weights,
)
from properties.oracle._compare import assert_rounds_alike, describe, rounded

#: Finite differences differentiate the loss at this many bits (mpmath.diff adds its own guard
#: bits); with the moderate logits used there it leaves hundreds of bits beyond float64.
DIFFERENCE_BITS = 1200


def _scales(
    targets: Sequence[int],
    ignore_index: int,
    reduction: str,
    weight: Sequence[float] | None,
    grad_output: Any,
) -> list[mpf]:
    """scale_i = g·w_(y_i)/Σ_counted w_y (mean), g·w_(y_i) (sum), g_i·w_(y_i) (none); 0 if ignored."""
    counted = [t != ignore_index for t in targets]
    class_weight = [
        mpf(1 if weight is None else weight[t]) if c else mpf(0)
        for t, c in zip(targets, counted, strict=True)
    ]
    if reduction == "none":
        upstream = [mpf(1 if grad_output is None else g) for g in (grad_output or targets)]
        return [g * w for g, w in zip(upstream, class_weight, strict=True)]
    g = mpf(1 if grad_output is None else grad_output)
    total_weight = mpmath.fsum(class_weight)
    if reduction == "mean" and total_weight:  # with no counted token every scale is 0 anyway
        g /= total_weight
    return [g * w for w in class_weight]


@oracle_settings
@given(data=st.data())
def test_grad_is_softmax_minus_one_hot_times_scale(data: st.DataObject) -> None:
    """∂L/∂x_ij = (softmax(x_i)_j − [j = y_i])·scale_i, scale_i = g·w_(y_i)/Σw (mean),
    g·w_(y_i) (sum), g_i·w_(y_i) (none), 0 for an ignored row.  [ORACLE-GRAD]"""
    batch = data.draw(batches(), label="batch")
    reduction = data.draw(st.sampled_from(["mean", "sum", "none"]), label="reduction")
    weight = data.draw(weights(batch.classes), label="weight")
    grad_output = data.draw(grad_outputs(reduction, len(batch.targets)), label="g")
    options = {"ignore_index": batch.ignore_index, "reduction": reduction, "weight": weight}
    bits = _naive.working_bits(batch.logits, weight=weight, grad_output=grad_output)
    with mpmath.workprec(bits):
        scales = _scales(batch.targets, batch.ignore_index, reduction, weight, grad_output)
        expected = [
            [
                (p - (1 if j == target else 0)) * scale
                for j, p in enumerate(_naive.softmax(row, bits=bits))
            ]
            for row, target, scale in zip(batch.logits, batch.targets, scales, strict=True)
        ]
    actual = reference.cross_entropy_grad(
        batch.logits, batch.targets, **options, grad_output=grad_output
    )
    call = describe(
        "cross_entropy_grad", batch.logits, batch.targets, **options, grad_output=grad_output
    )
    assert_rounds_alike(
        actual, expected, call, "(softmax − one-hot)·scale", witness_error=_naive.ABSOLUTE_ERROR
    )


def _upstream_loss(
    logits: list[list[Any]], targets: list[int], options: dict[str, Any], grad_output: Any
) -> mpf:
    """g·L, or Σ_i g_i·L_i for reduction="none", evaluated by the naive evaluator at mp.prec."""
    loss = _naive.cross_entropy(logits, targets, **options, bits=mpmath.mp.prec)
    if options["reduction"] != "none":
        return (1 if grad_output is None else mpf(grad_output)) * loss
    upstream = grad_output or [1] * len(targets)
    return mpmath.fsum(mpf(g) * item for g, item in zip(upstream, loss, strict=True))


@oracle_settings
@given(data=st.data())
def test_grad_matches_finite_difference(data: st.DataObject) -> None:
    """∂(g·L)/∂x_ij = lim_(h→0) [g·L(x + h·e_ij) − g·L(x − h·e_ij)]/2h (mpmath.diff at high
    precision), every keyword.  [ORACLE-GRAD]"""
    batch = data.draw(
        batches(max_rows=3, max_classes=4, logits=moderate_values(), masked=False), label="batch"
    )
    options = data.draw(loss_options(batch), label="options")
    # A mean over no counted token is NaN whatever the logits: it has no derivative.
    assume(options["reduction"] != "mean" or any(t != batch.ignore_index for t in batch.targets))
    grad_output = data.draw(
        grad_outputs(options["reduction"], len(batch.targets), moderate_values()), label="g"
    )
    if options["weight"] is not None:
        options["weight"] = [min(max(w, 1e-3), 1e3) for w in options["weight"]]

    def derivative(i: int, j: int) -> mpf:
        def loss_at(value: mpf) -> mpf:
            moved = [list(row) for row in batch.logits]
            moved[i][j] = value
            return _upstream_loss(moved, batch.targets, options, grad_output)

        with mpmath.workprec(DIFFERENCE_BITS):
            return mpmath.diff(loss_at, mpf(batch.logits[i][j]))

    expected = [[derivative(i, j) for j in range(batch.classes)] for i in range(len(batch.targets))]
    actual = reference.cross_entropy_grad(
        batch.logits, batch.targets, **options, grad_output=grad_output
    )
    call = describe(
        "cross_entropy_grad", batch.logits, batch.targets, **options, grad_output=grad_output
    )
    assert_rounds_alike(actual, expected, call, "mpmath.diff of the naive loss")


@oracle_settings
@given(data=st.data())
def test_ignored_rows_get_exactly_zero_gradient(data: st.DataObject) -> None:
    """∂L/∂x_ij = 0 exactly when y_i = ignore_index, every keyword.  [ORACLE-GRAD]"""
    batch = data.draw(batches(), label="batch")
    options = data.draw(loss_options(batch), label="options")
    grad_output = data.draw(grad_outputs(options["reduction"], len(batch.targets)), label="g")
    gradient = reference.cross_entropy_grad(
        batch.logits, batch.targets, **options, grad_output=grad_output
    )
    for row, target in zip(gradient, batch.targets, strict=True):
        if target == batch.ignore_index:
            assert all(entry == 0 for entry in row), f"ignored row has gradient {rounded(row)}"


#: The unit roundoff of float64 and half its smallest subnormal.
_UNIT_ROUNDOFF = Fraction(1, 2**53)
_HALF_SUBNORMAL = Fraction(1, 2**1075)


def _rounding_slack(rounded_row: Sequence[float]) -> Fraction:
    """The largest |Σ_j f_j| possible when Σ_j g_j = 0 exactly and each f_j = round64(g_j).

    Round to nearest gives |f − g| ≤ u·|g| for a normal result and ≤ η = 2^-1075 below, so
    |f − g| ≤ u·|g| + η; with |g| ≤ (|f| + η)/(1 − u) every row term is bounded by its float.
    """
    u, eta = _UNIT_ROUNDOFF, _HALF_SUBNORMAL
    return sum(u * (abs(Fraction(f)) + eta) / (1 - u) + eta for f in rounded_row)


@oracle_settings
@given(data=st.data())
def test_gradient_rows_sum_to_zero(data: st.DataObject) -> None:
    """Σ_j ∂L/∂x_ij = 0 without z-loss and softcap: Σ_j (p_j − [j = y]) = 0 and, for label
    smoothing, Σ_j (W·p_j − w_j) = 0; weights and the scale multiply a zero sum. (z-loss adds
    2ζ·w_y·lse·scale to the row sum; a softcap multiplies entry j by sech²(x_j/s).) Checked on
    the rounded floats, whose exact sum can differ from 0 by their rounding only.  [ORACLE-GRAD]"""
    batch = data.draw(batches(), label="batch")
    options = data.draw(loss_options(batch), label="options") | {"z_loss": 0.0, "softcap": None}
    # Upstream gradients whose products stay finite: an overflowed entry has no rounding slack.
    grad_output = data.draw(
        grad_outputs(options["reduction"], len(batch.targets), moderate_values()), label="g"
    )
    gradient = rounded(
        reference.cross_entropy_grad(
            batch.logits, batch.targets, **options, grad_output=grad_output
        )
    )
    for row in gradient:
        row_sum = sum(Fraction(entry) for entry in row)
        assert abs(row_sum) <= _rounding_slack(row), f"row {row} sums to {float(row_sum)}"
