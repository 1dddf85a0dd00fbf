"""The one tolerance module: every bound the suite compares against, derived from error analysis.

A bound is the largest error a *correct* kernel can make on the given input, so an error is
reported as a ratio to it (1.0 is the bound). Bounds are absolute and computed per input from
magnitudes of that input (the row's largest logit, spread, log-sum-exp, each token's loss), in
float64, which is ample for magnitudes.

What a correct kernel may do, and what it may not (the error model):

- It exponentiates and sums a row in float32 at least (unit roundoff ``u_w = 2^-24``), in any
  order, with or without an online (rescaling) max. A kernel that rounds float32 logits to
  bfloat16, or accumulates a row's exponentials in bfloat16, is not the loss.
- Its outputs, and per-row and per-class values it may keep (the row's sum of exponentials or
  its log-sum-exp, the log-softmax for the backward pass), are in the input dtype (``u_s``:
  2^-24 float32, 2^-8 bfloat16, 2^-11 float16): PyTorch's CPU log_softmax keeps the row's sum
  in bfloat16 for bfloat16 input, an error of about u_s in every log-probability of the row.
  Keeping the *softmax* of float32 logits in bfloat16 is not the loss: that is 2^16 times u_s.
- It sums per-token losses over the batch either in float32, in any order, or in 16-way
  blocks in the input dtype: PyTorch's CPU nll_loss sums a bfloat16 mean in bfloat16 that way
  (a cascade of 8 levels of 16 partial sums) and is correct. A plain running sum in bfloat16
  stalls once the total is 2^8 times a term: that kernel is wrong and these bounds say so.

Where a correct and a wrong kernel are hard to tell apart: every bound grows with C, the row's
spread R and its |lse| (worst cases for any summation order). Rounding float32 logits to
bfloat16 moves a loss by about 2^-9·|x|, against a float32 bound of about
(2C + 2R + |lse|)·2^-24: the bug hides when |x| ≲ (2C + 2R)·2^-15, e.g. logits below 0.25 in
magnitude with C = 4096, or below 1e-3 with C = 16. Keeping the softmax in bfloat16 moves a
gradient entry by up to 2^-8·p against a bound of about p·(2C + 2R + |lse|)·2^-24: it hides only
once 2C + 2R + |lse| ≳ 2^16 (C ≳ 30,000, or logits of magnitude ≳ 30,000); at C = 2047 it
exceeds the bound 15-fold. In bfloat16 a sum over thousands of tokens is allowed up to ~20%
error (the 16-way cascade bound at N = 4096 is γ_45 = 45·2^-8/(1 − 45·2^-8)), and a mean about
twice that (numerator and denominator): a mean that counts ignored tokens hides there when they
are under about a third of the batch, and shows on small batches, where the bound is a few u_s.
Measured against these bounds (200 examples per clause, steered toward the largest ratio by
hypothesis.target), torch.nn.functional.cross_entropy on CPU reaches at most 0.49 in float32
(a gradient) and 0.59 in bfloat16 (a gradient: log-probabilities near -8 kept in bfloat16);
per-token losses stay below 0.28. By the analysis a bfloat16 row sum just past a rounding tie
reaches 0.5 of the per-token bound.

Every clause names its tolerance by a key of :data:`TOLERANCES`.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from properties.ce.problem import Problem
from properties.engine.defaults import DTYPES
from properties.engine.dtypes import smallest_normal, unit_roundoff

if TYPE_CHECKING:
    from properties.lce.problem import LinearProblem

#: Unit roundoff u = 2^-p (p = significand bits with the implicit one): a correctly rounded
#: result lies within a relative u of the exact value (2^-24, 2^-8, 2^-11; from torch.finfo).
UNIT_ROUNDOFF: Mapping[str, float] = {dtype: unit_roundoff(dtype) for dtype in DTYPES}
#: The working precision a correct kernel computes a row in: float32.
WORKING = UNIT_ROUNDOFF["float32"]
#: Smallest normal numbers: below them a kernel may flush to zero (GPUs do), an absolute error.
SMALLEST_NORMAL: Mapping[str, float] = {dtype: smallest_normal(dtype) for dtype in DTYPES}
#: −log of float64's smallest subnormal 2^-1074 (1074·log 2 ≈ 744.4): a sequence whose negative
#: log-probability exceeds it has a probability Π p that underflows float64 to 0.
FLOAT64_UNDERFLOW_NLL = -math.log(math.ulp(0.0))
#: PyTorch's CPU nll_loss sums in cascades of 16-term running sums (aten LossNLL.cpp).
_CASCADE_WIDTH = 16


def storage_roundoff(dtype: str) -> float:
    try:
        return UNIT_ROUNDOFF[dtype]
    except KeyError:
        raise ValueError(f"no error model for dtype {dtype!r}") from None


def gamma(operations: float, u: float) -> float:
    """Higham's γ_k = k·u / (1 − k·u): the relative error bound of k chained roundings."""
    product = operations * u
    return math.inf if product >= 1.0 else product / (1.0 - product)


def accumulation_error(terms: int, dtype: str) -> float:
    """Relative error of a sum of ``terms`` non-negative numbers, summed as a correct kernel may.

    A running sum in float32 makes terms − 1 roundings on the path of the first term (γ_{N−1}
    in u_w); 16-way cascaded sums in the storage dtype make at most 15 roundings per level, and
    ⌈log16 N⌉ levels (γ in u_s). A kernel may do either, so the bound is the larger.
    """
    if terms <= 1:
        return 0.0
    running_in_float32 = gamma(terms - 1, WORKING)
    levels = math.ceil(math.log(terms, _CASCADE_WIDTH) - 1e-12)
    cascaded = gamma(min(terms - 1, (_CASCADE_WIDTH - 1) * levels), storage_roundoff(dtype))
    return max(running_in_float32, cascaded)


_Value = TypeVar("_Value")
#: Problems whose values each memo below keeps: a clause asks for several bounds of one problem.
_PROBLEMS_KEPT = 4


def _per_problem(compute: Callable[[Problem], _Value]) -> Callable[[Problem], _Value]:
    """``compute``, keeping its value for the latest few problems, by identity: one bound needs
    the rows' magnitudes and the token losses several times over (loss_bound computed _rows three
    times), and a clause asks for the loss and the gradient bound of one problem. A Problem is
    frozen, and nothing writes into its tensors or into the values kept here."""
    kept: list[tuple[weakref.ref[Problem], _Value]] = []

    @functools.wraps(compute)
    def remembered(problem: Problem) -> _Value:
        for reference, value in kept:
            if reference() is problem:
                return value
        value = compute(problem)
        kept.insert(0, (weakref.ref(problem), value))
        del kept[_PROBLEMS_KEPT:]
        return value

    return remembered


