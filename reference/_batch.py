"""The inputs of cross_entropy and its gradient, checked once, and what both derive from them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mpmath import libmp
from mpmath.libmp import fzero

from reference import _validate
from reference._dyadic import Logit
from reference._enclosure import Enclosure

MPF = tuple


@dataclass(frozen=True)
class Options:
    ignore_index: int
    reduction: str
    smoothing: float
    weight: list[float] | None
    z_loss: float
    softcap: float | None


@dataclass(frozen=True)
class Batch:
    rows: Sequence[Sequence[Logit]]  # floats, or the fused projection's exact Dyadic logits
    targets: list[int]
    classes: int
    options: Options

    @property
    def counted(self) -> list[int]:
        return [i for i, t in enumerate(self.targets) if t != self.options.ignore_index]

    def weight_of(self, j: int) -> float:
        return 1.0 if self.options.weight is None else self.options.weight[j]


def prepare(
    logits: Any,
    targets: Any,
    ignore_index: Any,
    reduction: Any,
    label_smoothing: Any,
    weight: Any,
    z_loss: Any,
    softcap: Any,
) -> Batch:
    rows = _validate.batch(logits)
    classes = len(rows[0]) if rows else (len(weight) if weight is not None else 0)
    options = options_of(
        classes if rows else None, ignore_index, reduction, label_smoothing, weight, z_loss, softcap
    )
    ts = _validate.targets(targets, len(rows), classes, options.ignore_index)
    batch = Batch(rows, ts, classes, options)
    for i in batch.counted:
        if options.softcap is None and all(v == -math.inf for v in rows[i]):
            raise ValueError(
                f"logits[{i}]: every logit is -inf in a counted row, so its softmax is undefined"
            )
    return batch


def options_of(
    classes: int | None,
    ignore_index: Any,
    reduction: Any,
    label_smoothing: Any,
    weight: Any,
    z_loss: Any,
    softcap: Any,
) -> Options:
    """The keywords, checked (the class weights against ``classes`` where that is known)."""
    return Options(
        ignore_index=_validate.index(ignore_index, "ignore_index"),
        reduction=_validate.reduction(reduction),
        smoothing=_validate.label_smoothing(label_smoothing),
        weight=_validate.weight(weight, classes),
        z_loss=_validate.finite(z_loss, "z_loss"),
        softcap=_validate.softcap(softcap),
    )


def counted_weight(batch: Batch) -> MPF:
    """Σ_i w_{y_i} over counted rows, exactly."""
    total = fzero
    for i in batch.counted:
        total = libmp.mpf_add(total, libmp.from_float(batch.weight_of(batch.targets[i])))
    return total


def smoothing_share(batch: Batch, prec: int) -> Enclosure:
    """ε/C."""
    epsilon = libmp.from_float(batch.options.smoothing)
    classes = libmp.from_int(batch.classes)
    return Enclosure(
        libmp.mpf_div(epsilon, classes, prec, "f"), libmp.mpf_div(epsilon, classes, prec, "c")
    )
