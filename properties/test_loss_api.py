"""The production loss API (issue 3, "The production loss"): lm_loss, sequence_logprob,
perplexity, LMLoss and the (N, C) kernel lmloss.cross_entropy, against the oracle.

lmloss.cross_entropy is also the default kernel of the whole suite (conftest.py), which checks
every kernel clause on it in float32 and bfloat16; here are the claims of the API around it:
the essay's flattening, the sequence log-probability, float16 on the CPU, and errors that say
what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lmloss
from lmloss import LMLoss, cross_entropy, lm_loss, perplexity, sequence_logprob
from properties.ce.oracle import oracle_gradient, oracle_loss, oracle_sequence_logprob
from properties.ce.problem import Problem
from properties.engine.checks import discrepancy
from properties.strategies import (
    DTYPES,
    ignore_indices,
    label_smoothings,
    logits,
    masked_fractions,
    targets,
    upstream_gradients,
    vocab_sizes,
)
from properties.tolerances import TOLERANCES

#: The oracle's cost grows with B·T·C (its gradient about 100 µs per logit): at most 1024 logits.
MAX_SEQUENCES, MAX_LENGTH, MAX_VOCAB = 2, 8, 64
EXAMPLES = min(settings().max_examples, 25)  # the loaded profile's count, at most 25

all_dtypes = pytest.mark.parametrize("dtype_name", list(DTYPES))


def assert_within(
    quantity: str, actual: torch.Tensor, expected: torch.Tensor, bound: torch.Tensor, context: str
) -> None:
    """|actual − expected| ≤ bound everywhere (equal infinities and NaNs agree)."""
    assert tuple(actual.shape) == tuple(expected.shape), (
        f"{quantity} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}  [{context}]"
    )
    error = discrepancy(actual, expected)
    exceeded = (error > 0) & ~(error <= bound.double())
    if bool(exceeded.any()):
        worst = int(torch.argmax((error / bound.double()).nan_to_num(math.inf).reshape(-1)))
        raise AssertionError(
            f"{quantity}[{worst}] = {actual.double().reshape(-1)[worst].item()!r}, but the oracle "
            f"says {expected.reshape(-1)[worst].item()!r}: error {error.reshape(-1)[worst].item():.3g}"
            f" > bound {bound.double().reshape(-1)[worst].item():.3g}  [{context}]"
        )


def assert_identical(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Same shape, dtype and values bit for bit (NaN where the other is NaN)."""
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=0.0, equal_nan=True)


def draw_sequences(
    data: st.DataObject,
    dtype_name: str,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    **logit_options: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, T, C) in the dtype and targets (B, T), some of them ignored, from the suite's strategies."""
    B = data.draw(st.integers(1, MAX_SEQUENCES), label="B")
    T = data.draw(st.integers(1, MAX_LENGTH), label="T")
    C = data.draw(vocab_sizes(max_size=MAX_VOCAB), label="C")
    if label_smoothing > 0.0:
        # Smoothing sums |log p_j| over all C classes of all rows: keep that sum finite (the
        # strategies' default headroom covers sums over rows), and no -inf logit (its term is
        # infinite).
        logit_options["headroom"] = 64.0 * B * T * C
    else:
        logit_options.setdefault("masked", masked_fractions())
    target = data.draw(
        targets(rows=B * T, vocab_size=C, ignore_index=ignore_index), label="targets"
    )
    x = data.draw(
        logits(rows=B * T, vocab_size=C, dtype=dtype_name, target=target, **logit_options),
        label="logits",
    )
    return x.value.reshape(B, T, C), target.value.reshape(B, T)


# --- LM-LOSS ----------------------------------------------------------------------------------