@dataclass(frozen=True)
class _Rows:
    """Per-row magnitudes of the effective (soft-capped) logits, in float64."""

    peak: torch.Tensor  # (N,) the largest finite logit m
    spread: torch.Tensor  # (N,) m minus the smallest finite logit: R
    lse: torch.Tensor  # (N,)
    log_probs: torch.Tensor  # (N, C), -inf on masked classes
    probs: torch.Tensor  # (N, C)
    lse_error: torch.Tensor  # (N,) bound on the absolute error of a row's log-sum-exp


@_per_problem
def _rows(problem: Problem) -> _Rows:
    x = problem.logits
    if problem.softcap is not None:
        x = problem.softcap * torch.tanh(x / problem.softcap)
    finite = torch.isfinite(x)
    peak = torch.where(finite, x, -math.inf).amax(dim=1)
    floor = torch.where(finite, x, math.inf).amin(dim=1)
    spread = peak - floor
    lse = torch.logsumexp(x, dim=1)
    log_probs = x - lse[:, None]
    c = problem.classes
    # Log-sum-exp as m + log Σ exp(x_j − m), in u_w:
    #   x_j − m rounds by u·|x_j − m| ≤ u·R, moving the sum by at most u·R relative;
    #   each exp rounds by u; a sum of C positive terms in any order is within (C − 1)·u;
    #   an online max rescales the running sum up to C times, each by a rounded exp(Δm)
    #   (another C·u and u·Σ|Δm| ≤ u·R) — hence 2C and 2R;
    #   log turns the relative error of the sum into an absolute one, plus u·log C;
    #   adding m back rounds by u·|lse|. Four more u for the remaining roundings.
    lse_error = WORKING * (2 * c + 2 * spread + lse.abs() + math.log(c) + 4)
    if problem.softcap is not None:
        # s·tanh(x/s) in float32 is within 4·u_w·s of exact (three roundings and tanh's own),
        # and a kernel may keep it in the storage dtype (u_s·s); a loss moves by at most twice
        # the largest shift of a logit.
        storage = storage_roundoff(problem.dtype)
        lse_error = lse_error + 2 * (4 * WORKING + storage) * problem.softcap
    return _Rows(peak, spread, lse, log_probs, log_probs.exp(), lse_error)


def _kept_lse_error(problem: Problem, rows: _Rows) -> torch.Tensor:
    """A kernel may keep a row's values in the storage dtype: its sum of exponentials s and
    then its log or reciprocal (two roundings, each moving lse by up to u_s), or lse itself
    (u_s·|lse|). PyTorch's CPU log_softmax rounds s to bfloat16 for bfloat16 input (measured:
    errors up to 0.91·u_s·(1 + |ℓ|), flat in C; at s = 1 + 2^-8, a tie, one rounding alone
    moves lse by 0.99·u_s)."""
    return storage_roundoff(problem.dtype) * (2 + rows.lse.abs())


def _weights(problem: Problem) -> torch.Tensor:
    if problem.weight is None:
        return torch.ones(problem.classes, dtype=torch.float64)
    return problem.weight


def _target_weights(problem: Problem) -> torch.Tensor:
    """w_{y_i} for counted rows, 0 for ignored ones."""
    safe_target = torch.where(problem.counted, problem.target, 0)
    return torch.where(problem.counted, _weights(problem)[safe_target], 0.0)


def _target_nll(problem: Problem, rows: _Rows) -> torch.Tensor:
    """(N,) −log p_{y_i}; 0 for ignored rows."""
    safe_target = torch.where(problem.counted, problem.target, 0)
    nll = -rows.log_probs.gather(1, safe_target[:, None])[:, 0]
    return torch.where(problem.counted, nll, 0.0)


@_per_problem
def token_losses(problem: Problem) -> torch.Tensor:
    """Each token's loss in float64 (as reduction="none" returns it), for the magnitudes:
    (1 − ε)·w_y·(−log p_y) + (ε/C)·Σ_j w_j·(−log p_j) + z·w_y·lse², 0 for ignored tokens."""
    rows = _rows(problem)
    eps, c = problem.label_smoothing, problem.classes
    w_y = _target_weights(problem)
    loss = (1 - eps) * w_y * _target_nll(problem, rows) + problem.z_loss * w_y * rows.lse**2
    if eps > 0:
        smooth = -(rows.log_probs * _weights(problem)).sum(1)
        loss = loss + eps / c * smooth
    return torch.where(problem.counted, loss, 0.0)


def token_loss_bounds(problem: Problem) -> torch.Tensor:
    """(N,) bounds on each token's loss error, 0 for ignored tokens (they are exactly 0)."""
    rows = _rows(problem)
    # −log p_j = lse − x_j: the log-sum-exp's error, and the row's values a kernel may keep in
    # the storage dtype; the same for every class of the row.
    row_error = rows.lse_error + _kept_lse_error(problem, rows)
    return _token_bounds(problem, rows, row_error[:, None].expand_as(rows.log_probs))


def _token_bounds(problem: Problem, rows: _Rows, class_error: torch.Tensor) -> torch.Tensor:
    """(N,) per-token bounds, given ``class_error`` (N, C): a bound on the error of each −log p_ij
    as computed in the working dtype, before its last subtraction and the roundings to storage."""
    u_s = storage_roundoff(problem.dtype)
    eps, c = problem.label_smoothing, problem.classes
    w_y = _target_weights(problem)
    nll = _target_nll(problem, rows)
    safe_target = torch.where(problem.counted, problem.target, 0)
    target_error = class_error.gather(1, safe_target[:, None])[:, 0]
    # −log p_y: its error in the working dtype, one subtraction in u_w, and up to two roundings
    # to the storage dtype (PyTorch keeps log p_y there, then multiplies by w_y).
    nll_error = target_error + (WORKING + 2 * u_s) * nll
    # Label smoothing's Σ_j w_j·(−log p_j): each term carries its error and its own roundings;
    # the sum over C classes is in float32 ((C − 1)·u_w relative), then stored.
    finite = torch.isfinite(rows.log_probs)
    magnitudes = torch.where(finite, -rows.log_probs, 0.0) * _weights(problem)
    smooth_error = (torch.where(finite, class_error, 0.0) * _weights(problem)).sum(1)
    smooth_error = smooth_error + magnitudes.sum(1) * (c * WORKING + 2 * u_s)
    losses = token_losses(problem)
    # z-loss z·w_y·lse²: a lse error δ moves lse² by 2|lse|·δ; squaring, scaling and storing
    # round three more times.
    z_error = problem.z_loss * w_y * (2 * rows.lse.abs() * rows.lse_error + 3 * u_s * rows.lse**2)
    smoothing_error = eps / c * smooth_error if eps > 0 else 0.0
    bound = (
        (1 - eps) * w_y * nll_error
        + smoothing_error
        + z_error
        # Combining the terms and rounding the output: three roundings in the storage dtype;
        # an output below the smallest normal may be flushed to zero.
        + 3 * u_s * losses.abs()
        + SMALLEST_NORMAL[problem.dtype]
    )
    return torch.where(problem.counted, bound, 0.0)


