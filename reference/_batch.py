"""The inputs of cross_entropy and its gradient, checked once, and what both derive from them."""

from __future__ import annotations

import collections
import functools
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

    @functools.cached_property
    def counted(self) -> list[int]:
        """The rows whose target counts (computed once: a tall batch asks many times)."""
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
        # The membership test runs at C speed; only a row holding a −inf is looked at further.
        if (
            options.softcap is None
            and -math.inf in rows[i]
            and all(v == -math.inf for v in rows[i])
        ):
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
    """Σ_i w_{y_i} over counted rows, exactly: Σ_c n_c·w_c over the classes c that are targets,
    n_c of them (a sum over the classes, not the rows: a tall batch has few classes)."""
    targets = batch.targets
    per_class = collections.Counter(targets[i] for i in batch.counted)
    if batch.options.weight is None:
        return libmp.from_int(sum(per_class.values()))
    total = fzero
    for c, n in per_class.items():
        term = libmp.mpf_mul(libmp.from_int(n), libmp.from_float(batch.weight_of(c)))  # exact
        total = libmp.mpf_add(total, term)  # exact: no precision given
    return total


def smoothing_share(batch: Batch, prec: int) -> Enclosure:
    """ε/C."""
    epsilon = libmp.from_float(batch.options.smoothing)
    classes = libmp.from_int(batch.classes)
    return Enclosure(
        libmp.mpf_div(epsilon, classes, prec, "f"), libmp.mpf_div(epsilon, classes, prec, "c")
    )
