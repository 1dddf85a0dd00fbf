"""Check a kernel's values before timing it (llm.c's habit): a wrong kernel has no speed.

The kernel runs on a fresh copy of the benchmark's own inputs (on its device, in its dtype, the
mean over the rows), forward only or forward and backward as it is about to be timed, and its
loss and gradients are compared with PyTorch's in float64 on the CPU under the bounds of
properties/tolerances.py: contract 2's ``loss`` and ``gradient``, contract 3's ``linear_loss``
and ``linear_gradient``. Those bound a kernel's distance from the exact result; float64's own
distance from it is about 2^-53 relative, 2^29 times below float32's unit roundoff, so it is
left out. The returned ratios (error / bound, worst entry) go into the benchmark's extra_info.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from properties.ce.problem import Problem
from properties.lce.problem import LinearProblem
from properties.tolerances import (
    gradient_bound,
    linear_gradient_bounds,
    linear_loss_bound,
    loss_bound,
)

if TYPE_CHECKING:
    from torch import Tensor

    from properties.engine.kernel import KernelUnderTest

#: The upstream gradient of the mean loss: backward() of a scalar.
UNIT_UPSTREAM = torch.tensor(1.0, dtype=torch.float64)


def check_cross_entropy(
    kernel: KernelUnderTest, logits: Tensor, target: Tensor, *, backward: bool
) -> dict[str, float]:
    """Error/bound ratios of the loss (and ∂L/∂logits when ``backward``); AssertionError when
    an entry is past its bound."""
    problem = Problem.of(logits, target)
    exact_logits = problem.logits.clone().requires_grad_(True)
    expected_loss = F.cross_entropy(exact_logits, problem.target)
    (expected_gradient,) = torch.autograd.grad(expected_loss, exact_logits)

    copied = logits.detach().clone().requires_grad_(backward)
    with torch.set_grad_enabled(backward):
        loss = kernel(copied, target)
    where = _where(kernel, logits, "logits")
    ratios = {
        "loss_error_ratio": _compare(
            where, "loss", "tol: loss", loss, expected_loss, loss_bound(problem)
        )
    }
    if backward:
        (gradient,) = torch.autograd.grad(loss, copied)
        ratios["gradient_error_ratio"] = _compare(
            where,
            "∂L/∂logits",
            "tol: gradient",
            gradient,
            expected_gradient,
            gradient_bound(problem, UNIT_UPSTREAM),
        )
    return ratios


def check_linear_cross_entropy(
    kernel: KernelUnderTest,
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    backward: bool,
) -> dict[str, float]:
    """Error/bound ratios of the loss (and ∂L/∂input, ∂L/∂W when ``backward``) of a fused
    projection + loss; AssertionError when an entry is past its bound."""
    problem = LinearProblem.of(input, linear_weight, target)
    exact_input = problem.input.clone().requires_grad_(True)
    exact_weight = problem.linear_weight.clone().requires_grad_(True)
    expected_loss = F.cross_entropy(exact_input @ exact_weight.T, problem.target)
    expected_input, expected_weight = torch.autograd.grad(
        expected_loss, (exact_input, exact_weight)
    )

    copied_input = input.detach().clone().requires_grad_(backward)
    copied_weight = linear_weight.detach().clone().requires_grad_(backward)
    with torch.set_grad_enabled(backward):
        loss = kernel(copied_input, copied_weight, target)
    where = _where(kernel, input, f"input and a {tuple(linear_weight.shape)} weight")
    ratios = {
        "loss_error_ratio": _compare(
            where, "loss", "tol: linear_loss", loss, expected_loss, linear_loss_bound(problem)
        )
    }
    if backward:
        gradient_input, gradient_weight = torch.autograd.grad(loss, (copied_input, copied_weight))
        input_bound, weight_bound, _ = linear_gradient_bounds(problem, UNIT_UPSTREAM)
        ratios["gradient_error_ratio"] = max(
            _compare(
                where,
                "∂L/∂input",
                "tol: linear_gradient",
                gradient_input,
                expected_input,
                input_bound,
            ),
            _compare(
                where,
                "∂L/∂W",
                "tol: linear_gradient",
                gradient_weight,
                expected_weight,
                weight_bound,
            ),
        )
    return ratios


def _where(kernel: KernelUnderTest, first: Tensor, what: str) -> str:
    shape = "×".join(str(size) for size in first.shape)
    dtype = str(first.dtype).removeprefix("torch.")
    return f"{kernel.name} on {shape} {dtype} {what} ({first.device.type}), mean"


def _compare(
    where: str, name: str, tolerance: str, value: Tensor, expected: Tensor, bound: Tensor
) -> float:
    """The worst error/bound ratio; AssertionError naming the worst entry when it passes 1 (a
    NaN or an infinity where the exact value is finite is past any bound)."""
    error = (value.detach().cpu().double() - expected.detach()).abs()
    error = torch.where(torch.isnan(error), torch.inf, error)
    ratio = torch.where(error == 0, 0.0, error / bound)
    worst = int(ratio.flatten().argmax())
    worst_ratio = float(ratio.flatten()[worst])
    if worst_ratio > 1.0:
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), ratio.shape))
        raise AssertionError(
            f"checked before timing: {name}{list(index) if index else ''} of {where} is "
            f"{float(value.detach().flatten()[worst])!r}, float64 PyTorch says "
            f"{float(expected.flatten()[worst])!r}: error {float(error.flatten()[worst]):.3g} "
            f"> bound {float(bound.flatten()[worst]):.3g} ({worst_ratio:.3g} × bound) [{tolerance}]"
        )
    return worst_ratio