@all_dtypes
@settings(max_examples=EXAMPLES, deadline=None)
@given(data=st.data())
def test_lm_loss_is_the_cross_entropy_of_the_flattened_batch(
    dtype_name: str, data: st.DataObject
) -> None:
    """lm_loss(z, y) = CE(z.reshape(B·T, C), y.reshape(B·T)) = −(1/N) Σ_{b,t} log p(y_{b,t} | x_<t).  [LM-LOSS] tol: loss

    Bit for bit the essay's flattening through lmloss.cross_entropy (and LMLoss the same), and
    within the loss and gradient bounds of the oracle, for every reduction, ignore_index and
    label smoothing, in float32, bfloat16 and float16 (the suite's default dtypes on the CPU
    leave float16 out).
    """
    ignore_index = data.draw(ignore_indices(vocab_size=MAX_VOCAB), label="ignore_index")
    smoothing = data.draw(st.just(0.0) | label_smoothings(), label="label_smoothing")
    reduction = data.draw(st.sampled_from(["mean", "sum", "none"]), label="reduction")
    x, y = draw_sequences(data, dtype_name, ignore_index=ignore_index, label_smoothing=smoothing)
    options: dict[str, Any] = {
        "ignore_index": ignore_index,
        "label_smoothing": smoothing,
        "reduction": reduction,
    }
    B, T, C = x.shape
    leaf = x.clone().requires_grad_(True)

    loss = lm_loss(leaf, y, **options)

    assert_identical(
        loss, cross_entropy(x.reshape(B * T, C), y.reshape(B * T), **options).reshape(loss.shape)
    )
    assert_identical(LMLoss(**options)(x, y), loss.detach())
    problem = Problem.of(x, y, **options)
    context = f"lm_loss({tuple(x.shape)} {dtype_name}, {options})"
    assert_within(
        "lm_loss",
        loss.detach().reshape(-1),
        oracle_loss(problem).reshape(-1),
        TOLERANCES["loss"](problem).reshape(-1),
        context,
    )
    rows = B * T if reduction == "none" else None
    grad_output = data.draw(
        upstream_gradients(rows=rows, dtype=dtype_name), label="grad_output"
    ).value
    loss.backward(grad_output.reshape(loss.shape))
    assert leaf.grad is not None and leaf.grad.dtype == x.dtype
    if problem.counted.any():
        flat_grad_output = grad_output if rows else grad_output.reshape(())
        assert_within(
            "∂lm_loss/∂logits",
            leaf.grad.reshape(B * T, C),
            oracle_gradient(problem, flat_grad_output),
            TOLERANCES["gradient"](problem, flat_grad_output),
            context,
        )


# --- SEQ-LOGPROB ------------------------------------------------------------------------------


@all_dtypes
@settings(max_examples=EXAMPLES, deadline=None)
@given(data=st.data())
def test_sequence_logprob_is_minus_the_summed_loss_of_each_sequence(
    dtype_name: str, data: st.DataObject
) -> None:
    """log P(y_b) = Σ_t log p(y_{b,t} | x_<t) = −lm_loss(z_b, y_b, reduction="sum") for each sequence b.  [SEQ-LOGPROB] tol: loss

    Computed in float32 whatever the logits' dtype, so the oracle's value is within the float32
    bound of a sum; the sum-reduced loss (rounded to the logits' dtype) within its own bound, so
    the two differ by at most both bounds. Ignored targets contribute nothing.
    """
    x, y = draw_sequences(data, dtype_name)

    logprob = sequence_logprob(x, y)

    assert logprob.shape == (x.shape[0],) and logprob.dtype == torch.float32
    for b in range(x.shape[0]):
        counted = y[b] != -100
        context = (
            f"sequence {b} of logits {tuple(x.shape)} {dtype_name}, {int(counted.sum())} counted"
        )
        computed = Problem.of(x[b][counted], y[b][counted], reduction="sum").but(dtype="float32")
        own_bound = TOLERANCES["loss"](computed)
        exact = torch.tensor(oracle_sequence_logprob(computed), dtype=torch.float64)
        assert_within("sequence_logprob", logprob[b], exact, own_bound, context)
        summed = lm_loss(x[b : b + 1], y[b : b + 1], reduction="sum")
        sum_bound = TOLERANCES["loss"](Problem.of(x[b], y[b], reduction="sum"))
        assert_within(
            "−lm_loss(sum)", -summed.double(), logprob[b].double(), own_bound + sum_bound, context
        )


def test_sequence_logprob_of_the_essays_sentence() -> None:
    """log P of 250 tokens at p = 0.8 is 250·log 0.8 ≈ −55.79, though P ≈ 5.7e-25.  [SEQ-LOGPROB] tol: loss"""
    row = [math.log(0.8), math.log1p(-0.8)]
    x = torch.tensor([[row] * 250])  # (1, 250, 2)
    y = torch.zeros(1, 250, dtype=torch.long)
    problem = Problem.of(x, y, reduction="sum")
    assert_within(
        "sequence_logprob",
        sequence_logprob(x, y),
        torch.tensor([oracle_sequence_logprob(problem)], dtype=torch.float64),
        TOLERANCES["loss"](problem).reshape(1),
        "250 tokens at p = 0.8",
    )


# --- LM-PERPLEXITY ----------------------------------------------------------------------------


@all_dtypes
@settings(max_examples=EXAMPLES, deadline=None)
@given(data=st.data())
def test_perplexity_is_exp_of_the_mean_nll(dtype_name: str, data: st.DataObject) -> None:
    """PPL = exp(−(1/N) Σ log p(y_i | x_<i)) over the counted tokens.  [LM-PERPLEXITY] tol: loss

    A mean off by δ moves exp by a factor e^δ; exp and the output round twice more (2u).
    Scales stay below 4 (spreads below 64, the strategies clamp at ±8 standard deviations), so
    that exp(mean) stays below e^(64 + log C), finite in float32.
    """
    x, y = draw_sequences(data, dtype_name, max_scale=4.0, masked=None, dominance=("nowhere",))
    problem = Problem.of(x, y, reduction="mean").but(dtype="float32")
    mean = oracle_loss(problem)
    exact = torch.exp(mean)
    bound = exact * torch.expm1(TOLERANCES["loss"](problem)) + 2 * 2.0**-24 * exact
    assert_within(
        "perplexity", perplexity(x, y), exact, bound, f"logits {tuple(x.shape)} {dtype_name}"
    )