def loss_bound(problem: Problem) -> torch.Tensor:
    """Bound on the loss error for the problem's reduction: (N,) for "none", else a 0-d tensor."""
    return _reduced_bound(problem, token_loss_bounds(problem))


def _reduced_bound(problem: Problem, per_token: torch.Tensor) -> torch.Tensor:
    """The bound of the problem's reduction over tokens whose own errors are within ``per_token``."""
    if problem.reduction == "none":
        return per_token
    losses = token_losses(problem)
    counted = int(problem.counted.sum())
    accumulation = accumulation_error(counted, problem.dtype)
    u_s = storage_roundoff(problem.dtype)
    total = torch.where(problem.counted, losses, 0.0)
    if problem.reduction == "sum":
        # The tokens' own errors add up; the summation adds γ·Σ|l_i|; the result is stored.
        return per_token.sum() + accumulation * total.abs().sum() + u_s * total.sum().abs()
    # mean = Σ l_i / Σ w_{y_i}: the numerator as for "sum"; the denominator (positive weights)
    # summed the same way; the division, and label smoothing's separately reduced term
    # combined with the NLL term, round up to four more times in the storage dtype.
    weight_total = _target_weights(problem).sum()
    if weight_total == 0:  # a mean over no counted token is NaN exactly: no error allowed
        return torch.tensor(0.0, dtype=torch.float64)
    mean = total.sum() / weight_total
    return (
        per_token.sum() / weight_total
        + accumulation * total.abs().sum() / weight_total
        + (accumulation + 4 * u_s) * mean.abs()
        + SMALLEST_NORMAL[problem.dtype]
    )


def offset_loss_bound(problem: Problem) -> torch.Tensor:
    """Bound on the loss error of a kernel that works relative to the row's maximum, for the
    problem's reduction: (N,) for "none", else a 0-d tensor. Without the u_w·|lse| of
    :func:`loss_bound`, so it tells such a kernel from one that forms lse = m + log S first.

    Per token, ℓ = lse − x_y = log S − (x_y − m), with S = Σ_j exp(x_j − m). A correct float32
    kernel computes, in u_w:
      d_j = x_j − m: exact (Sterbenz) when x_j and m are within a factor 2 of each other, as
        under a large common offset; otherwise one rounding, u_w·|x_j − m| ≤ u_w·R;
      exp(d_j), the sum of C terms in any order, an online max's rescalings: S within
        (2C + 2R)·u_w relative, as in :func:`_rows`;
      log S: that relative error becomes absolute, plus log's rounding u_w·log S ≤ u_w·log C;
      log S − d_y: d_y's own rounding u_w·|x_y − m|, and the subtraction's u_w·ℓ;
      four more u_w for exp's and log's own errors.
    It may keep S, log S or 1/S in the storage dtype (u_s each, u_s·log S for log S itself:
    ``u_s·(2 + log S)``, which is at most u_s·(2 + ℓ), as log S ≤ ℓ), and must not keep lse:
    u_s·|lse| is what this bound leaves out. The roundings of −log p_y to the storage dtype, the
    weight, label smoothing's sum, the output and the reduction are those of :func:`loss_bound`
    (per class: the same terms with x_j in place of x_y). Nothing here grows with |m|: a common
    offset c moves |lse| by |c| and leaves every other magnitude as it was.

    A kernel that forms lse = fl(m + log S) first (PyTorch issue 38839's class; Liger-Kernel's
    formula) rounds it to float32's grid at |m|: an error up to u_w·|m| (half an ulp), which
    x_y's exact subtraction keeps. Against this bound that is up to |m|/(2C + 3R + log C + 4)
    (R ≥ |x_y − m|), on a row whose log S is not on that grid: at |m| ≈ 2^20, about 7·10^4 for
    C = 2 and R = 2 (measured: 6.3·10^4), 116 for C = 4096 and R = 256; at |m| = 2^10 and
    C ≳ 512 it hides. In bfloat16 it shows only where u_w·|m| passes the output's rounding,
    u_s·(2 + log S + 5ℓ): |m| ≳ 2^18 and a small loss (a row tied at its top: ℓ = log 2 at 2^20 is
    rounded to 0.75, 2.2 times the bound).

    z-loss (z·lse²) needs lse itself and a soft cap changes the logits: neither is covered.
    """
    if problem.z_loss or problem.softcap is not None:
        raise ValueError("the offset bound covers the NLL and label smoothing, not z-loss/softcap")
    rows = _rows(problem)
    u_s = storage_roundoff(problem.dtype)
    c = problem.classes
    finite = torch.isfinite(problem.logits)
    # |x_j − m| per class; log S = lse − m (in float64: 2^-53·|lse| is far below any u here).
    below_peak = torch.where(finite, rows.peak[:, None] - problem.logits, 0.0)
    log_sum = torch.where(torch.isfinite(rows.peak), rows.lse - rows.peak, 0.0)
    row_error = WORKING * (2 * c + 2 * rows.spread + math.log(c) + 4) + u_s * (2 + log_sum)
    class_error = row_error[:, None] + WORKING * below_peak
    return _reduced_bound(problem, _token_bounds(problem, rows, class_error))


