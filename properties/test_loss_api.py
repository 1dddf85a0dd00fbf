"""The production loss API (issue 3, "The production loss"): lm_loss, sequence_logprob,
perplexity, LMLoss and the (N, C) kernel lmloss.cross_entropy, against the oracle.

lmloss.cross_entropy is also the default kernel of the whole suite (conftest.py), which checks
every kernel clause on it in float32 and bfloat16; here are the claims of the API around it:
the essay's flattening, the sequence log-probability, float16 on the CPU, and errors that say
what was expected.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lmloss
from lmloss import LMLoss, cross_entropy, lm_loss, perplexity, sequence_logprob
from lmloss import _loss as loss_module
from properties.ce.oracle import oracle_gradient, oracle_loss, oracle_sequence_logprob
from properties.ce.problem import Problem
from properties.engine.checks import assert_within
from properties.strategies import (
    DTYPES,
    batch_shapes,
    batches,
    ignore_indices,
    label_smoothings,
    logits,
    masked_fractions,
    targets,
    upstream_gradients,
    vocab_sizes,
)
from properties.tolerances import TOLERANCES
from reference import DEFAULT_IGNORE_INDEX

#: The oracle's cost grows with B·T·C (its gradient about 100 µs per logit): at most 1024 logits.
MAX_SEQUENCES, MAX_LENGTH, MAX_VOCAB = 2, 8, 64
EXAMPLES = min(settings().max_examples, 25)  # the loaded profile's count, at most 25

all_dtypes = pytest.mark.parametrize("dtype_name", list(DTYPES))


def assert_identical(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Same shape, dtype and values bit for bit (NaN where the other is NaN)."""
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=0.0, equal_nan=True)


def draw_sequences(
    data: st.DataObject,
    dtype_name: str,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
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
        counted = y[b] != DEFAULT_IGNORE_INDEX
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
    """log P of 250 tokens at p = 0.8 is 250·log 0.8 ≈ −55.79, though P ≈ 5.9e-25.  [SEQ-LOGPROB] tol: loss"""
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
    """PPL = exp(−(1/N) Σ log p(y_i | x_<i)) over the counted tokens.  [LM-PERPLEXITY] tol: perplexity

    A mean off by δ moves exp by a factor e^δ; exp and the output round twice more
    (tolerances.perplexity_bound, in float32: the mean is computed in float32 whatever the
    logits' dtype). Scales stay below 4 (spreads below 64, the strategies clamp at ±8 standard
    deviations), so that exp(mean) stays below e^(64 + log C), finite in float32.
    """
    x, y = draw_sequences(data, dtype_name, max_scale=4.0, masked=None, dominance=("nowhere",))
    problem = Problem.of(x, y, reduction="mean").but(dtype="float32")
    exact = torch.exp(oracle_loss(problem))
    bound = TOLERANCES["perplexity"](problem)
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


# --- LOSS-AUTOCAST ----------------------------------------------------------------------------

#: Where autocast is checked: the CPU always, CUDA when there is one (pytest -m gpu).
AUTOCAST_DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        ],
    ),
]
#: Rows per chunk when the upcast to float32 is chunked: None leaves CHUNK_LOGITS as it is (one
#: chunk at these sizes); 1 and 3 force many chunks, ragged at the end.
CHUNKINGS = [
    pytest.param(None, id="one-chunk"),
    pytest.param(1, id="1-row-chunks"),
    pytest.param(3, id="3-row-chunks"),
]


@contextlib.contextmanager
def rows_per_chunk(rows: int | None, classes: int) -> Iterator[None]:
    """lmloss upcasts ``rows`` rows of ``classes`` logits at a time (as it is, for None)."""
    if rows is None:
        yield
        return
    with mock.patch.object(loss_module, "CHUNK_LOGITS", rows * classes):
        yield


