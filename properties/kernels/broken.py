"""Deliberately broken cross-entropy kernels: one per bug class seen in real kernels.

Each is a correct kernel with one mistake, marked ``# BUG:``. Its docstring names the bug class
and, on a line ``Caught by: CLAUSE-ID[, CLAUSE-ID]``, the clauses that catch it;
properties/meta/test_checker.py runs ``lmloss check`` on each with those clauses and expects
exit 1, failed by them.
The parts that are not the bug lean on ``F.cross_entropy`` so that the bug is the only thing
to read.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from properties.engine.kernel import KernelSpec
from reference import DEFAULT_IGNORE_INDEX


def mean_counts_ignored_tokens(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
) -> Tensor:
    """A mean that counts ignored (padding) tokens in its denominator.

    Caught by: CE-MEAN-COUNTED
    """
    losses = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    if reduction == "mean":
        return losses.sum() / target.numel()  # BUG: divides by every row, not the counted ones
    return losses.sum() if reduction == "sum" else losses


def hard_coded_ignore_index(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    weight: Tensor | None = None,
) -> Tensor:
    """An ignore index hard-coded to −100: the caller's ignore_index is accepted, then dropped.

    Caught by: CE-IGNORE-INDEX
    """
    return F.cross_entropy(
        logits,
        target,
        ignore_index=-100,  # BUG: should be ignore_index
        reduction=reduction,
        label_smoothing=label_smoothing,
        weight=weight,
    )


def no_max_subtraction(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
) -> Tensor:
    """log Σ exp(x) without subtracting the row's maximum: exp overflows once a logit passes ~88.

    Caught by: CE-LARGE-LOGITS
    """
    x = logits.float()
    lse = x.exp().sum(dim=1).log()  # BUG: exp(x) is inf for x > 88.7 in float32
    return _reduce_rows(lse, x, target, ignore_index, reduction).to(logits.dtype)


def global_max_subtraction(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
) -> Tensor:
    """One maximum for the whole batch instead of one per row: a row far below the batch's
    largest logit underflows to exp(·) = 0 everywhere, and its loss becomes ±inf.

    Caught by: CE-ROW-INDEPENDENT
    """
    x = logits.float()
    shift = x.max()  # BUG: should be x.amax(dim=1, keepdim=True), one maximum per row
    lse = (x - shift).exp().sum(dim=1).log() + shift
    return _reduce_rows(lse, x, target, ignore_index, reduction).to(logits.dtype)


def lse_then_subtract_target(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
) -> Tensor:
    """The loss as lse(x) − x_y, with lse = m + log Σ exp(x − m) formed first in float32: under a
    large common offset c (every logit x_j = z_j + c) lse rounds to float32's grid at |c|, an
    error of up to u·|lse|, which the exact subtraction of x_y keeps. The bug class of PyTorch's
    CUDA log_softmax before pytorch/pytorch#38839 was fixed (it computed x − (max + log sum); the
    fix, PR 38945, computes x − max − log sum), of pytorch#11752 on the CPU, and Liger-Kernel's
    formula (loss = lse − x_y). It is within the general loss bound, which allows u·|lse|.

    Caught by: CE-OFFSET
    """
    x = logits.float()
    lse = torch.logsumexp(x, dim=1)  # BUG: m + log S rounded at |m|; then x_y is subtracted
    return _reduce_rows(lse, x, target, ignore_index, reduction).to(logits.dtype)


def label_smoothing_counts_ignored_rows(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Label smoothing under ignore_index: the smoothing term is added on ignored rows too.

    Caught by: CE-SMOOTHING
    """
    counted = target != ignore_index
    nll = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    smooth = -logits.float().log_softmax(dim=1).mean(dim=1)  # (1/C)·Σ_c (lse − x_c)
    losses = (1 - label_smoothing) * nll + label_smoothing * smooth  # BUG: smooth not masked
    if reduction == "none":
        return losses.to(logits.dtype)
    total = losses.sum()
    return (total / counted.sum() if reduction == "mean" else total).to(logits.dtype)


