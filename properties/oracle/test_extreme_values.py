"""Extreme values: losses near zero, losses near float64's limit, masked (−inf) logits.

Expected values are mpmath closed forms evaluated here at high precision.
"""

from __future__ import annotations

import math
import sys
from fractions import Fraction

import mpmath
import pytest
from mpmath import mpf

import reference
from properties.oracle._compare import round64

#: Bits for the expected values: float64 sums of magnitudes up to 2^1024 are exact at 2100 bits.
EXPECTED_BITS = 2400
MAGNITUDES = [1e4, 3e38, 1.7e308, sys.float_info.max]


def two_class_loss(target: float, other: float) -> float:
    """round64(log(1 + e^(other − target))), evaluated at EXPECTED_BITS."""
    with mpmath.workprec(EXPECTED_BITS):
        return round64(mpmath.log1p(mpmath.exp(mpf(other) - mpf(target))))


def test_tiny_loss_is_not_flushed_to_zero() -> None:
    """L([100, 0], 0) = log(1 + e^-100) ≈ 3.72·10^-44, not 0.  [ORACLE-EXTREME]"""
    loss = float(reference.cross_entropy([[100.0, 0.0]], [0]))
    assert loss == two_class_loss(100.0, 0.0)
    assert f"{loss:.2e}" == "3.72e-44"


def test_subnormal_loss_is_correctly_rounded() -> None:
    """L([740, 0], 0) = log(1 + e^-740), a subnormal float64.  [ORACLE-EXTREME]"""
    loss = float(reference.cross_entropy([[740.0, 0.0]], [0]))
    assert 0 < loss < sys.float_info.min
    assert loss == two_class_loss(740.0, 0.0)


@pytest.mark.parametrize("magnitude", MAGNITUDES)
def test_opposite_huge_logits(magnitude: float) -> None:
    """L([M, −M], 0) = log(1 + e^-2M); L([M, −M], 1) = 2M + log(1 + e^-2M) (inf once 2M
    rounds past float64's range).  [ORACLE-EXTREME]"""
    logits = [[magnitude, -magnitude], [magnitude, -magnitude]]
    on_top, below = reference.cross_entropy(logits, [0, 1], reduction="none")
    assert float(on_top) == two_class_loss(magnitude, -magnitude)
    with mpmath.workprec(EXPECTED_BITS):
        expected_below = round64(2 * mpf(magnitude) + mpmath.log1p(mpmath.exp(-2 * mpf(magnitude))))
    assert float(below) == expected_below


@pytest.mark.parametrize("magnitude", MAGNITUDES)
def test_mean_of_huge_losses_does_not_overflow(magnitude: float) -> None:
    """mean(L) = M + log(1 + e^-M) for two tokens of loss ≈ M, even when their sum overflows
    float64; the sum rounds to inf exactly when 2M does.  [ORACLE-EXTREME]"""
    logits = [[magnitude, 0.0], [magnitude, 0.0]]
    with mpmath.workprec(EXPECTED_BITS):
        exact = mpf(magnitude) + mpmath.log1p(mpmath.exp(-mpf(magnitude)))
        expected_mean, expected_sum = round64(exact), round64(2 * exact)
    assert float(reference.cross_entropy(logits, [1, 1])) == expected_mean
    assert float(reference.cross_entropy(logits, [1, 1], reduction="sum")) == expected_sum


def test_target_on_masked_logit_has_infinite_loss() -> None:
    """L(x, y) = +inf when x_y = −inf and some other logit is finite; p(y) = 0.  [ORACLE-EXTREME]"""
    row = [-math.inf, 0.0, 1.5]
    assert reference.cross_entropy([row], [0]) == mpmath.inf
    assert reference.token_nll(row, 0) == mpmath.inf
    assert reference.sequence_prob([row], [0]) == 0


def test_single_finite_logit_gives_exactly_zero() -> None:
    """L(x, y) = 0 and ∂L/∂x = 0 when x_y is the only finite logit (p(y) = 1).  [ORACLE-EXTREME]"""
    row = [-math.inf, 2.5, -math.inf, -math.inf]
    assert reference.cross_entropy([row], [1]) == 0
    assert reference.token_nll(row, 1) == 0
    assert reference.sequence_prob([row], [1]) == 1
    assert all(entry == 0 for entry in reference.cross_entropy_grad([row], [1])[0])


def test_single_class_gives_exactly_zero() -> None:
    """L([x], 0) = 0 for a vocabulary of one, however large x is.  [ORACLE-EXTREME]"""
    for value in [0.0, -sys.float_info.max, sys.float_info.max, 5e-324]:
        assert reference.cross_entropy([[value]], [0]) == 0


def test_masked_logits_are_left_out_of_the_softmax() -> None:
    """L([a, −inf, b], 0) = L([a, b], 0): a −inf logit contributes e^-inf = 0.  [ORACLE-EXTREME]"""
    huge = sys.float_info.max
    for a, b in [(0.0, 1.0), (huge, -huge), (-huge, huge), (1e-300, -1e-300)]:
        masked = reference.cross_entropy([[a, -math.inf, b]], [0])
        assert float(masked) == two_class_loss(a, b)


def test_subnormal_gradient_is_rounded_once() -> None:
    """∂L/∂x_0 = (1/3 − 1)·2^-1022 = −(2/3)·2^-1022 for L = 2^-1022·L([0, 0, 0], 0), a subnormal
    that rounding first to 53 bits and then to the subnormal grid gets wrong.  [ORACLE-EXTREME]"""
    grad_output = sys.float_info.min
    gradient = reference.cross_entropy_grad(
        [[0.0, 0.0, 0.0]], [0], reduction="sum", grad_output=grad_output
    )
    exact_target, exact_other = (
        Fraction(-2, 3) * Fraction(grad_output),
        Fraction(1, 3) * Fraction(grad_output),
    )
    assert [float(g) for g in gradient[0]] == [
        float(exact_target),
        float(exact_other),
        float(exact_other),
    ]


def test_smoothing_over_huge_near_ties_decides_a_rounding_boundary() -> None:
    """ℓ = (1 − ε)·nll_t + (ε/C)·Σ_j nll_j with huge, nearly tied logits: the exact part,
    (ε/C)·Σ_j (m − x_j), is a float64 midpoint here, and every nll_j exceeds m − x_j by about
    e^-(10^24) > 0, so the loss rounds up from the midpoint.  [ORACLE-EXTREME]

    No precision resolves e^-(10^24); the oracle must decide from its sign alone (it once
    gave up with PrecisionExhausted on this row).
    """
    row = [
        2.868366791959715e31,
        2.868366791959715e31,
        2.8683658248190594e31,
        2.868367033744879e31,
        2.868367275530043e31,  # the largest, and the target
        2.8683655830338954e31,
    ]
    epsilon = 0.1
    exact_part = Fraction(epsilon) * sum(Fraction(row[4]) - Fraction(x) for x in row) / len(row)
    below = math.nextafter(float(exact_part), -math.inf)
    if Fraction(below) < exact_part < Fraction(float(exact_part)):
        above = float(exact_part)
    else:
        below, above = float(exact_part), math.nextafter(float(exact_part), math.inf)
    assert (Fraction(below) + Fraction(above)) / 2 == exact_part, "the case needs a midpoint"
    for reduction in ("none", "sum", "mean"):
        loss = reference.cross_entropy([row], [4], reduction=reduction, label_smoothing=epsilon)
        assert float(loss[0] if reduction == "none" else loss) == above, reduction
