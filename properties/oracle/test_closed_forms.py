"""Closed forms: results the oracle must reproduce that are known without any log-sum-exp code.

Expected values come from mpmath evaluated here, at a precision far above what a float64 needs,
or from the essay's own numbers.
"""

from __future__ import annotations

import math

import mpmath
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mpmath import mpf

import reference
from properties.oracle._batches import huge_values, moderate_values, oracle_settings, tiny_values
from properties.oracle._compare import round64, roundings_within

#: Bits for the expected values here: any float64 difference b − a is exact at 2100 bits, and
#: the rest leaves hundreds of bits beyond float64.
EXPECTED_BITS = 2400

CLASS_COUNTS = [1, 2, 3, 7, 10, 1000, 50_257, 128_256]


def any_magnitude() -> st.SearchStrategy[float]:
    return moderate_values() | huge_values() | tiny_values()


@pytest.mark.parametrize("classes", CLASS_COUNTS)
def test_uniform_logits_give_log_classes(classes: int) -> None:
    """L(v·1, y) = log C for every value v and target y; logsumexp(v·1) = v + log C.  [ORACLE-CLOSED]"""
    value = 3.25
    row = [value] * classes
    with mpmath.workprec(EXPECTED_BITS):
        log_classes = round64(mpmath.log(classes))
        expected_lse = round64(mpf(value) + mpmath.log(classes))
    assert float(reference.cross_entropy([row], [classes - 1])) == log_classes
    assert float(reference.token_nll(row, classes // 2)) == log_classes
    assert float(reference.logsumexp(row)) == expected_lse


@oracle_settings
@given(
    value=any_magnitude(),
    classes=st.integers(1, 64),
    rows=st.integers(1, 4),
    data=st.data(),
)
def test_uniform_batches_give_log_classes(
    value: float, classes: int, rows: int, data: st.DataObject
) -> None:
    """L(v·1, y) = log C for any v (tiny, huge, either sign), in every reduction.  [ORACLE-CLOSED]"""
    targets = data.draw(st.lists(st.integers(0, classes - 1), min_size=rows, max_size=rows))
    logits = [[value] * classes for _ in range(rows)]
    with mpmath.workprec(EXPECTED_BITS):
        log_classes = mpmath.log(classes)
        expected_lse = round64(mpf(value) + log_classes)
        expected_sum = round64(rows * log_classes)
        log_classes = round64(log_classes)
    assert float(reference.cross_entropy(logits, targets)) == log_classes
    assert float(reference.cross_entropy(logits, targets, reduction="sum")) == expected_sum
    none = reference.cross_entropy(logits, targets, reduction="none")
    assert [float(loss) for loss in none] == [log_classes] * rows
    assert float(reference.logsumexp(logits[0])) == expected_lse


@oracle_settings
@given(a=any_magnitude(), b=any_magnitude())
def test_two_classes_give_softplus(a: float, b: float) -> None:
    """L([a, b], 0) = log(1 + e^(b−a)) = softplus(b − a).  [ORACLE-CLOSED]"""
    with mpmath.workprec(EXPECTED_BITS):
        softplus = mpmath.log1p(mpmath.exp(mpf(b) - mpf(a)))
    # At b − a ≈ 1.7e308 the exact value is b − a + e^-(b−a): a float64 midpoint b − a is then
    # passed by a margin no finite precision holds, so both neighbours are accepted there.
    expected = roundings_within(softplus, abs(softplus) * mpf(2) ** (8 - EXPECTED_BITS))
    assert float(reference.cross_entropy([[a, b]], [0])) in expected
    assert float(reference.token_nll([a, b], 0)) in expected


@pytest.mark.parametrize(("probability", "essay_loss"), [(0.30, "1.20"), (0.15, "1.90")])
def test_essay_worked_example(probability: float, essay_loss: str) -> None:
    """−log p(mat) ≈ 1.20 for p = 0.30 and ≈ 1.90 for p = 0.15 (the essay's example).  [ORACLE-CLOSED]"""
    row = [math.log(probability), math.log(1 - probability)]
    assert f"{float(reference.cross_entropy([row], [0])):.2f}" == essay_loss
    assert f"{float(reference.token_nll(row, 0)):.2f}" == essay_loss


@pytest.mark.parametrize(("tokens", "product"), [(100, "2.0e-10"), (250, "5.9e-25")])
def test_essay_sequence_probability_stated_correctly(tokens: int, product: str) -> None:
    """Π_t p = 0.8^100 ≈ 2.0·10^-10 and 0.8^250 ≈ 5.9·10^-25; the essay's "0.8^100 ≈ 6·10^-25"
    is a slip: 6·10^-25 is 0.8^250, its 250 tokens.  [ORACLE-CLOSED]"""
    row = [math.log(0.8), math.log(0.2)]
    probability = reference.sequence_prob([row] * tokens, [0] * tokens)
    assert f"{float(probability):.1e}" == product


def test_sequence_prob_never_underflows() -> None:
    """Π_{t=1}^{10000} p_t = 2^-10000 exactly for p_t = 1/2 (float64 would give 0).  [ORACLE-CLOSED]"""
    tokens = 10_000
    logits, targets = [[0.0, 0.0]] * tokens, [1] * tokens
    assert reference.sequence_prob(logits, targets) == mpmath.ldexp(1, -tokens)
    with mpmath.workprec(EXPECTED_BITS):
        expected_logprob = round64(-tokens * mpmath.log(2))
    assert float(reference.sequence_logprob(logits, targets)) == expected_logprob
