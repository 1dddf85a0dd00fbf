"""The oracle's speed, each figure beside the straightforward 30-digit mpmath loop in the same run.

Run with ``tox -e bench`` (or ``pytest benchmarks/test_oracle_speed.py --benchmark-only``). Two
workloads, each timed for the oracle (pytest-benchmark) and once for the straightforward loop,
whose results are checked against the oracle's (where 30 digits suffice) before anything is timed:

- the suite's own: a fixed mix of the batches the property suite's strategies draw
  (``properties.strategies.batches`` for torch's cross_entropy, float32 and bfloat16, with the
  options they draw, derandomized so that the mix is the same on every run of one Hypothesis
  version), each asked for its loss and its gradient, as the clauses ask;
- single rows of normal logits, up to a Llama-3-sized vocabulary of 128,256 classes.

The straightforward loop is properties/oracle/_naive.py at 30 digits: the closed forms in
mpmath (max, fsum of exp, log; softmax − one-hot for the gradient) at a fixed precision, with no
certification. The ratios print at the end of the run (benchmarks/conftest.py).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

import reference
from properties.oracle import _naive

#: mpmath's 30 decimal digits are 103 bits (mpmath.mp.dps = 30 sets prec = 103).
STRAIGHTFORWARD_BITS = 103
CLASS_COUNTS = (1_000, 32_000, 128_256)
#: Few rounds: a 128,256-class row takes seconds in the straightforward loop.
ROUNDS = {1_000: 5, 32_000: 3, 128_256: 3}
#: Batches in the suite's workload, and the rounds it is timed for.
WORKLOAD_BATCHES = 120
WORKLOAD_ROUNDS = 3

Call = tuple[list[list[float]], list[int], dict[str, Any], Any]


@cache
def suite_workload() -> tuple[Call, ...]:
    """(logits, targets, options, grad_output) of batches the suite's strategies draw."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from properties.ce.calls import problem_of
    from properties.engine.check import load_kernel
    from properties.strategies import batches, upstream_gradients

    kernel = load_kernel("torch.nn.functional:cross_entropy")
    calls: list[Call] = []

    @settings(
        max_examples=WORKLOAD_BATCHES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def draw(data: st.DataObject) -> None:
        dtype = data.draw(st.sampled_from(["float32", "bfloat16"]))
        batch = data.draw(batches(dtype=dtype, kernel=kernel))
        rows = batch.x.shape[0] if batch.reduction == "none" else None
        upstream = data.draw(upstream_gradients(rows=rows, dtype=dtype)).value
        logits, targets, options = problem_of(batch).oracle_arguments()
        grad_output = upstream.double().reshape(-1).tolist()
        calls.append((logits, targets, options, grad_output if rows else grad_output[0]))

    draw()
    return tuple(calls)


def _oracle(calls: tuple[Call, ...]) -> list[Any]:
    """The oracle asked as the clauses ask it (properties/ce/oracle.py): floats back."""
    return [
        (
            reference.cross_entropy(logits, targets, **options, as_float=True),
            reference.cross_entropy_grad(
                logits, targets, **options, grad_output=grad_output, as_float=True
            ),
        )
        for logits, targets, options, grad_output in calls
    ]


def _straightforward(calls: tuple[Call, ...]) -> list[Any]:
    return [
        (
            _naive.cross_entropy(logits, targets, **options, bits=STRAIGHTFORWARD_BITS),
            _naive.cross_entropy_grad(
                logits, targets, **options, grad_output=grad_output, bits=STRAIGHTFORWARD_BITS
            ),
        )
        for logits, targets, options, grad_output in calls
    ]


#: Where 30 digits suffice to compare with: past this the straightforward loop's lse − x_j
#: (absolute error |x|·2^-103) leaves too few digits (the suite draws logits up to 1e38).
MODERATE_LOGIT = 2.0**20


def _largest_logit(call: Call) -> float:
    finite = [abs(v) for row in call[0] for v in row if abs(v) != float("inf")]
    return max(finite, default=0.0)


def _floats(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_floats(v) for v in value]
    return float(value)


def _close(oracle: Any, straightforward: Any) -> bool:
    """Equal, or within 2^-40 relatively: 30 digits round a few results the other way."""
    if isinstance(oracle, list):
        return all(_close(a, b) for a, b in zip(oracle, straightforward, strict=True))
    if oracle != oracle:
        return straightforward != straightforward
    return abs(oracle - straightforward) <= 2**-40 * abs(oracle) or oracle == straightforward


def _seconds(fn: Callable[..., Any], *args: Any, **keywords: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn(*args, **keywords)
    return time.perf_counter() - start, result


def test_suite_workload(benchmark: BenchmarkFixture, ratio: Any) -> None:
    """The suite's batches, loss + gradient: the oracle beside the 30-digit loop."""
    calls = suite_workload()
    baseline, expected = _seconds(_straightforward, calls)
    for call, oracle, straightforward in zip(calls, _oracle(calls), expected, strict=True):
        if _largest_logit(call) <= MODERATE_LOGIT:
            assert _close(_floats(oracle), _floats(straightforward)), call
    benchmark.group = f"oracle: the suite's workload ({len(calls)} batches, loss + gradient)"
    # Each round starts with an empty row cache (within a round, loss and gradient share rows,
    # as they do in the suite).
    benchmark.pedantic(_uncached(_oracle), args=(calls,), rounds=WORKLOAD_ROUNDS, iterations=1)
    ratio(benchmark, "suite's workload, loss + gradient", baseline)


def seeded_row(classes: int) -> tuple[list[float], int]:
    """Standard normal logits and a target, the same for every benchmark of this size."""
    rng = random.Random(classes)
    return [rng.gauss(0.0, 1.0) for _ in range(classes)], rng.randrange(classes)


@pytest.mark.parametrize("classes", CLASS_COUNTS)
def test_one_row_loss(benchmark: BenchmarkFixture, ratio: Any, classes: int) -> None:
    """One row's loss (128,256 classes is Llama 3's vocabulary)."""
    row, target = seeded_row(classes)
    baseline, expected = _seconds(_naive.cross_entropy, [row], [target], bits=STRAIGHTFORWARD_BITS)
    assert _close(float(reference.cross_entropy([row], [target])), float(expected))
    benchmark.group = f"oracle C={classes:,}"
    # Every round after the first finds the row in the oracle's cache: time the first only.
    benchmark.pedantic(
        _uncached(reference.cross_entropy), args=([row], [target]), rounds=ROUNDS[classes]
    )
    ratio(benchmark, f"one row of {classes:,}, loss", baseline)


@pytest.mark.parametrize("classes", CLASS_COUNTS)
def test_one_row_gradient(benchmark: BenchmarkFixture, ratio: Any, classes: int) -> None:
    """One row's gradient."""
    row, target = seeded_row(classes)
    baseline, expected = _seconds(
        _naive.cross_entropy_grad, [row], [target], bits=STRAIGHTFORWARD_BITS
    )
    assert _close(_floats(reference.cross_entropy_grad([row], [target])), _floats(expected))
    benchmark.group = f"oracle C={classes:,}"
    benchmark.pedantic(
        _uncached(reference.cross_entropy_grad), args=([row], [target]), rounds=ROUNDS[classes]
    )
    ratio(benchmark, f"one row of {classes:,}, gradient", baseline)


def _uncached(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with the oracle's row cache emptied first, so that every round computes the row."""
    from reference import _fast

    def run(*args: Any) -> Any:
        _fast.clear_cache()
        return fn(*args)

    return run
