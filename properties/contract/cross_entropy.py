"""Contract 2: a kernel shaped like ``torch.nn.functional.cross_entropy``.

    fn(logits: Tensor[N, C], target: LongTensor[N], *, ignore_index=-100, reduction="mean",
       label_smoothing=0.0, weight=None) -> Tensor          # differentiable in logits

Its result is a tensor: 0-d for ``mean`` and ``sum``, (N,) for ``none``. Its clauses (prefix
``CE``) are in properties/ce/, with the oracle adapter (properties/ce/oracle.py) and the calls
that turn a drawn batch into a kernel call (properties/ce/calls.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from properties.contract import Contract, register


def result_problem(
    result: Any, arguments: Sequence[Any], keywords: Mapping[str, Any]
) -> str | None:
    """What is wrong with a kernel's result under contract 2 (or 3, whose first argument also
    holds one row per token), or None."""
    import torch

    if not isinstance(result, torch.Tensor):
        return f"a {type(result).__name__}, not a Tensor"
    rows = arguments[0] if arguments else None
    if not isinstance(rows, torch.Tensor) or rows.dim() != 2:
        return None  # not an (N, ·) call: nothing to hold the shape to
    reduction = keywords.get("reduction", "mean")
    expected = (rows.shape[0],) if reduction == "none" else ()
    if tuple(result.shape) != expected:
        return (
            f"a tensor of shape {tuple(result.shape)}; "
            f"reduction={reduction!r} gives shape {expected}"
        )
    return None


CROSS_ENTROPY = register(
    Contract(
        name="cross_entropy",
        prefix="CE",
        shape="fn(logits (N, C), target (N,), *, ...) like torch.nn.functional.cross_entropy",
        arguments=("logits", "target"),
        keywords=("ignore_index", "reduction", "label_smoothing", "weight"),
        options=("z_loss", "softcap"),
        result_rule=result_problem,
    )
)