@pytest.mark.parametrize("device", AUTOCAST_DEVICES)
@pytest.mark.parametrize("chunk_rows", CHUNKINGS)
@settings(max_examples=EXAMPLES, deadline=None)
@given(data=st.data())
def test_autocast_loss_is_float32_accurate_on_bfloat16_logits(
    device: str, chunk_rows: int | None, data: st.DataObject
) -> None:
    """Under torch.autocast(device, bfloat16): CE(x) is float32 and |CE(x) − L(x)| ≤ bound_float32(x) for bfloat16 logits x.  [LOSS-AUTOCAST] tol: loss

    The loss of the bfloat16 values, computed in float32: the oracle sees those values and the
    bound is float32's (a loss that went through bfloat16 log-probabilities, as PyTorch's does
    under CUDA autocast, is off by up to 2^-9·|log p| per token and fails it). The gradient,
    taken outside autocast as a training step does, is rounded once to bfloat16: bfloat16's
    gradient bound. Every reduction, ignore_index, label smoothing and class weights, in one
    chunk and in chunks of 1 and 3 rows.
    """
    batch = data.draw(
        batches(
            dtype="bfloat16", shapes=batch_shapes(max_logits=MAX_SEQUENCES * MAX_LENGTH * MAX_VOCAB)
        ),
        label="batch",
    )
    keywords = batch.keywords()
    rows = batch.x.shape[0] if batch.reduction == "none" else None
    grad_output = data.draw(upstream_gradients(rows=rows, dtype="float32"), label="grad_output")
    leaf = batch.x.detach().clone().to(device).requires_grad_(True)
    on_device: dict[str, Any] = {
        k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in keywords.items()
    }

    with rows_per_chunk(chunk_rows, batch.vocab_size):
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = cross_entropy(leaf, batch.y.to(device), **on_device)
        loss.backward(grad_output.value.to(device))

    assert loss.dtype == torch.float32, loss.dtype
    problem = Problem.of(batch.x, batch.y, **keywords)
    context = (
        f"{batch.describe()}, under torch.autocast({device!r}, bfloat16), chunks of {chunk_rows}"
    )
    assert_within(
        "the loss",
        loss.detach().cpu().reshape(-1),
        oracle_loss(problem).reshape(-1),
        TOLERANCES["loss"](problem.but(dtype="float32")).reshape(-1),
        context,
    )
    assert leaf.grad is not None and leaf.grad.dtype == torch.bfloat16
    if problem.counted.any():
        assert_within(
            "∂loss/∂logits",
            leaf.grad.cpu(),
            oracle_gradient(problem, grad_output.value),
            TOLERANCES["gradient"](problem, grad_output.value),
            context,
        )


class CallWatcher:
    """Stands in for torch.nn.functional inside lmloss._loss and notes, at each cross_entropy
    call, whether autocast is on for the logits' device, their dtype and their rows."""

    def __init__(self) -> None:
        self.calls: list[tuple[bool, torch.dtype, int]] = []

    def cross_entropy(self, logits: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        device_type = logits.device.type
        self.calls.append((torch.is_autocast_enabled(device_type), logits.dtype, logits.shape[0]))
        return torch.nn.functional.cross_entropy(logits, *args, **kwargs)


#: Every entry of the API that computes a loss, called on logits (B, T, C) and targets (B, T).
LOSS_ENTRIES: list[tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = [
    ("cross_entropy", lambda x, y: cross_entropy(x.flatten(0, 1), y.flatten())),
    ("lm_loss", lm_loss),
    ("lm_loss-none", lambda x, y: lm_loss(x, y, reduction="none")),
    ("sequence_logprob", sequence_logprob),
    ("perplexity", perplexity),
]


@pytest.mark.parametrize("entry", [e[1] for e in LOSS_ENTRIES], ids=[e[0] for e in LOSS_ENTRIES])
def test_autocast_is_switched_off_around_a_float32_loss(
    entry: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> None:
    """Inside torch.autocast(bfloat16), every F.cross_entropy call of lmloss runs with autocast off, on float32 logits of at most CHUNK_LOGITS.  [LOSS-AUTOCAST] exact

    On the CPU autocast's own rule for cross_entropy_loss computes in float32 too, so the
    value cannot tell whether lmloss relies on it; on CUDA relying on it rounds every
    log-probability to bfloat16. So this watches the calls themselves, on the CPU: each must
    see autocast off, float32 logits, and at most the 2 rows a chunk is set to here (10 rows in
    all, every one of them passed on once).
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 7, generator=generator).to(torch.bfloat16)  # B·T = 10 rows, C = 7
    y = torch.randint(0, 7, (2, 5), generator=generator)
    watcher = CallWatcher()

    with (
        mock.patch.object(loss_module, "F", watcher),
        rows_per_chunk(2, 7),
        torch.autocast("cpu", dtype=torch.bfloat16),
    ):
        result = entry(x, y)

    assert result.dtype == torch.float32, result.dtype
    assert watcher.calls, "lmloss computed the loss without calling F.cross_entropy"
    for autocast_on, dtype, rows in watcher.calls:
        assert not autocast_on, f"F.cross_entropy ran under autocast: {watcher.calls}"
        assert dtype == torch.float32, f"F.cross_entropy got {dtype} logits: {watcher.calls}"
        assert rows <= 2, f"a chunk of {rows} rows, more than the 2 set: {watcher.calls}"
    assert sum(rows for _, _, rows in watcher.calls) == x.shape[0] * x.shape[1], watcher.calls


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


def test_every_public_name_is_found_and_the_package_imports_no_torch() -> None:
    """lmloss.__all__ names what the package defines, each found on first use; importing the
    package itself imports no torch (``lmloss check`` starts its workers' forkserver first)."""
    import subprocess
    import sys

    assert sorted(lmloss.__all__) == sorted(lmloss._HOMES)
    for name in lmloss.__all__:
        assert getattr(lmloss, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        _ = lmloss.no_such_name
    probe = "import sys, lmloss; assert 'torch' not in sys.modules, 'import lmloss imported torch'"
    subprocess.run([sys.executable, "-c", probe], check=True)
