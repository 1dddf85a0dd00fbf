"""The oracle of contract 3 (``reference.linear_cross_entropy``) as the clauses call it: a
LinearProblem in, float64 tensors out (correctly rounded values of the exact functions)."""

from __future__ import annotations

import torch

import reference
from properties.ce.oracle import _call
from properties.lce.problem import LinearProblem


def oracle_loss(problem: LinearProblem) -> torch.Tensor:
    """The exact loss: a 0-d tensor for mean/sum, (N,) for reduction="none"."""
    arguments, keywords = problem.oracle_arguments()
    value = _call(reference.linear_cross_entropy, *arguments, **keywords)
    if problem.reduction == "none":
        return torch.tensor([float(v) for v in value], dtype=torch.float64)
    return torch.tensor(float(value), dtype=torch.float64)


def oracle_gradients(
    problem: LinearProblem, grad_output: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The exact ∂(loss·grad_output)/∂input (N, D), ∂/∂linear_weight (C, D) and ∂/∂linear_bias
    (C,) (None without a bias), for a 0-d upstream gradient, or (N,) for "none"."""
    arguments, keywords = problem.oracle_arguments()
    upstream = grad_output.detach().cpu().double().reshape(-1).tolist()
    if problem.reduction != "none":
        (upstream,) = upstream
    for_input, for_weight, for_bias = _call(
        reference.linear_cross_entropy_grad, *arguments, grad_output=upstream, **keywords
    )
    n, d = problem.input.shape
    c = problem.classes
    return (
        _matrix(for_input, (n, d)),
        _matrix(for_weight, (c, d)),
        None
        if for_bias is None
        else torch.tensor([float(v) for v in for_bias], dtype=torch.float64),
    )


def _matrix(rows: list[list[object]], shape: tuple[int, int]) -> torch.Tensor:
    values = [[float(v) for v in row] for row in rows]  # type: ignore[arg-type]
    return torch.tensor(values, dtype=torch.float64).reshape(shape)
