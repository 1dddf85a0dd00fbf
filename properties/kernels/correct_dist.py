"""Obviously correct kernels of contract 4 (split across processes), simple rather than fast.

Each rank gathers the whole example from every rank and computes the loss of the whole example
in float64 with ``torch.nn.functional.cross_entropy``; only its own part of the gathered tensor
is its differentiable input, so autograd gives it exactly its columns (vocab-parallel) or rows
(data-parallel) of the full gradient. Every rank computes the same float64 numbers from the same
gathered values, so the loss is the same on every rank. The result is rounded once to the
logits' dtype.

They are what the checker's own tests measure the broken kernels of
:mod:`properties.kernels.broken_dist` against, and a second implementation beside
``lmloss.vocab_parallel_cross_entropy`` and ``lmloss.data_parallel_cross_entropy``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from properties.engine.kernel import KernelSpec
from reference import DEFAULT_IGNORE_INDEX


def gathered_vocab_parallel_cross_entropy(
    local_logits: Tensor,
    target: Tensor,
    *,
    vocab_start: int,
    group: Any = None,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> Tensor:
    """All-gather the columns, then the whole example's loss in float64 (z-loss and softcap
    written out: F.cross_entropy has neither)."""
    parts = _gather(local_logits.detach().double(), dim=1, group=group)
    parts[dist.get_rank(group)] = local_logits.double()  # differentiable: its own columns
    x = torch.cat(parts, dim=1)  # (N, C)
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    losses = F.cross_entropy(
        x,
        target,
        ignore_index=ignore_index,
        reduction="none",
        label_smoothing=label_smoothing,
    )
    counted = target != ignore_index
    losses = losses + torch.where(counted, z_loss * torch.logsumexp(x, dim=1) ** 2, 0.0)
    if reduction == "mean":
        loss = losses.sum() / counted.sum()
    elif reduction == "sum":
        loss = losses.sum()
    else:
        loss = losses
    return loss.to(local_logits.dtype)


def gathered_data_parallel_cross_entropy(
    local_logits: Tensor,
    local_target: Tensor,
    *,
    group: Any = None,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    weight: Tensor | None = None,
) -> Tensor:
    """All-gather the rows and targets, then the whole batch's loss in float64."""
    parts = _gather(local_logits.detach().double(), dim=0, group=group)
    parts[dist.get_rank(group)] = local_logits.double()  # differentiable: its own rows
    target = torch.cat(_gather(local_target, dim=0, group=group))
    loss = F.cross_entropy(
        torch.cat(parts),
        target,
        weight=None if weight is None else weight.double(),
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )
    return loss.to(local_logits.dtype)


def _gather(tensor: Tensor, *, dim: int, group: Any) -> list[Tensor]:
    """Every rank's ``tensor``, in rank order; their sizes along ``dim`` may differ (all_gather
    needs equal shapes, so each is padded to the largest and cut back)."""
    size = torch.tensor([tensor.shape[dim]], device=tensor.device)  # NCCL sends device tensors
    sizes = [torch.empty_like(size) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, size, group=group)
    largest = max(int(s) for s in sizes)
    padded_shape = list(tensor.shape)
    padded_shape[dim] = largest
    padded = tensor.new_zeros(padded_shape)
    padded.narrow(dim, 0, tensor.shape[dim]).copy_(tensor)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    return [part.narrow(dim, 0, int(s)) for part, s in zip(parts, sizes, strict=True)]


gathered_vocab_parallel = KernelSpec(
    fn=gathered_vocab_parallel_cross_entropy,
    contract="vocab_parallel",
    options={"z_loss": "z_loss", "softcap": "softcap"},
)
gathered_data_parallel = KernelSpec(
    fn=gathered_data_parallel_cross_entropy,
    contract="data_parallel",
    reductions=("mean", "sum"),
)
