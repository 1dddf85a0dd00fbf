"""Precision at large common offsets: a row whose logits all carry the same large c keeps the
loss's precision, not that of lse.

ℓ = lse(x) − x_y = log Σ_j exp(x_j − m) − (x_y − m) holds no |c| once the row's maximum m is
subtracted: a kernel that forms x_y − m first (PyTorch) is as accurate at x + c·1 as at x. A
kernel that forms lse = m + log S first and subtracts x_y afterwards (pytorch/pytorch#38839's
bug class; Liger-Kernel's formula) rounds lse to the dtype's grid at |c| and loses up to u·|c|.
The general loss bound allows u·|lse|, so CE-SHIFT and the value clauses let that pass; this
clause compares with :func:`properties.tolerances.offset_loss_bound`, which leaves it out.

The logits are built exactly representable in the dtype under test: a row's offset c is
±(2^k + j·q) for k in 10…20 (less where the dtype's range ends first: float16) and q the dtype's
spacing at 2^k, and every logit is c plus a multiple of q within 2^(k−2) of c, so the kernel
receives them unrounded and the oracle sees the same values. In bfloat16 (8 significand bits)
q = 2^(k−7) is 8 to 8192: the logits of a row are then c plus a few steps of q, which a
bfloat16 kernel still has to get right to its own precision.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from hypothesis import strategies as st

from properties.ce.calls import batch_reproducer, context, expected_loss, loss_of, problem_of
from properties.engine.checks import check_close
from properties.engine.clause import Trial, clause
from properties.engine.dtypes import largest_finite, torch_dtype
from properties.strategies import (
    DEFAULT_IGNORE_INDEX,
    Batch,
    Drawn,
    batch_shapes,
    class_weights,
    loss_options,
    seeds,
    targets,
)
from properties.tolerances import offset_loss_bound

#: Offsets are ±2^k·(1 + j·2^(1−p)), j ≤ 2^(p−3), with k in this range (lowered to fit float16).
SMALLEST_OFFSET_EXPONENT = 10
LARGEST_OFFSET_EXPONENT = 20
#: The logits' own scale σ (before the offset) is drawn log-uniform in [2^-4, 2^4] and never
#: finer than the dtype's spacing q at the offset; base values are standard normal within ±8.
#: With a dominant target up to 2^4 above its row, |x − c| ≤ 8·max(2^4, q) + 2^4 + 1.5·q ≤ 2^(k−2)
#: for every k ≥ 10 and p ≥ 8, and 2^k ≤ |c| ≤ 1.25·2^k, so each logit lies in [0.75·2^k, 1.5·2^k],
#: where the spacing is q/2 (below 2^k) or q: every c + z is exact.
SCALE_EXPONENTS = (-4.0, 4.0)
BASE_SPREAD = 8.0
LARGEST_GAP = 16.0
#: Shapes within a quarter of the oracle's usual budget (strategies.LOGITS_PER_EXAMPLE) keep the
#: clause to about 2 s of CPU per dtype in the quick profile.
MAX_LOGITS = 2048
#: Where the target stands in its row: anywhere, tied with the row's maximum, or above it by a
#: gap (a small loss, where an error of u·|c| stands out most).
TARGET_PLACES = ("anywhere", "tied with the maximum", "above the maximum")
#: Built once: constructing (and validating) the strategy anew costs more than drawing from it.
_SHAPES = batch_shapes(max_logits=MAX_LOGITS)


def significand_bits(dtype: str) -> int:
    """p, with the implicit bit: 24 for float32, 8 for bfloat16, 11 for float16."""
    return round(-math.log2(torch.finfo(torch_dtype(dtype)).eps)) + 1


def offset_exponents(dtype: str) -> tuple[int, int]:
    """The k of the offsets ±2^k…: 10 to 20, or less where a logit, up to 1.5·2^k, would pass
    the dtype's largest finite value (float16: up to 15)."""
    top = math.floor(math.log2(largest_finite(dtype) / 1.5))
    return SMALLEST_OFFSET_EXPONENT, min(LARGEST_OFFSET_EXPONENT, top)


