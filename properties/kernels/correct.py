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
import torch.nn.functional as F
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
    """The rows' losses reduced, in the losses' dtype. They are added in float64: in float32,
    rows of z·lse² near the top of its range sum to inf where their mean is representable."""
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum(dtype=torch.float64).to(losses.dtype)
    if reduction == "mean":
        # Σ w_y over counted rows; 0/0 = NaN for a mean over no counted row, as PyTorch gives.
        mean = losses.sum(dtype=torch.float64) / target_weight.sum(dtype=torch.float64)
        return mean.to(losses.dtype)
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


# --- Contract 3: fused projection + loss ------------------------------------------------------


def chunked_linear_cross_entropy(
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
) -> Tensor:
    """Cross-entropy of the logits input·Wᵀ + b, CHUNK_ROWS rows at a time, with a hand-written
    gradient: the (N, C) logits never exist at once (see :class:`ChunkedLinearLoss`)."""
    return ChunkedLinearLoss().loss(
        input,
        linear_weight,
        target,
        linear_bias=linear_bias,
        weight=weight,
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
    )


class ChunkedLinearLoss:
    """The fused loss as chunked kernels compute it, one overridable step per method.

    Forward: for each chunk of rows, its logits z = F.linear(x, W, b) (the GEMM in the input
    dtype, float32 accumulation, rounded once to the input dtype), then the loss of the module
    docstring in float32 (float64 for float64). Backward: each chunk's logits again, g = ∂l/∂z
    in float32 times the upstream gradient, then ∂L/∂input = g·W for the chunk and g's
    contributions to ∂L/∂W = gᵀ·x and ∂L/∂b = Σ g summed over the chunks in float32, rounded
    once to the parameters' dtype. The kernels of :mod:`properties.kernels.broken_linear` are
    subclasses that override one step each, wrongly.
    """

    chunk_rows = CHUNK_ROWS

    def loss(
        self,
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
    ) -> Tensor:
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
        options = (ignore_index, reduction, label_smoothing, weight, z_loss, softcap)
        result: Tensor = _ChunkedLinearFunction.apply(
            self, input, linear_weight, linear_bias, target, *options
        )
        return result

    # --- The steps ----------------------------------------------------------------------------

    def row_chunks(self, rows: int) -> list[slice]:
        """The chunks of rows, the last one ragged."""
        return [slice(start, start + self.chunk_rows) for start in range(0, rows, self.chunk_rows)]

    def smoothing_shares(self, classes: int, epsilon: float, like: Tensor) -> Tensor:
        """(C,) the share of ε that label smoothing gives each class: ε/C over all C classes."""
        return torch.full((classes,), epsilon / classes, dtype=like.dtype, device=like.device)

    def softcap_chain(self, tanh: Tensor) -> Tensor:
        """d(s·tanh(z/s))/dz = 1 − tanh²(z/s)."""
        return 1 - tanh * tanh

    def mean_divisors(self, chunk_weights: list[Tensor]) -> list[Tensor]:
        """What each chunk's rows are divided by in a mean: Σ w_y over the whole batch."""
        if not chunk_weights:
            return []
        total = torch.stack([w.sum() for w in chunk_weights]).sum()
        return [total] * len(chunk_weights)

    def upstream(self, grad_output: Tensor) -> Tensor:
        """The gradient flowing into the loss, as given."""
        return grad_output

    def ignored_rows_gradient(self, p: Tensor) -> Tensor:
        """What an ignored row sends back to W and b: nothing (p is the row's softmax)."""
        return torch.zeros_like(p)

    def add_weight_gradient(
        self, total: Tensor, chunk: Tensor, weight_dtype: torch.dtype
    ) -> Tensor:
        """∂L/∂W summed over the chunks in float32 (float64 for float64)."""
        return total + chunk

    def bias_gradient(self, total: Tensor) -> Tensor:
        """∂L/∂b: the float32 sum over the chunks."""
        return total

    # --- One chunk ----------------------------------------------------------------------------

    def logits(
        self, x: Tensor, linear_weight: Tensor, linear_bias: Tensor | None, softcap: float | None
    ) -> tuple[Tensor, Tensor | None]:
        """(s, tanh(z/softcap) or None): a chunk's (capped) logits in the compute dtype."""
        z = F.linear(x, linear_weight, linear_bias).to(_compute_dtype(x))
        if softcap is None:
            return z, None
        tanh = torch.tanh(z / softcap)
        return softcap * tanh, tanh

    def chunk_losses(
        self, s: Tensor, y: Tensor, counted: Tensor, class_weight: Tensor, options: tuple[Any, ...]
    ) -> tuple[Tensor, Tensor]:
        """(l_i, w_{y_i}) of a chunk's rows, both 0 where ignored."""
        _, _, label_smoothing, _, z_loss, _ = options
        y_safe = torch.where(counted, y, 0).long()
        w_y = torch.where(counted, class_weight[y_safe], 0.0)
        row_max = s.amax(dim=1, keepdim=True)
        row_max = torch.where(torch.isfinite(row_max), row_max, 0.0)
        shifted = s - row_max  # relative to the row's maximum, as in chunked_cross_entropy
        log_sum = shifted.exp().sum(dim=1, keepdim=True).log()
        nll = (log_sum - shifted.gather(1, y_safe[:, None])).squeeze(1)
        losses = (1 - label_smoothing) * w_y * nll
        if label_smoothing:
            shares = self.smoothing_shares(s.shape[1], label_smoothing, s)
            losses = losses + (shares * class_weight * (log_sum - shifted)).sum(dim=1)
        if z_loss:
            lse = (log_sum + row_max).squeeze(1)
            losses = losses + z_loss * w_y * lse * lse  # not lse**2, which overflows first
        return torch.where(counted, losses, 0.0), w_y

    def chunk_gradient(
        self,
        s: Tensor,
        tanh: Tensor | None,
        y: Tensor,
        counted: Tensor,
        class_weight: Tensor,
        scale: Tensor,
        options: tuple[Any, ...],
    ) -> Tensor:
        """∂(Σ_i scale_i·l_i)/∂z of a chunk's rows (scale: the upstream gradient over the mean's
        divisor, a scalar or one value per row)."""
        _, _, label_smoothing, _, z_loss, _ = options
        y_safe = torch.where(counted, y, 0).long()
        w_y = torch.where(counted, class_weight[y_safe], 0.0)[:, None]
        row_max = s.amax(dim=1, keepdim=True)
        row_max = torch.where(torch.isfinite(row_max), row_max, 0.0)
        exp_shifted = (s - row_max).exp()
        sum_exp = exp_shifted.sum(dim=1, keepdim=True)
        p = exp_shifted / sum_exp
        one_hot = torch.zeros_like(s).scatter_(1, y_safe[:, None], 1.0)
        grad = (1 - label_smoothing) * w_y * (p - one_hot)
        if label_smoothing:
            shared = self.smoothing_shares(s.shape[1], label_smoothing, s) * class_weight
            grad = grad + p * shared.sum() - shared
        if z_loss:
            lse = sum_exp.log() + row_max
            grad = grad + 2 * z_loss * w_y * lse * p
        if tanh is not None:
            grad = grad * self.softcap_chain(tanh)
        scale = scale[:, None] if scale.dim() == 1 else scale
        return torch.where(counted[:, None], grad * scale, self.ignored_rows_gradient(p * scale))


