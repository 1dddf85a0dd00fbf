"""Contract 3: fused projection + loss, shaped like torch 2.13's ``F.linear_cross_entropy``.

    fn(input: Tensor[N, D], linear_weight: Tensor[C, D], target: LongTensor[N], *,
       linear_bias=None, weight=None, reduction="mean", ignore_index=-100,
       label_smoothing=0.0) -> Tensor       # differentiable in input, linear_weight, linear_bias

It equals contract 2 applied to the exact logits input·Wᵀ + b (never rounded before the
softmax). Its result is a tensor: 0-d for ``mean`` and ``sum``, (N,) for ``none``. Its clauses
(prefix ``LCE``) are in properties/lce/. A bare callable is recognised by its first three
parameters, named as torch names them: ``input, linear_weight, target``.
"""

from __future__ import annotations

import inspect

from properties.contract import Contract, register
from properties.contract.cross_entropy import result_problem

#: The positional parameters by which a bare callable is recognised, in order.
RECOGNISED_PARAMETERS = ("input", "linear_weight", "target")


def recognises(signature: inspect.Signature) -> bool:
    """True when the first three parameters are ``input, linear_weight, target``."""
    positional = [
        p.name
        for p in signature.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    return tuple(positional[:3]) == RECOGNISED_PARAMETERS


LINEAR = register(
    Contract(
        name="linear",
        prefix="LCE",
        shape=(
            "fn(input (N, D), linear_weight (C, D), target (N,), *, linear_bias=None, ...) "
            "like torch.nn.functional.linear_cross_entropy"
        ),
        arguments=("input", "linear_weight", "target"),
        keywords=("linear_bias", "ignore_index", "reduction", "label_smoothing", "weight"),
        options=("z_loss", "softcap"),
        result_rule=result_problem,
        recognises=recognises,
    )
)
