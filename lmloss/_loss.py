"""The production loss: next-token cross-entropy, exactly as the essay computes it.

Two layers, both differentiable:

- :func:`cross_entropy` takes logits (N, C) and targets (N,), the shape of
  ``torch.nn.functional.cross_entropy`` (contract 2 of DESIGN.md), so ``lmloss check`` can test it
  as this project's own kernel.
- :func:`lm_loss`, :func:`sequence_logprob` and :func:`perplexity` take a language model's
  logits (B, T, C) and targets (B, T) and flatten them to (B·T, C) and (B·T) as the essay does.

Half precision: every loss is computed in float32 (float64 stays float64) and the result is
rounded once to the logits' dtype, as ``F.cross_entropy`` returns it. Upcasting first makes
bfloat16 and float16 correct on every PyTorch build (CPU kernels for half types were missing
in older releases, and a float16 sum of per-token losses overflows at 65504 where the mean does
not). Half-precision logits are upcast a chunk of rows at a time (:data:`CHUNK_LOGITS` logits
per chunk), never all at once: without autograd (evaluation, ``torch.no_grad``) no float32
copy of the whole (N, C) exists; with autograd, PyTorch's log_softmax keeps its float32 output
for the backward pass, so the float32 log-probabilities of every row are held until then (one
(N, C) float32 tensor in the forward pass, not the two an upcast of the whole batch makes).

Under ``torch.autocast`` the loss is computed exactly the same way, with autocast switched off
for the logits' device, and the result stays float32, as autocast returns it for
``F.cross_entropy``. Leaving the loss to autocast is not enough: on CUDA,
``F.cross_entropy`` of bfloat16 logits rounds every log-probability to bfloat16 before its float32
``nll_loss`` (``cross_entropy_loss`` has no CUDA autocast rule, and it calls ``log_softmax`` with
the input's dtype, which autocast leaves alone), so its float32 result is about as coarse as
bfloat16. The gradient is computed in float32 and rounded once to the logits' dtype.

On CUDA, when Triton imports, :func:`cross_entropy` (and so :func:`lm_loss` and the training
loop) runs lmloss's fused Triton kernel instead (:mod:`lmloss._triton_ce`: the loss and its
gradient in one launch, float32 inside, the same rounding of the result); float64 logits, the
CPU, and machines without Triton keep the torch path described here. One function,
:func:`_loss_implementation`, makes that choice.

Bad shapes and dtypes raise ``ValueError`` / ``TypeError`` naming the argument and what was
expected. Target values are not range-checked here (that would cost a device synchronisation);
PyTorch raises on CPU for a target outside [0, C) that is not ``ignore_index``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reference import DEFAULT_IGNORE_INDEX

REDUCTIONS = ("mean", "sum", "none")
#: The logits' dtypes lmloss's fused Triton kernel takes (it computes in float32 for all three).
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: Logits per chunk when half-precision logits are upcast to float32: 2^24 logits, 64 MiB of
#: float32 (512 rows of a 32,768-class vocabulary). A batch of 8 sequences of 2,048 tokens over
#: 32,000 classes is 32 chunks: the float32 copy is 1/32 of what it would be, for 32 calls.
CHUNK_LOGITS = 2**24


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    weight: Tensor | None = None,
) -> Tensor:
    """Mean (or sum, or per-row) of −log softmax(logits)[target] over the counted rows.

    ``logits``: (N, C) floating; ``target``: (N,) integer class indices, rows whose target equals
    ``ignore_index`` are not counted. Semantics are those of ``torch.nn.functional.cross_entropy``:
    the weighted mean is Σ w_y·l / Σ w_y, label smoothing spreads ε/C over all C classes, and a
    mean over no counted row is NaN.
    """
    _check_options(ignore_index, reduction, label_smoothing)
    _check_flat_logits(logits)
    _check_flat_target(target, logits)
    if weight is not None:
        _check_weight(weight, logits)
    if _loss_implementation(logits.device, logits.dtype) == "triton":
        from lmloss._triton_ce import fused_cross_entropy

        return fused_cross_entropy(
            logits,
            target,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
            weight=weight,
        )
    loss = _float_cross_entropy(
        logits,
        target,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )
    if _autocast_enabled(logits.device.type):
        return loss
    return loss.to(logits.dtype)


def _loss_implementation(device: torch.device, dtype: torch.dtype) -> Literal["triton", "torch"]:
    """What :func:`cross_entropy` runs for logits on ``device`` in ``dtype``: "triton" (the fused
    kernel, which takes every option cross_entropy has) on CUDA for float32, bfloat16 and float16
    when Triton imports; "torch" on the CPU (where Triton has only its interpreter), for float64,
    and without Triton."""
    if device.type == "cuda" and dtype in TRITON_DTYPES and _triton_importable():
        return "triton"
    return "torch"


@functools.cache
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def lm_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """The essay's loss: −(1/N) Σ_i log p(y_i | x_<i) over the N counted tokens of a batch.

    ``logits``: (B, T, C); ``targets``: (B, T). Flattened to (B·T, C) and (B·T) exactly as the
    essay's training step does, then :func:`cross_entropy`. ``reduction="none"`` returns the
    per-token losses shaped (B, T).
    """
    _check_sequence_logits(logits)
    _check_sequence_targets(targets, logits)
    B, T, C = logits.shape
    loss = cross_entropy(
        logits.reshape(B * T, C),
        targets.reshape(B * T),
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )
    return loss.reshape(B, T) if reduction == "none" else loss


def sequence_logprob(
    logits: Tensor, targets: Tensor, *, ignore_index: int = DEFAULT_IGNORE_INDEX
) -> Tensor:
    """log P(y_1..y_T) = Σ_t log p(y_t | x_<t) of each sequence: shape (B,).

    Equals minus the sum-reduced loss of each sequence; ignored targets contribute nothing.
    Returned in float32 (float64 for float64 logits) whatever the logits' dtype: a sum of
    hundreds of log-probabilities needs more than bfloat16's 8 significant bits.
    """
    _check_sequence_logits(logits)
    _check_sequence_targets(targets, logits)
    B, T, C = logits.shape
    token_nll = _float_cross_entropy(
        logits.reshape(B * T, C),
        targets.reshape(B * T),
        ignore_index=ignore_index,
        reduction="none",
    )  # (B·T,), zero where ignored
    return -token_nll.reshape(B, T).sum(dim=1)


def perplexity(
    logits: Tensor, targets: Tensor, *, ignore_index: int = DEFAULT_IGNORE_INDEX
) -> Tensor:
    """exp of the mean NLL over the counted tokens: the effective number of equally likely choices.

    Computed from the float32 mean (float64 for float64 logits), returned in that dtype.
    """
    _check_sequence_logits(logits)
    _check_sequence_targets(targets, logits)
    B, T, C = logits.shape
    mean_nll = _float_cross_entropy(
        logits.reshape(B * T, C), targets.reshape(B * T), ignore_index=ignore_index
    )
    return torch.exp(mean_nll)


class LMLoss(nn.Module):
    """:func:`lm_loss` as a module, configured once: ``LMLoss()(logits_BTC, targets_BT)``."""

    def __init__(
        self,
        *,
        ignore_index: int = DEFAULT_IGNORE_INDEX,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_options(ignore_index, reduction, label_smoothing)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return lm_loss(
            logits,
            targets,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}, "
            f"reduction={self.reduction!r}"
        )


def _compute_dtype(logits: Tensor) -> torch.dtype:
    """float32 for half types and float32, float64 for float64."""
    return torch.promote_types(logits.dtype, torch.float32)


def _float_cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """``F.cross_entropy`` of (N, C) logits computed in :func:`_compute_dtype`, with autocast off,
    returned in that dtype.

    Logits already in the compute dtype go to ``F.cross_entropy`` as they are (``.to`` makes no
    copy). Half-precision logits are upcast :data:`CHUNK_LOGITS` at a time: each chunk of rows
    gives its per-token losses ("none") or their sum, and a mean is the total over Σ w_y of the
    counted rows, which is how ``F.cross_entropy`` defines it (label smoothing's term
    included), so a chunked mean is the same number up to the order of the float32 additions.
    ``split`` hands the chunks' gradients back through one concatenation.
    """
    compute_dtype = _compute_dtype(logits)
    target = target.long()
    if weight is not None:
        weight = weight.to(compute_dtype)

    def loss(x: Tensor, y: Tensor, reduction: str) -> Tensor:
        return F.cross_entropy(
            x.to(compute_dtype),
            y,
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
        )

    rows = max(1, CHUNK_LOGITS // max(1, logits.shape[1]))
    with _autocast_off(logits.device.type):
        if logits.dtype == compute_dtype or logits.shape[0] <= rows:
            return loss(logits, target, reduction)
        chunk_reduction = "none" if reduction == "none" else "sum"
        parts = [
            loss(x, y, chunk_reduction)
            for x, y in zip(logits.split(rows), target.split(rows), strict=True)
        ]
        if reduction == "none":
            return torch.cat(parts)
        total = torch.stack(parts).sum()
        if reduction == "sum":
            return total
        return total / _counted_weight(target, weight, ignore_index, compute_dtype)


def _counted_weight(
    target: Tensor, weight: Tensor | None, ignore_index: int, dtype: torch.dtype
) -> Tensor:
    """Σ w_y over the counted rows (their number without class weights): a mean's denominator.
    0 when no row counts, so that the mean is 0/0 = NaN as ``F.cross_entropy``'s."""
    counted = target != ignore_index
    if weight is None:
        return counted.sum().to(dtype)
    target_weights = weight[torch.where(counted, target, 0)]
    return torch.where(counted, target_weights, 0).sum()


