"""Drawing the inputs of a cross-entropy kernel (contract 2), calling it, the standard
comparisons with the oracle, and the reproducers of such calls: what the clauses of
properties/ce/ share.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from properties.ce.oracle import oracle_gradient, oracle_loss
from properties.ce.problem import Problem
from properties.engine.checks import check_close
from properties.engine.clause import Mismatch, Trial
from properties.engine.kernel import KernelUnderTest
from properties.engine.snippet import call_snippet, program
from properties.strategies import Batch, Drawn, batches, upstream_gradients
from properties.tolerances import gradient_bound, loss_bound

# --- Drawing a call ---------------------------------------------------------------------------


def draw_batch(trial: Trial, *, dtype: str | None = None, **options: Any) -> Batch:
    """A batch for the trial's kernel, in the trial's dtype unless ``dtype`` says otherwise;
    ``options`` go to :func:`properties.strategies.batches`."""
    strategy = batches(dtype=dtype or trial.dtype, kernel=trial.kernel, **options)
    return trial.data.draw(strategy, label="batch")


def draw_upstream(trial: Trial, batch: Batch) -> Drawn:
    """The gradient flowing into ``batch``'s loss, in its dtype: a scalar for mean and sum, one
    value per row for reduction="none"."""
    rows = batch.x.shape[0] if batch.reduction == "none" else None
    return trial.data.draw(upstream_gradients(rows=rows, dtype=batch.dtype), label="grad_output")


def problem_of(batch: Batch) -> Problem:
    """What the oracle and the bounds see of a plain call on ``batch``."""
    return Problem.of(batch.x, batch.y, **batch.keywords())


# --- Calling the kernel -----------------------------------------------------------------------


def on_device(trial: Trial, value: Any) -> Any:
    """A fresh copy of a tensor on the trial's device (a kernel may write into what it gets)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone().to(trial.device)
    return value