def perplexity_bound(problem: Problem) -> torch.Tensor:
    """() bound on the error of exp(L_mean), the perplexity, computed as exp of the mean loss.

    A mean within δ = :func:`loss_bound` of the exact L moves exp by a factor e^{±δ}, at most
    exp(L)·(e^δ − 1) away; exp itself and the rounding of its result add two more roundings in
    the storage dtype (2·u_s·exp(L)). exp(L) is taken in float64 from the token losses, ample
    for a magnitude."""
    if problem.reduction != "mean":
        raise ValueError(f"perplexity is exp of the mean loss, not of {problem.reduction!r}")
    perplexity = torch.exp(token_losses(problem).sum() / _target_weights(problem).sum())
    storage = storage_roundoff(problem.dtype)
    return perplexity * torch.expm1(loss_bound(problem)) + 2 * storage * perplexity


def _row_scale(problem: Problem, grad_output: torch.Tensor) -> torch.Tensor:
    """(N,) the factor a_i multiplying row i's gradient: upstream gradient, over Σw for a mean."""
    go = grad_output.double()
    go = go.expand(problem.target.shape) if go.dim() == 0 else go
    if problem.reduction == "mean":
        go = go / _target_weights(problem).sum()
    return torch.where(problem.counted, go, 0.0)


def gradient_values(problem: Problem, grad_output: torch.Tensor) -> torch.Tensor:
    """∂L/∂x in float64 (for magnitudes): a_i·(p_ij·T_i − t_ij + 2z·w_y·lse_i·p_ij)·chain_ij."""
    rows = _rows(problem)
    a, t = _row_scale(problem, grad_output), _target_distribution(problem)
    w_y = _target_weights(problem)
    raw = rows.probs * t.sum(1, keepdim=True) - t
    raw = raw + 2 * problem.z_loss * (w_y * rows.lse)[:, None] * rows.probs
    return a[:, None] * raw * _softcap_chain(problem)


def _target_distribution(problem: Problem) -> torch.Tensor:
    """t_ij = (1 − ε)·w_y·[j = y_i] + (ε/C)·w_j for counted rows, 0 for ignored ones."""
    n, c = problem.logits.shape
    eps = problem.label_smoothing
    safe_target = torch.where(problem.counted, problem.target, 0)
    one_hot = torch.zeros(n, c, dtype=torch.float64)
    one_hot[torch.arange(n), safe_target] = 1.0
    t = (1 - eps) * _target_weights(problem)[:, None] * one_hot + eps / c * _weights(problem)
    return torch.where(problem.counted[:, None], t, 0.0)


def _softcap_chain(problem: Problem) -> torch.Tensor:
    if problem.softcap is None:
        return torch.ones_like(problem.logits)
    return 1 - torch.tanh(problem.logits / problem.softcap) ** 2


def gradient_bound(problem: Problem, grad_output: torch.Tensor) -> torch.Tensor:
    """(N, C) bounds on the error of each entry of ∂L/∂x."""
    rows = _rows(problem)
    u_s = storage_roundoff(problem.dtype)
    a = _row_scale(problem, grad_output).abs()[:, None]
    t = _target_distribution(problem)
    w_y = _target_weights(problem)[:, None]
    total_mass = t.sum(1, keepdim=True)
    z_weight = 2 * problem.z_loss * w_y * rows.lse.abs()[:, None]
    finite = torch.isfinite(rows.log_probs)
    # p_ij = exp(log p_ij): log p_ij carries the lse error (and the storage dtype's, where
    # the kernel keeps the row's sum there) and one subtraction in u_w, and a kernel may keep it
    # in the storage dtype for the backward (u_s·|log p|); exp rounds (u_w), and p or the
    # product may be stored (u_s).
    log_magnitude = torch.where(finite, rows.log_probs.abs(), 0.0)
    lse_kept = (rows.lse_error + _kept_lse_error(problem, rows))[:, None]
    relative_p_error = lse_kept + (WORKING + u_s) * (log_magnitude + 1)
    # With label smoothing the backward sums the upstream gradient over the C classes
    # (relative (C − 1)·u_w), and the targets t_ij are stored once (u_s).
    if problem.label_smoothing > 0:
        relative_p_error = relative_p_error + problem.classes * WORKING + u_s
    chain = _softcap_chain(problem).abs()
    softmax_term = (total_mass + z_weight) * rows.probs * relative_p_error
    z_term = 2 * problem.z_loss * w_y * rows.probs * rows.lse_error[:, None]
    target_term = 2 * u_s * t
    # Below the smallest normal, p may be flushed to zero in float32, and so may the stored
    # gradient entry in the storage dtype.
    underflow = (total_mass + z_weight) * SMALLEST_NORMAL["float32"]
    raw = rows.probs * total_mass - t + z_weight * rows.probs
    gradient = gradient_values(problem, grad_output).abs()
    # The row factor a_i = g/Σw carries the denominator's accumulation error for a mean; the
    # product a_i·raw_ij and its storage round three times; a soft cap's chain factor
    # 1 − tanh² is within 4·u_w absolute (and u_s if stored).
    accumulation = (
        accumulation_error(int(problem.counted.sum()), problem.dtype)
        if problem.reduction == "mean"
        else 0.0
    )
    softcap_chain_error = (4 * WORKING + u_s) * raw.abs() if problem.softcap is not None else 0.0
    bound = (
        a * (chain * (softmax_term + z_term + target_term + underflow) + softcap_chain_error)
        + (accumulation + 3 * u_s) * gradient
        + SMALLEST_NORMAL[problem.dtype]
    )
    return torch.where(problem.counted[:, None], bound, 0.0)


def gradient_row_sum_bound(problem: Problem, grad_output: torch.Tensor) -> torch.Tensor:
    """(N,) bound on |Σ_j ∂L/∂x_ij|, whose exact value is 0 (without z-loss or a soft cap):
    each entry is within its gradient bound of the exact entry, and the exact entries sum to 0."""
    return gradient_bound(problem, grad_output).sum(1)