@st.composite
def offset_logits(
    draw: st.DrawFn, *, rows: int, vocab_size: int, dtype: str, target: Drawn
) -> Drawn:
    """Logits (rows, C) in ``dtype``, x_ij = c_i + z_ij, exact in the dtype, with one offset for
    the batch or one per row (c_i = ±(2^k + j·q), q = 2^(k+1−p)) and z_ij = q·round(σ_i·n_ij/q),
    n standard normal within ±8, σ_i = max(σ, q); optionally the target tied with or above its
    row's maximum."""
    bits = significand_bits(dtype)
    low, high = offset_exponents(dtype)
    per_row = rows > 1 and draw(st.booleans())
    scale = 2.0 ** draw(st.floats(*SCALE_EXPONENTS))
    place = draw(st.sampled_from(TARGET_PLACES))
    gap = draw(st.floats(1.0, LARGEST_GAP)) if place == "above the maximum" else 0.0
    seed = draw(seeds())
    if per_row:
        exponent = f"torch.randint({low}, {high + 1}, ({rows}, 1), generator=g).double()"
        sign = f"torch.randint(0, 2, ({rows}, 1), generator=g).double() * 2 - 1"
    else:
        # Half the batches at the largest offset, where the error of forming lse first is
        # largest (u_w·2^20 = 1/16: in bfloat16 it shows there only, past the output's rounding).
        k = float(draw(st.one_of(st.just(high), st.integers(low, high))))
        side = draw(st.sampled_from([1.0, -1.0]))
        exponent = f"torch.full(({rows}, 1), {k!r}, dtype=torch.float64)"
        sign = f"torch.full(({rows}, 1), {side!r}, dtype=torch.float64)"
    steps = f"torch.randint(0, {2 ** (bits - 3) + 1}, ({rows}, 1), generator=g)"
    lines = [
        f"g = torch.Generator().manual_seed({seed})",
        f"k = {exponent}",
        f"sign = {sign}",
        f"q = torch.exp2(k - {bits - 1})  # the spacing of {dtype} in [2^k, 2^(k+1))",
        f"c = sign * (torch.exp2(k) + {steps} * q)  # each row's common offset",
        f"n = torch.randn({rows}, {vocab_size}, generator=g, dtype=torch.float64)",
        f"n = n.clamp({-BASE_SPREAD}, {BASE_SPREAD})",
        f"z = (n * q.clamp(min={scale!r}) / q).round() * q",
    ]
    column = f"{target.name}.reshape(-1).clamp(0, {vocab_size - 1})"
    every_row = f"torch.arange({rows})"
    if place == "tied with the maximum":
        lines.append(f"z[{every_row}, {column}] = z.amax(1)")
    elif place == "above the maximum":
        gap_steps = f"({gap!r} / q[:, 0]).ceil()"
        lines.append(f"z[{every_row}, {column}] = z.amax(1) + {gap_steps} * q[:, 0]")
    lines.append(f"logits = (c + z).to({torch_dtype(dtype)})  # exact: nothing is rounded")
    recipe = "\n".join(lines)
    scope = {target.name: target.value}
    namespace: dict[str, Any] = {"torch": torch, **scope}
    exec(compile(recipe, "<recipe of logits>", "exec"), namespace)
    logits = namespace["logits"]
    # The premise: the kernel receives the very values built in float64, none rounded.
    assert torch.equal(logits.double(), namespace["c"] + namespace["z"]), "a logit was rounded"
    return Drawn(name="logits", value=logits, recipe=recipe, scope=scope)


@st.composite
def offset_batches(draw: st.DrawFn, *, trial: Trial) -> Batch:
    """A batch of offset logits for the trial's kernel: any reduction it supports ("none"
    first, where each token's error shows alone), ignore_index and class weights when it
    accepts them. No label smoothing (its C terms per row cost the oracle more than the rest of
    the clause, and its Σ_j (lse − x_j) goes wrong the same way as lse − x_y), z-loss or soft cap
    (see offset_loss_bound)."""
    rows, vocab = draw(_SHAPES)
    chosen = draw(
        loss_options(
            vocab_size=vocab,
            kernel=trial.kernel,
            reductions=("none", "sum", "mean"),
            options=("ignore_index",),
        )
    )
    # As in properties.strategies.batches: targets may hold the default ignore_index unless the
    # kernel takes no ignore_index keyword.
    accepted = "ignore_index" in trial.kernel.accepts
    ignore = chosen.get("ignore_index", DEFAULT_IGNORE_INDEX) if accepted else None
    target = draw(targets(rows=rows, vocab_size=vocab, ignore_index=ignore))
    logits = draw(offset_logits(rows=rows, vocab_size=vocab, dtype=trial.dtype, target=target))
    weighted = "weight" in trial.kernel.accepts and draw(st.booleans())
    weight = draw(class_weights(vocab_size=vocab, dtype=trial.dtype)) if weighted else None
    return Batch(logits, target, weight, chosen)


@clause()
def losses_keep_their_precision_at_large_common_offsets(trial: Trial) -> None:
    """ℓ_i = log Σ_j exp(x_ij − m_i) − (x_{i,y_i} − m_i) within (2C + 2R + |x_{i,y_i} − m_i| + log C)·u_w plus the output's rounding, with no u·|c_i| term, when every logit of row i carries a common offset |c_i| ≥ 2^10.  [CE-OFFSET] tol: offset_loss"""
    batch = trial.data.draw(offset_batches(trial=trial), label="batch")
    problem = problem_of(batch)
    expected = expected_loss(trial, problem)
    comment = f"# the oracle: {float(expected)!r}" if expected.dim() == 0 else ""
    offsets = _offset_range(batch)
    check_close(
        trial,
        quantity="loss",
        actual=loss_of(trial, batch.x, batch.y, batch.keywords()),
        expected=expected,
        bound=offset_loss_bound(problem),
        context=f"{context(batch, trial)}; row maxima {offsets}",
        reproducer=batch_reproducer(trial, batch, expected=comment),
    )


def _offset_range(batch: Batch) -> str:
    """How far the rows are offset, as the report shows it: their maxima's magnitudes."""
    peaks = batch.x.double().amax(dim=1).abs()
    low, high = float(peaks.min()), float(peaks.max())
    return f"|m| = {high:.6g}" if low == high else f"|m| from {low:.6g} to {high:.6g}"


CLAUSES = (losses_keep_their_precision_at_large_common_offsets,)