def label_smoothing_divided_by_all_rows(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Label smoothing under ignore_index: the smoothing term's mean is over all N rows, while
    the NLL term's mean is over the counted rows.

    Caught by: CE-SMOOTHING, CE-OPTIONS
    """
    counted = target != ignore_index
    nll = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    smooth = -logits.float().log_softmax(dim=1).mean(dim=1) * counted
    if reduction != "mean":
        losses = (1 - label_smoothing) * nll + label_smoothing * smooth
        return (losses if reduction == "none" else losses.sum()).to(logits.dtype)
    nll_mean = nll.sum() / counted.sum()
    smooth_mean = smooth.sum() / target.numel()  # BUG: should divide by counted.sum()
    return ((1 - label_smoothing) * nll_mean + label_smoothing * smooth_mean).to(logits.dtype)


def weighted_mean_divided_by_rows(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    """A class-weighted mean divided by the number of counted rows instead of Σ w_y.

    Caught by: CE-WEIGHT
    """
    losses = F.cross_entropy(
        logits, target, ignore_index=ignore_index, weight=weight, reduction="none"
    )
    if reduction == "mean":
        return losses.sum() / (target != ignore_index).sum()  # BUG: should divide by Σ w_y
    return losses.sum() if reduction == "sum" else losses


def none_reduction_keeps_ignored_rows(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
) -> Tensor:
    """reduction="none" returns a loss for ignored rows (computed against a stand-in class)
    where PyTorch returns exactly 0; the mean and sum mask them correctly.

    Caught by: CE-NONE
    """
    counted = target != ignore_index
    stand_in = torch.where(counted, target, 0)
    losses = F.cross_entropy(logits, stand_in, reduction="none")
    if reduction == "none":
        return losses  # BUG: should be torch.where(counted, losses, 0)
    total = (losses * counted).sum()
    return total / counted.sum() if reduction == "mean" else total


def empty_mean_returns_zero(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
) -> Tensor:
    """A mean over no counted token returns 0 (a clamped denominator) where PyTorch returns NaN,
    and the kernel does not declare it (KernelSpec(empty_mean="zero") would).

    Caught by: CE-EMPTY-MEAN
    """
    losses = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    if reduction == "mean":
        counted = (target != ignore_index).sum()
        return losses.sum() / counted.clamp(min=1)  # BUG: undeclared; 0/0 should be NaN
    return losses.sum() if reduction == "sum" else losses


def assumes_contiguous(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
) -> Tensor:
    """A stride assumption: reads the logits' storage as if the tensor were contiguous and
    started at offset 0, which is wrong for transposed, sliced, offset or expanded inputs.

    Caught by: CE-LAYOUT
    """
    rows, classes = logits.shape
    # BUG: as_strided with row-major strides and offset 0 ignores the tensor's own layout.
    dense = logits.as_strided((rows, classes), (classes, 1), 0)
    return F.cross_entropy(dense, target, ignore_index=ignore_index, reduction=reduction)


def flattens_with_view(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
) -> Tensor:
    """A stride assumption that crashes: ``.view`` needs a contiguous tensor, so a transposed
    or sliced input raises instead of being read (``.reshape`` would copy). A kernel that
    raises on valid input fails the clause that gave it that input.

    Caught by: CE-LAYOUT
    """
    rows, classes = logits.shape
    flat = logits.view(rows * classes)  # BUG: .view fails on non-contiguous logits
    return F.cross_entropy(
        flat.view(rows, classes), target, ignore_index=ignore_index, reduction=reduction
    )


def writes_into_input(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
) -> Tensor:
    """Writes into its input without declaring it: subtracts each row's maximum from the
    caller's logits in place (the loss and gradient are still right; the caller's tensor is not).

    Caught by: CE-PURE
    """
    # BUG: in place, through .data, so autograd does not object either.
    logits.data.sub_(logits.data.amax(dim=1, keepdim=True))
    return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction)


def rounds_logits_to_bf16(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Rounds float32 logits to bfloat16 before the loss (a mixed-precision kernel that forgot
    to keep float32 inputs in float32): the loss is off by about |x|·2^-9.

    Caught by: CE-MEAN
    """
    rounded = logits.to(torch.bfloat16).to(logits.dtype)  # BUG: 8 bits of mantissa lost
    return F.cross_entropy(
        rounded,
        target,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )


