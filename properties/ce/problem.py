"""One call of a loss, as the oracle and the tolerances see it: float64 logits (N, C), int targets."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from properties.strategies import DEFAULT_IGNORE_INDEX


@dataclass(frozen=True)
class Problem:
    """The exact inputs of one kernel call (logits as the kernel saw them), and its options.

    Not a second :class:`properties.strategies.Batch`: a batch is what was drawn, in the dtype
    under test and with the Python that rebuilds it; a problem is what the oracle and the
    bounds take, float64 values of whatever a kernel was handed (a drawn batch, or a view, a
    slice or a shift of one), with the dtype it computed in as a name.
    """

    logits: torch.Tensor  # (N, C) float64, exactly the rounded values the kernel was given
    target: torch.Tensor  # (N,) int64
    dtype: str  # the dtype the kernel computed in: "float32" | "bfloat16" | "float16"
    reduction: str = "mean"
    ignore_index: int = DEFAULT_IGNORE_INDEX
    label_smoothing: float = 0.0
    weight: torch.Tensor | None = None  # (C,) float64
    z_loss: float = 0.0
    softcap: float | None = None

    @classmethod
    def of(cls, logits: torch.Tensor, target: torch.Tensor, **keywords: Any) -> Problem:
        """The problem a kernel solves when called as ``kernel(logits, target, **keywords)``."""
        weight = keywords.pop("weight", None)
        return cls(
            logits=logits.detach().cpu().double().reshape(-1, logits.shape[-1]),
            target=target.detach().cpu().reshape(-1).long(),
            dtype=str(logits.dtype).removeprefix("torch."),
            weight=None if weight is None else weight.detach().cpu().double(),
            **keywords,
        )

    @property
    def counted(self) -> torch.Tensor:
        """Which targets count (the others equal ignore_index)."""
        return self.target != self.ignore_index

    @property
    def classes(self) -> int:
        return self.logits.shape[-1]

    def but(self, **changes: Any) -> Problem:
        return replace(self, **changes)

    def oracle_arguments(self) -> tuple[list[list[float]], list[int], dict[str, Any]]:
        """Plain-Python arguments for ``reference.cross_entropy``."""
        keywords: dict[str, Any] = {
            "ignore_index": self.ignore_index,
            "reduction": self.reduction,
            "label_smoothing": self.label_smoothing,
            "z_loss": self.z_loss,
            "softcap": self.softcap,
        }
        if self.weight is not None:
            keywords["weight"] = self.weight.tolist()
        return self.logits.tolist(), self.target.tolist(), keywords