# --- Contract 3: fused projection + loss ----------------------------------------------------
# A fused kernel never holds the exact logits z = x·Wᵀ + b: it computes them by a GEMM, then the
# loss of contract 2 on what it computed. The error model:
#   - the GEMM accumulates in float32, in any order (split-K, blocks, chunks of rows), with the
#     bias added in float32: D products (exact for bfloat16 and float16 inputs, one rounding each
#     in float32) and D additions on any term's path, γ_{D+1}(u_w) relative to Σ_d|x_d·W_jd| + |b_j|;
#   - it may round the logits once to the input dtype, as torch's reference path
#     cross_entropy(linear(input, W, b)) does for bfloat16: u_s·|z|;
#   - then the loss and ∂L/∂z as contract 2 allows, on those logits;
#   - ∂L/∂input = ∂L/∂z·W and ∂L/∂W = ∂L/∂zᵀ·input by GEMMs that accumulate in float32 over C
#     and over N (in any order, chunked or not), ∂L/∂b = Σ_i ∂L/∂z_i likewise, each rounded once
#     to its tensor's dtype at the end. ∂L/∂z may be rounded to the input dtype first (torch's
#     reference path keeps it in bfloat16): contract 2's gradient bound allows that.
# Not allowed: logits from a GEMM in bfloat16 accumulation or TF32, ∂L/∂W summed across chunks in
# bfloat16 (each chunk's part rounded and added in bfloat16: the running sum stalls), a mean
# of chunk means, rows or classes left out.
# Where a correct and a wrong kernel are hard to tell apart: ∂L/∂W accumulated in bfloat16
# across k chunks errs by up to about k·u_s/2 of the running sum, against a bound of about
# 4·u_s·Σ_i|∂L/∂z_ij·x_id| (∂L/∂z stored in bfloat16, then the output's rounding): it shows
# only where k is in the dozens and the contributions of a column share their sign (a class
# that is nobody's target meets non-negative inputs); with a few chunks, or inputs of random
# sign, it hides.


def linear_logit_error(problem: LinearProblem) -> torch.Tensor:
    """(N, C) bound on |ẑ_ij − z_ij| for the logits a correct fused kernel computes."""
    magnitudes = problem.magnitudes()
    gemm = gamma(problem.depth + 1, WORKING) * magnitudes
    stored = storage_roundoff(problem.dtype) * (problem.logits().abs() + gemm)
    return gemm + stored + SMALLEST_NORMAL["float32"]


def _perturbation(problem: LinearProblem) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(δ (N, C), Δ (N,), e^{2Δ} − 1 (N,)): the logits' error bound, its largest entry per row,
    and the largest relative change of any p_ij when every logit of the row moves by up to Δ
    (p_j = e^{z_j}/Σ_k e^{z_k}: numerator and denominator each move by a factor within e^{±Δ};
    a soft cap s·tanh(z/s) moves by no more than z does)."""
    delta = linear_logit_error(problem)
    largest = delta.amax(dim=1) if delta.shape[1] else delta.sum(dim=1)
    return delta, largest, torch.expm1(2 * largest)


def _moved_token_losses(problem: LinearProblem) -> torch.Tensor:
    """(N,) how far each token's exact loss moves when its logits move within δ.

    ℓ_i is differentiable in z_i with ∂ℓ_i/∂z_ij = (p_ij·(T_i + 2z·w_y·lse_i) − t_ij)·chain_ij
    (t the target distribution, T_i its mass; chain = 1 − tanh², at most 1). Along the segment
    from z to ẑ, p_ij stays within a factor e^{2Δ_i} and lse within Δ_i, so
    |Δℓ_i| ≤ Σ_j (p_ij·e^{2Δ_i}·(T_i + 2z·w_y·(|lse_i| + Δ_i)) + t_ij)·δ_ij."""
    logits = problem.logits_problem()
    rows = _rows(logits)
    delta, largest, growth = _perturbation(problem)
    t = _target_distribution(logits)
    z_weight = 2 * problem.z_loss * _target_weights(logits) * (rows.lse.abs() + largest)
    mass = t.sum(1) + z_weight
    sensitivity = rows.probs * ((1 + growth) * mass)[:, None] + t
    return torch.where(logits.counted, (sensitivity * delta).sum(1), 0.0)


def linear_loss_bound(problem: LinearProblem) -> torch.Tensor:
    """Bound on a fused kernel's loss error: contract 2's bound on the exact logits, plus each
    token's move under the logits' error, reduced as contract 2 reduces (N,) or 0-d."""
    logits = problem.logits_problem()
    per_token = token_loss_bounds(logits) + _moved_token_losses(problem)
    return _reduced_bound(logits, per_token)


def _logit_gradient_error(
    problem: LinearProblem, grad_output: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """((N, C) bound on |ĝ − g|, (N, C) bound on |ĝ|) for g = ∂L/∂z as a fused kernel forms it:
    contract 2's gradient bound at z, plus the move of g_ij = a_i·r_ij·c_ij when z moves by δ:
    r_ij = p_ij·(T_i + 2z·w_y·lse_i) − t_ij moves by |Δp_ij|·(T_i + 2z·w_y·(|lse_i| + Δ_i))
    + p_ij·e^{2Δ_i}·2z·w_y·Δ_i with |Δp_ij| ≤ p_ij·(e^{2Δ_i} − 1); a soft cap's chain
    c = 1 − tanh²(z/s) moves by at most max|2·tanh·sech²|/s·δ = 0.77·δ/s."""
    logits = problem.logits_problem()
    rows = _rows(logits)
    delta, largest, growth = _perturbation(problem)
    a = _row_scale(logits, grad_output).abs()[:, None]
    t = _target_distribution(logits)
    z_scale = 2 * problem.z_loss * _target_weights(logits)[:, None]
    lse = rows.lse.abs()[:, None]
    moved_p = rows.probs * growth[:, None]
    moved_r = moved_p * (t.sum(1, keepdim=True) + z_scale * (lse + largest[:, None]))
    moved_r = moved_r + rows.probs * (1 + growth[:, None]) * z_scale * largest[:, None]
    raw = (rows.probs * (t.sum(1, keepdim=True) + z_scale * lse) - t).abs()
    moved = a * moved_r
    if problem.softcap is not None:
        moved = moved + a * (raw + moved_r) * 0.77 * delta / problem.softcap
    error = gradient_bound(logits, grad_output) + torch.where(logits.counted[:, None], moved, 0.0)
    return error, gradient_values(logits, grad_output).abs() + error


def linear_gradient_bounds(
    problem: LinearProblem, grad_output: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Bounds on the errors of ∂L/∂input (N, D), ∂L/∂W (C, D) and ∂L/∂b (C,) (None without a
    bias): the error of ∂L/∂z carried through each GEMM (|ĝ − g|·|W|, |ĝ − g|ᵀ·|x|), the GEMM's
    own float32 accumulation over C or N terms (γ·|ĝ|·|W| ...), and the output's rounding to its
    dtype (u_s·|exact|)."""
    logits = problem.logits_problem()
    u_s = storage_roundoff(problem.dtype)
    error, size = _logit_gradient_error(problem, grad_output)
    exact = gradient_values(logits, grad_output)
    x, w = problem.input, problem.linear_weight
    rows, classes = x.shape[0], problem.classes
    floor = SMALLEST_NORMAL[problem.dtype]

    def carried(
        error_part: torch.Tensor, accumulated: torch.Tensor, exact_value: torch.Tensor, terms: int
    ) -> torch.Tensor:
        bound = error_part + gamma(terms + 1, WORKING) * accumulated
        return bound + u_s * (exact_value.abs() + bound) + floor

    for_input = carried(error @ w.abs(), size @ w.abs(), exact @ w, classes)
    for_weight = carried(error.T @ x.abs(), size.T @ x.abs(), exact.T @ x, rows)
    for_bias = None
    if problem.linear_bias is not None:
        for_bias = carried(error.sum(0), size.sum(0), exact.sum(0), rows)
    return for_input, for_weight, for_bias


