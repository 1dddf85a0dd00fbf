"""The oracle's speed on one row, against the straightforward mpmath loop at 30 digits.

Run with ``tox -e bench`` (or ``pytest benchmarks/test_oracle_speed.py --benchmark-only``). Each
size forms a group: the oracle's mean cross-entropy, its gradient, and the straightforward loop
(max, then fsum of exp, then log; for the gradient also exp(x_j − lse) − [j = y]) over the same
seeded normal logits. Both are checked against each other before anything is timed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import mpmath
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

import reference

CLASS_COUNTS = (1_000, 32_000, 128_256)
#: Few rounds: a 128,256-class row takes seconds in the straightforward loop.
ROUNDS = {1_000: 5, 32_000: 3, 128_256: 3}
STRAIGHTFORWARD_DIGITS = 30


def seeded_row(classes: int) -> tuple[list[float], int]:
    """Standard normal logits and a target, the same for every benchmark of this size."""
    rng = random.Random(classes)
    return [rng.gauss(0.0, 1.0) for _ in range(classes)], rng.randrange(classes)


def straightforward_loss(row: list[float], target: int) -> mpmath.mpf:
    """−log p(target) = max + log Σ exp(x_j − max) − x_target at 30 digits."""
    with mpmath.workdps(STRAIGHTFORWARD_DIGITS):
        x = [mpmath.mpf(v) for v in row]
        top = max(x)
        lse = top + mpmath.log(mpmath.fsum(mpmath.exp(v - top) for v in x))
        return lse - x[target]


def straightforward_grad(row: list[float], target: int) -> list[mpmath.mpf]:
    """softmax(x) − one-hot(target) at 30 digits."""
    with mpmath.workdps(STRAIGHTFORWARD_DIGITS):
        x = [mpmath.mpf(v) for v in row]
        top = max(x)
        lse = top + mpmath.log(mpmath.fsum(mpmath.exp(v - top) for v in x))
        return [mpmath.exp(v - lse) - (1 if j == target else 0) for j, v in enumerate(x)]


def _time(benchmark: BenchmarkFixture, classes: int, fn: Callable[..., Any], *args: Any) -> Any:
    benchmark.group = f"oracle C={classes:,}"
    return benchmark.pedantic(fn, args=args, rounds=ROUNDS[classes], iterations=1)


@pytest.mark.parametrize("classes", CLASS_COUNTS)
def test_oracle_cross_entropy(benchmark: BenchmarkFixture, classes: int) -> None:
    row, target = seeded_row(classes)
    assert float(reference.cross_entropy([row], [target])) == float(
        straightforward_loss(row, target)
    )
    _time(benchmark, classes, reference.cross_entropy, [row], [target])


@pytest.mark.parametrize("classes", CLASS_COUNTS)
def test_oracle_cross_entropy_grad(benchmark: BenchmarkFixture, classes: int) -> None:
    row, target = seeded_row(classes)
    gradient = reference.cross_entropy_grad([row], [target])[0]
    assert [float(g) for g in gradient] == [float(g) for g in straightforward_grad(row, target)]
    _time(benchmark, classes, reference.cross_entropy_grad, [row], [target])


@pytest.mark.parametrize("classes", CLASS_COUNTS)
def test_straightforward_mpmath_loss(benchmark: BenchmarkFixture, classes: int) -> None:
    row, target = seeded_row(classes)
    _time(benchmark, classes, straightforward_loss, row, target)


@pytest.mark.parametrize("classes", CLASS_COUNTS)
def test_straightforward_mpmath_grad(benchmark: BenchmarkFixture, classes: int) -> None:
    row, target = seeded_row(classes)
    _time(benchmark, classes, straightforward_grad, row, target)
