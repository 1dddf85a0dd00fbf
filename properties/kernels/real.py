"""Real kernels, wrapped so that `lmloss check` can load them by name.

- ``compiled_cross_entropy``: ``torch.nn.functional.cross_entropy`` under ``torch.compile``
  (inductor; shapes and float options symbolic), compiled at the first call.
- ``liger_cross_entropy``: Liger-Kernel's Triton cross-entropy (``pip install liger-kernel``),
  imported at the first call. It writes its gradient into the logits during the forward pass,
  so its KernelSpec declares ``writes_input``; it takes the z-loss as ``lse_square_scale``.
  Without CUDA it runs under the Triton interpreter (TRITON_INTERPRET=1, set here when unset).
- ``liger_cross_entropy_interpreted``: the same without the ``weight`` and ``softcap`` keywords.
  Under the interpreter (triton 3.9.0, liger-kernel 0.8.5) every call that passes either raises
  ``InterpreterError: AttributeError("'float' object has no attribute 'to'")``, and the clauses
  that draw them would report only that; leaving them out lets the rest be checked on a CPU.

Importing this module imports neither Liger nor the compiler, so it loads after a plain
``pip install .``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from properties.engine.kernel import KernelSpec
from reference import DEFAULT_IGNORE_INDEX

#: Hypothesis draws a new shape, dtype or option value for almost every example, and each one
#: may recompile. Past its recompile limit torch.compile silently falls back to eager, which
#: would check PyTorch's eager kernel under the compiled kernel's name.
RECOMPILE_LIMIT = 1_000_000


def compiled_cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    weight: Tensor | None = None,
) -> Tensor:
    """``F.cross_entropy`` compiled by ``torch.compile`` (dynamic shapes, inductor backend)."""
    result: Tensor = _compiled_cross_entropy()(
        logits,
        target,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        weight=weight,
    )
    return result


@functools.cache
def _compiled_cross_entropy() -> Callable[..., Any]:
    import torch._dynamo

    config: Any = torch._dynamo.config
    for limit in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(config, limit):
            setattr(config, limit, RECOMPILE_LIMIT)
    # Hypothesis draws a new label_smoothing for most examples; specialized, each value costs a
    # fresh inductor compile (5-6 s on 2 CPU cores, measured with a 5-call probe), which would
    # make a quick check take hours. As a symbolic input it compiles once. The generated code then
    # takes ε as an argument instead of a folded constant: what is checked is that kernel.
    if hasattr(config, "specialize_float"):
        config.specialize_float = False
    return torch.compile(F.cross_entropy, dynamic=True)


def _liger_cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    weight: Tensor | None = None,
    lse_square_scale: float = 0.0,
    softcap: float | None = None,
) -> Tensor:
    if logits.device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from liger_kernel.transformers.functional import liger_cross_entropy as liger

    result: Tensor = liger(
        logits,
        target,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        lse_square_scale=lse_square_scale,
        softcap=softcap,
    )
    return result


liger_cross_entropy = KernelSpec(
    fn=_liger_cross_entropy,
    name="liger_kernel.transformers.functional.liger_cross_entropy",
    writes_input=True,
    # Liger 0.8.5 sums the per-row losses of counted rows only: no counted row gives 0. Its
    # z-loss is not weighted, and its mean is over the counted rows (its source says so).
    empty_mean="zero",
    z_loss_weighting="unweighted",
    options={"z_loss": "lse_square_scale", "softcap": "softcap"},
)


def _liger_without_weight_or_softcap(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    lse_square_scale: float = 0.0,
) -> Tensor:
    return _liger_cross_entropy(
        logits,
        target,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        lse_square_scale=lse_square_scale,
    )


liger_cross_entropy_interpreted = KernelSpec(
    fn=_liger_without_weight_or_softcap,
    name="liger_kernel.transformers.functional.liger_cross_entropy",
    writes_input=True,
    empty_mean="zero",
    options={"z_loss": "lse_square_scale"},
)
