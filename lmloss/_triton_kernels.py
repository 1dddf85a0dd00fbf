"""The Triton kernels of :mod:`lmloss._triton_ce`: the fused forward (loss and gradient) and the
scaling of a stored gradient by the upstream gradient.

Each program owns ``ROWS`` rows and walks their columns in blocks of ``BLOCK_C``; everything is
computed in float32 whatever the logits' dtype. Offsets are int64: row × row stride and column ×
column stride, for any layout, past 2^31 elements.

Importing this module decorates the kernels: compiled, or interpreted when TRITON_INTERPRET=1
was set before triton was first imported (lmloss._triton_ce imports it lazily, for that reason).
"""

import triton
import triton.language as tl


@triton.jit
def _softcapped(x, softcap):
    """(s, e): s = softcap·tanh(x/softcap) and e = exp(−2|x/softcap|).

    tanh(u) = sign(u)·(1 − e)/(1 + e): no cancellation in 1 + e, and 1 − e loses only absolute
    precision, which s scales by softcap (libdevice's tanh does not run under the interpreter).
    """
    e = tl.exp(-2.0 * tl.abs(x / softcap))
    tanh = (1.0 - e) / (1.0 + e)
    return softcap * tl.where(x < 0, -tanh, tanh), e


@triton.jit
def cross_entropy_forward(
    logits_ptr,
    logits_row_stride,
    logits_col_stride,
    target_ptr,
    target_stride,
    weight_ptr,
    grad_ptr,
    grad_row_stride,
    grad_col_stride,
    loss_ptr,
    grad_scale_ptr,
    n_rows,
    n_cols,
    ignore_index,
    nll_share,
    smoothing_share,
    z_loss,
    softcap,
    HAS_WEIGHT: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr,
    HAS_Z_LOSS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Per row: the loss (float32, 0 for ignored rows, NaN for a target outside [0, C)) and,
    with COMPUTE_GRAD, ∂(grad_scale·loss)/∂logits in the gradient's dtype.

    Pass 1 (online over column blocks): the row's running maximum m, S = Σ exp(s_j − m̂) and,
    with label smoothing, A = Σ w_j·(s_j − m̂) and Σ w_j, where s = softcap·tanh(x/softcap) or x
    and m̂ is m with −inf read as 0 (a row with no finite logit yet has nothing to rescale).
    Pass 2: the row again, p_j = exp(s_j − m̂)/S, the gradient written.
    """
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    row_in_range = rows < n_rows
    target = tl.load(target_ptr + rows * target_stride, mask=row_in_range, other=ignore_index)
    target = target.to(tl.int64)
    counted = row_in_range & (target != ignore_index)
    valid = counted & (target >= 0) & (target < n_cols)
    bad_target = counted & ~valid
    safe_target = tl.where(valid, target, 0)
    row_offset = rows * logits_row_stride

    x_target = tl.load(
        logits_ptr + row_offset + safe_target * logits_col_stride, mask=valid, other=0.0
    ).to(tl.float32)
    if HAS_SOFTCAP:
        x_target, target_exp = _softcapped(x_target, softcap)
    if HAS_WEIGHT:
        target_weight = tl.load(weight_ptr + safe_target, mask=valid, other=0.0).to(tl.float32)
    else:
        target_weight = tl.where(valid, 1.0, 0.0)

    row_max = tl.full([ROWS], float("-inf"), tl.float32)
    sum_exp = tl.zeros([ROWS], tl.float32)
    shifted_sum = tl.zeros([ROWS], tl.float32)  # A
    weight_seen = tl.zeros([ROWS], tl.float32)  # Σ w_j over the columns read so far
    for start in range(0, n_cols, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        col_in_range = cols < n_cols
        mask = valid[:, None] & col_in_range[None, :]
        x = tl.load(
            logits_ptr + row_offset[:, None] + cols.to(tl.int64)[None, :] * logits_col_stride,
            mask=mask,
            other=float("-inf"),
        ).to(tl.float32)
        if HAS_SOFTCAP:
            capped, capped_exp = _softcapped(x, softcap)
            # Applied only where read: softcap(−inf) = −softcap is a logit, not an absent one.
            x = tl.where(mask, capped, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(x, axis=1))
        new_base = tl.where(new_max == float("-inf"), 0.0, new_max)
        # exp(m − m̂_new) with the raw old m: 0 when no finite logit was seen (S is 0 then).
        sum_exp = sum_exp * tl.exp(row_max - new_base) + tl.sum(
            tl.exp(x - new_base[:, None]), axis=1
        )
        if HAS_SMOOTHING:
            old_base = tl.where(row_max == float("-inf"), 0.0, row_max)
            shifted = tl.where(mask, x - new_base[:, None], 0.0)
            if HAS_WEIGHT:
                w = tl.load(weight_ptr + cols, mask=col_in_range, other=0.0).to(tl.float32)
                shifted = shifted * w[None, :]
                block_weight = tl.sum(w, axis=0)
            else:
                block_weight = tl.minimum(n_cols - start, BLOCK_C).to(tl.float32)
            # Every term is ≤ 0 (s_j ≤ m̂, and m̂ grows): a sum without cancellation. (m̂ falls
            # only from the 0 of an all −inf start, whose A is already −inf or empty.)
            shifted_sum = (
                shifted_sum - weight_seen * (new_base - old_base) + tl.sum(shifted, axis=1)
            )
            weight_seen = weight_seen + block_weight
        row_max = new_max

    base = tl.where(row_max == float("-inf"), 0.0, row_max)
    log_sum = tl.log(sum_exp)
    # Relative to the row's maximum: −log p_y = log S − (s_y − m̂). Forming lse = m̂ + log S
    # first would round log S away whenever |m̂| is large.
    nll_weight = nll_share * target_weight
    loss = tl.where(nll_weight == 0.0, 0.0, nll_weight * (log_sum - (x_target - base)))
    if HAS_SMOOTHING:
        # Σ_j w_j·(lse − s_j) = Σ_j w_j·log S − A: two non-negative terms.
        loss += smoothing_share * (weight_seen * log_sum - shifted_sum)
    lse = base + log_sum
    if HAS_Z_LOSS:
        loss += z_loss * target_weight * lse * lse  # not lse**2, which overflows first
    loss = tl.where(valid, loss, tl.where(bad_target, float("nan"), 0.0))
    tl.store(loss_ptr + rows, loss, mask=row_in_range)

    if COMPUTE_GRAD:
        grad_scale = tl.load(grad_scale_ptr).to(tl.float32)
        # ∂l/∂s_j = (nll_weight + ε/C·Σw + 2z·w_y·lse)·p_j − nll_weight·[j = y] − ε/C·w_j
        p_weight = nll_weight
        if HAS_SMOOTHING:
            p_weight += smoothing_share * weight_seen
        if HAS_Z_LOSS:
            p_weight += 2.0 * z_loss * target_weight * lse
        p_weight = p_weight * grad_scale / sum_exp
        target_share = nll_weight * grad_scale
        row_fill = tl.where(bad_target, float("nan"), 0.0)  # ignored rows: exactly 0
        grad_row_offset = rows * grad_row_stride
        for start in range(0, n_cols, BLOCK_C):
            cols = start + tl.arange(0, BLOCK_C)
            col_in_range = cols < n_cols
            mask = valid[:, None] & col_in_range[None, :]
            x = tl.load(
                logits_ptr + row_offset[:, None] + cols.to(tl.int64)[None, :] * logits_col_stride,
                mask=mask,
                other=float("-inf"),
            ).to(tl.float32)
            if HAS_SOFTCAP:
                capped_again, e = _softcapped(x, softcap)
                x = tl.where(mask, capped_again, float("-inf"))
                # 1 − tanh² = 4e/(1 + e)²: no cancellation where tanh is near ±1.
                chain = 4.0 * e / ((1.0 + e) * (1.0 + e))
            grad = p_weight[:, None] * tl.exp(x - base[:, None])
            grad -= tl.where(cols[None, :] == safe_target[:, None], target_share[:, None], 0.0)
            if HAS_SMOOTHING:
                if HAS_WEIGHT:
                    w = tl.load(weight_ptr + cols, mask=col_in_range, other=0.0).to(tl.float32)
                    grad -= (smoothing_share * grad_scale) * w[None, :]
                else:
                    grad -= smoothing_share * grad_scale
            if HAS_SOFTCAP:
                grad = grad * chain
            grad = tl.where(mask, grad, row_fill[:, None])
            tl.store(
                grad_ptr + grad_row_offset[:, None] + cols.to(tl.int64)[None, :] * grad_col_stride,
                grad.to(grad_ptr.dtype.element_ty),
                mask=row_in_range[:, None] & col_in_range[None, :],
            )


@triton.jit
def scale_rows(
    grad_ptr,
    grad_row_stride,
    grad_col_stride,
    upstream_ptr,
    upstream_stride,
    n_rows,
    n_cols,
    ROWS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """grad[i, :] *= upstream[i · upstream_stride] in place, in float32 (stride 0: a scalar).
    Exact zeros stay zero, whatever the upstream gradient (an ignored row's, as PyTorch's)."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    row_in_range = rows < n_rows
    upstream = tl.load(upstream_ptr + rows * upstream_stride, mask=row_in_range, other=0.0)
    upstream = upstream.to(tl.float32)
    row_offset = rows * grad_row_stride
    for start in range(0, n_cols, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        mask = row_in_range[:, None] & (cols < n_cols)[None, :]
        pointers = grad_ptr + row_offset[:, None] + cols.to(tl.int64)[None, :] * grad_col_stride
        grad = tl.load(pointers, mask=mask, other=0.0).to(tl.float32)
        scaled = tl.where(grad == 0.0, grad, grad * upstream[:, None])
        tl.store(pointers, scaled.to(grad_ptr.dtype.element_ty), mask=mask)