def _autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for this device type (False for a type autocast does not know)."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


@contextlib.contextmanager
def _autocast_off(device_type: str) -> Iterator[None]:
    """Autocast switched off for this device type, where it is on; nothing otherwise."""
    if not _autocast_enabled(device_type):
        yield
        return
    with torch.autocast(device_type=device_type, enabled=False):
        yield


def _check_options(ignore_index: object, reduction: object, label_smoothing: object) -> None:
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)):
        raise TypeError(f"label_smoothing must be a float in [0, 1], got {label_smoothing!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")


def _check_tensor(value: object, name: str, expected: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {expected}, got {type(value).__name__}")
    return value


def _check_floating(tensor: Tensor, name: str, expected: str) -> None:
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor {expected}, got dtype {tensor.dtype}")


def _check_integer(tensor: Tensor, name: str, expected: str) -> None:
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype is torch.bool:
        raise TypeError(
            f"{name} must be an integer tensor of class indices {expected}, got dtype "
            f"{tensor.dtype} (class-probability targets are not supported)"
        )


def _check_flat_logits(logits: Tensor) -> None:
    expected = "of shape (N, C)"
    _check_tensor(logits, "logits", expected)
    if logits.dim() == 3:
        B, T, C = logits.shape
        raise ValueError(
            f"logits must have shape (N, C), got (B, T, C) = {tuple(logits.shape)}: flatten with "
            f"logits.reshape({B} * {T}, {C}) as the essay does, or call lmloss.lm_loss"
        )
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (N, C), got shape {tuple(logits.shape)}")
    _check_floating(logits, "logits", expected)


def _check_flat_target(target: Tensor, logits: Tensor) -> None:
    N = logits.shape[0]
    expected = f"of shape (N,) = ({N},)"
    _check_tensor(target, "target", expected)
    if target.dim() != 1:
        raise ValueError(
            f"target must have shape (N,) = ({N},), got shape {tuple(target.shape)}"
            + (
                ": flatten it with target.reshape(-1) as the essay does"
                if target.dim() == 2
                else ""
            )
        )
    _check_integer(target, "target", expected)
    if target.shape[0] != N:
        raise ValueError(
            f"target must have one class index per row of logits: logits has N = {N} rows, "
            f"target has {target.shape[0]}"
        )
    if target.device != logits.device:
        raise ValueError(f"target is on {target.device}, logits on {logits.device}")


def _check_weight(weight: Tensor, logits: Tensor) -> None:
    C = logits.shape[1]
    expected = f"of shape (C,) = ({C},)"
    _check_tensor(weight, "weight", expected)
    _check_floating(weight, "weight", expected)
    if tuple(weight.shape) != (C,):
        raise ValueError(f"weight must have shape (C,) = ({C},), got {tuple(weight.shape)}")
    if weight.device != logits.device:
        raise ValueError(f"weight is on {weight.device}, logits on {logits.device}")


def _check_sequence_logits(logits: Tensor) -> None:
    expected = "of shape (B, T, C)"
    _check_tensor(logits, "logits", expected)
    if logits.dim() == 2:
        raise ValueError(
            f"logits must have shape (B, T, C), got (N, C) = {tuple(logits.shape)}: "
            "for flat logits call lmloss.cross_entropy"
        )
    if logits.dim() != 3:
        raise ValueError(f"logits must have shape (B, T, C), got shape {tuple(logits.shape)}")
    _check_floating(logits, "logits", expected)


def _check_sequence_targets(targets: Tensor, logits: Tensor) -> None:
    B, T, _ = logits.shape
    expected = f"of shape (B, T) = ({B}, {T})"
    _check_tensor(targets, "targets", expected)
    _check_integer(targets, "targets", expected)
    if tuple(targets.shape) != (B, T):
        raise ValueError(
            f"targets must have shape (B, T) = ({B}, {T}) to match logits {tuple(logits.shape)}, "
            f"got {tuple(targets.shape)}"
        )
    if targets.device != logits.device:
        raise ValueError(f"targets is on {targets.device}, logits on {logits.device}")
