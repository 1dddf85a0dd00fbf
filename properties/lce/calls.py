"""Calling a fused projection + loss kernel (contract 3) on a drawn batch, the standard
comparisons with the oracle, and the reproducers of such calls: what properties/lce/ shares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from properties.ce.calls import unweighted_z_loss, z_loss_unweighted
from properties.engine.checks import check_close
from properties.engine.clause import Mismatch, Trial
from properties.engine.snippet import program
from properties.lce.batches import LinearBatch, linear_batches
from properties.lce.oracle import oracle_gradients, oracle_loss
from properties.lce.problem import LinearProblem
from properties.strategies import Drawn, upstream_gradients
from properties.tolerances import linear_gradient_bounds, linear_loss_bound

#: The differentiable arguments, by the names the contract and the reproducers give them.
PARAMETERS = ("input", "linear_weight", "linear_bias")


def draw_linear_batch(trial: Trial, **options: Any) -> LinearBatch:
    """A batch for the trial's kernel in the trial's dtype; ``options`` go to
    :func:`properties.lce.batches.linear_batches`."""
    strategy = linear_batches(dtype=trial.dtype, kernel=trial.kernel, **options)
    return trial.data.draw(strategy, label="batch")


def draw_upstream(trial: Trial, batch: LinearBatch) -> Drawn:
    """The gradient flowing into the loss: a scalar for mean and sum, one value per row for
    reduction="none"."""
    rows = batch.rows if batch.reduction == "none" else None
    return trial.data.draw(upstream_gradients(rows=rows, dtype=batch.dtype), label="grad_output")


def problem_of(batch: LinearBatch) -> LinearProblem:
    return LinearProblem.of(*batch.tensors(), **batch.keywords())


# --- Calling the kernel -----------------------------------------------------------------------


def _fresh(trial: Trial, value: Any, *, grad: bool = False) -> Any:
    if isinstance(value, torch.Tensor):
        copy = value.detach().clone().to(trial.device)
        return copy.requires_grad_(True) if grad and copy.is_floating_point() else copy
    return value


def _tensor_result(value: Any, trial: Trial, batch: LinearBatch) -> torch.Tensor:
    """The kernel's result, which must be a tensor; the reproducer is written only if not."""
    if not isinstance(value, torch.Tensor):
        raise Mismatch(
            f"the loss is a {type(value).__name__}, not a tensor",
            reproducer=batch_reproducer(trial, batch),
        )
    return value


def loss_of(trial: Trial, batch: LinearBatch) -> torch.Tensor:
    """The kernel's loss on fresh copies of the batch (no gradient)."""
    x, w, y = (_fresh(trial, t) for t in batch.tensors())
    keywords = {k: _fresh(trial, v) for k, v in batch.keywords().items()}
    with torch.no_grad():
        result = trial.kernel(x, w, y, **keywords)
    return _tensor_result(result, trial, batch).detach().cpu()


def loss_and_gradients(
    trial: Trial, batch: LinearBatch, grad_output: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The kernel's loss and ∂(loss·grad_output)/∂ of input, linear_weight and linear_bias (the
    last when the batch has one), on fresh copies that require grad."""
    x = _fresh(trial, batch.input.value, grad=True)
    w = _fresh(trial, batch.linear_weight.value, grad=True)
    keywords = {k: _fresh(trial, v, grad=k == "linear_bias") for k, v in batch.keywords().items()}
    leaves = {"input": x, "linear_weight": w}
    if "linear_bias" in keywords:
        leaves["linear_bias"] = keywords["linear_bias"]
    result = trial.kernel(x, w, _fresh(trial, batch.target.value), **keywords)
    loss = _tensor_result(result, trial, batch)
    if not loss.requires_grad:
        raise Mismatch(
            "the loss does not require grad: the kernel is not differentiable",
            reproducer=batch_reproducer(trial, batch),
        )
    upstream = grad_output.to(device=loss.device, dtype=loss.dtype).reshape(loss.shape).clone()
    loss.backward(upstream)
    gradients = {}
    for name, leaf in leaves.items():
        if leaf.grad is None:
            raise Mismatch(
                f"backward() left no gradient on {name}",
                reproducer=batch_reproducer(trial, batch),
            )
        gradients[name] = leaf.grad.detach().cpu()
    return loss.detach().cpu(), gradients


# --- Reproducers ------------------------------------------------------------------------------


def call_expression(trial: Trial, keywords: Mapping[str, Any]) -> str:
    """``kernel(input, linear_weight, target, ...)`` with the kernel's own keyword names."""
    parts = ["input", "linear_weight", "target"]
    for key, value in keywords.items():
        name = trial.kernel.spec.options.get(key, key)
        parts.append(f"{name}={key}" if isinstance(value, torch.Tensor) else f"{name}={value!r}")
    return f"kernel({', '.join(parts)})"


def batch_reproducer(
    trial: Trial, batch: LinearBatch, *, grad_output: Drawn | None = None, expected: str = ""
) -> str:
    """A runnable snippet of the call (and of its backward pass when ``grad_output`` is given)."""
    call = f"loss = {call_expression(trial, batch.keywords())}"
    tensors = batch.tensor_names()
    if grad_output is None:
        calls = [call, f"print(loss)  {expected}".rstrip()]
        return program(trial.kernel, [batch.source()], calls, device=trial.device, tensors=tensors)
    grads = [p for p in PARAMETERS if p in tensors]
    calls = [
        *(f"{name}.requires_grad_(True)" for name in grads),
        call,
        "loss.backward(grad_output)",
        *(f"print({name}.grad)" for name in grads),
    ]
    setup = [batch.source(), grad_output.source()]
    return program(
        trial.kernel, setup, calls, device=trial.device, tensors=[*tensors, "grad_output"]
    )


