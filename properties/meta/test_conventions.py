"""Meta tests of the conventions a KernelSpec declares: the expected values follow each one, and
a correct kernel of that convention holds the clauses it touches.

z-loss weighting: "weighted" (the oracle's) adds w_{y_i}·z·lse_i² per counted token and divides
the mean by Σ w_y; "unweighted" (Liger-Kernel's) adds z·lse_i² and divides its mean by the
counted rows. The expected values of the unweighted convention are checked against mpmath at 50
digits (the loss) and float64 autograd of that formula (the gradient), both written here anew.
"""

from __future__ import annotations

from typing import Any

import mpmath
import pytest
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
F = torch.nn.functional

from properties.catalogue import BY_ID  # noqa: E402
from properties.ce.calls import (  # noqa: E402
    draw_batch,
    expect_oracle_loss,
    expected_gradient,
    expected_loss,
)
from properties.ce.problem import Problem  # noqa: E402
from properties.engine.clause import Trial, accepts, clause  # noqa: E402
from properties.engine.kernel import KernelSpec, KernelUnderTest, resolve  # noqa: E402
from properties.engine.runner import run_clause  # noqa: E402
from properties.lce.calls import draw_linear_batch, draw_upstream  # noqa: E402
from properties.lce.calls import expect_oracle_gradients as expect_linear_oracle_gradients  # noqa: E402
from properties.lce.calls import expected_gradients as linear_expected_gradients  # noqa: E402
from properties.lce.calls import expected_loss as linear_expected_loss  # noqa: E402
from properties.lce.problem import LinearProblem  # noqa: E402
from reference import DEFAULT_IGNORE_INDEX  # noqa: E402

LOGITS = [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0], [4.0, 0.0, -2.0]]
TARGETS = [2, 0, DEFAULT_IGNORE_INDEX]
WEIGHTS = [0.25, 1.0, 4.0]
Z = 0.125


def unweighted_z_loss(
    logits: Any,
    target: Any,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    weight: Any = None,
    z_loss: float = 0.0,
) -> Any:
    """A correct kernel of the unweighted convention, in float32 (float64 stays float64)."""
    x = logits.float() if logits.dtype != torch.float64 else logits
    nll = F.cross_entropy(
        x,
        target,
        weight=None if weight is None else weight.to(x.dtype),
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )
    counted = target != ignore_index
    lse = torch.logsumexp(x, dim=-1)
    per_row = torch.where(counted, z_loss * lse * lse, 0.0)
    if reduction == "none":
        z_part = per_row
    elif reduction == "sum":
        z_part = per_row.sum()
    else:
        z_part = per_row.sum() / counted.sum()
    return (nll + z_part).to(logits.dtype)


UNWEIGHTED = KernelSpec(
    fn=unweighted_z_loss, options={"z_loss": "z_loss"}, z_loss_weighting="unweighted"
)
UNDECLARED = KernelSpec(fn=unweighted_z_loss, options={"z_loss": "z_loss"})


def trial_of(spec: KernelSpec) -> Trial:
    kernel: KernelUnderTest = resolve(spec)
    return Trial(kernel=kernel, dtype="float32", device="cpu", data=None)  # type: ignore[arg-type]


def problem(reduction: str) -> Problem:
    return Problem.of(
        torch.tensor(LOGITS, dtype=torch.float64),
        torch.tensor(TARGETS),
        reduction=reduction,
        weight=torch.tensor(WEIGHTS, dtype=torch.float64),
        z_loss=Z,
    ).but(dtype="float32")


