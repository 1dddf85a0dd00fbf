"""Agreement with torch.nn.functional.cross_entropy in float64: the options mean the same thing.

This tests meaning, not precision: torch in float64 is compared with the oracle within a bound
on float64 rounding error (derived below), which is ~10^-13 relative on these inputs while a
wrong denominator, a smoothing term over the wrong classes or a counted ignored token moves the
loss by a relative 10^-2 or more. z-loss and the softcap, which torch does not have, are
composed from torch operations exactly as contract 1 defines them.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import reference
from properties.oracle._batches import (
    Batch,
    batches,
    grad_outputs,
    loss_options,
    moderate_values,
    oracle_settings,
)
from properties.oracle._compare import rounded, same_float

torch = pytest.importorskip("torch")
F = torch.nn.functional

#: float64's unit roundoff.
U = 2.0**-53
#: The smallest subnormal: a rounding into the subnormal range errs by up to half of it, an
#: absolute error that the relative bounds below do not cover; each operation is charged one.
SUBNORMAL = 2.0**-1074


def gamma(operations: int) -> float:
    """Higham's γ_k = k·u/(1 − k·u): the relative error of k chained float64 roundings."""
    return operations * U / (1 - operations * U)


def _capped(row: list[float], softcap: float | None) -> list[float]:
    return row if softcap is None else [softcap * math.tanh(x / softcap) for x in row]


def _row_magnitudes(capped: list[float], softcap: float | None) -> tuple[float, float]:
    """(lse, E): the row's log-sum-exp and a bound on the absolute error of torch's lse and of
    each log p_j, less the rounding of log p_j itself.

    torch's float64 log_softmax is x_j − m − log Σ_k exp(x_k − m): x_k − m rounds by u·R (R the
    spread of finite logits), each exp by u, a sum of C positive terms by (C − 1)·u, the log turns
    that relative error into an absolute one and adds u·log C, and the subtractions add u·|lse|
    and u·|log p_j| (the latter is charged per use below). Hence E = u·(C + R + |lse| + log C + 4),
    with C and R doubled for slack as properties/tolerances.py does for float32. A softcap
    s·tanh(x/s) is within 4u·s of exact, which moves lse and every log p_j by at most 2·4u·s.
    """
    finite = [x for x in capped if math.isfinite(x)]
    top = max(finite)
    lse = top + math.log(math.fsum(math.exp(x - top) for x in finite))
    spread = top - min(finite)
    classes = len(capped)
    error = U * (2 * classes + 2 * spread + abs(lse) + math.log(classes) + 4)
    if softcap is not None:
        error += 8 * U * softcap
    return lse, error


def loss_bound(batch: Batch, options: dict[str, Any], oracle_terms: list[float]) -> list[float]:
    """Bound on |torch − exact| for each token (reduction="none") or for the reduced loss.

    Token i's loss (1 − ε)·w_y·(−log p_y) + (ε/C)·Σ_j w_j·(−log p_j) + ζ·w_y·lse² has error at
    most (1 − ε)·w_y·(E + u·|log p_y|) + (ε/C)·Σ_j w_j·(E + u·|log p_j|) + ζ·w_y·(2|lse|·E + 3u·lse²),
    plus γ_(C+4) of its value for the smoothing's sum over C classes and the products. A sum over
    N non-negative tokens and the weighted denominator add γ_(2N+2) of the result; every
    operation may also round into the subnormal range.
    """
    eps, zeta = options["label_smoothing"], options["z_loss"]
    classes = batch.classes
    weight = options["weight"] or [1.0] * classes
    token_errors, counted_weight = [], 0.0
    for row, target, term in zip(batch.logits, batch.targets, oracle_terms, strict=True):
        if target == batch.ignore_index:
            token_errors.append(0.0)
            continue
        counted_weight += weight[target]
        capped = _capped(row, options["softcap"])
        lse, error = _row_magnitudes(capped, options["softcap"])
        log_p = [x - lse for x in capped]
        token_error = (1 - eps) * weight[target] * (error + U * abs(log_p[target]))
        if eps:  # a masked class makes this term inf; such batches are drawn without smoothing
            token_error += (
                eps
                / classes
                * sum(w * (error + U * abs(lp)) for w, lp in zip(weight, log_p, strict=True))
            )
        token_error += zeta * weight[target] * (2 * abs(lse) * error + 3 * U * lse**2)
        token_errors.append(token_error + gamma(classes + 4) * term + (classes + 4) * SUBNORMAL)
    if options["reduction"] == "none":
        return token_errors
    rows = len(batch.targets)
    total = math.fsum(token_errors) + gamma(2 * rows + 2) * math.fsum(oracle_terms)
    total += (rows + 2) * SUBNORMAL
    if options["reduction"] == "sum":
        return [total]
    return [total / counted_weight if counted_weight else math.nan]