# --- LOSS-DTYPES ------------------------------------------------------------------------------


def test_float16_mean_stays_finite_where_the_mean_is_representable() -> None:
    """CE_mean = 30 for 4096 tokens of loss 30: Σ l = 122880 > 65504 overflows a float16 sum.  [LOSS-DTYPES] tol: loss

    PyTorch 2.13's CPU kernel returns inf here; lmloss.cross_entropy sums in float32 and rounds
    the mean once.
    """
    x = torch.zeros(4096, 2, dtype=torch.float16)
    x[:, 1] = 30.0
    y = torch.zeros(4096, dtype=torch.long)
    problem = Problem.of(x, y)
    assert_within(
        "the loss",
        cross_entropy(x, y),
        oracle_loss(problem),
        TOLERANCES["loss"](problem),
        "float16 mean of 30s",
    )


# --- LOSS-ERRORS ------------------------------------------------------------------------------


NESTED_LIST: Any = [[0.0, 1.0]]  # logits as plain Python, not a tensor


def _ints(*shape: int) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.long)


# A table reads best one call per line.
# fmt: off
BAD_CALLS: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    ("(B, T, C) where (N, C) belongs", lambda: cross_entropy(torch.randn(2, 3, 5), _ints(2, 3)), ValueError, r"logits must have shape \(N, C\), got \(B, T, C\) = \(2, 3, 5\)"),
    ("(B, T) target", lambda: cross_entropy(torch.randn(6, 5), _ints(2, 3)), ValueError, r"target must have shape \(N,\) = \(6,\), got shape \(2, 3\)"),
    ("float target", lambda: cross_entropy(torch.randn(6, 5), torch.rand(6)), TypeError, "target must be an integer tensor"),
    ("bool target", lambda: cross_entropy(torch.randn(6, 5), torch.ones(6, dtype=torch.bool)), TypeError, "target must be an integer tensor"),
    ("too few targets", lambda: cross_entropy(torch.randn(6, 5), _ints(5)), ValueError, "logits has N = 6 rows, target has 5"),
    ("integer logits", lambda: cross_entropy(_ints(6, 5), _ints(6)), TypeError, "logits must be a floating tensor"),
    ("a list for logits", lambda: cross_entropy(NESTED_LIST, _ints(1)), TypeError, "logits must be a torch.Tensor"),
    ("unknown reduction", lambda: cross_entropy(torch.randn(6, 5), _ints(6), reduction="avg"), ValueError, "reduction must be one of"),
    ("smoothing above 1", lambda: cross_entropy(torch.randn(6, 5), _ints(6), label_smoothing=1.5), ValueError, r"label_smoothing must be in \[0, 1\]"),
    ("weight of the wrong length", lambda: cross_entropy(torch.randn(6, 5), _ints(6), weight=torch.ones(4)), ValueError, r"weight must have shape \(C,\) = \(5,\)"),
    ("(N, C) where (B, T, C) belongs", lambda: lm_loss(torch.randn(6, 5), _ints(2, 3)), ValueError, r"logits must have shape \(B, T, C\), got \(N, C\)"),
    ("transposed targets", lambda: lm_loss(torch.randn(2, 3, 5), _ints(3, 2)), ValueError, r"targets must have shape \(B, T\) = \(2, 3\)"),
    ("flat targets", lambda: lm_loss(torch.randn(2, 3, 5), _ints(6)), ValueError, r"targets must have shape \(B, T\) = \(2, 3\)"),
    ("float targets", lambda: lm_loss(torch.randn(2, 3, 5), torch.rand(2, 3)), TypeError, "targets must be an integer tensor"),
    ("T mismatch", lambda: sequence_logprob(torch.randn(2, 3, 5), _ints(2, 4)), ValueError, r"got \(2, 4\)"),
    ("B mismatch", lambda: perplexity(torch.randn(2, 3, 5), _ints(1, 3)), ValueError, r"got \(1, 3\)"),
    ("unknown reduction in the module", lambda: LMLoss(reduction="avg"), ValueError, "reduction must be one of"),
]
# fmt: on


@pytest.mark.parametrize(
    ("call", "error", "message"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS]
)
def test_bad_shapes_and_dtypes_are_named(
    call: Callable[[], Any], error: type[Exception], message: str
) -> None:
    """A bad argument raises an error that names it and says what was expected.  [LOSS-ERRORS] exact"""
    with pytest.raises(error, match=message):
        call()


def test_lmloss_exports_the_loss_api() -> None:
    for name in ("lm_loss", "sequence_logprob", "perplexity", "LMLoss", "cross_entropy"):
        assert name in lmloss.__all__