def unweighted_by_mpmath(reduction: str) -> list[float]:
    with mpmath.workdps(50):
        rows = []
        for row, target in zip(LOGITS, TARGETS, strict=True):
            if target == DEFAULT_IGNORE_INDEX:
                rows.append((mpmath.mpf(0), mpmath.mpf(0), mpmath.mpf(0)))
                continue
            lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in row))
            weight = mpmath.mpf(WEIGHTS[target])
            rows.append((weight * (lse - row[target]), weight, Z * lse**2))
        if reduction == "none":
            return [float(nll + z) for nll, _, z in rows]
        nll, weights, z = (mpmath.fsum(column) for column in zip(*rows, strict=True))
        if reduction == "sum":
            return [float(nll + z)]
        counted = sum(target != DEFAULT_IGNORE_INDEX for target in TARGETS)
        return [float(nll / weights + z / counted)]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_an_unweighted_z_loss_is_expected_where_declared(reduction: str) -> None:
    expected = expected_loss(trial_of(UNWEIGHTED), problem(reduction)).reshape(-1).tolist()
    exact = unweighted_by_mpmath(reduction)
    assert expected == pytest.approx(exact, rel=2**-50, abs=0.0)
    # Undeclared, the oracle's weighted z-loss is expected: a different value on this input.
    weighted = expected_loss(trial_of(UNDECLARED), problem(reduction)).reshape(-1).tolist()
    assert weighted != pytest.approx(exact, rel=2**-20)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_an_unweighted_z_loss_gradient_is_expected_where_declared(reduction: str) -> None:
    grad_output = torch.tensor([0.5, -2.0, 3.0] if reduction == "none" else 1.5)
    x = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    loss = unweighted_z_loss(
        x,
        torch.tensor(TARGETS),
        reduction=reduction,
        weight=torch.tensor(WEIGHTS, dtype=torch.float64),
        z_loss=Z,
    )
    loss.backward(grad_output.double())
    assert x.grad is not None
    expected = expected_gradient(trial_of(UNWEIGHTED), problem(reduction), grad_output)
    torch.testing.assert_close(expected, x.grad, rtol=2**-40, atol=0.0)


def test_a_kernel_of_the_unweighted_convention_holds_the_z_loss_clauses_once_declared() -> None:
    kernel = resolve(UNWEIGHTED)
    for clause_id in ("CE-OPTIONS", "CE-GRAD"):
        result = run_clause(BY_ID[clause_id], kernel, dtype="float32", device="cpu", profile="ci")
        assert result.status == "holds", result.violation.render() if result.violation else result


@clause(applies=accepts("z_loss", "weight"))
def z_loss_with_class_weights_follows_the_declaration(trial: Trial) -> None:
    """ℓ_i = w_{y_i}·nll_i + c_i·z·lse(x_i)², c_i = w_{y_i} (weighted) or 1 (unweighted, its mean over counted rows), class weights and z-loss always drawn.  [CE-META-Z-WEIGHTS] tol: loss"""
    # Logits of modest size: where they are huge, both conventions overflow the same way (the
    # exact loss is past float32's range, an inf is then right), and nothing tells them apart.
    batch = draw_batch(
        trial,
        options=("ignore_index",),
        require=("weight", "z_loss"),
        max_scale=MODEST_LOGITS,
        max_offset=MODEST_LOGITS,
    )
    expect_oracle_loss(trial, batch)


#: The largest scale and offset of the logits the convention clauses draw.
MODEST_LOGITS = 8.0


def test_the_same_kernel_undeclared_fails_where_weights_meet_z_loss() -> None:
    # Every example draws both, on logits of modest size, so the two conventions part on every
    # example whose class weights are not all equal: the verdict does not hang on which
    # examples a Hypothesis version happens to draw (it did while huge logits were allowed).
    clause = z_loss_with_class_weights_follows_the_declaration
    undeclared = run_clause(
        clause, resolve(UNDECLARED), dtype="float32", device="cpu", profile="ci"
    )
    assert undeclared.status == "fails"
    declared = run_clause(clause, resolve(UNWEIGHTED), dtype="float32", device="cpu", profile="ci")
    assert declared.status == "holds"


# --- Contract 3: the same convention through the projection -----------------------------------


def unweighted_linear_z_loss(
    input: Any,
    linear_weight: Any,
    target: Any,
    *,
    linear_bias: Any = None,
    reduction: str = "mean",
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    weight: Any = None,
    z_loss: float = 0.0,
) -> Any:
    """A correct fused kernel of the unweighted convention: float32 logits x·Wᵀ + b, then the
    contract-2 kernel above (float64 inputs stay float64)."""
    compute = torch.float64 if input.dtype == torch.float64 else torch.float32
    logits = F.linear(
        input.to(compute),
        linear_weight.to(compute),
        None if linear_bias is None else linear_bias.to(compute),
    )
    loss = unweighted_z_loss(
        logits,
        target,
        ignore_index=ignore_index,
        reduction=reduction,
        weight=weight,
        z_loss=z_loss,
    )
    return loss.to(input.dtype)


