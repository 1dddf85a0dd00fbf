"""The integer first step (reference/_fast.py): it settles what it can, and only correctly.

The general path started at 2000 bits is the witness (reference.precision turns the first step
off), so every result the first step settles is checked against an independent evaluation.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

import reference
from properties.oracle._batches import batches, oracle_settings
from properties.oracle._compare import assert_rounds_alike, describe
from reference import _fast

HIGH_START_BITS = 2000


def _round_fraction(value: Fraction) -> float:
    """round64 of an exact rational: Python's int/int division rounds once, subnormals too."""
    return float(value)


@given(
    lo=st.integers(-(2**80), 2**80),
    width=st.integers(0, 2**12),
    scale=st.one_of(st.integers(-1200, -1000), st.integers(-200, 200), st.integers(900, 1000)),
)
def test_an_interval_is_settled_only_where_all_of_it_rounds_alike(
    lo: int, width: int, scale: int
) -> None:
    """round_interval(lo, hi, s) = r ⇒ round64(v) = r for v = lo·2^s and hi·2^s.  [ORACLE-FIRST]"""
    hi = lo + width
    settled = _fast.round_interval(lo, hi, scale)
    if settled is None:
        return
    for end in (lo, hi):
        exact = Fraction(end) * Fraction(2) ** scale
        try:
            expected = _round_fraction(exact)
        except OverflowError:
            raise AssertionError(f"settled {settled!r} where {end}·2^{scale} overflows") from None
        assert settled == expected, (
            f"[{lo}, {hi}]·2^{scale}: settled {settled!r}, {end} → {expected!r}"
        )


def test_exact_and_tied_values_round_to_even() -> None:
    """The ends that are exact float64 values or ties are rounded as float64 rounds.  [ORACLE-FIRST]"""
    assert _fast.round_interval(3, 3, -1) == 1.5
    assert _fast.round_interval(2**53 + 1, 2**53 + 1, 0) == float(2**53)  # tie: to even
    assert _fast.round_interval(2**53 + 3, 2**53 + 3, 0) == float(2**53 + 4)
    assert _fast.round_interval(1, 1, -1076) == 0.0  # a quarter of the smallest subnormal
    assert _fast.round_interval(1, 1, -1075) in (0.0, None)  # the tie itself: 0, or left over
    assert _fast.round_interval(-5, 5, -1080) == 0.0
    assert _fast.round_interval(-1, 1, 0) is None  # straddles 0
    assert _fast.round_interval(1, 1, -1074) is None  # a subnormal: the general path's


@oracle_settings
@given(data=st.data())
def test_first_step_agrees_with_the_general_path_on_sequences(data: st.DataObject) -> None:
    """round64(sequence_logprob) with the first step = without it.  [ORACLE-FIRST]"""
    batch = data.draw(batches(), label="batch")
    targets = [t if 0 <= t < batch.classes else 0 for t in batch.targets]
    if any(all(v == -math.inf for v in row) for row in batch.logits):
        return
    first = reference.sequence_logprob(batch.logits, targets)
    with reference.precision(HIGH_START_BITS):
        general = reference.sequence_logprob(batch.logits, targets)
    call = describe("sequence_logprob", batch.logits, targets)
    assert_rounds_alike(first, general, call, f"itself at {HIGH_START_BITS} bits")


def _suite_like_batch(seed: int) -> tuple[list[list[float]], list[int]]:
    """Rows like the suite's: normal logits, scaled, rounded to float32's 24 bits."""
    rng = random.Random(seed)
    rows, classes = 16, 50
    logits = [[float(f"{rng.gauss(0.0, 3.0):.7g}") for _ in range(classes)] for _ in range(rows)]
    return logits, [rng.randrange(classes) for _ in range(rows)]


def test_first_step_settles_ordinary_rows() -> None:
    """On ordinary rows the first step decides every loss and gradient element: the oracle's
    speed rests on it, so a change that sends them to the general path fails here.  [ORACLE-FIRST]"""
    logits, targets = _suite_like_batch(0)
    classes = len(logits[0])
    for options in (
        {},
        {"label_smoothing": 0.1},
        {"weight": [0.5 + j / classes for j in range(classes)], "z_loss": 1e-4},
    ):
        terms = _fast.LossTerms(
            classes,
            options.get("label_smoothing", 0.0),
            options.get("z_loss", 0.0),
            options.get("weight"),
        )
        for row, target in zip(logits, targets, strict=True):
            loss = terms.row_loss(row, target)
            assert loss is not None and _fast.round_interval(*loss) is not None, (row, options)
            gradient = _fast.row_gradient(terms, row, target, 1.0, (len(logits), 0))
            assert gradient is not None and None not in gradient, (row, options)


def test_a_long_row_summed_by_counts_is_summed_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """S of a row of more than _COUNTED_ROW_LENGTH classes, summed by distinct argument times its
    count, is the same integer interval as summed term by term.  [ORACLE-FIRST]"""
    rng = random.Random(1)
    classes = 2 * _fast._COUNTED_ROW_LENGTH  # a fifth masked leaves more than the threshold
    masked = [-math.inf if rng.random() < 0.2 else 0.0 for _ in range(classes)]
    rows = [
        [round(rng.gauss(0.0, 1.0) * 64) / 64 * 3.1 + 7.3 for _ in range(classes)],  # repeats
        [float(f"{rng.gauss(0.0, 4.0):.7g}") + m for m in masked],  # distinct, some masked
        [2.5] * classes,  # one tie throughout
    ]
    rows[1][0] = 0.0
    counted = []
    for row in rows:
        _fast.clear_cache()
        fixed = _fast.fixed_row(row)
        assert fixed is not None
        counted.append((fixed.total, fixed.dropped))
    monkeypatch.setattr(_fast, "_COUNTED_ROW_LENGTH", 2**62)  # term by term
    for row, expected in zip(rows, counted, strict=True):
        _fast.clear_cache()
        fixed = _fast.fixed_row(row)
        assert fixed is not None
        assert (fixed.total, fixed.dropped) == expected
