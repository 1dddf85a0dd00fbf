"""Correct cross-entropy kernels written from the equations, not by calling F.cross_entropy.

They show that the suite accepts any correct kernel, not only PyTorch's code path, and they are
what the broken kernels in :mod:`properties.kernels.broken` are measured against in the
checker's own tests. Both compute in float32 (float64 stays float64) and round the result once
to the logits' dtype.

For counted rows i (target ≠ ignore_index), with s = softcap·tanh(x/softcap) when softcapped,
p = softmax(s), lse = log Σ_c exp(s_c), class weights w (1 when none), smoothing ε:

    l_i = (1 − ε)·w_y·(lse − s_y) + (ε/C)·Σ_c w_c·(lse − s_c) + z·w_y·lse²
    mean: Σ_i l_i / Σ_i w_{y_i}      sum: Σ_i l_i      none: l_i (0 for ignored rows)
    ∂l_i/∂s_j = (1 − ε)·w_y·(p_j − [j = y]) + (ε/C)·(p_j·Σ_c w_c − w_j) + 2·z·w_y·lse·p_j
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from properties.engine.kernel import KernelSpec
from reference import DEFAULT_IGNORE_INDEX

#: Rows per chunk of chunked_cross_entropy: small and odd on purpose, so that every batch the
#: suite draws crosses chunk boundaries and leaves a ragged last chunk.
CHUNK_ROWS = 7


def logsumexp_cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    weight: Tensor | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> Tensor:
    """Cross-entropy from a hand-written, max-subtracted log-sum-exp; autograd gives the gradient."""
    x = logits.to(_compute_dtype(logits))
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    counted = target != ignore_index
    safe_target = torch.where(counted, target, 0).long()
    row_max = x.detach().amax(dim=1, keepdim=True)
    # A row of all −inf has no finite max; subtracting −inf would make NaN out of nothing.
    row_max = torch.where(torch.isfinite(row_max), row_max, 0.0)
    # Work relative to the row's maximum: lse − x_y = log Σ exp(x − m) − (x_y − m). Forming
    # lse = m + log Σ first would round away log C whenever |m| is large.
    shifted = x - row_max
    log_sum = shifted.exp().sum(dim=1).log()
    class_weight = torch.ones_like(x[0]) if weight is None else weight.to(x.dtype)
    target_weight = torch.where(counted, class_weight[safe_target], 0.0)
    nll = log_sum - shifted.gather(1, safe_target[:, None]).squeeze(1)
    losses = (1 - label_smoothing) * target_weight * nll
    if label_smoothing:
        smooth = (class_weight * (log_sum[:, None] - shifted)).sum(dim=1)
        losses = losses + torch.where(counted, label_smoothing / x.shape[1] * smooth, 0.0)
    if z_loss:
        lse = log_sum + row_max.squeeze(1)
        losses = losses + z_loss * target_weight * lse * lse  # not lse**2, which overflows first
    # Ignored rows hold exactly zero, also where their row would give inf or NaN.
    losses = torch.where(counted, losses, 0.0)
    return _reduce(losses, target_weight, reduction).to(logits.dtype)


def chunked_cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    weight: Tensor | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> Tensor:
    """Cross-entropy a few rows at a time, with a hand-written gradient (as fused kernels do)."""
    options = (ignore_index, reduction, label_smoothing, weight, z_loss, softcap)
    result: Tensor = _ChunkedCrossEntropy.apply(logits, target, *options)
    return result


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and ∂l_i/∂x row chunk by row chunk; backward scales it."""

    @staticmethod
    def forward(
        ctx: Any,
        logits: Tensor,
        target: Tensor,
        ignore_index: int,
        reduction: str,
        label_smoothing: float,
        weight: Tensor | None,
        z_loss: float,
        softcap: float | None,
    ) -> Tensor:
        dtype = _compute_dtype(logits)
        rows, classes = logits.shape
        class_weight = (
            torch.ones(classes, dtype=dtype, device=logits.device)
            if weight is None
            else weight.to(dtype)
        )
        losses = torch.zeros(rows, dtype=dtype, device=logits.device)
        row_grads = torch.zeros(rows, classes, dtype=dtype, device=logits.device)
        target_weight = torch.zeros(rows, dtype=dtype, device=logits.device)
        for start in range(0, rows, CHUNK_ROWS):
            chunk = slice(start, start + CHUNK_ROWS)
            x = logits[chunk].to(dtype)
            y = target[chunk]
            counted = y != ignore_index
            y_safe = torch.where(counted, y, 0).long()
            s = softcap * torch.tanh(x / softcap) if softcap is not None else x
            row_max = s.amax(dim=1, keepdim=True)
            row_max = torch.where(torch.isfinite(row_max), row_max, 0.0)
            # Relative to the row's maximum, so that neither the loss nor the softmax goes
            # through lse = m + log Σ, which rounds away log C when |m| is large.
            shifted = s - row_max
            exp_shifted = shifted.exp()
            sum_exp = exp_shifted.sum(dim=1, keepdim=True)
            log_sum = sum_exp.log()
            p = exp_shifted / sum_exp
            w_y = torch.where(counted, class_weight[y_safe], 0.0)[:, None]
            shifted_y = shifted.gather(1, y_safe[:, None])
            one_hot = torch.zeros_like(s).scatter_(1, y_safe[:, None], 1.0)
            loss = (1 - label_smoothing) * w_y * (log_sum - shifted_y)
            grad = (1 - label_smoothing) * w_y * (p - one_hot)
            if label_smoothing:
                smooth = (class_weight * (log_sum - shifted)).sum(dim=1, keepdim=True)
                loss = loss + label_smoothing / classes * smooth
                grad = grad + label_smoothing / classes * (p * class_weight.sum() - class_weight)
            if z_loss:
                lse = log_sum + row_max
                loss = loss + z_loss * w_y * lse * lse  # not lse**2, which overflows first
                grad = grad + 2 * z_loss * w_y * lse * p
            if softcap is not None:
                grad = grad * (1 - torch.tanh(x / softcap) ** 2)
            losses[chunk] = torch.where(counted, loss.squeeze(1), 0.0)
            row_grads[chunk] = torch.where(counted[:, None], grad, 0.0)
            target_weight[chunk] = w_y.squeeze(1)
        result = _reduce(losses, target_weight, reduction)
        if reduction == "mean":
            # With no counted row every row's gradient is already zero; keep it so, not 0/0.
            total = target_weight.sum()
            row_grads = row_grads / torch.where(total == 0, 1.0, total)
        ctx.save_for_backward(row_grads)
        ctx.logits_dtype = logits.dtype
        return result.to(logits.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        (row_grads,) = ctx.saved_tensors
        upstream = grad_output.to(row_grads.dtype)
        scale = upstream[:, None] if upstream.dim() == 1 else upstream
        grad = (row_grads * scale).to(ctx.logits_dtype)
        return (grad, None, None, None, None, None, None, None)


def _compute_dtype(logits: Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _reduce(losses: Tensor, target_weight: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        # Σ w_y over counted rows; 0/0 = NaN for a mean over no counted row, as PyTorch gives.
        return losses.sum() / target_weight.sum()
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")


#: The same kernels declared with their extra options, so z-loss and softcap are checked too.
logsumexp_kernel = KernelSpec(
    fn=logsumexp_cross_entropy,
    name="properties.kernels.correct.logsumexp_cross_entropy (with z_loss, softcap)",
    options={"z_loss": "z_loss", "softcap": "softcap"},
)
chunked_kernel = KernelSpec(
    fn=chunked_cross_entropy,
    name="properties.kernels.correct.chunked_cross_entropy (with z_loss, softcap)",
    options={"z_loss": "z_loss", "softcap": "softcap"},
)