# Memory of a fused kernel that claims O(chunk) extra memory (KernelSpec(builds_logits=False)).
# Its forward and backward together must hold less than the (N, C) logits in the input's dtype,
# N·C·s bytes with s its item size: a kernel that ever holds all the logits at once, in that dtype
# or wider, needs that much for them alone, before their softmax or gradient. What a chunked
# kernel needs is O(chunk·C) for a chunk's logits and their gradient, plus its outputs ∂L/∂x and
# ∂L/∂W (and float32 accumulators for them), (N + C)·D·4 bytes at most. LCE-MEMORY draws shapes
# whose logits dwarf those (N ≥ 8,192 rows, C ≥ 1,024 classes, D ≤ 32: the outputs are at most
# (N + C)·D·4 ≤ N·C·s/8), so a kernel whose chunks hold a few hundred rows passes with room, and
# one that builds the logits cannot. There is no rounding here: the measured peak is compared
# with the budget as it is.


def linear_memory_budget(rows: int, classes: int, dtype: str) -> int:
    """Bytes a chunked fused kernel's forward + backward must stay below: N·C·s."""
    return rows * classes * torch.empty((), dtype=getattr(torch, dtype)).element_size()


# --- Parameter gradients of the training loop ----------------------------------------------
# The loss and the gradient that reach the logits are compared with the oracle under "loss" and
# "gradient". What is left is the gradient of the *parameters*, which the oracle cannot give:
# there two float64 evaluations of the same exact ∂L/∂θ are compared, one on the full batch,
# one accumulated over micro-batches (or over the sequences without their padding).
# Mathematically they are equal; in floating point they differ only in the order of the
# roundings (other matmul shapes, other partial sums).

#: float64 unit roundoff.
FLOAT64_ROUNDOFF = 2.0**-53
#: The longest chain of float64 roundings behind one entry of ∂L/∂θ in the test models, and the
#: cancellation it may meet, as a power of two:
#:   a weight-gradient entry sums at most 2^8 token contributions (B·T ≤ 256 in the tests),
#:   each a product of quantities that passed through at most 2^6 operations (two blocks of
#:   layer norm, attention over T ≤ 16 positions and an MLP of width ≤ 4·32, forward and back),
#:   whose inner sums are at most 2^7 long: 2^(8 + 6 + 7) = 2^21 roundings, γ ≈ 2^21·u;
#:   and the sum of the |contributions| may exceed the largest |entry| of all the gradients
#:   by cancellation, allowed up to 2^8 here. (The scale is the largest entry over every
#:   parameter, not per tensor: some entries are exactly zero in exact arithmetic, such as the
#:   gradient of the attention key bias, which softmax cancels, and hold rounding noise only.)
#: So reordering moves an entry by at most 2^29·u = 2^-24 of the largest |entry| of ∂L/∂θ.
#: The mean-of-means bug scales micro-batch k's contribution by N/(K·N_k) instead of 1, an
#: error of the order of the gradient itself whenever the micro-batches count different numbers
#: of tokens; properties/training/test_step.py's test_mean_of_micro_batch_means_is_caught checks
#: that the bound catches it.
REORDERING_EXPONENT = 29


def reordered_float64_bound(gradients: Iterable[torch.Tensor]) -> torch.Tensor:
    """() bound on |Δ| of any entry of float64 parameter gradients between two summation orders."""
    largest = max((float(g.detach().abs().max()) for g in gradients if g.numel()), default=0.0)
    bound = math.ldexp(FLOAT64_ROUNDOFF, REORDERING_EXPONENT) * largest
    return torch.tensor(bound, dtype=torch.float64)


def reordered_float64_loss_bound(loss: torch.Tensor) -> torch.Tensor:
    """() bound on |Δ| of the float64 mean loss between two summation orders, 2^-24·|L|.

    Each token's loss lse − z_y ends the forward half of the same chains of roundings that
    REORDERING_EXPONENT counts for ∂L/∂θ, and the mean adds up non-negative terms (no
    cancellation beyond the 2^8 allowed there), so the gradients' relative bound covers it.
    """
    return reordered_float64_bound([loss])


# --- The training command's summary ------------------------------------------------------------


def bits_per_byte_bound(bits: float) -> float:
    """Bound on |log2(fl(exp(L))) − fl(L / fl(ln 2))|: bits per byte two float64 ways, in bits.

    libm's exp and log2 are within 2 ulps (≤ 4u relative; glibc's documented worst cases are
    smaller): exp's error becomes 4u/ln 2 < 6u absolute after log2, log2's own 4u·|B|; fl(ln 2)
    and the division round once each, 2u·|B|. A wrong unit (nats as bits) is off by 0.31·|B|.
    """
    return (6 * abs(bits) + 6) * FLOAT64_ROUNDOFF


