"""The fused projection + loss: cross-entropy of ``input @ linear_weightᵀ + linear_bias``, chunked.

:func:`linear_cross_entropy` is contract 3 of DESIGN.md, shaped like torch 2.13's
``F.linear_cross_entropy``: it equals ``F.cross_entropy(F.linear(input, W, b), target, ...)``
(plus the z-loss and the softcap of :mod:`properties.kernels.correct`) without ever holding the
(N, C) logits. A language model's head is the widest matrix it has: at N = 16,384 tokens and
C = 128,256 classes the float32 logits alone are 8 GiB, and their gradient as much again.

How (an autograd Function, :class:`_LinearCrossEntropy`):

- forward: for each chunk of ``chunk_rows`` rows, the chunk's logits (chunk_rows, C) are the
  GEMM ``F.linear`` computes in the input dtype (float32 accumulation, rounded once to the input
  dtype, as the unfused path rounds them), then everything of the loss in float32 (float64 stays
  float64). Only the per-row losses (N,) and Σ w_y are kept.
- backward: each chunk's logits are computed again, their gradient g = ∂L/∂z (chunk_rows, C)
  formed in float32 and scaled by the upstream gradient (and 1/Σ w_y for the mean), then
  ∂L/∂input of the chunk = g·W, ∂L/∂W += gᵀ·input, ∂L/∂b += Σ_rows g. ∂L/∂W and ∂L/∂b are
  accumulated in float32 across chunks and rounded once to the parameters' dtype at the end.

Extra memory: O(chunk_rows·C) for a chunk's logits and their gradient, plus, in the backward
pass, ∂L/∂W's float32 accumulator (C, D) and, for half-precision parameters, a float32 copy of
W (C, D) so that g·W is not computed from a g rounded to half precision (g sums to zero over a
row, and rounding it first would leave errors of u_half·Σ|g·W| in a gradient that cancels).

The mean divides by Σ w_{y_i} over the counted rows of the whole batch (NaN when none counts, as
PyTorch). Ignored rows contribute nothing: no loss, and an ∂L/∂input row of exactly 0. Under
``torch.autocast`` the GEMM runs in the autocast dtype, as ``F.linear`` would there, and the loss
comes back in float32, as :func:`lmloss.cross_entropy` returns it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lmloss._loss import (
    _autocast_enabled,
    _autocast_off,
    _check_floating,
    _check_integer,
    _check_options,
    _check_tensor,
)
from properties.engine.kernel import KernelSpec
from reference import DEFAULT_IGNORE_INDEX

#: Rows per chunk. Fixed, not derived from free memory, so that results do not depend on the
#: machine. 255 = 2^8 − 1: the batch sizes a checker likes (2^k − 1, 2^k, 2^k + 1 from 256 up,
#: and anything in the hundreds to thousands) all cross a chunk boundary, 256 with a last chunk
#: of one row. Large enough for the GEMMs to be efficient: at C = 128,256 (Llama 3's vocabulary)
#: one float32 (chunk_rows, C) tensor is 131 MB, and a chunk holds a few of them at once.
CHUNK_ROWS = 255


def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> Tensor:
    """Cross-entropy of the logits ``input @ linear_weightᵀ + linear_bias``, never all built at once.

    ``input``: (N, D) floating; ``linear_weight``: (C, D) of the same dtype; ``target``: (N,)
    class indices; ``linear_bias``: (C,) or None; ``weight``: class weights (C,) or None. For the
    counted rows i (target ≠ ignore_index), with z_i = W·x_i + b, s = softcap·tanh(z/softcap)
    when softcapped, lse = log Σ_c exp(s_c), class weights w (1 when none), smoothing ε:

        l_i = (1 − ε)·w_y·(lse − s_y) + (ε/C)·Σ_c w_c·(lse − s_c) + z_loss·w_y·lse²
        mean: Σ_i l_i / Σ_i w_{y_i}      sum: Σ_i l_i      none: l_i (0 for ignored rows)

    Differentiable in ``input``, ``linear_weight`` and ``linear_bias``. Returns the input's dtype
    (float32 under autocast); 0-d for mean and sum, (N,) for none.
    """
    _check_options(ignore_index, reduction, label_smoothing)
    _check_extra_options(z_loss, softcap, chunk_rows)
    autocast = isinstance(input, Tensor) and _autocast_enabled(input.device.type)
    if autocast:
        # What F.linear does under autocast: its floating operands, float64 excepted, in the
        # autocast dtype (so they may come in different dtypes, as to F.linear there).
        low = torch.get_autocast_dtype(input.device.type)
        input, linear_weight, linear_bias = (
            _autocast_operand(t, low) for t in (input, linear_weight, linear_bias)
        )
    _check_linear_arguments(input, linear_weight, target, linear_bias, weight)
    if input.device.type == "cpu":
        _check_target_range(target, linear_weight.shape[0], ignore_index)
    result: Tensor = _LinearCrossEntropy.apply(
        input,
        linear_weight,
        linear_bias,
        target,
        weight,
        ignore_index,
        reduction,
        float(label_smoothing),
        float(z_loss),
        None if softcap is None else float(softcap),
        chunk_rows,
        autocast,
    )
    return result


#: lmloss.linear_cross_entropy as contract 3 declares it, with both extra options, so that
#: ``lmloss check lmloss:LINEAR_SPEC`` checks the z-loss and the softcap too.
LINEAR_SPEC = KernelSpec(
    fn=linear_cross_entropy,
    name="lmloss.linear_cross_entropy (with z_loss, softcap)",
    contract="linear",
    options={"z_loss": "z_loss", "softcap": "softcap"},
    builds_logits=False,
)


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward: per-row losses chunk by chunk. Backward: each chunk's logits again, then g·W,
    gᵀ·x and Σ g from that chunk's gradient g."""

    @staticmethod
    def forward(
        ctx: Any,
        input: Tensor,
        linear_weight: Tensor,
        linear_bias: Tensor | None,
        target: Tensor,
        weight: Tensor | None,
        ignore_index: int,
        reduction: str,
        label_smoothing: float,
        z_loss: float,
        softcap: float | None,
        chunk_rows: int,
        autocast: bool,
    ) -> Tensor:
        dtype = _compute_dtype(input)
        loss = _ChunkLoss(
            linear_weight, linear_bias, weight, label_smoothing, z_loss, softcap, dtype
        )
        rows = input.shape[0]
        losses = torch.zeros(rows, dtype=dtype, device=input.device)
        target_weight = torch.zeros(rows, dtype=dtype, device=input.device)
        with _autocast_off(input.device.type):
            for chunk in _chunks(rows, chunk_rows):
                y = target[chunk]
                counted = y != ignore_index
                losses[chunk], target_weight[chunk] = loss.forward(input[chunk], y, counted)
        total = target_weight.sum()
        # The rows' losses are added in float64: in float32, rows of z·lse² near the top of its
        # range sum to inf where their mean (and often their sum) is representable.
        if reduction == "none":
            result = losses
        elif reduction == "sum":
            result = losses.sum(dtype=torch.float64).to(dtype)
        else:
            # 0/0 = NaN when no row counts, as PyTorch
            result = (losses.sum(dtype=torch.float64) / total.double()).to(dtype)
        ctx.save_for_backward(input, linear_weight, linear_bias, target, weight, total)
        ctx.options = (ignore_index, reduction, label_smoothing, z_loss, softcap, chunk_rows)
        return result if autocast else result.to(input.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        input, linear_weight, linear_bias, target, weight, total = ctx.saved_tensors
        ignore_index, reduction, label_smoothing, z_loss, softcap, chunk_rows = ctx.options
        wants_input, wants_weight, wants_bias = ctx.needs_input_grad[:3]
        dtype = _compute_dtype(input)
        loss = _ChunkLoss(
            linear_weight, linear_bias, weight, label_smoothing, z_loss, softcap, dtype
        )
        upstream = grad_output.to(dtype)
        if reduction == "mean":
            # With no counted row every row's gradient is zero; keep it so, not 0/0.
            upstream = upstream / torch.where(total == 0, 1.0, total)
        weight_in_dtype = linear_weight.to(dtype)  # no copy for float32 parameters
        grad_input = torch.zeros_like(input) if wants_input else None
        grad_weight = torch.zeros_like(linear_weight, dtype=dtype) if wants_weight else None
        grad_bias = (
            torch.zeros_like(linear_bias, dtype=dtype)
            if wants_bias and linear_bias is not None
            else None
        )
        with _autocast_off(input.device.type):
            for chunk in _chunks(input.shape[0], chunk_rows):
                y = target[chunk]
                counted = y != ignore_index
                scale = upstream[chunk] if reduction == "none" else upstream
                g = loss.gradient(input[chunk], y, counted, scale)  # (rows, C) in dtype
                if grad_input is not None:
                    grad_input[chunk] = (g @ weight_in_dtype).to(input.dtype)
                if grad_weight is not None:
                    grad_weight.addmm_(g.t(), input[chunk].to(dtype))
                if grad_bias is not None:
                    grad_bias += g.sum(dim=0)
        return (
            grad_input,
            None if grad_weight is None else grad_weight.to(linear_weight.dtype),
            None if grad_bias is None or linear_bias is None else grad_bias.to(linear_bias.dtype),
        ) + (None,) * 9


class _ChunkLoss:
    """The loss of a chunk of rows and its gradient with respect to their logits, in ``dtype``.

    See :func:`linear_cross_entropy` for the formula; the gradient of l_i with respect to s is
    (1 − ε)·w_y·(p − onehot(y)) + (ε/C)·(p·Σ_c w_c − w) + 2·z_loss·w_y·lse·p, p = softmax(s),
    times 1 − tanh²(z/softcap) with respect to z when softcapped.
    """

    def __init__(
        self,
        linear_weight: Tensor,
        linear_bias: Tensor | None,
        weight: Tensor | None,
        label_smoothing: float,
        z_loss: float,
        softcap: float | None,
        dtype: torch.dtype,
    ) -> None:
        self.linear_weight = linear_weight
        self.linear_bias = linear_bias
        self.class_weight = None if weight is None else weight.to(dtype)
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.dtype = dtype

    def _logits(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """s = the capped logits of rows x, in float32 (float64), and tanh(z/softcap) if capped."""
        z = F.linear(x, self.linear_weight, self.linear_bias).to(self.dtype)  # (rows, C)
        if self.softcap is None:
            return z, None
        tanh = torch.tanh(z / self.softcap)
        return self.softcap * tanh, tanh

    def _target_weight(self, y: Tensor, counted: Tensor) -> tuple[Tensor, Tensor]:
        """y with ignored rows pointed at class 0, and w_y (0 for ignored rows), shape (rows,)."""
        y_safe = torch.where(counted, y, 0).long()
        if self.class_weight is None:
            return y_safe, counted.to(self.dtype)
        return y_safe, torch.where(counted, self.class_weight[y_safe], 0.0)

    @staticmethod
    def _relative(s: Tensor) -> tuple[Tensor, Tensor]:
        """s − m and m, the row's maximum (0 for a row with no finite maximum)."""
        row_max = s.amax(dim=1, keepdim=True)
        # A row of all −inf has no finite max; subtracting −inf would make NaN out of nothing.
        row_max = torch.where(torch.isfinite(row_max), row_max, 0.0)
        return s - row_max, row_max

    def forward(self, x: Tensor, y: Tensor, counted: Tensor) -> tuple[Tensor, Tensor]:
        """Per-row losses l_i (0 where ignored) and w_{y_i} (0 where ignored), shape (rows,)."""
        s, _ = self._logits(x)
        y_safe, w_y = self._target_weight(y, counted)
        # Relative to the row's maximum: lse − s_y = log Σ exp(s − m) − (s_y − m). Forming
        # lse = m + log Σ first would round away log C whenever |m| is large.
        shifted, row_max = self._relative(s)
        log_sum = shifted.exp().sum(dim=1)
        log_sum = log_sum.log()
        nll = log_sum - shifted.gather(1, y_safe[:, None]).squeeze(1)
        losses = (1 - self.label_smoothing) * w_y * nll
        if self.label_smoothing:
            classes = s.shape[1]
            distance = log_sum[:, None] - shifted  # lse − s_c ≥ 0
            smooth = (
                distance.sum(dim=1)
                if self.class_weight is None
                else (self.class_weight * distance).sum(dim=1)
            )
            losses = losses + self.label_smoothing / classes * smooth
        if self.z_loss:
            lse = log_sum + row_max.squeeze(1)
            losses = losses + self.z_loss * w_y * lse * lse  # not lse**2, which overflows first
        # Ignored rows hold exactly zero, also where their row would give inf or NaN.
        return torch.where(counted, losses, 0.0), w_y

    def gradient(self, x: Tensor, y: Tensor, counted: Tensor, scale: Tensor) -> Tensor:
        """∂(Σ_i scale_i·l_i)/∂z for rows x: (rows, C), rows of ignored targets exactly 0.

        ``scale`` is the upstream gradient (already divided by Σ w_y for a mean): a scalar, or
        one value per row for reduction="none".
        """
        s, tanh = self._logits(x)
        classes = s.shape[1]
        y_safe, w_y = self._target_weight(y, counted)
        shifted, row_max = self._relative(s)
        p = shifted.exp_()  # s − m is not needed again: reuse its memory
        sum_exp = p.sum(dim=1, keepdim=True)
        p /= sum_exp
        w_y = w_y[:, None]
        # (1 − ε)·w_y·(p − onehot), then the smoothing and z-loss terms, all multiples of p but
        # two: −(1 − ε)·w_y at the target and −(ε/C)·w everywhere.
        p_coefficient = (1 - self.label_smoothing) * w_y
        if self.label_smoothing:
            total_weight = float(classes) if self.class_weight is None else self.class_weight.sum()
            p_coefficient = p_coefficient + self.label_smoothing / classes * total_weight
        if self.z_loss:
            lse = sum_exp.log() + row_max
            p_coefficient = p_coefficient + 2 * self.z_loss * w_y * lse
        g = p.mul_(p_coefficient)
        g.scatter_add_(1, y_safe[:, None], -(1 - self.label_smoothing) * w_y)
        if self.label_smoothing:
            uniform = torch.ones_like(g[0]) if self.class_weight is None else self.class_weight
            g -= self.label_smoothing / classes * uniform
        if tanh is not None:
            g *= 1 - tanh * tanh
        scale = scale[:, None] if scale.dim() == 1 else scale
        # Ignored rows get exactly 0, also under an infinite or NaN upstream gradient.
        return torch.where(counted[:, None], g * scale, 0.0)


def _autocast_operand(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, Tensor) and value.is_floating_point() and value.dtype != torch.float64:
        return value.to(dtype)
    return value


def _chunks(rows: int, chunk_rows: int) -> list[slice]:
    return [slice(start, min(start + chunk_rows, rows)) for start in range(0, rows, chunk_rows)]


def _compute_dtype(input: Tensor) -> torch.dtype:
    """float32 for half types and float32, float64 for float64."""
    return torch.promote_types(input.dtype, torch.float32)


def _check_linear_arguments(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    linear_bias: Tensor | None,
    weight: Tensor | None,
) -> None:
    _check_tensor(input, "input", "of shape (N, D)")
    if input.dim() != 2:
        raise ValueError(
            f"input must have shape (N, D), got shape {tuple(input.shape)}"
            + (
                ": flatten (B, T, D) hidden states with input.reshape(-1, D)"
                if input.dim() == 3
                else ""
            )
        )
    _check_floating(input, "input", "of shape (N, D)")
    N, D = input.shape
    _check_tensor(linear_weight, "linear_weight", f"of shape (C, D) = (C, {D})")
    if linear_weight.dim() != 2 or linear_weight.shape[1] != D:
        raise ValueError(
            f"linear_weight must have shape (C, D) = (C, {D}) to match input {tuple(input.shape)}, "
            f"got {tuple(linear_weight.shape)}"
        )
    _check_floating(linear_weight, "linear_weight", "of shape (C, D)")
    if linear_weight.dtype != input.dtype:
        raise TypeError(
            f"linear_weight has dtype {linear_weight.dtype}, input {input.dtype}: "
            "the projection needs one dtype (cast one of them, or use torch.autocast)"
        )
    C = linear_weight.shape[0]
    if C == 0:
        raise ValueError("linear_weight has no rows: there must be at least one class")
    if linear_weight.device != input.device:
        raise ValueError(f"linear_weight is on {linear_weight.device}, input on {input.device}")
    if linear_bias is not None:
        _check_tensor(linear_bias, "linear_bias", f"of shape (C,) = ({C},)")
        if tuple(linear_bias.shape) != (C,):
            raise ValueError(
                f"linear_bias must have shape (C,) = ({C},), got {tuple(linear_bias.shape)}"
            )
        if linear_bias.dtype != input.dtype:
            raise TypeError(f"linear_bias has dtype {linear_bias.dtype}, input {input.dtype}")
        if linear_bias.device != input.device:
            raise ValueError(f"linear_bias is on {linear_bias.device}, input on {input.device}")
    expected = f"of shape (N,) = ({N},)"
    _check_tensor(target, "target", expected)
    if target.dim() != 1:
        raise ValueError(f"target must have shape (N,) = ({N},), got shape {tuple(target.shape)}")
    _check_integer(target, "target", expected)
    if target.shape[0] != N:
        raise ValueError(
            f"target must have one class index per row of input: input has N = {N} rows, "
            f"target has {target.shape[0]}"
        )
    if target.device != input.device:
        raise ValueError(f"target is on {target.device}, input on {input.device}")
    if weight is not None:
        _check_tensor(weight, "weight", f"of shape (C,) = ({C},)")
        _check_floating(weight, "weight", f"of shape (C,) = ({C},)")
        if tuple(weight.shape) != (C,):
            raise ValueError(f"weight must have shape (C,) = ({C},), got {tuple(weight.shape)}")
        if weight.device != input.device:
            raise ValueError(f"weight is on {weight.device}, input on {input.device}")


def _check_extra_options(z_loss: object, softcap: object, chunk_rows: object) -> None:
    if isinstance(z_loss, bool) or not isinstance(z_loss, (int, float)):
        raise TypeError(f"z_loss must be a float ≥ 0, got {z_loss!r}")
    if not 0.0 <= z_loss < float("inf"):
        raise ValueError(f"z_loss must be finite and ≥ 0, got {z_loss!r}")
    if softcap is not None:
        if isinstance(softcap, bool) or not isinstance(softcap, (int, float)):
            raise TypeError(f"softcap must be a float > 0 or None, got {softcap!r}")
        if not 0.0 < softcap < float("inf"):
            raise ValueError(f"softcap must be finite and > 0, got {softcap!r}")
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int):
        raise TypeError(f"chunk_rows must be an int ≥ 1, got {chunk_rows!r}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")


def _check_target_range(target: Tensor, classes: int, ignore_index: int) -> None:
    """On the CPU, where it costs no device synchronisation: every counted target in [0, C)."""
    counted = target != ignore_index
    outside = counted & ((target < 0) | (target >= classes))
    if bool(outside.any()):
        value = int(target[outside][0])
        raise ValueError(
            f"target {value} is outside [0, C) = [0, {classes}) and is not ignore_index "
            f"({ignore_index})"
        )
