"""Scoping: the oracle never changes the caller's mpmath context, and does not depend on it."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import mpmath
import pytest

import reference

ROWS = [[0.5, -1.25, 3.0], [100.0, 0.0, -math.inf]]
TARGETS = [2, 1]

CALLS: list[tuple[str, Callable[[], Any]]] = [
    ("logsumexp", lambda: reference.logsumexp(ROWS[0])),
    ("log_softmax", lambda: reference.log_softmax(ROWS[0])),
    ("token_nll", lambda: reference.token_nll(ROWS[1], 0)),
    ("sequence_logprob", lambda: reference.sequence_logprob(ROWS, TARGETS)),
    ("sequence_prob", lambda: reference.sequence_prob(ROWS, TARGETS)),
    (
        "cross_entropy",
        lambda: reference.cross_entropy(ROWS, TARGETS, label_smoothing=0.1, z_loss=1e-4),
    ),
    ("cross_entropy_grad", lambda: reference.cross_entropy_grad(ROWS, TARGETS, softcap=30.0)),
]


def _floats(result: Any) -> Any:
    return [_floats(item) for item in result] if isinstance(result, list) else float(result)


@contextmanager
def _caller_precision(bits: int) -> Iterator[None]:
    with mpmath.workprec(bits):
        yield
        assert mpmath.mp.prec == bits, (
            f"the oracle left mpmath at {mpmath.mp.prec} bits, not {bits}"
        )


@pytest.mark.parametrize("call", [c for _, c in CALLS], ids=[name for name, _ in CALLS])
def test_calls_leave_mpmath_precision_unchanged(call: Callable[[], Any]) -> None:
    """mp.prec after a call = mp.prec before it, at any caller precision.  [ORACLE-SCOPE]"""
    for bits in [53, 10, 300]:
        with _caller_precision(bits):
            call()
    with _caller_precision(mpmath.mp.prec), reference.precision(2000):
        call()


@pytest.mark.parametrize("call", [c for _, c in CALLS], ids=[name for name, _ in CALLS])
def test_results_do_not_depend_on_the_callers_precision(call: Callable[[], Any]) -> None:
    """round64(f(x)) with the caller at 10 or 3000 bits = round64(f(x)) at mpmath's default.
    [ORACLE-SCOPE]"""
    expected = _floats(call())
    for bits in [10, 3000]:
        with mpmath.workprec(bits):
            assert _floats(call()) == expected


def test_an_exception_leaves_mpmath_precision_unchanged() -> None:
    """mp.prec after a refused call = mp.prec before it.  [ORACLE-SCOPE]"""
    for bits in [53, 17]:
        with _caller_precision(bits), reference.precision(500):
            with pytest.raises(ValueError):
                reference.cross_entropy([[0.0, 1.0]], [5])
            with pytest.raises(ValueError):
                reference.cross_entropy_grad([[0.0, math.nan]], [0])


def test_precision_block_is_scoped() -> None:
    """reference.precision(b) changes neither mp.prec nor mp.dps, inside or after.  [ORACLE-SCOPE]"""
    prec, dps = mpmath.mp.prec, mpmath.mp.dps
    with reference.precision(4000):
        assert (mpmath.mp.prec, mpmath.mp.dps) == (prec, dps)
        with pytest.raises(ValueError):
            reference.token_nll([0.0], 1)
    assert (mpmath.mp.prec, mpmath.mp.dps) == (prec, dps)