class _ChunkedLinearFunction(torch.autograd.Function):
    """Forward: per-row losses chunk by chunk. Backward: each chunk's logits again."""

    @staticmethod
    def forward(
        ctx: Any,
        steps: ChunkedLinearLoss,
        input: Tensor,
        linear_weight: Tensor,
        linear_bias: Tensor | None,
        target: Tensor,
        *options: Any,
    ) -> Tensor:
        ignore_index, reduction, _, weight, _, softcap = options
        dtype = _compute_dtype(input)
        classes = linear_weight.shape[0]
        class_weight = (
            torch.ones(classes, dtype=dtype, device=input.device)
            if weight is None
            else weight.to(dtype)
        )
        chunks = steps.row_chunks(input.shape[0])
        losses, weights = [], []
        for chunk in chunks:
            s, _ = steps.logits(input[chunk], linear_weight, linear_bias, softcap)
            y = target[chunk]
            chunk_loss, chunk_weight = steps.chunk_losses(
                s, y, y != ignore_index, class_weight, options
            )
            losses.append(chunk_loss)
            weights.append(chunk_weight)
        divisors = steps.mean_divisors(weights) if reduction == "mean" else []
        # Summed chunk by chunk from a zero: a batch may have no (computed) chunk at all.
        zero = torch.zeros((), dtype=dtype, device=input.device)
        if reduction == "none":
            result = torch.zeros(input.shape[0], dtype=dtype, device=input.device)
            for chunk, chunk_loss in zip(chunks, losses, strict=True):
                result[chunk] = chunk_loss
        elif reduction == "sum":
            result = sum((chunk_loss.sum() for chunk_loss in losses), zero)
        else:
            parts = [part.sum() / d for part, d in zip(losses, divisors, strict=True)]
            # With no chunk the mean is 0/0: the NaN of a mean over no counted row.
            result = sum(parts, zero) if parts else zero / zero
        ctx.steps, ctx.options, ctx.divisors = steps, options, divisors
        ctx.save_for_backward(input, linear_weight, linear_bias, target, class_weight)
        return result.to(input.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        input, linear_weight, linear_bias, target, class_weight = ctx.saved_tensors
        steps: ChunkedLinearLoss = ctx.steps
        ignore_index, reduction, _, _, _, softcap = ctx.options
        dtype = class_weight.dtype
        upstream = steps.upstream(grad_output).to(dtype)
        weight_in_dtype = linear_weight.to(dtype)
        grad_input = torch.zeros_like(input)
        grad_weight = torch.zeros(linear_weight.shape, dtype=dtype, device=input.device)
        grad_bias = torch.zeros(linear_weight.shape[0], dtype=dtype, device=input.device)
        for k, chunk in enumerate(steps.row_chunks(input.shape[0])):
            s, tanh = steps.logits(input[chunk], linear_weight, linear_bias, softcap)
            y = target[chunk]
            counted = y != ignore_index
            scale = upstream[chunk] if reduction == "none" else upstream
            if reduction == "mean":
                # With no counted row every row's gradient is zero; keep it so, not 0/0.
                divisor = ctx.divisors[k]
                scale = scale / torch.where(divisor == 0, 1.0, divisor)
            g = steps.chunk_gradient(s, tanh, y, counted, class_weight, scale, ctx.options)
            # An ignored row's ∂L/∂input is exactly 0, also where g·W would meet an inf in W.
            grad_input[chunk] = torch.where(counted[:, None], g @ weight_in_dtype, 0.0).to(
                input.dtype
            )
            grad_weight = steps.add_weight_gradient(
                grad_weight, g.t() @ input[chunk].to(dtype), linear_weight.dtype
            )
            grad_bias = grad_bias + g.sum(dim=0)
        bias_gradient = (
            None if linear_bias is None else steps.bias_gradient(grad_bias).to(linear_bias.dtype)
        )
        return (
            None,
            grad_input,
            grad_weight.to(linear_weight.dtype),
            bias_gradient,
            *(None,) * 7,
        )


#: The same declared with its extra options, so z-loss and softcap are checked too.
chunked_linear_kernel = KernelSpec(
    fn=chunked_linear_cross_entropy,
    name="properties.kernels.correct.chunked_linear_cross_entropy (with z_loss, softcap)",
    contract="linear",
    options={"z_loss": "z_loss", "softcap": "softcap"},
    builds_logits=False,
)