# --- The fused projection + loss of lmloss (implementation tests) --------------------------------
# Bounds of this project's own fused kernel, lmloss.linear_cross_entropy, against an unfused
# computation on the same inputs (not against the oracle, which contract 3's bounds above do).
#
# properties/test_linear_loss.py compares it with F.cross_entropy(F.linear(...)) in float64 on
# inputs whose logits are exact in every dtype and whatever the GEMM's order of additions, so
# what is bounded here is the chunked loss arithmetic alone. Standard forward error analysis,
# u the unit roundoff of the compute dtype (float32: 2^-24; float64 for float64 inputs), u_out
# that of the result's dtype (its one final rounding):
# - a row's loss combines C exponentials (their sum: γ_C), a log, and a handful of rounded
#   operations (shift, subtraction, the products by w_y, ε, z, the tanh of the softcap) on
#   numbers no larger than 1 + |lse| + max_c |s_c|; the z-loss multiplies lse's error by 2z|lse|:
#   |Δl_i| ≤ (C + 8)·u·M_i, M_i = ((1 − ε)·w_y + ε·max w)·(1 + |lse_i| + max_c |s_ic|)·(1 + 2z|lse_i|).
# - a sum over N rows adds γ_N·Σ|l_i| (≤ N·u·Σ|l_i|); the mean's Σ w_y adds N·u relative.
# - ∂l_i/∂z_ic is a sum of three terms (p times a coefficient, the one-hot, the smoothing share)
#   each computed with relative error ≤ (C + 8)·u (p carries the sum of C exponentials; the
#   z-loss coefficient carries lse's error, hence its 1 + |lse| + max |s| factor; the softcap's
#   1 − tanh² is ≤ 1 and its absolute error a few u): |Δg_ic| ≤ (C + 8)·u·G_ic, G_ic the sum of
#   the terms' magnitudes times the row's upstream factor (÷ Σ w_y for the mean).
# - ∂L/∂input = g·W sums C products, ∂L/∂W = gᵀ·input and ∂L/∂b = Σ_i g sum N: each adds
#   γ_n·Σ|terms|.
# The result's one rounding to its dtype adds u_out·|computed| ≤ u_out·(|expected| + error):
# every bound is (1 + u_out)·error + u_out·|expected|.


@dataclass(frozen=True)
class ExactLogitsMagnitudes:
    """The magnitudes of the exact (float64, unfused) loss that the exact-logits bounds scale:
    M_i and G_ic of the analysis above, each row's |l_i| and the mean's divisor."""

    row_magnitude: torch.Tensor  # (N,) M_i, 0 for ignored rows
    row_losses: torch.Tensor  # (N,) |l_i| (reduction="none"), z-loss term included
    logit_gradient_magnitude: torch.Tensor  # (N, C) G_ic, 0 for ignored rows
    total_weight: float  # Σ w_y over the counted rows


def _exact_logits_roundoffs(dtype: str) -> tuple[float, float]:
    """(u, u_out) for an input dtype: the compute dtype's unit roundoff (float32's for any
    narrower dtype, float64's for float64) and the result dtype's."""
    if dtype == "float64":
        return FLOAT64_ROUNDOFF, FLOAT64_ROUNDOFF
    return WORKING, storage_roundoff(dtype)


def exact_logits_loss_bound(
    magnitudes: ExactLogitsMagnitudes, expected: torch.Tensor, *, reduction: str, dtype: str
) -> torch.Tensor:
    """Bound on |L − L_exact| of lmloss.linear_cross_entropy on inputs whose logits are exact,
    ``expected`` the exact loss (float64) for ``reduction``: (N,) for "none", else 0-d."""
    u, u_out = _exact_logits_roundoffs(dtype)
    rows, classes = magnitudes.logit_gradient_magnitude.shape
    per_row = (classes + 8) * u * magnitudes.row_magnitude
    expected = expected.abs()
    if reduction == "none":
        computed = per_row
    else:
        computed = per_row.sum() + rows * u * magnitudes.row_losses.sum()
    if reduction == "mean":
        computed = computed / magnitudes.total_weight + rows * u * expected
    return (1 + u_out) * computed + u_out * expected


