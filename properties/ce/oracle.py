"""The oracle (``reference``) as the clauses call it: a Problem in, float64 tensors out.

The oracle returns the correctly rounded float64 of the exact value (as Python floats here,
``as_float=True``, rather than mpf objects: the suite asks for millions of values): far finer
than any dtype under test, so float64 is where errors are measured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from hypothesis import note, reject

import reference
from properties.ce.problem import Problem


def _call(function: Callable[..., Any], *arguments: Any, **keywords: Any) -> Any:
    """The oracle's answer. An input whose correctly rounded result the oracle cannot settle
    within its precision limit (an exact value a hair from a rounding boundary) is skipped,
    not blamed on the kernel."""
    try:
        return function(*arguments, **keywords)
    except reference.PrecisionExhausted as exhausted:
        note(f"skipped: the oracle could not certify this input ({exhausted})")
        reject()


def oracle_loss(problem: Problem) -> torch.Tensor:
    """The exact loss: a 0-d tensor for mean/sum, (N,) for reduction="none"."""
    rows, targets, keywords = problem.oracle_arguments()
    value = _call(reference.cross_entropy, rows, targets, as_float=True, **keywords)
    return torch.tensor(value, dtype=torch.float64)


def oracle_gradient(problem: Problem, grad_output: torch.Tensor) -> torch.Tensor:
    """The exact ∂L/∂logits (N, C) for the given upstream gradient (0-d, or (N,) for "none")."""
    rows, targets, keywords = problem.oracle_arguments()
    upstream = grad_output.detach().cpu().double().reshape(-1).tolist()
    if problem.reduction != "none":
        (upstream,) = upstream
    gradient = _call(
        reference.cross_entropy_grad, rows, targets, grad_output=upstream, as_float=True, **keywords
    )
    return torch.tensor(gradient, dtype=torch.float64)


def oracle_sequence_logprob(problem: Problem) -> float:
    """Σ_t log p(y_t | x_<t) over every row, computed exactly."""
    rows, targets, _ = problem.oracle_arguments()
    return float(_call(reference.sequence_logprob, rows, targets))
