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
from properties.engine.snippet import program
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


def _on_device(trial: Trial, value: Any) -> Any:
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
    arguments = {k: _on_device(trial, v) for k, v in keywords.items()}
    with torch.no_grad():
        result = trial.kernel(
            logits_view(_on_device(trial, logits)),
            target_view(_on_device(trial, target)),
            **arguments,
        )
    return _as_tensor(result, "the loss").detach().cpu()


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
    leaf = _on_device(trial, logits).requires_grad_(True)
    arguments = {k: _on_device(trial, v) for k, v in keywords.items()}
    result = trial.kernel(logits_view(leaf), target_view(_on_device(trial, target)), **arguments)
    loss = _as_tensor(result, "the loss")
    if not loss.requires_grad:
        raise Mismatch(
            "the loss does not require grad: the kernel is not differentiable", reproducer=""
        )
    # A copy: a backward that writes into its upstream gradient (CE-PURE's concern) must not
    # change the tensor the oracle's gradient is computed from.
    upstream = grad_output.to(device=loss.device, dtype=loss.dtype).reshape(loss.shape).clone()
    loss.backward(upstream)
    if leaf.grad is None:
        raise Mismatch("backward() left no gradient on the logits", reproducer="")
    return loss.detach().cpu(), leaf.grad.detach().cpu()


def _as_tensor(value: Any, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise Mismatch(f"{what} is a {type(value).__name__}, not a tensor", reproducer="")
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
        bound=loss_bound(problem),
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
        bound=loss_bound(problem),
        context=where,
        reproducer=batch_reproducer(trial, batch, expected=_oracle_comment(expected)),
    )
    check_close(
        trial,
        quantity="∂L/∂logits",
        actual=gradient,
        expected=oracle_gradient(problem, grad_output),
        bound=gradient_bound(problem, grad_output),
        context=where,
        reproducer=batch_reproducer(trial, batch, grad_output=upstream),
    )


def expected_loss(trial: Trial, problem: Problem) -> torch.Tensor:
    """The oracle's loss, except that a mean over no counted token is what the kernel declares
    (KernelSpec.empty_mean): NaN as in PyTorch, or 0."""
    if (
        problem.reduction == "mean"
        and not bool(problem.counted.any())
        and trial.kernel.spec.empty_mean == "zero"
    ):
        return torch.tensor(0.0, dtype=torch.float64)
    return oracle_loss(problem)


def _oracle_comment(expected: torch.Tensor) -> str:
    return f"# the oracle: {float(expected)!r}" if expected.dim() == 0 else ""