def torch_loss(batch: Batch, options: dict[str, Any]) -> Any:
    """F.cross_entropy in float64, plus ζ·w_y·lse² and the softcap composed from torch ops."""
    logits = torch.tensor(batch.logits, dtype=torch.float64, requires_grad=True)
    target = torch.tensor(batch.targets, dtype=torch.long)
    weight = (
        None if options["weight"] is None else torch.tensor(options["weight"], dtype=torch.float64)
    )
    capped = logits
    if options["softcap"] is not None:
        capped = options["softcap"] * torch.tanh(logits / options["softcap"])
    reduction = options["reduction"]
    loss = F.cross_entropy(
        capped,
        target,
        weight=weight,
        ignore_index=batch.ignore_index,
        reduction=reduction,
        label_smoothing=options["label_smoothing"],
    )
    if options["z_loss"]:
        counted = target != batch.ignore_index
        safe_target = torch.where(counted, target, 0)
        target_weight = (
            torch.ones(len(batch.targets), dtype=torch.float64)
            if weight is None
            else weight[safe_target]
        )
        target_weight = torch.where(counted, target_weight, 0.0)
        z_terms = options["z_loss"] * target_weight * torch.logsumexp(capped, dim=1) ** 2
        if reduction == "none":
            loss = loss + z_terms
        elif reduction == "sum":
            loss = loss + z_terms.sum()
        else:
            loss = loss + z_terms.sum() / target_weight.sum()
    return logits, loss


def _assert_within(
    actual: list[float], expected: list[float], bounds: list[float], call: str
) -> None:
    for k, (a, e, b) in enumerate(zip(actual, expected, bounds, strict=True)):
        assert same_float(a, e) or abs(a - e) <= b, (
            f"[{k}] torch says {a!r}, the oracle says {e!r} (|difference| {abs(a - e):.3g} > "
            f"float64 bound {b:.3g}) for {call}"
        )


@st.composite
def agreement_cases(draw: st.DrawFn) -> tuple[Batch, dict[str, Any]]:
    """Moderate logits (the bound is loose at extremes), every option; −inf only without
    smoothing (its −log p = inf makes torch's 0·inf terms NaN where the oracle's limit is inf)."""
    masked = draw(st.booleans(), label="masked")
    batch = draw(
        batches(max_rows=6, max_classes=8, logits=moderate_values(), masked=masked), label="batch"
    )
    options = draw(loss_options(batch), label="options")
    if masked:
        options["label_smoothing"] = 0.0
    return batch, options


@oracle_settings
@given(case=agreement_cases())
def test_loss_agrees_with_torch(case: tuple[Batch, dict[str, Any]]) -> None:
    """|F.cross_entropy(x, y, **opts) − L(x, y, **opts)| ≤ float64 rounding bound, for
    ignore_index anywhere, weights, label smoothing, every reduction (+ z-loss, softcap composed).
    [ORACLE-TORCH]"""
    batch, options = case
    _, loss = torch_loss(batch, options)
    oracle = reference.cross_entropy(batch.logits, batch.targets, **options)
    terms = rounded(
        reference.cross_entropy(batch.logits, batch.targets, **options | {"reduction": "none"})
    )
    expected = rounded(oracle) if isinstance(oracle, list) else [float(oracle)]
    actual = loss.detach().reshape(-1).tolist()
    _assert_within(actual, expected, loss_bound(batch, options, terms), f"{batch} {options}")


