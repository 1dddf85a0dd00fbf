"""Certification: every result of the oracle is the correctly rounded float64 of the exact value.

Two independent witnesses of "the exact value": the naive evaluator (properties/oracle/_naive.py,
straight formulas at a precision chosen so that no cancellation reaches float64) and the oracle
itself started at 2000 bits. Batches are random and adversarial (see _batches.py).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import reference
from properties.oracle import _naive
from properties.oracle._batches import batches, grad_outputs, loss_options, oracle_settings
from properties.oracle._compare import assert_rounds_alike, describe

HIGH_START_BITS = 2000


@oracle_settings
@given(data=st.data())
def test_cross_entropy_is_correctly_rounded(data: st.DataObject) -> None:
    """float(cross_entropy(x, y, **opts)) = round64(exact loss) for every keyword.  [ORACLE-CERT]"""
    batch = data.draw(batches(masked_targets=True), label="batch")
    options = data.draw(loss_options(batch), label="options")
    call = describe("cross_entropy", batch.logits, batch.targets, **options)
    expected = _naive.cross_entropy(batch.logits, batch.targets, **options)
    assert_rounds_alike(
        reference.cross_entropy(batch.logits, batch.targets, **options),
        expected,
        call,
        "naive",
        witness_error=_naive.ABSOLUTE_ERROR,
    )


@oracle_settings
@given(data=st.data())
def test_cross_entropy_grad_is_correctly_rounded(data: st.DataObject) -> None:
    """float(∂(g·L)/∂x_ij) = round64(exact derivative) for every keyword and grad_output.  [ORACLE-CERT]"""
    batch = data.draw(batches(), label="batch")
    options = data.draw(loss_options(batch), label="options")
    grad_output = data.draw(grad_outputs(options["reduction"], len(batch.targets)), label="g")
    call = describe(
        "cross_entropy_grad", batch.logits, batch.targets, **options, grad_output=grad_output
    )
    expected = _naive.cross_entropy_grad(
        batch.logits, batch.targets, **options, grad_output=grad_output
    )
    actual = reference.cross_entropy_grad(
        batch.logits, batch.targets, **options, grad_output=grad_output
    )
    assert_rounds_alike(actual, expected, call, "naive", witness_error=_naive.ABSOLUTE_ERROR)


@oracle_settings
@given(data=st.data())
def test_floats_are_the_values_the_mpf_results_hold(data: st.DataObject) -> None:
    """cross_entropy(x, y, as_float=True) = float(cross_entropy(x, y)), and the same for
    cross_entropy_grad, for every keyword, on batches that repeat their rows (the oracle computes
    a repeated row once); the repeated batch is also correctly rounded.  [ORACLE-CERT]"""
    batch = data.draw(batches(), label="batch")
    repeats = data.draw(st.integers(1, 3), label="repeats")
    logits, targets = batch.logits * repeats, batch.targets * repeats
    options = data.draw(loss_options(batch), label="options")
    grad_output = data.draw(grad_outputs(options["reduction"], len(targets)), label="g")
    call = describe("cross_entropy", logits, targets, **options)
    loss = reference.cross_entropy(logits, targets, **options)
    loss_floats = reference.cross_entropy(logits, targets, **options, as_float=True)
    assert _only_floats(loss_floats), f"{call}: as_float=True returned {loss_floats!r}"
    assert_rounds_alike(loss_floats, loss, call, "its mpf result")
    expected = _naive.cross_entropy(logits, targets, **options)
    assert_rounds_alike(loss, expected, call, "naive", witness_error=_naive.ABSOLUTE_ERROR)
    call = describe("cross_entropy_grad", logits, targets, **options, grad_output=grad_output)
    grad = reference.cross_entropy_grad(logits, targets, **options, grad_output=grad_output)
    grad_floats = reference.cross_entropy_grad(
        logits, targets, **options, grad_output=grad_output, as_float=True
    )
    assert _only_floats(grad_floats), f"{call}: as_float=True returned {grad_floats!r}"
    assert_rounds_alike(grad_floats, grad, call, "its mpf result")


def _only_floats(result: Any) -> bool:
    if isinstance(result, list):
        return all(map(_only_floats, result))
    return type(result) is float


@oracle_settings
@given(data=st.data())
def test_primitives_are_correctly_rounded(data: st.DataObject) -> None:
    """float(f(x)) = round64(f(x)) for logsumexp, log_softmax, token_nll, sequence_logprob,
    sequence_prob.  [ORACLE-CERT]"""
    batch = data.draw(batches(masked_targets=True), label="batch")
    targets = [t if 0 <= t < batch.classes else 0 for t in batch.targets]
    row, target = batch.logits[0], targets[0]
    for name, args in [
        ("logsumexp", (row,)),
        ("log_softmax", (row,)),
        ("token_nll", (row, target)),
        ("sequence_logprob", (batch.logits, targets)),
        ("sequence_prob", (batch.logits, targets)),
    ]:
        actual = getattr(reference, name)(*args)
        expected = getattr(_naive, name)(*args)
        assert_rounds_alike(actual, expected, describe(name, *args), "naive")


@oracle_settings
@given(data=st.data())
def test_default_precision_agrees_with_a_high_start(data: st.DataObject) -> None:
    """round64(L at the default start) = round64(L started at 2000 bits), loss and gradient.
    [ORACLE-CERT]"""
    batch = data.draw(batches(), label="batch")
    options = data.draw(loss_options(batch), label="options")
    grad_output = data.draw(grad_outputs(options["reduction"], len(batch.targets)), label="g")
    loss = reference.cross_entropy(batch.logits, batch.targets, **options)
    grad = reference.cross_entropy_grad(
        batch.logits, batch.targets, **options, grad_output=grad_output
    )
    with reference.precision(HIGH_START_BITS):
        loss_high = reference.cross_entropy(batch.logits, batch.targets, **options)
        grad_high = reference.cross_entropy_grad(
            batch.logits, batch.targets, **options, grad_output=grad_output
        )
    call = describe("cross_entropy", batch.logits, batch.targets, **options)
    assert_rounds_alike(loss, loss_high, call, f"itself at {HIGH_START_BITS} bits")
    call = describe(
        "cross_entropy_grad", batch.logits, batch.targets, **options, grad_output=grad_output
    )
    assert_rounds_alike(grad, grad_high, call, f"itself at {HIGH_START_BITS} bits")


#: Inputs the properties above found hard, kept so that a fix stays fixed.
HARD_CASES = [
    pytest.param("sequence_prob", ([[0.0, 1e300]], [0]), {}, id="sequence-prob-e^-1e300"),
    pytest.param(
        "cross_entropy_grad",
        ([[0.0, 1e-323]], [0]),
        {"label_smoothing": 1.0},
        id="p-minus-half-next-to-subnormal-midpoint",
    ),
    pytest.param(
        "cross_entropy_grad",
        ([[-32768.0, -32767.999999999996]], [0]),
        {"label_smoothing": 1.0, "softcap": 30.0},
        id="softcapped-near-tie-gradient-1e-1297",
    ),
    pytest.param(
        "cross_entropy_grad",
        ([[0.0, 0.0, 0.0]], [0]),
        {"reduction": "sum", "grad_output": 2.0**-1022},
        id="subnormal-double-rounding",
    ),
]


@pytest.mark.parametrize(("name", "args", "options"), HARD_CASES)
def test_hard_inputs_are_correctly_rounded(
    name: str, args: tuple[Any, ...], options: dict[str, Any]
) -> None:
    """float(f(x)) = round64(f(x)) on inputs Hypothesis found hard (kept as regressions).
    [ORACLE-CERT]"""
    expected = getattr(_naive, name)(*args, **options)
    actual = getattr(reference, name)(*args, **options)
    assert_rounds_alike(actual, expected, describe(name, *args, **options), "naive")