def context(trial: Trial, batch: LinearBatch) -> str:
    return f"{batch.describe()}; {trial.kernel.name} on {trial.device}"


# --- The standard comparisons -----------------------------------------------------------------


def expected_loss(trial: Trial, problem: LinearProblem) -> torch.Tensor:
    """The oracle's loss under the conventions the kernel declares: a mean over no counted token
    is NaN as in PyTorch, or 0 (KernelSpec.empty_mean); the z-loss is weighted by the target's
    class weight like the NLL term, or not (KernelSpec.z_loss_weighting)."""
    if (
        problem.reduction == "mean"
        and not bool(problem.counted.any())
        and trial.kernel.spec.empty_mean == "zero"
    ):
        return torch.tensor(0.0, dtype=torch.float64)
    if not _z_loss_unweighted(trial, problem):
        return oracle_loss(problem)
    z_loss, _ = unweighted_z_loss(problem.logits_problem(), None)
    return oracle_loss(problem.but(z_loss=0.0)) + z_loss


def expected_gradients(
    trial: Trial, problem: LinearProblem, grad_output: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The oracle's ∂(loss·grad_output)/∂ of input, linear_weight and linear_bias under the
    kernel's z-loss convention. Unweighted, the z-loss part's gradient g_z = ∂/∂z (N, C) is
    carried through the projection in float64: g_z·W, g_zᵀ·x and Σ_i g_z; each entry is within a
    few float64 roundings relative to Σ|terms|, about 2^-29 of the float32 bounds it meets."""
    if not _z_loss_unweighted(trial, problem):
        return oracle_gradients(problem, grad_output)
    for_input, for_weight, for_bias = oracle_gradients(problem.but(z_loss=0.0), grad_output)
    _, for_logits = unweighted_z_loss(problem.logits_problem(), grad_output)
    assert for_logits is not None
    return (
        for_input + for_logits @ problem.linear_weight,
        for_weight + for_logits.T @ problem.input,
        None if for_bias is None else for_bias + for_logits.sum(dim=0),
    )


def loss_bound_for(trial: Trial, problem: LinearProblem) -> torch.Tensor:
    """The loss bound under the kernel's z-loss convention. Unweighted, the kernel computes two
    parts, the weighted loss without z-loss and the z-loss of the unweighted problem; each is
    within its own problem's bound (the second's covers z-loss and NLL), so their sum is within
    the sum of the bounds (as contract 2's ``properties.ce.calls.loss_bound_for``)."""
    if not _z_loss_unweighted(trial, problem):
        return linear_loss_bound(problem)
    return linear_loss_bound(problem.but(z_loss=0.0)) + linear_loss_bound(problem.but(weight=None))


def gradient_bounds_for(
    trial: Trial, problem: LinearProblem, grad_output: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The gradient bounds under the kernel's z-loss convention (the sums of the parts' bounds,
    as for :func:`loss_bound_for`)."""
    if not _z_loss_unweighted(trial, problem):
        return linear_gradient_bounds(problem, grad_output)
    without = linear_gradient_bounds(problem.but(z_loss=0.0), grad_output)
    unweighted = linear_gradient_bounds(problem.but(weight=None), grad_output)
    return (
        without[0] + unweighted[0],
        without[1] + unweighted[1],
        None if without[2] is None or unweighted[2] is None else without[2] + unweighted[2],
    )


def _z_loss_unweighted(trial: Trial, problem: LinearProblem) -> bool:
    return z_loss_unweighted(trial, problem.logits_problem())


def expect_oracle_loss(trial: Trial, batch: LinearBatch) -> None:
    """The kernel's loss is within the fused loss bound of the oracle's."""
    problem = problem_of(batch)
    expected = expected_loss(trial, problem)
    check_close(
        trial,
        quantity="loss",
        actual=loss_of(trial, batch),
        expected=expected,
        bound=loss_bound_for(trial, problem),
        context=context(trial, batch),
        reproducer=batch_reproducer(trial, batch, expected=_oracle_comment(expected)),
    )


def expect_oracle_gradients(trial: Trial, batch: LinearBatch, upstream: Drawn) -> None:
    """The kernel's loss, ∂L/∂input, ∂L/∂W and ∂L/∂b are each within their bounds of the
    oracle's."""
    problem = problem_of(batch)
    loss, gradients = loss_and_gradients(trial, batch, upstream.value)
    expected = expected_loss(trial, problem)
    where = context(trial, batch)
    check_close(
        trial,
        quantity="loss",
        actual=loss,
        expected=expected,
        bound=loss_bound_for(trial, problem),
        context=where,
        reproducer=batch_reproducer(trial, batch, expected=_oracle_comment(expected)),
    )
    exact = expected_gradients(trial, problem, upstream.value)
    bounds = gradient_bounds_for(trial, problem, upstream.value)
    reproduce = batch_reproducer(trial, batch, grad_output=upstream)
    for name, expected_gradient, bound in zip(PARAMETERS, exact, bounds, strict=True):
        if name not in gradients:
            continue
        assert expected_gradient is not None and bound is not None
        check_close(
            trial,
            quantity=f"∂L/∂{name}",
            actual=gradients[name],
            expected=expected_gradient,
            bound=bound,
            context=where,
            reproducer=reproduce,
        )


def _oracle_comment(expected: torch.Tensor) -> str:
    return f"# the oracle: {float(expected)!r}" if expected.dim() == 0 else ""