def exact_logits_gradient_bounds(
    magnitudes: ExactLogitsMagnitudes,
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    expected: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    *,
    reduction: str,
    dtype: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Bounds on the errors of ∂L/∂input (N, D), ∂L/∂W (C, D) and ∂L/∂b (C,) (None without a
    bias) of lmloss.linear_cross_entropy on inputs whose logits are exact; ``expected`` holds the
    exact gradients (float64) in that order."""
    u, u_out = _exact_logits_roundoffs(dtype)
    rows, classes = magnitudes.logit_gradient_magnitude.shape
    per_logit = classes + 8 + (rows if reduction == "mean" else 0)
    G = magnitudes.logit_gradient_magnitude
    x = input.detach().double().abs()
    W = linear_weight.detach().double().abs()
    expected_input, expected_weight, expected_bias = expected

    def rounded(computed: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
        return (1 + u_out) * computed + u_out * exact.abs()

    grad_input = rounded(u * (per_logit + classes) * (G @ W), expected_input)
    grad_weight = rounded(u * (per_logit + rows) * (G.t() @ x), expected_weight)
    grad_bias = None
    if expected_bias is not None:
        grad_bias = rounded(u * (per_logit + rows) * G.sum(dim=0), expected_bias)
    return grad_input, grad_weight, grad_bias


# TRAIN-FUSED-HEAD (properties/training/test_step.py) compares the training step that hands the
# final hidden states h and the head's weight W to lmloss.linear_cross_entropy with the step that
# builds the logits, both in float32 on the same h and W. Each step's error against exact
# arithmetic on the shared h, W, u = u_w = 2^-24, N_c counted rows:
# - the logits z = h·Wᵀ are dot products of length E in float32, in each step's own order:
#   |Δz_ic| ≤ E·u·a_ic, a_ic = Σ_d |h_id|·|W_cd|; a token's loss moves by at most 2·max_c |Δz_ic|
#   (the L1 norm of ∂l/∂z = p − onehot is at most 2), p_ic relatively by at most 2·max_c |Δz_ic|;
# - from its logits each step computes a token's loss within (C + 8)·u·M_i (C exponentials
#   summed, a few rounded operations on numbers up to M_i = 1 + |lse_i| + max_c |z_ic|) and
#   p_ic within (C + 8)·u·M_i relatively (PyTorch's backward forms p = exp(log_softmax), whose
#   absolute error becomes p's relative one);
# - the mean sums N_c token losses and divides once, (N_c + 1)·u·L; ∂L/∂h_i = g_i·W sums C
#   products, C·u·Σ_c |g_ic|·|W_cd|.
# The difference of the two steps is at most the sum of their errors: twice one step's.


def fused_head_float32_bounds(
    hidden: torch.Tensor, head_weight: torch.Tensor, target: torch.Tensor, counted: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(() bound on |ΔL|, (N, E) bound on |Δ∂L/∂h|) between the float32 training step with the
    fused head and the one with the logits, on the final hidden states ``hidden`` (N, E), the
    head's weight (C, E), the targets (N,) and the mask of counted targets (N,)."""
    with torch.no_grad():
        h = hidden.double()  # (N, E)
        W = head_weight.double()  # (C, E)
        safe_target = torch.where(counted, target, 0)
        N_c = int(counted.sum())
        C, E = W.shape
        u = WORKING
        z = h @ W.t()
        a = h.abs() @ W.abs().t()
        logit_error = E * u * a.amax(dim=1)  # max_c |Δz_ic| of one step, (N,)
        lse = torch.logsumexp(z, dim=1)
        magnitude = 1 + lse.abs() + z.abs().amax(dim=1)
        losses = torch.where(counted, lse - z.gather(1, safe_target[:, None])[:, 0], 0.0)
        per_token = torch.where(counted, (C + 8) * u * magnitude + 2 * logit_error, 0.0)
        loss = losses.sum() / N_c
        loss_bound = 2 * (per_token.sum() / N_c + (N_c + 1) * u * loss)
        p = torch.softmax(z, dim=1)
        one_hot = torch.nn.functional.one_hot(safe_target, C).double()
        terms = torch.where(counted[:, None], p + one_hot, 0.0) / N_c  # |g_ic| ≤ this
        p_error = ((C + 8) * u * magnitude + 2 * logit_error)[:, None] * p  # |Δp_ic|
        g_error = torch.where(counted[:, None], p_error / N_c, 0.0)
        hidden_bound = 2 * (g_error @ W.abs() + C * u * (terms @ W.abs()))
    return loss_bound, hidden_bound


#: Every tolerance by the key a clause's docstring names after ``tol:``.
TOLERANCES: Mapping[str, Callable[..., Any]] = {
    "loss": loss_bound,
    "offset_loss": offset_loss_bound,
    "perplexity": perplexity_bound,
    "gradient": gradient_bound,
    "gradient_row_sum": gradient_row_sum_bound,
    "reordered_float64": reordered_float64_bound,
    "linear_loss": linear_loss_bound,
    "linear_gradient": linear_gradient_bounds,
    "linear_memory": linear_memory_budget,
    "fused_head_float32": fused_head_float32_bounds,
}


# --- Contract 4: a loss split across processes (vocab- and data-parallel) ---------------------
#
# Vocab-parallel: rank r holds columns [s_r, s_r + C_r) of every row. A correct kernel
# all-reduces the row maximum m (exact: a max rounds nothing), sums exp(x_j − m) over its
# columns in float32, and all-reduces the P partial sums in float32; the target logit comes from
# the one rank that holds it (the others add exact zeros); label smoothing's Σ_j over classes is
# summed the same way. Every other rank holds at least one column, so C_r ≤ C − (P − 1): a term's
# path through the partial sum and the all-reduce is at most (C_r − 1) + (P − 1) ≤ C − 1
# roundings, what contract 2's row sum already allows in any order (the 2C of _rows' lse error,
# the C·u_w of label smoothing's sum). The gradient p_ij = exp(x_ij − m)/S is contract 2's
# formula on the same S. So contract 2's bounds hold unchanged; what differs is only where the
# row's sum is assembled. Summing the partial sums in bfloat16 (or keeping each one there before
# the all-reduce) is summing a row in bfloat16, which contract 2's model rules out: for P ≥ 3 it
# exceeds the two storage roundings of the row's sum that the model allows.


def vocab_parallel_loss_bound(problem: Problem) -> torch.Tensor:
    """The loss bound of a vocab-parallel kernel on the whole problem: contract 2's (see above)."""
    return loss_bound(problem)


def vocab_parallel_gradient_bound(problem: Problem, grad_output: torch.Tensor) -> torch.Tensor:
    """(N, C) gradient bounds of a vocab-parallel kernel: contract 2's (see above); each rank's
    slice is compared with its columns."""
    return gradient_bound(problem, grad_output)


# Data-parallel: rank r holds rows [a_r, a_r + N_r). A correct kernel reduces its own rows as
# contract 2's sum does (Σ w_y·ℓ_i and, for a mean, Σ w_y), all-reduces the P partial sums, and
# divides (or divides each partial sum by the all-reduced Σ w_y, then all-reduces). In float32
# a term's path is (N_r − 1) + (P − 1) ≤ N − 1 roundings, within contract 2's γ_{N−1}. In the
# storage dtype a rank may sum its rows in 16-way cascades and the all-reduce adds P − 1
# roundings on top of the rank's cascade, which the whole batch's cascade need not contain
# (255 rows on one rank: 30 roundings, plus 1; 256 rows in one batch: 30): P − 1 more roundings
# relative to Σ|terms|, for the numerator and again for the denominator, plus one division per
# partial sum. Hence contract 2's bound plus P·u_s relative to Σ|w_y·ℓ_i| (and to Σ w_y for the
# mean, which moves the mean by P·u_s·|L|), and for the gradient, whose row factor g/Σ w_y
# carries the denominator's error, P·u_s·|∂L/∂x|. Counts of tokens are integers below 2^24:
# exact in float32, as in contract 2.


def data_parallel_loss_bound(problem: Problem, world_size: int) -> torch.Tensor:
    """() bound on a data-parallel kernel's global mean or sum over ``world_size`` ranks."""
    if problem.reduction == "none":
        raise ValueError('reduction="none" is not part of the data-parallel contract')
    base = loss_bound(problem)
    u_s = storage_roundoff(problem.dtype)
    magnitude = token_losses(problem).abs().sum()
    if problem.reduction == "sum":
        return base + world_size * u_s * magnitude
    weight_total = _target_weights(problem).sum()
    if weight_total == 0:  # a mean over no counted token is NaN (or 0, as declared) exactly
        return base
    mean = token_losses(problem).sum() / weight_total
    return base + world_size * u_s * (magnitude / weight_total + mean.abs())


def data_parallel_gradient_bound(
    problem: Problem, grad_output: torch.Tensor, world_size: int
) -> torch.Tensor:
    """(N, C) bounds on a data-parallel kernel's gradient entries over ``world_size`` ranks."""
    base = gradient_bound(problem, grad_output)
    if problem.reduction != "mean":
        return base
    u_s = storage_roundoff(problem.dtype)
    extra = world_size * u_s * gradient_values(problem, grad_output).abs()
    return base + torch.where(problem.counted[:, None], extra, 0.0)


TOLERANCES = {
    **TOLERANCES,
    "dist_loss": vocab_parallel_loss_bound,
    "dist_gradient": vocab_parallel_gradient_bound,
    "dist_dp_loss": data_parallel_loss_bound,
    "dist_dp_gradient": data_parallel_gradient_bound,
}