def _as_is(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def loss_of(
    trial: Trial,
    logits: torch.Tensor,
    target: torch.Tensor,
    keywords: Mapping[str, Any],
    *,
    logits_view: Callable[[torch.Tensor], torch.Tensor] = _as_is,
    target_view: Callable[[torch.Tensor], torch.Tensor] = _as_is,
) -> torch.Tensor:
    """The kernel's loss on fresh copies of the inputs (a kernel may write into its input).

    The views map the copies to what the kernel is handed (a transpose, a slice...), so a
    layout under test reaches the kernel as it is.
    """
    arguments = {k: on_device(trial, v) for k, v in keywords.items()}
    with torch.no_grad():
        result = trial.kernel(
            logits_view(on_device(trial, logits)),
            target_view(on_device(trial, target)),
            **arguments,
        )

    def reproduce() -> str:
        views = (logits_view(logits.detach().clone()), target_view(target.detach().clone()))
        return call_reproducer(trial, views, keywords)

    return _as_tensor(result, "the loss", reproduce).detach().cpu()


def loss_and_gradient(
    trial: Trial,
    logits: torch.Tensor,
    target: torch.Tensor,
    keywords: Mapping[str, Any],
    grad_output: torch.Tensor,
    *,
    logits_view: Callable[[torch.Tensor], torch.Tensor] = _as_is,
    target_view: Callable[[torch.Tensor], torch.Tensor] = _as_is,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's loss and ∂(loss·grad_output)/∂logits, on fresh copies of the inputs.

    The gradient is taken on the copy of ``logits`` through ``logits_view``, so a view's
    skipped entries must get zero.
    """
    leaf = on_device(trial, logits).requires_grad_(True)
    arguments = {k: on_device(trial, v) for k, v in keywords.items()}
    result = trial.kernel(logits_view(leaf), target_view(on_device(trial, target)), **arguments)

    def reproduce() -> str:
        # ``logits`` itself was never handed to the kernel (a copy was): it is as drawn.
        differentiable = logits.detach().clone().requires_grad_(True)
        views = (logits_view(differentiable), target_view(target.detach().clone()))
        return call_reproducer(trial, views, keywords)

    loss = _as_tensor(result, "the loss", reproduce)
    if not loss.requires_grad:
        raise Mismatch(
            "the loss does not require grad: the kernel is not differentiable",
            reproducer=reproduce(),
        )
    # A copy: a backward that writes into its upstream gradient (CE-PURE's concern) must not
    # change the tensor the oracle's gradient is computed from.
    upstream = grad_output.to(device=loss.device, dtype=loss.dtype).reshape(loss.shape).clone()
    loss.backward(upstream)
    if leaf.grad is None:
        raise Mismatch("backward() left no gradient on the logits", reproducer=reproduce())
    return loss.detach().cpu(), leaf.grad.detach().cpu()


def call_reproducer(
    trial: Trial, arguments: tuple[torch.Tensor, ...], keywords: Mapping[str, Any]
) -> str:
    """The snippet of one call of the kernel on these inputs (keywords under the suite's names),
    with its backward pass when the logits require grad."""
    return call_snippet(
        trial.kernel, arguments, trial.kernel.translate(keywords), device=trial.device
    )


def _as_tensor(value: Any, what: str, reproduce: Callable[[], str]) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise Mismatch(f"{what} is a {type(value).__name__}, not a tensor", reproducer=reproduce())
    return value


# --- Reproducers ------------------------------------------------------------------------------


def call_expression(
    kernel: KernelUnderTest,
    keywords: Mapping[str, Any],
    *,
    logits: str = "logits",
    target: str = "target",
) -> str:
    """``kernel(logits, target, ...)`` with the kernel's own keyword names (a tensor keyword
    refers to the variable of its name, e.g. ``weight=weight``)."""
    parts = [logits, target]
    for key, value in keywords.items():
        name = kernel.spec.options.get(key, key)
        parts.append(f"{name}={key}" if isinstance(value, torch.Tensor) else f"{name}={value!r}")
    return f"kernel({', '.join(parts)})"


def call_source(
    kernel: KernelUnderTest,
    keywords: Mapping[str, Any],
    *,
    logits: str = "logits",
    target: str = "target",
    result: str = "loss",
) -> str:
    """``loss = kernel(logits, target, ...)``."""
    return f"{result} = {call_expression(kernel, keywords, logits=logits, target=target)}"


def reproducer(
    trial: Trial, setup: str, *calls: str, tensors: Sequence[str] = ("logits", "target")
) -> str:
    """A runnable snippet: imports, the tensors, their move to the trial's device, the calls."""
    return program(trial.kernel, [setup], calls, device=trial.device, tensors=tensors)


def batch_reproducer(
    trial: Trial, batch: Batch, *, grad_output: Drawn | None = None, expected: str = ""
) -> str:
    """The snippet for a plain call (and its backward when ``grad_output`` is given)."""
    keywords = batch.keywords()
    call = call_source(trial.kernel, keywords)
    tensors = ["logits", "target"]
    tensors += [key for key, value in keywords.items() if isinstance(value, torch.Tensor)]
    if grad_output is None:
        return reproducer(
            trial, batch.source(), call, f"print(loss)  {expected}".rstrip(), tensors=tensors
        )
    return reproducer(
        trial,
        f"{batch.source()}\n{grad_output.source()}",
        "logits.requires_grad_(True)",
        call,
        "loss.backward(grad_output)",
        f"print(logits.grad)  {expected}".rstrip(),
        tensors=[*tensors, "grad_output"],
    )


def context(batch: Batch, trial: Trial) -> str:
    return f"{batch.describe()}; {trial.kernel.name} on {trial.device}"


# --- The standard comparisons -----------------------------------------------------------------


def expect_oracle_loss(trial: Trial, batch: Batch) -> None:
    """The kernel's loss on ``batch`` is within the loss bound of the oracle's."""
    problem = problem_of(batch)
    expected = expected_loss(trial, problem)
    actual = loss_of(trial, batch.x, batch.y, batch.keywords())
    check_close(
        trial,
        quantity="loss",
        actual=actual,
        expected=expected,
        bound=loss_bound_for(trial, problem),
        context=context(batch, trial),
        reproducer=batch_reproducer(trial, batch, expected=_oracle_comment(expected)),
    )


def expect_oracle_gradient(trial: Trial, batch: Batch, upstream: Drawn) -> None:
    """The kernel's loss and ∂(loss·grad_output)/∂logits are within their bounds of the oracle's."""
    problem = problem_of(batch)
    grad_output = upstream.value
    loss, gradient = loss_and_gradient(trial, batch.x, batch.y, batch.keywords(), grad_output)
    expected = expected_loss(trial, problem)
    where = context(batch, trial)
    check_close(
        trial,
        quantity="loss",
        actual=loss,
        expected=expected,
        bound=loss_bound_for(trial, problem),
        context=where,
        reproducer=batch_reproducer(trial, batch, expected=_oracle_comment(expected)),
    )
    check_close(
        trial,
        quantity="∂L/∂logits",
        actual=gradient,
        expected=expected_gradient(trial, problem, grad_output),
        bound=gradient_bound_for(trial, problem, grad_output),
        context=where,
        reproducer=batch_reproducer(trial, batch, grad_output=upstream),
    )


def expected_loss(trial: Trial, problem: Problem) -> torch.Tensor:
    """The oracle's loss under the conventions the kernel declares: a mean over no counted token
    is NaN as in PyTorch, or 0 (KernelSpec.empty_mean); the z-loss is weighted by the target's
    class weight like the NLL term, or not (KernelSpec.z_loss_weighting)."""
    if (
        problem.reduction == "mean"
        and not bool(problem.counted.any())
        and trial.kernel.spec.empty_mean == "zero"
    ):
        return torch.tensor(0.0, dtype=torch.float64)
    if not z_loss_unweighted(trial, problem):
        return oracle_loss(problem)
    loss, _ = unweighted_z_loss(problem, None)
    return oracle_loss(problem.but(z_loss=0.0)) + loss


def expected_gradient(trial: Trial, problem: Problem, grad_output: torch.Tensor) -> torch.Tensor:
    """The oracle's ∂(loss·grad_output)/∂logits under the kernel's z-loss convention."""
    if not z_loss_unweighted(trial, problem):
        return oracle_gradient(problem, grad_output)
    _, gradient = unweighted_z_loss(problem, grad_output)
    assert gradient is not None
    return oracle_gradient(problem.but(z_loss=0.0), grad_output) + gradient


def loss_bound_for(trial: Trial, problem: Problem) -> torch.Tensor:
    """The loss bound under the kernel's z-loss convention. Unweighted, the kernel computes two
    parts, the weighted loss without z-loss and the z-loss of the unweighted problem; each is
    within its own problem's bound (the second's covers z-loss and NLL), so their sum is within
    the sum of the bounds."""
    if not z_loss_unweighted(trial, problem):
        return loss_bound(problem)
    return loss_bound(problem.but(z_loss=0.0)) + loss_bound(problem.but(weight=None))


def gradient_bound_for(trial: Trial, problem: Problem, grad_output: torch.Tensor) -> torch.Tensor:
    """The gradient bound under the kernel's z-loss convention (the sum of the parts' bounds, as
    for :func:`loss_bound_for`)."""
    if not z_loss_unweighted(trial, problem):
        return gradient_bound(problem, grad_output)
    return gradient_bound(problem.but(z_loss=0.0), grad_output) + gradient_bound(
        problem.but(weight=None), grad_output
    )


def z_loss_unweighted(trial: Trial, problem: Problem) -> bool:
    """Whether the kernel's declared z-loss convention changes the expected values here."""
    return (
        trial.kernel.spec.z_loss_weighting == "unweighted"
        and problem.z_loss != 0.0
        and problem.weight is not None
    )


def unweighted_z_loss(
    problem: Problem, grad_output: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """z·lse(x̃_i)² over the counted rows, reduced as an unweighted loss (the mean divides by the
    counted rows), and its gradient 2z·lse(x̃_i)·p_ij·(1 − tanh²(x_ij/s)) times the reduction's
    scale and grad_output, where x̃ = s·tanh(x/s) with a soft cap s, else x.

    Computed in float64 from the exact inputs: its error, a few float64 roundings relative to
    each term, is about 2^-29 of the tightest (float32) bound it is compared within."""
    x = problem.logits
    chain = torch.ones_like(x)
    if problem.softcap is not None:
        tanh = torch.tanh(x / problem.softcap)
        x, chain = problem.softcap * tanh, 1 - tanh * tanh
    lse = torch.logsumexp(x, dim=-1)
    counted = problem.counted
    per_row = torch.where(counted, problem.z_loss * lse * lse, 0.0)
    count = counted.sum().double()
    if problem.reduction == "none":
        loss, scale = per_row, torch.ones_like(per_row)
    elif problem.reduction == "sum":
        loss, scale = per_row.sum(), torch.ones_like(per_row)
    else:
        loss, scale = per_row.sum() / count, torch.ones_like(per_row) / count
    if grad_output is None:
        return loss, None
    upstream = grad_output.detach().cpu().double()
    scale = scale * (upstream if problem.reduction == "none" else upstream.reshape(()))
    probabilities = torch.exp(x - lse[:, None])
    row_factor = torch.where(counted, 2 * problem.z_loss * lse * scale, 0.0)
    return loss, row_factor[:, None] * probabilities * chain


def _oracle_comment(expected: torch.Tensor) -> str:
    return f"# the oracle: {float(expected)!r}" if expected.dim() == 0 else ""
