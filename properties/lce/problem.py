"""One call of a fused projection + loss, as the oracle and the tolerances see it.

The exact logits z = input·Wᵀ + b are rationals of the float inputs; the oracle takes the inputs
themselves. The bounds need only magnitudes, which float64 gives: :meth:`LinearProblem.logits`
is z in float64 (each entry within 2^-52·Σ_d|x_d·W_jd| + |b_j| of exact, far below any bound it
feeds), and :meth:`LinearProblem.logits_problem` is contract 2's Problem on those logits, so
every bound of a loss on given logits is the one of properties/tolerances.py.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

import torch

from properties.ce.problem import Problem
from properties.strategies import DEFAULT_IGNORE_INDEX


@dataclass(frozen=True, eq=False)
class LinearProblem:
    """The exact inputs of one call (as the kernel saw them, in float64) and its options.

    Compared and hashed by identity (``eq=False``): it holds tensors, and what is derived from
    it below is kept per problem."""

    input: torch.Tensor  # (N, D) float64
    linear_weight: torch.Tensor  # (C, D) float64
    linear_bias: torch.Tensor | None  # (C,) float64
    target: torch.Tensor  # (N,) int64
    dtype: str  # the dtype the kernel computed in: "float32" | "bfloat16" | "float16"
    reduction: str = "mean"
    ignore_index: int = DEFAULT_IGNORE_INDEX
    label_smoothing: float = 0.0
    weight: torch.Tensor | None = None  # (C,) float64 class weights
    z_loss: float = 0.0
    softcap: float | None = None

    @classmethod
    def of(
        cls,
        input: torch.Tensor,
        linear_weight: torch.Tensor,
        target: torch.Tensor,
        **keywords: Any,
    ) -> LinearProblem:
        """The problem a kernel solves when called as ``kernel(input, linear_weight, target,
        **keywords)``."""
        bias = keywords.pop("linear_bias", None)
        weight = keywords.pop("weight", None)
        return cls(
            input=_float64(input).reshape(-1, input.shape[-1]),
            linear_weight=_float64(linear_weight),
            linear_bias=None if bias is None else _float64(bias),
            target=target.detach().cpu().reshape(-1).long(),
            dtype=str(input.dtype).removeprefix("torch."),
            weight=None if weight is None else _float64(weight),
            **keywords,
        )

    @property
    def counted(self) -> torch.Tensor:
        return self.target != self.ignore_index

    @property
    def classes(self) -> int:
        return self.linear_weight.shape[0]

    @property
    def depth(self) -> int:
        """D, the length of each dot product."""
        return self.linear_weight.shape[1]

    def but(self, **changes: Any) -> LinearProblem:
        return replace(self, **changes)

    def logits(self) -> torch.Tensor:
        """(N, C) z = x·Wᵀ + b in float64 (for magnitudes)."""
        return _logits(self)

    def magnitudes(self) -> torch.Tensor:
        """(N, C) Σ_d |x_id·W_jd| + |b_j|: what a dot product's rounding errors scale with."""
        return _magnitudes(self)

    def logits_problem(self) -> Problem:
        """Contract 2's problem on the (float64) logits, with the same options."""
        return _logits_problem(self)

    def oracle_arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Plain-Python arguments for ``reference.linear_cross_entropy``."""
        keywords: dict[str, Any] = {
            "ignore_index": self.ignore_index,
            "reduction": self.reduction,
            "label_smoothing": self.label_smoothing,
            "z_loss": self.z_loss,
            "softcap": self.softcap,
        }
        if self.linear_bias is not None:
            keywords["linear_bias"] = self.linear_bias.tolist()
        if self.weight is not None:
            keywords["weight"] = self.weight.tolist()
        arguments = (self.input.tolist(), self.linear_weight.tolist(), self.target.tolist())
        return arguments, keywords


def _float64(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().double()


# A problem is frozen and its tensors are never written: what follows is computed once per problem.


@functools.lru_cache(maxsize=4)
def _logits(problem: LinearProblem) -> torch.Tensor:
    z = problem.input @ problem.linear_weight.T
    return z if problem.linear_bias is None else z + problem.linear_bias


@functools.lru_cache(maxsize=4)
def _magnitudes(problem: LinearProblem) -> torch.Tensor:
    size = problem.input.abs() @ problem.linear_weight.abs().T
    return size if problem.linear_bias is None else size + problem.linear_bias.abs()


@functools.lru_cache(maxsize=4)
def _logits_problem(problem: LinearProblem) -> Problem:
    return Problem(
        logits=_logits(problem),
        target=problem.target,
        dtype=problem.dtype,
        reduction=problem.reduction,
        ignore_index=problem.ignore_index,
        label_smoothing=problem.label_smoothing,
        weight=problem.weight,
        z_loss=problem.z_loss,
        softcap=problem.softcap,
    )
