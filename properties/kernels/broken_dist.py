"""Deliberately broken kernels of contract 4 (split across processes): one per bug class.

Each is a correct kernel with one mistake, marked ``# BUG:``. Its docstring names the bug class
and, on a line ``Caught by: CLAUSE-ID (dtype)``, the clause that catches it;
properties/meta/test_broken_dist.py runs ``lmloss check --world-size 2`` on each with that
clause and expects exit 1.

The correct kernels they start from are written with autograd and two collectives:

- vocab-parallel (:func:`_vocab_parallel`): each row's max over every rank (a shift, so no
  gradient flows through it), then one sum over ranks of Σ exp(x − m), of the target logit
  (picked on the rank whose slice holds it) and of Σ x_j; label smoothing is
  ε/C·(C·lse − Σ_j x_j);
- data-parallel (:func:`_data_parallel`): the rank's sum of losses and its count of counted
  weight, summed over ranks; the global mean is their ratio.

Each sum over ranks is :func:`_sum_over_ranks`: an all-reduce whose backward passes the gradient
through unchanged, because every rank back-propagates the same replicated loss and needs the
gradient of its own summand only. They compute in float64 (C·lse − Σ x_j would cancel in float32
for large logits) and round the result once to the logits' dtype, so the bug is the only error
that shows.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from properties.engine.kernel import KernelSpec
from reference import DEFAULT_IGNORE_INDEX


class _SumOverRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: Tensor, group: Any) -> Tensor:
        ctx.group = group
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        return grad_output, None


class _SumOverRanksAndGradients(_SumOverRanks):
    """An all-reduce whose backward all-reduces the gradient too: the adjoint of a sum over
    ranks when each rank back-propagates its own summand, not the replicated total."""

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        total = grad_output.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        return total, None


def _sum_over_ranks(tensor: Tensor, group: Any) -> Tensor:
    """Σ over the ranks of ``tensor``; the gradient reaches this rank's summand unchanged."""
    total: Tensor = _SumOverRanks.apply(tensor, group)
    return total


def _max_over_ranks(tensor: Tensor, group: Any) -> Tensor:
    peak = tensor.detach().clone()
    dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
    return peak


def _reduce(losses: Tensor, counted: Tensor, reduction: str) -> Tensor:
    losses = torch.where(counted, losses, 0.0)
    if reduction == "mean":
        return losses.sum() / counted.sum()
    return losses.sum() if reduction == "sum" else losses


# --- Vocab-parallel ---------------------------------------------------------------------------


def _vocab_parallel(
    local_logits: Tensor,
    target: Tensor,
    *,
    vocab_start: int,
    group: Any,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    bug: str | None = None,
) -> Tensor:
    """The vocab-parallel loss of the module docstring, with ``bug`` (or none)."""
    x = local_logits.double()  # (N, C_r)
    width = x.shape[1]
    classes = int(_max_over_ranks(torch.tensor(vocab_start + width, device=x.device), group))
    counted = target != ignore_index
    local_target = target - vocab_start
    here = counted & (local_target >= 0) & (local_target < width)

    peak = _max_over_ranks(x.amax(dim=1), group)
    if bug == "local max":
        peak = x.detach().amax(dim=1)  # BUG: this rank's max, summed as if it were every rank's
    lse = _sum_over_ranks((x - peak[:, None]).exp().sum(dim=1), group).log() + peak

    if bug == "unmasked target":
        # BUG: a target outside this slice is clamped into it instead of masked out, so every
        # rank adds one of its own logits to the target logit
        picked = x.gather(1, local_target.clamp(0, width - 1)[:, None])[:, 0]
    else:
        picked = torch.where(
            here, x.gather(1, torch.where(here, local_target, 0)[:, None])[:, 0], 0.0
        )
    losses = lse - _sum_over_ranks(torch.where(counted, picked, 0.0), group)

    if label_smoothing > 0:
        if bug == "local smoothing":
            # BUG: ε spread over this rank's C_r classes, from this rank's Σ_j nll_j only
            smooth = label_smoothing / width * (width * lse - x.sum(dim=1))
        else:
            smooth = label_smoothing / classes * (classes * lse - _sum_over_ranks(x.sum(1), group))
        losses = (1 - label_smoothing) * losses + smooth
    return _reduce(losses, counted, reduction).to(local_logits.dtype)


