"""Hypothesis strategies for the oracle's tests: plain-Python batches, random and adversarial.

The samplers lean toward the regions where a log-sum-exp goes wrong (after scipy.special's
mpmath tests): near-ties, one dominant logit, huge spreads, tiny values, both signs and masked
(−inf) entries. Sizes stay small because the naive evaluator the oracle is checked against is
slow; ``LMLOSS_ORACLE_EXAMPLES`` scales the number of examples.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from reference import DEFAULT_IGNORE_INDEX

#: Examples per property; raise it for a longer search, e.g. LMLOSS_ORACLE_EXAMPLES=1000.
EXAMPLES = int(os.environ.get("LMLOSS_ORACLE_EXAMPLES", "40"))
oracle_settings = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

MAX_ROWS = 5
MAX_CLASSES = 10
LARGEST = sys.float_info.max
MASKED = -math.inf


@dataclass(frozen=True)
class Batch:
    """N rows of C logits, their targets, and the ignore_index that marks uncounted rows.

    Plain Python, not the suite's :class:`properties.strategies.Batch` (torch tensors with
    reproducers): the oracle takes lists of floats, and these tests run in the tox env
    ``oracle-standalone``, where neither torch nor numpy is installed, so this module may not
    import anything that imports torch.
    """

    logits: list[list[float]]
    targets: list[int]
    ignore_index: int

    @property
    def classes(self) -> int:
        return len(self.logits[0])


def moderate_values() -> st.SearchStrategy[float]:
    return st.floats(min_value=-40.0, max_value=40.0)


def tiny_values() -> st.SearchStrategy[float]:
    """Subnormals and tiny normals of both signs."""
    return st.floats(min_value=-1e-300, max_value=1e-300) | st.sampled_from(
        [5e-324, -5e-324, sys.float_info.min, -sys.float_info.min]
    )


def huge_values() -> st.SearchStrategy[float]:
    """±m·2^e with e from 10 up to the float64 limit, so every order of magnitude is drawn."""
    return st.builds(
        lambda sign, exponent, mantissa: sign * math.ldexp(mantissa, exponent),
        st.sampled_from([-1.0, 1.0]),
        st.integers(min_value=10, max_value=1024),
        st.floats(min_value=0.5, max_value=1.0, exclude_max=True),
    ) | st.sampled_from([LARGEST, -LARGEST])


def _ulps_away(value: float, steps: int) -> float:
    toward = math.copysign(math.inf, steps)
    for _ in range(abs(steps)):
        moved = math.nextafter(value, toward)
        if math.isinf(moved):
            break
        value = moved
    return value


@st.composite
def near_tie_rows(draw: st.DrawFn, classes: int) -> list[float]:
    """Every logit within a few ulps of one value (p ≈ 1/C, differences at the last bit)."""
    base = draw(moderate_values() | huge_values() | tiny_values(), label="tie value")
    steps = draw(st.lists(st.integers(-3, 3), min_size=classes, max_size=classes), label="ulps")
    return [_ulps_away(base, k) for k in steps]


@st.composite
def dominant_rows(draw: st.DrawFn, classes: int) -> list[float]:
    """One logit far above the rest: p(dominant) = 1 − tiny, every other p tiny."""
    rest = draw(st.lists(moderate_values(), min_size=classes, max_size=classes), label="rest")
    gap = draw(st.floats(min_value=30.0, max_value=1e6) | huge_values().map(abs), label="gap")
    index = draw(st.integers(0, classes - 1), label="dominant index")
    rest[index] = min(max(rest) + gap, LARGEST)
    return rest


def spread_rows(classes: int) -> st.SearchStrategy[list[float]]:
    """Logits of every magnitude mixed in one row, both signs."""
    values = huge_values() | moderate_values() | tiny_values()
    return st.lists(values, min_size=classes, max_size=classes)


def rows(classes: int) -> st.SearchStrategy[list[float]]:
    return st.one_of(
        st.lists(moderate_values(), min_size=classes, max_size=classes),
        near_tie_rows(classes),
        dominant_rows(classes),
        spread_rows(classes),
        st.lists(tiny_values(), min_size=classes, max_size=classes),
    )


@st.composite
def batches(
    draw: st.DrawFn,
    *,
    max_rows: int = MAX_ROWS,
    max_classes: int = MAX_CLASSES,
    logits: st.SearchStrategy[float] | None = None,
    masked: bool = True,
    masked_targets: bool = False,
) -> Batch:
    """A batch whose rows are drawn from ``rows`` (or from ``logits`` per entry when given).

    ``masked`` puts −inf into some entries (never all of a row); ``masked_targets`` lets a
    counted target land on one (its loss is +inf). Some rows are marked ignored.
    """
    classes = draw(st.integers(1, max_classes), label="C")
    count = draw(st.integers(1, max_rows), label="N")
    row_strategy = (
        rows(classes) if logits is None else st.lists(logits, min_size=classes, max_size=classes)
    )
    ignore_index = draw(
        st.sampled_from([DEFAULT_IGNORE_INDEX, 0]) | st.integers(-3, classes + 2),
        label="ignore_index",
    )
    logit_rows, targets = [], []
    for _ in range(count):
        row = draw(row_strategy, label="row")
        target = draw(st.integers(0, classes - 1), label="target")
        if masked and classes > 1:
            # Mask a subset that leaves one finite logit (the target's, unless it may be masked).
            keep = draw(st.integers(0, classes - 1), label="kept") if masked_targets else target
            hidden = draw(
                st.sets(st.integers(0, classes - 1), max_size=classes - 1), label="masked"
            )
            row = [MASKED if j in hidden and j != keep else x for j, x in enumerate(row)]
        if draw(st.booleans(), label="ignored"):
            target = ignore_index
        logit_rows.append(row)
        targets.append(target)
    return Batch(logit_rows, targets, ignore_index)


def weights(classes: int) -> st.SearchStrategy[list[float] | None]:
    """None, or positive class weights of any spread (a zero weight makes 0·inf undefined)."""
    weight = st.floats(min_value=1e-30, max_value=1e30) | st.just(1.0)
    return st.none() | st.lists(weight, min_size=classes, max_size=classes)


@st.composite
def loss_options(draw: st.DrawFn, batch: Batch) -> dict[str, Any]:
    """Every keyword of cross_entropy, each at its default or at a drawn value."""
    smoothing = st.just(0.0) | st.floats(min_value=0.0, max_value=1.0) | st.sampled_from([1.0, 0.1])
    return {
        "ignore_index": batch.ignore_index,
        "reduction": draw(st.sampled_from(["mean", "sum", "none"]), label="reduction"),
        "label_smoothing": draw(smoothing, label="label_smoothing"),
        "weight": draw(weights(batch.classes), label="weight"),
        "z_loss": draw(st.just(0.0) | st.floats(min_value=0.0, max_value=10.0), label="z_loss"),
        "softcap": draw(
            st.none() | st.floats(min_value=1e-3, max_value=1e3) | st.just(30.0), label="softcap"
        ),
    }


def grad_outputs(
    reduction: str, rows: int, values: st.SearchStrategy[float] | None = None
) -> st.SearchStrategy[Any]:
    """None (a unit upstream gradient), a number, or N numbers for reduction="none"."""
    if values is None:
        values = moderate_values() | tiny_values() | st.floats(min_value=-1e300, max_value=1e300)
    if reduction == "none":
        return st.none() | st.lists(values, min_size=rows, max_size=rows)
    return st.none() | values


# ---- the fused projection (contract 3) ---------------------------------------------------------

#: Operands stay below 2^500, so that a logit (a sum of up to MAX_FEATURES products and a bias)
#: stays below float64's largest value: the naive witness sizes its precision from float proxies.
LARGEST_OPERAND_EXPONENT = 500
MAX_FEATURES = 3


@dataclass(frozen=True)
class LinearBatch:
    """A call of contract 3: input (N × D), linear_weight (C × D), linear_bias, targets, and the
    ignore_index that marks uncounted rows. Plain Python, as :class:`Batch`."""

    input: list[list[float]]
    linear_weight: list[list[float]]
    linear_bias: list[float] | None
    targets: list[int]
    ignore_index: int

    @property
    def classes(self) -> int:
        return len(self.linear_weight)

    @property
    def arguments(self) -> tuple[list[list[float]], list[list[float]], list[int]]:
        return self.input, self.linear_weight, self.targets


def operands() -> st.SearchStrategy[float]:
    """Inputs, weights and biases: halves of small integers (exact ties, float logits, constant
    and zero columns), moderate values, tiny ones and magnitudes up to 2^500, both signs."""
    halves = st.integers(-8, 8).map(lambda k: k / 2)
    large = st.builds(
        lambda sign, exponent, mantissa: sign * math.ldexp(mantissa, exponent),
        st.sampled_from([-1.0, 1.0]),
        st.integers(min_value=10, max_value=LARGEST_OPERAND_EXPONENT),
        st.floats(min_value=0.5, max_value=1.0, exclude_max=True),
    )
    return halves | moderate_values() | tiny_values() | large


def few_bit_floats() -> st.SearchStrategy[float]:
    """Floats of at most 6 significant bits, from 2^-14 to 2^8 in magnitude, and 0: with one
    feature, x·w + b spans at most 52 bits, so that the exact logits are float64 values."""
    return st.builds(math.ldexp, st.integers(-63, 63), st.integers(-14, 2))


@st.composite
def linear_batches(
    draw: st.DrawFn,
    *,
    max_rows: int = 4,
    max_features: int = MAX_FEATURES,
    max_classes: int = 5,
    values: st.SearchStrategy[float] | None = None,
) -> LinearBatch:
    """A contract-3 call; some rows repeat an earlier one (identical logits), some are ignored."""
    values = operands() if values is None else values
    classes = draw(st.integers(1, max_classes), label="C")
    features = draw(st.integers(1, max_features), label="D")
    count = draw(st.integers(1, max_rows), label="N")
    vectors = st.lists(values, min_size=features, max_size=features)
    weights = draw(st.lists(vectors, min_size=classes, max_size=classes), label="linear_weight")
    bias = draw(st.none() | st.lists(values, min_size=classes, max_size=classes), label="bias")
    ignore_index = draw(
        st.sampled_from([DEFAULT_IGNORE_INDEX, 0]) | st.integers(-3, classes + 2),
        label="ignore_index",
    )
    rows: list[list[float]] = []
    targets: list[int] = []
    for _ in range(count):
        if rows and draw(st.booleans(), label="repeat a row"):
            k = draw(st.integers(0, len(rows) - 1), label="repeated row")
            rows.append(list(rows[k]))
            targets.append(targets[k])
            continue
        rows.append(draw(vectors, label="input row"))
        target = draw(st.integers(0, classes - 1), label="target")
        targets.append(ignore_index if draw(st.booleans(), label="ignored") else target)
    return LinearBatch(rows, weights, bias, targets, ignore_index)
