"""lmloss's fused cross-entropy in Triton: the loss and its gradient in one launch (contract 2).

:data:`triton_cross_entropy` is a :class:`KernelSpec` that is also the function::

    loss = lmloss.triton_cross_entropy(logits, target, reduction="mean", z_loss=1e-4)
    lmloss check lmloss:triton_cross_entropy

Options: ignore_index, reduction mean / sum / none, label smoothing (ε/C over all C classes),
class weights (the weighted mean Σ w_y·l / Σ w_y, smoothing weighted as PyTorch weights it),
z-loss z·w_y·lse² per counted row (weighted like the NLL term, the oracle's convention) and a
soft cap x → s·tanh(x/s) before the softmax. For a counted row, with w_y the target's weight:

    l = (1 − ε)·w_y·(lse − s_y) + (ε/C)·Σ_j w_j·(lse − s_j) + z·w_y·lse²
    ∂l/∂x_j = ((1 − ε)·w_y + (ε/C)·Σ w + 2z·w_y·lse)·p_j − (1 − ε)·w_y·[j = y] − (ε/C)·w_j,
              times 1 − tanh²(x_j/s) with a soft cap.

Algorithm (lmloss/_triton_kernels.py). One program owns a few rows (one row for large C, a
tile of rows for small C) and walks their columns in blocks, in float32 whatever the dtype:

1. pass 1, online: the running maximum m, S = Σ exp(s_j − m) rescaled when m grows, and for
   label smoothing A = Σ w_j·(s_j − m) and Σ w_j; then the row's loss from log S and s_y − m,
   never through lse = m + log S, which would round log S away when |m| is large;
2. pass 2, only when the logits require grad: the row again, p_j = exp(s_j − m)/S and the
   gradient above, scaled by 1/Σ w_y for a mean, written in the logits' dtype.

The per-row float32 losses are reduced by torch (a float64 sum: z-losses near float32's largest
value may add up past it where their mean does not; the mean's Σ w_y is computed before the
launch, so that pass 2 can scale by it), and rounded once to the logits' dtype, as
``F.cross_entropy`` returns them (float32 under ``torch.autocast``, as :func:`lmloss.cross_entropy`).
The gradient is kept from the forward pass to the backward pass. Backward with an upstream
gradient of exactly 1 (a mean or sum followed by ``.backward()``) returns it as it is; any other
upstream gradient (a scalar, or one per row for reduction="none") scales it in place in one
more launch (read and write), in float32, rounded once more to the logits' dtype.

Memory traffic per row of C logits of b bytes (b = 2 for bfloat16), forward + backward: pass 1
reads C·b, pass 2 reads C·b and writes the gradient C·b: 3·C·b, plus 8 bytes of target, 4 of
loss, and with class weights and label smoothing the C float32 weights in each pass (shared by
every row, so from cache). Backward adds nothing when the upstream gradient is 1, 2·C·b
otherwise; telling the two apart costs one device synchronisation (as Liger-Kernel's does). The floor of this design is therefore the 3-pass floor (read the logits twice,
write the gradient once): 6.3 GB at 8192 × 128256 in bfloat16, 1.49 ms at the 4,229 GB/s copy
bandwidth issue 12 measured on an H200. The 2-pass floor (read once, write once) needs the row
kept on chip between the passes: 256 KB for a 128,256-class bfloat16 row, more than the
228 KB of shared memory of an H100 or H200 SM, so this kernel streams it twice (whether its second read is served by the L2
cache has not been measured). Forward only (logits that do not require grad, e.g. under
``torch.no_grad``): pass 1 alone, one read, C·b.

Strides: logits and targets are read through their strides (row stride and column stride, any
layout: transposed, sliced, expanded), with int64 offsets, so nothing is copied and
N·C ≥ 2^31 is addressed correctly; the gradient is a fresh contiguous (N, C) buffer. With
``inplace=True`` the gradient is written over the logits instead (which must then be
contiguous), saving that buffer: the caller's logits are destroyed, and the KernelSpec
:data:`triton_cross_entropy_inplace` declares it.

CUDA tensors run the compiled kernels; CPU tensors run the same kernels under Triton's
interpreter (numpy on the host: slow, meant for tests and ``lmloss check`` on a CPU).

Not supported: float64 logits (TypeError; lmloss.cross_entropy keeps them on its torch path),
class-probability targets, inputs other than (N, C) (flatten (B, T, C) first), an upstream
gradient used twice (``backward(retain_graph=True)`` then a second backward raises: the stored
gradient was handed out, and scaled in place). A counted target outside [0, C) raises
ValueError on the CPU; on CUDA, where checking would cost a device synchronisation, its row's
loss and gradient are NaN (nothing outside the row is read).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from typing import Any, NamedTuple

import numpy
import torch
from torch import Tensor

from lmloss._linear import _check_target_range
from lmloss._loss import (
    TRITON_DTYPES,
    _autocast_enabled,
    _check_flat_logits,
    _check_flat_target,
    _check_options,
    _check_weight,
)
from properties.engine.kernel import KernelSpec
from reference import DEFAULT_IGNORE_INDEX


class Launch(NamedTuple):
    """How a launch tiles the logits: blocks of at most ``widest_block`` columns, and as many
    rows per program (at most ``most_rows``) as fill ``tile`` logits."""

    widest_block: int
    tile: int
    most_rows: int


#: On a GPU: one row per program once C fills a block of 8,192 columns, up to 8 short rows
#: otherwise (ptxas for sm_90a spilled registers at 64 rows of 128 columns, 16 warps, and at
#: 32 rows with 4 warps; 8 rows did not). Not tuned for speed: no GPU was at hand.
GPU_LAUNCH = Launch(widest_block=8_192, tile=8_192, most_rows=8)
#: Under the interpreter every operation is one numpy call over a whole tile, so tiles are
#: large; blocks stay at 1,024 columns so that the vocabularies the checker draws (up to 4,096)
#: cross column blocks, and the online rescaling of pass 1 is checked as a GPU runs it on large
#: vocabularies.
INTERPRETER_LAUNCH = Launch(widest_block=1_024, tile=65_536, most_rows=65_536)


def fused_cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    weight: Tensor | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    inplace: bool = False,
) -> Tensor:
    """Cross-entropy of logits (N, C) and class indices (N,), with its gradient computed in the
    same launch (see the module docstring). Returns the logits' dtype (float32 under autocast):
    0-d for mean and sum, (N,) for none."""
    _check_options(ignore_index, reduction, label_smoothing)
    _check_z_loss_and_softcap(z_loss, softcap)
    _check_flat_logits(logits)
    if logits.dtype not in TRITON_DTYPES:
        raise TypeError(
            f"logits must be float32, bfloat16 or float16 for the Triton kernel, got "
            f"{logits.dtype} (lmloss.cross_entropy computes float64 with torch)"
        )
    if logits.device.type not in ("cpu", "cuda"):
        raise ValueError(f"logits must be on a CUDA device or the CPU, got {logits.device}")
    if logits.shape[1] == 0:
        raise ValueError("logits must have at least one class: got shape (N, 0)")
    _check_flat_target(target, logits)
    if weight is not None:
        _check_weight(weight, logits)
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {inplace!r}")
    if inplace and not logits.is_contiguous():
        raise ValueError(
            "inplace=True writes the gradient over the logits, which must then be contiguous; "
            f"got strides {logits.stride()} for shape {tuple(logits.shape)}"
        )
    if logits.device.type == "cpu":
        _check_target_range(target, logits.shape[1], ignore_index)
    autocast = _autocast_enabled(logits.device.type)
    result: Tensor = _FusedCrossEntropy.apply(
        logits,
        target,
        weight,
        ignore_index,
        reduction,
        float(label_smoothing),
        float(z_loss),
        None if softcap is None else float(softcap),
        inplace,
        torch.is_grad_enabled() and logits.requires_grad,
        torch.float32 if autocast else logits.dtype,
    )
    return result


#: The fused kernel as contract 2 declares it, with both extra options: ``lmloss check
#: lmloss:triton_cross_entropy``; callable as the function itself.
triton_cross_entropy = KernelSpec(
    fn=fused_cross_entropy,
    name="lmloss.triton_cross_entropy (with z_loss, softcap)",
    dtypes=("float32", "bfloat16", "float16"),
    devices=("cpu", "cuda"),
    options={"z_loss": "z_loss", "softcap": "softcap"},
)


def _fused_cross_entropy_inplace(
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
    # Only contiguous logits can take the gradient in place; others get a fresh buffer.
    return fused_cross_entropy(
        logits,
        target,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        weight=weight,
        z_loss=z_loss,
        softcap=softcap,
        inplace=logits.is_contiguous(),
    )


#: The same kernel writing its gradient over the logits (``inplace=True``), declared so.
triton_cross_entropy_inplace = KernelSpec(
    fn=_fused_cross_entropy_inplace,
    name="lmloss.triton_cross_entropy (inplace=True, with z_loss, softcap)",
    dtypes=("float32", "bfloat16", "float16"),
    devices=("cpu", "cuda"),
    options={"z_loss": "z_loss", "softcap": "softcap"},
    writes_input=True,
)


class _FusedCrossEntropy(torch.autograd.Function):
    """Forward: one launch for the per-row losses and, when needed, the gradient; torch reduces
    the losses. Backward: the stored gradient, scaled only when the upstream gradient is not 1."""

    @staticmethod
    def forward(
        ctx: Any,
        logits: Tensor,
        target: Tensor,
        weight: Tensor | None,
        ignore_index: int,
        reduction: str,
        label_smoothing: float,
        z_loss: float,
        softcap: float | None,
        inplace: bool,
        needs_grad: bool,
        result_dtype: torch.dtype,
    ) -> Tensor:
        rows, classes = logits.shape
        device = logits.device
        class_weight = None if weight is None else weight.to(torch.float32).contiguous()
        counted = target != ignore_index
        if class_weight is None:
            total_weight = counted.sum(dtype=torch.float32)
        else:
            # Clamped only to index safely: a counted target outside [0, C) makes its row NaN.
            safe_target = target.clamp(0, classes - 1)
            total_weight = torch.where(counted, class_weight[safe_target], 0.0).sum()
        if reduction == "mean":
            # With no counted row every row's gradient is zero; keep it so, not 0·inf.
            grad_scale = 1.0 / torch.where(total_weight == 0, 1.0, total_weight)
        else:
            grad_scale = torch.ones((), dtype=torch.float32, device=device)
        losses = torch.empty(rows, dtype=torch.float32, device=device)
        grad = None
        if needs_grad:
            contiguous = torch.contiguous_format
            grad = (
                logits.detach() if inplace else torch.empty_like(logits, memory_format=contiguous)
            )
        if rows > 0:
            _launch_forward(
                logits,
                target,
                class_weight,
                grad,
                losses,
                grad_scale,
                ignore_index=ignore_index,
                label_smoothing=label_smoothing,
                z_loss=z_loss,
                softcap=softcap,
            )
        if reduction == "none":
            result = losses
        else:
            # Summed in float64: rows of z·lse² near float32's largest value add up past it
            # where their mean does not (N values: no cost worth keeping float32 for).
            result = losses.sum(dtype=torch.float64)
            if reduction == "mean":
                result = result / total_weight  # 0/0 = NaN when no row counts, as PyTorch
        ctx.gradient = grad
        ctx.reduction = reduction
        return result.to(result_dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        grad = getattr(ctx, "gradient", None)
        if grad is None:
            raise RuntimeError(
                "lmloss.triton_cross_entropy: backward through the same loss twice "
                "(retain_graph=True) is not supported: its gradient was computed once, in the "
                "forward pass, and handed out"
            )
        ctx.gradient = None  # handed out: autograd may now take it as the logits' .grad
        if not bool((grad_output == 1).all()):
            _launch_scale_rows(grad, grad_output.to(torch.float32))
        return (grad,) + (None,) * 10


def _launch_forward(
    logits: Tensor,
    target: Tensor,
    class_weight: Tensor | None,
    grad: Tensor | None,
    losses: Tensor,
    grad_scale: Tensor,
    *,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
) -> None:
    rows, classes = logits.shape
    interpreted = _interpreted(logits.device)
    tile_rows, block, warps = _tile(rows, classes, interpreted=interpreted)
    forward = _kernels(logits.device).cross_entropy_forward
    # Unused pointers (no weight, no gradient) point at the logits; their constexpr switches
    # keep the kernel from reading or writing them.
    grad_out = logits if grad is None else grad
    with _on_device(logits.device, interpreted):
        forward[(_cdiv(rows, tile_rows),)](
            logits,
            logits.stride(0),
            logits.stride(1),
            target,
            target.stride(0),
            logits if class_weight is None else class_weight,
            grad_out,
            grad_out.stride(0),
            grad_out.stride(1),
            losses,
            grad_scale,
            rows,
            classes,
            ignore_index,
            1.0 - label_smoothing,
            label_smoothing / classes,
            z_loss,
            1.0 if softcap is None else softcap,
            HAS_WEIGHT=class_weight is not None,
            HAS_SMOOTHING=label_smoothing > 0.0,
            HAS_Z_LOSS=z_loss > 0.0,
            HAS_SOFTCAP=softcap is not None,
            COMPUTE_GRAD=grad is not None,
            ROWS=tile_rows,
            BLOCK_C=block,
            **({} if interpreted else compile_options(warps)),
        )


def _launch_scale_rows(grad: Tensor, upstream: Tensor) -> None:
    """grad *= upstream row by row (a 0-d upstream scales every row)."""
    rows, classes = grad.shape
    if rows == 0 or classes == 0:
        return
    interpreted = _interpreted(grad.device)
    tile_rows, block, warps = _tile(rows, classes, interpreted=interpreted)
    scale_rows = _kernels(grad.device).scale_rows
    with _on_device(grad.device, interpreted):
        scale_rows[(_cdiv(rows, tile_rows),)](
            grad,
            grad.stride(0),
            grad.stride(1),
            upstream,
            0 if upstream.dim() == 0 else upstream.stride(0),
            rows,
            classes,
            ROWS=tile_rows,
            BLOCK_C=block,
            **({} if interpreted else compile_options(warps)),
        )


def _on_device(device: torch.device, interpreted: bool) -> contextlib.AbstractContextManager[Any]:
    """Where a launch runs. A compiled kernel launches on the current CUDA device, so that is
    made the tensors' device. Under the interpreter IEEE arithmetic raises no warnings, as on a
    GPU: an ignored row's log 0, or a z-loss that overflows to inf, is a value there, not an
    event (numpy warns, and pytest's filterwarnings = error would make that an exception)."""
    if interpreted:
        return numpy.errstate(all="ignore")
    return torch.cuda.device(device)


def _interpreted(device: torch.device) -> bool:
    return device.type == "cpu" or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def compile_options(warps: int) -> dict[str, Any]:
    """Triton's compile options for a GPU launch: fused multiply-adds on, said explicitly (Triton
    3.9 warns that its default turns them off in 3.10; they round once where two would)."""
    return {"num_warps": warps, "enable_fp_fusion": True}


def _tile(rows: int, classes: int, *, interpreted: bool) -> tuple[int, int, int]:
    """(rows per program, columns per block, warps), all powers of two."""
    launch = INTERPRETER_LAUNCH if interpreted else GPU_LAUNCH
    block = min(_next_power_of_two(classes), launch.widest_block)
    tile_rows = min(_next_power_of_two(rows), launch.most_rows, max(1, launch.tile // block))
    logits = tile_rows * block
    warps = 16 if logits >= 8192 else 8 if logits >= 1024 else 4
    return tile_rows, block, warps


def _next_power_of_two(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _kernels(device: torch.device) -> Any:
    """lmloss._triton_kernels, imported at the first call. CPU tensors need Triton's interpreter,
    which is on only when TRITON_INTERPRET=1 was set before triton was first imported: it is set
    here when triton has not been imported yet (as properties/kernels/real.py does for Liger)."""
    if device.type == "cpu" and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        import triton.language as tl
        from triton.runtime.interpreter import InterpretedFunction

        from lmloss import _triton_kernels
    except ImportError as exc:
        raise ImportError(
            f"lmloss.triton_cross_entropy needs Triton ({exc}); pip install triton, or use "
            "lmloss.cross_entropy, which falls back to torch"
        ) from exc
    if device.type == "cpu" and not isinstance(tl.sum, InterpretedFunction):
        raise RuntimeError(
            "lmloss.triton_cross_entropy runs CPU tensors under Triton's interpreter, which was "
            "off when triton was first imported in this process: set TRITON_INTERPRET=1 in the "
            "environment (or before anything imports triton)"
        )
    return _triton_kernels


def _check_z_loss_and_softcap(z_loss: object, softcap: object) -> None:
    if isinstance(z_loss, bool) or not isinstance(z_loss, (int, float)):
        raise TypeError(f"z_loss must be a float ≥ 0, got {z_loss!r}")
    if not 0.0 <= z_loss < math.inf:
        raise ValueError(f"z_loss must be finite and ≥ 0, got {z_loss!r}")
    if softcap is None:
        return
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)):
        raise TypeError(f"softcap must be a float > 0 or None, got {softcap!r}")
    if not 0.0 < softcap < math.inf:
        raise ValueError(f"softcap must be finite and > 0, got {softcap!r}")
