"""Contract 4, data-parallel: a cross-entropy whose batch is split across P processes.

    fn(local_logits: Tensor[N_r, C], local_target: LongTensor[N_r], *, group: ProcessGroup,
       ignore_index=-100, reduction="mean", label_smoothing=0.0, weight=None) -> Tensor  # 0-d

Rank r holds rows [row_start_r, row_start_r + N_r) of the global batch (N_r may be 0, and a
rank may hold no counted token). It returns the global mean over the counted tokens of the
whole batch (Σ w_y·ℓ / Σ w_y with class weights), or the global sum: 0-d, identical on every
rank; autograd gives ∂L/∂local_logits = its rows of the full-batch gradient, what a training
loop whose gradients are then summed across ranks needs. reduction="none" is not part of it.

Its clauses (prefix ``DIST-DP``, longer than the vocab-parallel contract's ``DIST``) are in
properties/distributed/data.py. A bare callable is recognised by its first two parameters,
``local_logits, local_target``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from properties.contract import Contract, register

#: The positional parameters by which a bare callable is recognised, in order.
RECOGNISED_PARAMETERS = ("local_logits", "local_target")


def recognises(signature: inspect.Signature) -> bool:
    """True when the first two parameters are ``local_logits, local_target``."""
    positional = [
        p.name
        for p in signature.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    return tuple(positional[:2]) == RECOGNISED_PARAMETERS


def result_problem(
    result: Any, arguments: Sequence[Any], keywords: Mapping[str, Any]
) -> str | None:
    """What is wrong with a data-parallel kernel's result (a 0-d tensor), or None."""
    import torch

    if not isinstance(result, torch.Tensor):
        return f"a {type(result).__name__}, not a Tensor"
    if result.dim() != 0:
        return f"a tensor of shape {tuple(result.shape)}; the global loss is 0-d"
    return None


DATA_PARALLEL = register(
    Contract(
        name="data_parallel",
        prefix="DIST-DP",
        shape=(
            "fn(local_logits (N_r, C), local_target (N_r,), *, group, ...) -> the global "
            "mean or sum over every rank's rows"
        ),
        arguments=("local_logits", "local_target"),
        keywords=("ignore_index", "reduction", "label_smoothing", "weight"),
        options=("z_loss", "softcap"),
        result_rule=result_problem,
        recognises=recognises,
        distributed=True,
    )
)