def gradient_bound(batch: Batch, options: dict[str, Any], grad_output: Any) -> list[list[float]]:
    """Bound on |torch's ∂L/∂x_ij − exact| without z-loss and softcap.

    torch's backward of log_softmax is g_j − p_j·Σ_k g_k with p_j = exp(log p_j), where
    g = −a_i·((1 − ε)·w_y·e_y + (ε/C)·w) and a_i is the row's scale; so |Σ_k g_k| = a_i·S with
    S = (1 − ε)·w_y + (ε/C)·W. exp(log p_j) is within p_j·(E + u·|log p_j| + u) of p_j, the sum
    of C terms adds (C − 1)·u of S and the product and subtraction 4u·S more; each of those
    C + 4 operations may also round into the subnormal range.
    """
    eps = options["label_smoothing"]
    classes = batch.classes
    weight = options["weight"] or [1.0] * classes
    counted = [t != batch.ignore_index for t in batch.targets]
    denominator = sum(weight[t] for t, c in zip(batch.targets, counted, strict=True) if c)
    bounds = []
    for i, (row, target) in enumerate(zip(batch.logits, batch.targets, strict=True)):
        if not counted[i]:
            bounds.append([0.0] * classes)
            continue
        if options["reduction"] == "none":
            scale = abs(1.0 if grad_output is None else grad_output[i])
        else:
            scale = abs(1.0 if grad_output is None else grad_output)
            if options["reduction"] == "mean":
                scale /= denominator
        lse, error = _row_magnitudes(row, None)
        weight_sum = (1 - eps) * weight[target] + eps / classes * sum(weight)
        bounds.append(
            [
                scale
                * weight_sum
                * (math.exp(x - lse) * (error + U * (abs(x - lse) + 1)) + (classes + 4) * U)
                + (classes + 4) * SUBNORMAL
                if math.isfinite(x)
                else 0.0
                for x in row
            ]
        )
    return bounds


@oracle_settings
@given(case=agreement_cases(), data=st.data())
def test_gradient_agrees_with_torch(
    case: tuple[Batch, dict[str, Any]], data: st.DataObject
) -> None:
    """|torch's ∂(g·L)/∂x_ij − the oracle's| ≤ float64 rounding bound, for ignore_index anywhere,
    weights, label smoothing, every reduction and upstream gradient.  [ORACLE-TORCH]"""
    batch, options = case
    options |= {"z_loss": 0.0, "softcap": None}
    counted = [t != batch.ignore_index for t in batch.targets]
    # A mean over no counted token is NaN whatever the logits: it has no gradient to compare.
    assume(options["reduction"] != "mean" or any(counted))
    grad_output = data.draw(
        grad_outputs(options["reduction"], len(batch.targets), moderate_values()), label="g"
    )
    logits, loss = torch_loss(batch, options)
    if grad_output is None:
        loss.backward(torch.ones_like(loss))
    else:
        loss.backward(torch.tensor(grad_output, dtype=torch.float64))
    actual = logits.grad.tolist()
    expected = rounded(
        reference.cross_entropy_grad(
            batch.logits, batch.targets, **options, grad_output=grad_output
        )
    )
    bounds = gradient_bound(batch, options, grad_output)
    for i in range(len(batch.targets)):
        _assert_within(
            actual[i], expected[i], bounds[i], f"row {i} of {batch} {options} g={grad_output}"
        )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weight", [None, [0.5, 2.0, 1.0]])
def test_no_counted_token_matches_torch(reduction: str, weight: list[float] | None) -> None:
    """L over a batch whose every target is ignore_index: NaN (mean), 0 (sum), zeros (none),
    as torch.  [ORACLE-TORCH]"""
    batch = Batch([[0.0, 1.0, 2.0], [3.0, -1.0, 0.5]], [1, 1], ignore_index=1)
    options = {
        "reduction": reduction,
        "weight": weight,
        "label_smoothing": 0.2,
        "z_loss": 0.0,
        "softcap": None,
    }
    _, loss = torch_loss(batch, options)
    oracle = reference.cross_entropy(batch.logits, batch.targets, ignore_index=1, **options)
    expected = rounded(oracle) if isinstance(oracle, list) else [float(oracle)]
    actual = loss.detach().reshape(-1).tolist()
    assert all(same_float(a, e) for a, e in zip(actual, expected, strict=True)), (actual, expected)