def gradient_forgets_mean_scale(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
) -> Tensor:
    """A hand-written backward that forgets the mean's 1/N: the gradient of the mean is the
    gradient of the sum.

    Caught by: CE-GRAD, CE-ACCUMULATE
    """
    result: Tensor = _ForgetsMeanScale.apply(logits, target, ignore_index, reduction)
    return result


class _ForgetsMeanScale(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, logits: Tensor, target: Tensor, ignore_index: int, reduction: str
    ) -> Tensor:
        losses, row_grads, counted = _rows(logits, target, ignore_index)
        ctx.save_for_backward(row_grads)  # BUG: never divided by counted.sum() for the mean
        ctx.dtype = logits.dtype
        return _reduce(losses, counted, reduction).to(logits.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        (row_grads,) = ctx.saved_tensors
        return _times_upstream(row_grads, grad_output).to(ctx.dtype), None, None, None


def gradient_ignores_upstream(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
) -> Tensor:
    """A hand-written backward that ignores the upstream gradient: right for loss.backward()
    on the loss itself, wrong for 2·loss, for a loss inside a larger graph, and for
    reduction="none" with any non-uniform upstream gradient.

    Caught by: CE-GRAD-UPSTREAM
    """
    result: Tensor = _IgnoresUpstream.apply(logits, target, ignore_index, reduction)
    return result


class _IgnoresUpstream(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, logits: Tensor, target: Tensor, ignore_index: int, reduction: str
    ) -> Tensor:
        losses, row_grads, counted = _rows(logits, target, ignore_index)
        if reduction == "mean":
            row_grads = row_grads / counted.sum()
        ctx.save_for_backward(row_grads)
        ctx.dtype = logits.dtype
        return _reduce(losses, counted, reduction).to(logits.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        (row_grads,) = ctx.saved_tensors
        return row_grads.to(ctx.dtype), None, None, None  # BUG: grad_output is never applied


def ignored_rows_get_gradient(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
) -> Tensor:
    """A hand-written gradient that forgets the ignore mask: ignored rows get softmax − one-hot
    of a stand-in class instead of exactly zero (the loss itself is right).

    Caught by: CE-GRAD-IGNORED
    """
    result: Tensor = _GradientOnIgnoredRows.apply(logits, target, ignore_index, reduction)
    return result


class _GradientOnIgnoredRows(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, logits: Tensor, target: Tensor, ignore_index: int, reduction: str
    ) -> Tensor:
        losses, _, counted = _rows(logits, target, ignore_index)
        x = logits.float()
        stand_in = torch.where(counted, target, 0)
        # BUG: every row's softmax − one-hot, not zero on the ignored rows.
        row_grads = x.softmax(dim=1) - F.one_hot(stand_in, x.shape[1])
        if reduction == "mean":
            row_grads = row_grads / counted.sum()
        ctx.save_for_backward(row_grads)
        ctx.dtype = logits.dtype
        return _reduce(losses, counted, reduction).to(logits.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        (row_grads,) = ctx.saved_tensors
        return _times_upstream(row_grads, grad_output).to(ctx.dtype), None, None, None


def scales_upstream_in_place(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
) -> Tensor:
    """A hand-written backward that scales the upstream gradient in place (to save a buffer):
    its own gradient is right, but grad_output is not its to change: autograd may hand the same
    tensor to another branch of the graph, and the caller may reuse it.

    Caught by: CE-PURE
    """
    result: Tensor = _ScalesUpstreamInPlace.apply(logits, target, ignore_index, reduction)
    return result


class _ScalesUpstreamInPlace(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, logits: Tensor, target: Tensor, ignore_index: int, reduction: str
    ) -> Tensor:
        losses, row_grads, counted = _rows(logits, target, ignore_index)
        ctx.save_for_backward(row_grads, counted)
        ctx.mean = reduction == "mean"
        ctx.dtype = logits.dtype
        return _reduce(losses, counted, reduction).to(logits.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        row_grads, counted = ctx.saved_tensors
        if ctx.mean:
            grad_output.div_(counted.sum())  # BUG: writes into the caller's tensor
        return _times_upstream(row_grads, grad_output).to(ctx.dtype), None, None, None


def softmax_saved_in_bf16(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
) -> Tensor:
    """Saves the softmax in bfloat16 for the backward (to save memory) even for float32
    logits: the gradient carries bfloat16's error, about 2^-9 of each probability.

    Caught by: CE-GRAD
    """
    result: Tensor = _SoftmaxSavedInBF16.apply(logits, target, ignore_index, reduction)
    return result


class _SoftmaxSavedInBF16(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, logits: Tensor, target: Tensor, ignore_index: int, reduction: str
    ) -> Tensor:
        losses, _, counted = _rows(logits, target, ignore_index)
        softmax = logits.float().softmax(dim=1).to(torch.bfloat16)  # BUG: float32 needed
        ctx.save_for_backward(softmax, target, counted)
        ctx.reduction = reduction
        ctx.dtype = logits.dtype
        return _reduce(losses, counted, reduction).to(logits.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        softmax, target, counted = ctx.saved_tensors
        stand_in = torch.where(counted, target, 0)
        row_grads = softmax.float() - F.one_hot(stand_in, softmax.shape[1])
        row_grads = torch.where(counted[:, None], row_grads, 0.0)
        if ctx.reduction == "mean":
            row_grads = row_grads / counted.sum()
        return _times_upstream(row_grads, grad_output).to(ctx.dtype), None, None, None


def _z_loss_not_squared(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    z_loss: float = 0.0,
) -> Tensor:
    """A z-loss (PaLM's auxiliary loss, z·lse² per counted token) that forgets the square.

    Caught by: CE-Z-LOSS
    """
    counted = target != ignore_index
    losses = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none")
    lse = logits.float().logsumexp(dim=1)
    losses = losses + z_loss * lse * counted  # BUG: the z-loss is z·lse², not z·lse
    return _reduce(losses, counted, reduction).to(logits.dtype)


#: The z-loss is an extra option, so this kernel declares it with a KernelSpec.
z_loss_not_squared = KernelSpec(
    fn=_z_loss_not_squared,
    name="properties.kernels.broken.z_loss_not_squared",
    options={"z_loss": "z_loss"},
)


def _rows(logits: Tensor, target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor, Tensor]:
    """Correct float32 per-row losses and ∂l_i/∂x (both zero on ignored rows), and the mask."""
    x = logits.float()
    counted = target != ignore_index
    stand_in = torch.where(counted, target, 0)
    log_p = x.log_softmax(dim=1)
    losses = torch.where(counted, -log_p.gather(1, stand_in[:, None]).squeeze(1), 0.0)
    row_grads = log_p.exp() - F.one_hot(stand_in, x.shape[1])
    return losses, torch.where(counted[:, None], row_grads, 0.0), counted


def _reduce(losses: Tensor, counted: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return losses
    return losses.sum() / counted.sum() if reduction == "mean" else losses.sum()


def _reduce_rows(
    lse: Tensor, x: Tensor, target: Tensor, ignore_index: int, reduction: str
) -> Tensor:
    """Reduce lse − x_y over counted rows (for the kernels that compute their own lse)."""
    counted = target != ignore_index
    stand_in = torch.where(counted, target, 0)
    losses = torch.where(counted, lse - x.gather(1, stand_in[:, None]).squeeze(1), 0.0)
    return _reduce(losses, counted, reduction)


def _times_upstream(row_grads: Tensor, grad_output: Tensor) -> Tensor:
    """Chain rule: a scalar upstream gradient scales every row; a per-row one scales its row."""
    return row_grads * (grad_output[:, None] if grad_output.dim() == 1 else grad_output)


def bf16_loss_returned_as_float32(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
) -> Tensor:
    """A mixed-precision kernel that computes the loss in bfloat16 (autocast or not) and returns
    it as float32. The dtype promises float32's accuracy, and the value has bfloat16's. That is
    what F.cross_entropy amounts to under CUDA autocast, where it rounds every log-probability to
    bfloat16 before a float32 nll_loss.

    Caught by: CE-AUTOCAST
    """
    # Autocast off, or the CPU's autocast would run cross_entropy_loss in float32 and hide the bug.
    with torch.autocast(logits.device.type, enabled=False):
        loss = F.cross_entropy(
            logits.to(torch.bfloat16), target, ignore_index=ignore_index, reduction=reduction
        )
    return loss.float()  # BUG: a bfloat16 value in float32's clothing


#: CUDA's limit on the y and z dimensions of a launch grid, in blocks.
_GRID_LIMIT = 65_535


def drops_rows_past_65535(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
) -> Tensor:
    """A launch grid capped at 65,535 blocks of one row each (CUDA's limit on grid y and z):
    rows 65,535 and later are never computed, so their loss and gradient stay zero, and the mean
    still divides by every counted row.

    Caught by: CE-TALL-BATCH
    """
    reached = logits[:_GRID_LIMIT]  # BUG: the grid is (min(N, 65535),); the rest stays zero
    losses = F.cross_entropy(
        reached, target[:_GRID_LIMIT], ignore_index=ignore_index, reduction="none"
    )
    losses = torch.cat([losses, losses.new_zeros(logits.shape[0] - reached.shape[0])])
    return _reduce(losses, target != ignore_index, reduction)


#: Classes per block of an online softmax over the vocabulary (Liger-Kernel, flash-attention).
_VOCAB_BLOCK = 32_768


def no_rescale_between_vocab_blocks(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
) -> Tensor:
    """An online softmax over blocks of 32,768 classes that forgets to rescale its running sum
    when the running maximum grows: s + Σ_block exp(x − m_new) where s·exp(m_old − m_new) +
    Σ_block exp(x − m_new) is right. The backward pass takes the softmax from the saved lse, as
    fused kernels do, so the gradient is wrong too. Exact whenever the first block holds the
    row's largest logit, so on every vocabulary of up to 32,768 classes.

    Caught by: CE-LARGE-VOCAB
    """
    result: Tensor = _NoRescaleBetweenBlocks.apply(logits, target, ignore_index, reduction)
    return result


class _NoRescaleBetweenBlocks(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, logits: Tensor, target: Tensor, ignore_index: int, reduction: str
    ) -> Tensor:
        x = logits.float()
        peak = x.new_full((x.shape[0],), -torch.inf)
        total = x.new_zeros(x.shape[0])
        for block in x.split(_VOCAB_BLOCK, dim=1):
            new_peak = torch.maximum(peak, block.amax(dim=1))
            # BUG: total·exp(peak − new_peak) is what the earlier blocks contribute.
            total = total + (block - _finite(new_peak)[:, None]).exp().sum(dim=1)
            peak = new_peak
        # Relative to the row's maximum: ℓ = log S − (x_y − m), never lse = m + log S first.
        shifted = x - _finite(peak)[:, None]
        log_total = total.log()
        counted = target != ignore_index
        stand_in = torch.where(counted, target, 0)
        nll = log_total - shifted.gather(1, stand_in[:, None])[:, 0]
        losses = torch.where(counted, nll, 0.0)
        row_grads = (shifted - log_total[:, None]).exp() - F.one_hot(stand_in, x.shape[1])
        row_grads = torch.where(counted[:, None], row_grads, 0.0)
        if reduction == "mean":
            row_grads = row_grads / counted.sum().clamp(min=1)  # no counted row: zero, as PyTorch
        ctx.save_for_backward(row_grads)
        ctx.dtype = logits.dtype
        return _reduce(losses, counted, reduction).to(logits.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        (row_grads,) = ctx.saved_tensors
        return _times_upstream(row_grads, grad_output).to(ctx.dtype), None, None, None


def _finite(peak: Tensor) -> Tensor:
    """A row's running maximum, 0 while it is −inf (every logit so far masked), so that
    subtracting it from −inf logits gives −inf, not NaN."""
    return torch.where(peak.isfinite(), peak, 0.0)