UNWEIGHTED_LINEAR = KernelSpec(
    fn=unweighted_linear_z_loss,
    contract="linear",
    options={"z_loss": "z_loss"},
    z_loss_weighting="unweighted",
)
UNDECLARED_LINEAR = KernelSpec(
    fn=unweighted_linear_z_loss, contract="linear", options={"z_loss": "z_loss"}
)
HIDDEN = [[1.0, -0.5], [0.25, 2.0], [-1.5, 0.75]]
PROJECTION = [[0.5, 1.0], [-1.0, 0.25], [2.0, -0.5]]
BIAS = [0.125, -0.25, 0.5]


def linear_problem(reduction: str) -> LinearProblem:
    return LinearProblem.of(
        torch.tensor(HIDDEN, dtype=torch.float64),
        torch.tensor(PROJECTION, dtype=torch.float64),
        torch.tensor(TARGETS),
        linear_bias=torch.tensor(BIAS, dtype=torch.float64),
        reduction=reduction,
        weight=torch.tensor(WEIGHTS, dtype=torch.float64),
        z_loss=Z,
    ).but(dtype="float32")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_an_unweighted_linear_z_loss_and_its_gradients_are_expected_where_declared(
    reduction: str,
) -> None:
    parameters = [
        torch.tensor(values, dtype=torch.float64, requires_grad=True)
        for values in (HIDDEN, PROJECTION, BIAS)
    ]
    x, w, b = parameters
    loss = unweighted_linear_z_loss(
        x,
        w,
        torch.tensor(TARGETS),
        linear_bias=b,
        reduction=reduction,
        weight=torch.tensor(WEIGHTS, dtype=torch.float64),
        z_loss=Z,
    )
    grad_output = torch.tensor([0.5, -2.0, 3.0] if reduction == "none" else 1.5)
    loss.backward(grad_output.double())
    trial = trial_of(UNWEIGHTED_LINEAR)
    torch.testing.assert_close(
        linear_expected_loss(trial, linear_problem(reduction)), loss.detach(), rtol=2**-40, atol=0.0
    )
    expected = linear_expected_gradients(trial, linear_problem(reduction), grad_output)
    for name, exact, by_autograd in zip(("x", "W", "b"), expected, parameters, strict=True):
        assert exact is not None and by_autograd.grad is not None, name
        torch.testing.assert_close(exact, by_autograd.grad, rtol=2**-40, atol=2**-60, msg=name)
    # Undeclared, the oracle's weighted z-loss is expected: a different value on this input.
    weighted = linear_expected_loss(trial_of(UNDECLARED_LINEAR), linear_problem(reduction))
    assert weighted.reshape(-1).tolist() != pytest.approx(
        loss.detach().reshape(-1).tolist(), rel=2**-20
    )


@clause(applies=accepts("z_loss", "weight"))
def linear_z_loss_with_class_weights_follows_the_declaration(trial: Trial) -> None:
    """ℓ_i = w_{y_i}·nll(z_i) + c_i·z·lse(z_i)², z_i = x_i·Wᵀ + b, c_i = w_{y_i} (weighted) or 1 (unweighted), class weights and z-loss always drawn.  [LCE-META-Z-WEIGHTS] tol: linear_loss"""
    batch = draw_linear_batch(
        trial,
        options=("ignore_index", "linear_bias", "z_loss"),
        require=("weight", "z_loss"),
        shapes=SMALL_LINEAR_SHAPES,
    )
    expect_linear_oracle_gradients(trial, batch, draw_upstream(trial, batch))


#: Small enough that the oracle's gradients take milliseconds: the convention, not scale, is
#: what these examples test.
SMALL_LINEAR_SHAPES = st.tuples(st.integers(1, 16), st.integers(1, 8), st.integers(1, 16))


def test_a_fused_kernel_undeclared_fails_where_weights_meet_z_loss() -> None:
    clause = linear_z_loss_with_class_weights_follows_the_declaration
    undeclared = run_clause(
        clause, resolve(UNDECLARED_LINEAR), dtype="float32", device="cpu", profile="ci"
    )
    assert undeclared.status == "fails"
    declared = run_clause(
        clause, resolve(UNWEIGHTED_LINEAR), dtype="float32", device="cpu", profile="ci"
    )
    assert declared.status == "holds", (
        declared.violation.render() if declared.violation else declared
    )
