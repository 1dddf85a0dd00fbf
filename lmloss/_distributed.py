"""Cross-entropy split across processes (kernel contract 4): vocab-parallel and data-parallel.

- :func:`vocab_parallel_cross_entropy`: rank r of P holds the columns
  [vocab_start, vocab_start + C_r) of the (N, C) logits and the full target; it returns the
  full loss, identical on every rank, and autograd gives its columns of the full gradient. The
  forward pass makes three collectives (an all-gather of each rank's offset and width, which
  checks the slices, an all-reduce MAX of each row's max, one all-reduce SUM of each row's sum of
  exponentials, target logit and smoothing term); the backward pass makes none.
- :func:`data_parallel_cross_entropy`: rank r holds rows of the global batch; it returns the
  global mean over the counted tokens of the whole batch (or the global sum), identical on every
  rank, while autograd sees only the rank's own term, so that gradients summed across ranks are
  the full batch's.

Both compute in float32 for half-precision logits (float64 stays float64) and return the loss
in the logits' dtype, as :func:`lmloss.cross_entropy` does.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from lmloss._loss import (
    _check_flat_logits,
    _check_flat_target,
    _check_options,
    _check_weight,
    _compute_dtype,
    _counted_weight,
    _float_cross_entropy,
)
from properties.engine.kernel import KernelSpec
from reference import DEFAULT_IGNORE_INDEX

ProcessGroup = Any  # torch.distributed.ProcessGroup, or None for the default group


def vocab_parallel_cross_entropy(
    local_logits: Tensor,
    target: Tensor,
    *,
    vocab_start: int,
    group: ProcessGroup = None,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> Tensor:
    """Cross-entropy of logits whose vocabulary is split across the ranks of ``group``.

    ``local_logits`` (N, C_r): this rank's columns [vocab_start, vocab_start + C_r) of the full
    (N, C) logits, the slices contiguous and in rank order; ``target`` (N,): the full target,
    the same on every rank. Semantics of ``torch.nn.functional.cross_entropy`` on the full
    logits (label smoothing over all C classes, a mean over no counted row is NaN), plus
    z-loss z·lse² per counted row and a softcap s (x -> s·tanh(x/s) before the softmax).
    Every rank must call it with the same target and options.
    """
    _check_options(ignore_index, reduction, label_smoothing)
    _check_flat_logits(local_logits)
    _check_flat_target(target, local_logits)
    if isinstance(vocab_start, bool) or not isinstance(vocab_start, int):
        raise TypeError(f"vocab_start must be an int, got {vocab_start!r}")
    if vocab_start < 0:
        raise ValueError(f"vocab_start must be at least 0, got {vocab_start}")
    if local_logits.shape[1] < 1:
        raise ValueError("local_logits must hold at least one column of the vocabulary")
    if isinstance(z_loss, bool) or not isinstance(z_loss, (int, float)):
        raise TypeError(f"z_loss must be a float, got {z_loss!r}")
    if softcap is not None and not (isinstance(softcap, (int, float)) and softcap > 0):
        raise ValueError(f"softcap must be a positive float or None, got {softcap!r}")
    classes = _vocabulary_size(local_logits, vocab_start, group)
    counted = target != ignore_index
    out_of_range = counted & ((target < 0) | (target >= classes))
    if bool(out_of_range.any()):
        bad = int(target[out_of_range][0])
        raise ValueError(
            f"target holds {bad}, outside the vocabulary [0, {classes}) and not ignore_index "
            f"({ignore_index})"
        )
    loss: Tensor = _VocabParallelCrossEntropy.apply(
        local_logits,
        target,
        vocab_start,
        classes,
        group,
        ignore_index,
        reduction,
        float(label_smoothing),
        float(z_loss),
        None if softcap is None else float(softcap),
    )
    return loss


def _vocabulary_size(local_logits: Tensor, vocab_start: int, group: ProcessGroup) -> int:
    """C, after checking that the ranks' slices tile [0, C) in rank order and that every rank
    has the same N. Every rank sees the same gathered table, so a bad slice raises the same
    ValueError on every rank (none is left waiting in a collective)."""
    rows, width = local_logits.shape
    mine = torch.tensor([vocab_start, width, rows], dtype=torch.int64, device=local_logits.device)
    table = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(table, mine, group=group)
    slices = [tuple(int(v) for v in entry.tolist()) for entry in table]
    expected_start = 0
    for rank, (start, rank_width, rank_rows) in enumerate(slices):
        if start != expected_start:
            raise ValueError(
                f"vocab_start of rank {rank} is {start}, but the slices before it end at "
                f"{expected_start}: the ranks' slices must be contiguous, in rank order, "
                f"from 0 (all (vocab_start, C_r): {[s[:2] for s in slices]})"
            )
        if rank_rows != rows:
            raise ValueError(
                f"local_logits has N = {rows} rows here and {rank_rows} on rank {rank}: every "
                "rank holds all N rows (its columns of them)"
            )
        expected_start = start + rank_width
    return expected_start


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """The loss from three per-row numbers all-reduced across ranks: the max m, S = Σ exp(x − m)
    and x_target; the backward pass is local: (softmax − one-hot) on this rank's columns."""

    @staticmethod
    def forward(
        ctx: Any,
        local_logits: Tensor,
        target: Tensor,
        vocab_start: int,
        classes: int,
        group: ProcessGroup,
        ignore_index: int,
        reduction: str,
        label_smoothing: float,
        z_loss: float,
        softcap: float | None,
    ) -> Tensor:
        x = _capped(local_logits.to(_compute_dtype(local_logits)), softcap)  # (N, C_r)
        width = x.shape[1]
        counted = target != ignore_index
        local_target = target - vocab_start
        here = counted & (local_target >= 0) & (local_target < width)

        peak = x.amax(dim=1)  # (N,)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
        # As torch.logsumexp: an infinite max is replaced by 0, so a row of -inf gives -inf and
        # a +inf logit gives +inf, never inf − inf.
        peak = torch.where(peak.isinf(), torch.zeros_like(peak), peak)
        shifted = x - peak[:, None]
        target_logit = torch.where(
            here, x.gather(1, torch.where(here, local_target, 0)[:, None])[:, 0], 0.0
        )
        sums = [shifted.exp().sum(dim=1), target_logit]
        if label_smoothing > 0:
            # Σ_j nll_j = C·log S + Σ_j (m − x_j): two sums of non-negative terms, so no
            # cancellation (C·lse − Σ_j x_j would cancel for large logits).
            sums.append((-shifted).sum(dim=1))
        reduced = torch.stack(sums)  # (2 or 3, N)
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM, group=group)
        log_sum = reduced[0].log()
        lse = log_sum + peak
        losses = (1 - label_smoothing) * (lse - reduced[1])
        if label_smoothing > 0:
            losses = losses + label_smoothing / classes * (classes * log_sum + reduced[2])
        if z_loss != 0:
            losses = losses + (z_loss * lse) * lse  # lse² alone may overflow where z·lse² does not
        losses = torch.where(counted, losses, torch.zeros_like(losses))

        ctx.save_for_backward(local_logits, target, lse)
        ctx.options = (vocab_start, classes, ignore_index, reduction, label_smoothing)
        ctx.options += (z_loss, softcap)
        if reduction == "none":
            return losses.to(local_logits.dtype)
        total = losses.sum()
        if reduction == "mean":
            total = total / counted.sum().to(total.dtype)  # 0/0 = NaN with no counted row
        return total.to(local_logits.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        local_logits, target, lse = ctx.saved_tensors
        vocab_start, classes, ignore_index, reduction, label_smoothing, z_loss, softcap = (
            ctx.options
        )
        compute_dtype = _compute_dtype(local_logits)
        raw = local_logits.to(compute_dtype)
        x = _capped(raw, softcap)
        width = x.shape[1]
        counted = target != ignore_index
        local_target = target - vocab_start
        here = counted & (local_target >= 0) & (local_target < width)

        scale = grad_output.to(compute_dtype)
        if reduction == "mean":
            scale = scale / counted.sum().to(compute_dtype)
        scale = torch.where(counted, scale.expand(target.shape), torch.zeros_like(lse))  # (N,)
        probabilities = (x - lse[:, None]).exp()
        # ∂ℓ/∂x_j = (1 + 2z·lse)·p_j − (1 − ε)·[j = y] − ε/C   (reference/_gradient.py, w = 1)
        gradient = (1 + 2 * z_loss * lse)[:, None] * probabilities - label_smoothing / classes
        rows = torch.arange(x.shape[0], device=x.device)[here]
        gradient[rows, local_target[here]] -= 1 - label_smoothing
        if softcap is not None:
            gradient = gradient * (1 - torch.tanh(raw / softcap).square())
        gradient = torch.where(counted[:, None], gradient * scale[:, None], 0.0)
        return (gradient.to(local_logits.dtype),) + (None,) * 9


def _capped(x: Tensor, softcap: float | None) -> Tensor:
    return x if softcap is None else softcap * torch.tanh(x / softcap)


def data_parallel_cross_entropy(
    local_logits: Tensor,
    local_target: Tensor,
    *,
    group: ProcessGroup = None,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    weight: Tensor | None = None,
) -> Tensor:
    """The cross-entropy of the global batch whose rows are split across the ranks of ``group``.

    ``local_logits`` (N_r, C), ``local_target`` (N_r,): this rank's rows (N_r may be 0). Returns
    the global mean Σ w_y·ℓ / Σ w_y over the counted rows of every rank (NaN when none counts),
    or the global sum (``reduction="sum"``): 0-d, identical on every rank. Its gradient is that
    of this rank's term alone, Σ_{own rows} w_y·ℓ / Σ_{all ranks} w_y: summed across ranks (as
    a data-parallel training loop sums them) it is the full batch's gradient.
    """
    _check_options(ignore_index, reduction, label_smoothing)
    if reduction == "none":
        raise ValueError(
            "reduction='none' is not a data-parallel reduction: each rank's per-row losses are "
            "lmloss.cross_entropy(local_logits, local_target, reduction='none')"
        )
    _check_flat_logits(local_logits)
    _check_flat_target(local_target, local_logits)
    if weight is not None:
        _check_weight(weight, local_logits)
    local_sum = _float_cross_entropy(
        local_logits,
        local_target,
        weight=weight,
        ignore_index=ignore_index,
        reduction="sum",
        label_smoothing=label_smoothing,
    )
    local_weight = _counted_weight(local_target.long(), weight, ignore_index, local_sum.dtype)
    totals = torch.stack([local_sum.detach(), local_weight.to(local_sum.dtype)])
    dist.all_reduce(totals, op=dist.ReduceOp.SUM, group=group)
    loss: Tensor = _GlobalSum.apply(local_sum, totals[0])
    if reduction == "mean":
        loss = loss / totals[1]
    return loss.to(local_logits.dtype)


class _GlobalSum(torch.autograd.Function):
    """Returns the all-reduced sum, while the gradient flows to this rank's own term only."""

    @staticmethod
    def forward(ctx: Any, local_sum: Tensor, global_sum: Tensor) -> Tensor:
        return global_sum.clone()

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        return grad_output, None


#: lmloss.vocab_parallel_cross_entropy as contract 4 (vocab-parallel) declares it: the group
#: under the keyword ``group``, any slices, z-loss and softcap under their own names.
VOCAB_PARALLEL_SPEC = KernelSpec(
    fn=vocab_parallel_cross_entropy,
    name="lmloss.vocab_parallel_cross_entropy",
    contract="vocab_parallel",
    options={"z_loss": "z_loss", "softcap": "softcap"},
)
#: lmloss.data_parallel_cross_entropy as contract 4 (data-parallel) declares it: mean and sum.
DATA_PARALLEL_SPEC = KernelSpec(
    fn=data_parallel_cross_entropy,
    name="lmloss.data_parallel_cross_entropy",
    contract="data_parallel",
    reductions=("mean", "sum"),
)