def _vocab_kernel(name: str, bug: str, doc: str) -> Any:
    """A vocab-parallel kernel of contract 4's keywords computing :func:`_vocab_parallel` with
    ``bug``: a plain function of this module named ``name``, documented by ``doc``."""

    def kernel(
        local_logits: Tensor,
        target: Tensor,
        *,
        vocab_start: int,
        group: Any = None,
        ignore_index: int = DEFAULT_IGNORE_INDEX,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> Tensor:
        return _vocab_parallel(
            local_logits,
            target,
            vocab_start=vocab_start,
            group=group,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
            bug=bug,
        )

    kernel.__name__ = kernel.__qualname__ = name
    kernel.__doc__ = doc
    return kernel


def _data_kernel(name: str, bug: str, doc: str) -> Any:
    """A data-parallel kernel of contract 4's keywords computing :func:`_data_parallel` with
    ``bug``, named and documented as :func:`_vocab_kernel`'s."""

    def kernel(
        local_logits: Tensor,
        local_target: Tensor,
        *,
        group: Any = None,
        ignore_index: int = DEFAULT_IGNORE_INDEX,
        reduction: str = "mean",
    ) -> Tensor:
        return _data_parallel(
            local_logits,
            local_target,
            group=group,
            ignore_index=ignore_index,
            reduction=reduction,
            bug=bug,
        )

    kernel.__name__ = kernel.__qualname__ = name
    kernel.__doc__ = doc
    return kernel


local_max_summed_across_ranks = _vocab_kernel(
    "local_max_summed_across_ranks",
    "local max",
    """Each rank shifts its exponentials by its own max, and the shifted sums are added across
    ranks without rescaling: Σ_r Σ_j exp(x_j − m_r) is no multiple of Σ_j exp(x_j − m).

    Caught by: DIST-VALUE (float32)
    """,
)


target_outside_the_shard_not_masked = _vocab_kernel(
    "target_outside_the_shard_not_masked",
    "unmasked target",
    """The target logit is picked on every rank, the target index clamped into the local slice
    rather than masked where the slice does not hold it.

    Caught by: DIST-VALUE (float32)
    """,
)


label_smoothing_over_the_local_vocabulary = _vocab_kernel(
    "label_smoothing_over_the_local_vocabulary",
    "local smoothing",
    """Label smoothing spreads ε over the rank's C_r classes, from its own slice's log-probs
    (Megatron-core's vocab_parallel_cross_entropy does this: NVIDIA/Megatron-LM#737).

    Caught by: DIST-SMOOTHING (float32)
    """,
)


# --- Data-parallel ----------------------------------------------------------------------------


def _data_parallel(
    local_logits: Tensor,
    local_target: Tensor,
    *,
    group: Any,
    ignore_index: int,
    reduction: str,
    bug: str | None = None,
) -> Tensor:
    """The data-parallel loss of the module docstring, with ``bug`` (or none)."""
    local_sum = F.cross_entropy(
        local_logits.double(), local_target, ignore_index=ignore_index, reduction="sum"
    )
    local_count = (local_target != ignore_index).sum().double()
    if bug == "gradient times P":
        # BUG: the backward pass all-reduces the P ranks' (identical) upstream gradients, as
        # torch.distributed.nn.functional.all_reduce does, so each rank's gradient is P times
        # its share
        total: Tensor = _SumOverRanksAndGradients.apply(local_sum, group)
    else:
        total = _sum_over_ranks(local_sum, group)
    if reduction == "sum":
        return total.to(local_logits.dtype)
    if bug == "mean of means":
        # BUG: each rank's own mean, averaged over the ranks
        world_size = dist.get_world_size(group)
        loss = _sum_over_ranks(local_sum / local_count, group) / world_size
    elif bug == "local count":
        loss = total / local_count  # BUG: the count is this rank's, never all-reduced
    else:
        loss = total / _sum_over_ranks(local_count, group)
    return loss.to(local_logits.dtype)


mean_of_per_rank_means = _data_kernel(
    "mean_of_per_rank_means",
    "mean of means",
    """The global mean taken as the mean of the ranks' means: ranks counting different numbers
    of tokens are weighted alike (the data-parallel twin of the gradient-accumulation bug).

    Caught by: DIST-DP-MEAN (float32)
    """,
)


count_not_all_reduced = _data_kernel(
    "count_not_all_reduced",
    "local count",
    """The global sum of losses divided by this rank's count of counted tokens.

    Caught by: DIST-DP-MEAN (float32)
    """,
)


gradient_scaled_by_world_size = _data_kernel(
    "gradient_scaled_by_world_size",
    "gradient times P",
    """The value is right, the gradient P times too large: the loss is all-reduced with
    torch.distributed.nn.functional.all_reduce, whose backward all-reduces the gradient too.

    Caught by: DIST-DP-GRAD (float32)
    """,
)


def _vocab_parallel_spec(fn: Any) -> KernelSpec:
    return KernelSpec(fn=fn, contract="vocab_parallel", reductions=("mean", "sum", "none"))


def _data_parallel_spec(fn: Any) -> KernelSpec:
    return KernelSpec(fn=fn, contract="data_parallel", reductions=("mean", "sum"))


local_max = _vocab_parallel_spec(local_max_summed_across_ranks)
unmasked_target = _vocab_parallel_spec(target_outside_the_shard_not_masked)
local_label_smoothing = _vocab_parallel_spec(label_smoothing_over_the_local_vocabulary)
mean_of_means = _data_parallel_spec(mean_of_per_rank_means)
local_count = _data_parallel_spec(count_not_all_reduced)
gradient_times_world_size = _data_parallel_spec(gradient_scaled_by_world_size)
