"""The oracle of contract 3: the fused projection + loss at the exact logits z = x·Wᵀ + b.

linear_cross_entropy(x, W, y) is cross_entropy at z, never rounded before the softmax, and its
gradient is ∂L/∂x = g·W, ∂L/∂W = gᵀ·x, ∂L/∂b = Σ_i g_i with g = ∂L/∂z, every value correctly
rounded. Witnesses: reference.cross_entropy itself where the exact logits are float64 values
(W the identity, or one feature with operands of few bits), and otherwise the naive evaluator
(_naive.linear_cross_entropy and _grad: Fraction logits, then the straight formulas at the
precision _naive.linear_working_bits derives, within _naive.ABSOLUTE_ERROR of every result).
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, reject
from hypothesis import strategies as st

import reference
from properties.oracle import _naive
from properties.oracle._batches import (
    LinearBatch,
    batches,
    few_bit_floats,
    grad_outputs,
    linear_batches,
    loss_options,
    oracle_settings,
)
from properties.oracle._compare import assert_rounds_alike, describe


def _options(data: st.DataObject, batch: LinearBatch) -> dict[str, Any]:
    return data.draw(loss_options(batch), label="options")


def _keywords(batch: LinearBatch, options: dict[str, Any]) -> dict[str, Any]:
    return {"linear_bias": batch.linear_bias, **options}


def _zero_mean_weights(batch: LinearBatch, options: dict[str, Any]) -> bool:
    """A mean over counted targets whose weights sum to 0 (the loss and its gradient are NaN)."""
    if options["reduction"] != "mean" or options["weight"] is None:
        return False
    counted = [t for t in batch.targets if t != options["ignore_index"]]
    return bool(counted) and sum(Fraction(options["weight"][t]) for t in counted) == 0


def _decided(call: Callable[[], Any]) -> Any:
    """The oracle's result, or the example rejected where it raises PrecisionExhausted (as the
    suite skips it): a value within 2^-8192 of a rounding boundary that no exact form catches,
    such as two rows' midpoint-adjacent parts e^-6144 and e^-12288 of opposite signs."""
    try:
        return call()
    except reference.PrecisionExhausted:
        reject()


def _identity(classes: int) -> list[list[float]]:
    return [[1.0 if j == d else 0.0 for d in range(classes)] for j in range(classes)]


@oracle_settings
@given(data=st.data())
def test_identity_projection_is_cross_entropy(data: st.DataObject) -> None:
    """L(x, I, y) = cross_entropy(x, y) and ∂L/∂x = ∂cross_entropy/∂x, bit for bit, for every
    keyword and grad_output.  [ORACLE-LINEAR]"""
    batch = data.draw(batches(masked=False), label="batch")
    options = data.draw(loss_options(batch), label="options")
    grad_output = data.draw(grad_outputs(options["reduction"], len(batch.targets)), label="g")
    weights = _identity(batch.classes)
    call = describe("linear_cross_entropy", batch.logits, weights, batch.targets, **options)
    expected = reference.cross_entropy(batch.logits, batch.targets, **options)
    actual = reference.linear_cross_entropy(batch.logits, weights, batch.targets, **options)
    assert_rounds_alike(actual, expected, call, "cross_entropy")
    expected_grad = reference.cross_entropy_grad(
        batch.logits, batch.targets, **options, grad_output=grad_output
    )
    grad_input, _, _ = reference.linear_cross_entropy_grad(
        batch.logits, weights, batch.targets, **options, grad_output=grad_output
    )
    call = describe(
        "linear_cross_entropy_grad",
        batch.logits,
        weights,
        batch.targets,
        **options,
        grad_output=grad_output,
    )
    assert_rounds_alike(grad_input, expected_grad, call, "cross_entropy_grad")


@oracle_settings
@given(data=st.data())
def test_float_logits_give_cross_entropy(data: st.DataObject) -> None:
    """L(x, w, y; b) = cross_entropy(x·wᵀ + b, y) for one feature, wherever the exact logits are
    float64 values, for every keyword.  [ORACLE-LINEAR]"""
    batch = data.draw(
        linear_batches(max_features=1, max_classes=8, values=few_bit_floats()), label="batch"
    )
    options = _options(data, batch)
    logits = _naive.exact_logits(batch.input, batch.linear_weight, batch.linear_bias)
    assume(all(Fraction(float(z)) == z for row in logits for z in row))
    floats = [[float(z) for z in row] for row in logits]
    keywords = _keywords(batch, options)
    call = describe("linear_cross_entropy", *batch.arguments, **keywords)
    assert_rounds_alike(
        reference.linear_cross_entropy(*batch.arguments, **keywords),
        reference.cross_entropy(floats, batch.targets, **options),
        call,
        "cross_entropy",
    )


@oracle_settings
@given(data=st.data())
def test_linear_cross_entropy_is_correctly_rounded(data: st.DataObject) -> None:
    """float(L(x, W, y; b)) = round64(cross_entropy at the exact logits x·Wᵀ + b), for every
    keyword.  [ORACLE-LINEAR]"""
    batch = data.draw(linear_batches(), label="batch")
    options = _options(data, batch)
    keywords = _keywords(batch, options)
    call = describe("linear_cross_entropy", *batch.arguments, **keywords)
    assert_rounds_alike(
        reference.linear_cross_entropy(*batch.arguments, **keywords),
        _naive.linear_cross_entropy(*batch.arguments, **keywords),
        call,
        "naive",
        witness_error=_naive.ABSOLUTE_ERROR,
    )


@oracle_settings
@given(data=st.data())
def test_linear_cross_entropy_grad_is_correctly_rounded(data: st.DataObject) -> None:
    """float(∂L/∂x_id) = round64(Σ_j g_ij·W_jd), float(∂L/∂W_jd) = round64(Σ_i g_ij·x_id),
    float(∂L/∂b_j) = round64(Σ_i g_ij), g = ∂(g_out·L)/∂z at the exact z, for every keyword
    and grad_output.  [ORACLE-LINEAR]"""
    batch = data.draw(linear_batches(), label="batch")
    options = _options(data, batch)
    assume(not _zero_mean_weights(batch, options))
    grad_output = data.draw(grad_outputs(options["reduction"], len(batch.targets)), label="g")
    keywords = {**_keywords(batch, options), "grad_output": grad_output}
    call = describe("linear_cross_entropy_grad", *batch.arguments, **keywords)
    grad_input, grad_weight, grad_bias = _decided(
        lambda: reference.linear_cross_entropy_grad(*batch.arguments, **keywords)
    )
    expected_input, expected_weight, expected_bias = _naive.linear_cross_entropy_grad(
        *batch.arguments, **keywords
    )
    error = _naive.ABSOLUTE_ERROR
    assert_rounds_alike(grad_input, expected_input, call + " [input]", "naive", witness_error=error)
    assert_rounds_alike(
        grad_weight, expected_weight, call + " [linear_weight]", "naive", witness_error=error
    )
    if batch.linear_bias is None:
        assert grad_bias is None, f"{call}: a gradient for a bias that was not given"
    else:
        assert_rounds_alike(
            grad_bias, expected_bias, call + " [linear_bias]", "naive", witness_error=error
        )


# ---- exact zeros --------------------------------------------------------------------------------


def _gradient(batch: LinearBatch, **keywords: Any) -> tuple[Any, Any, Any]:
    return _decided(
        lambda: reference.linear_cross_entropy_grad(
            *batch.arguments,
            linear_bias=batch.linear_bias,
            ignore_index=batch.ignore_index,
            **keywords,
        )
    )


def _zeros(values: list[Any]) -> list[int]:
    """The positions whose value is not exactly 0 (an mpf 0, not merely a tiny float)."""
    return [k for k, v in enumerate(values) if v != 0]


@oracle_settings
@given(batch=linear_batches())
def test_ignored_rows_have_exactly_zero_gradient(batch: LinearBatch) -> None:
    """∂L/∂x_i = 0 exactly for every ignored row i.  [ORACLE-LINEAR]"""
    grad_input, _, _ = _gradient(batch)
    for i, target in enumerate(batch.targets):
        if target == batch.ignore_index:
            assert not _zeros(grad_input[i]), f"ignored row {i}: {grad_input[i]}"


@oracle_settings
@given(batch=linear_batches(), data=st.data())
def test_a_zero_input_column_has_exactly_zero_weight_gradient(
    batch: LinearBatch, data: st.DataObject
) -> None:
    """x_{·d} = 0 ⇒ ∂L/∂W_jd = Σ_i g_ij·0 = 0 exactly, and W_{·d} = 0 ⇒ ∂L/∂x_id = 0 exactly.
    [ORACLE-LINEAR]"""
    d = data.draw(st.integers(0, len(batch.linear_weight[0]) - 1), label="column")
    inputs = [[0.0 if k == d else v for k, v in enumerate(row)] for row in batch.input]
    weights = [[0.0 if k == d else v for k, v in enumerate(row)] for row in batch.linear_weight]
    _, grad_weight, _ = _gradient(replace(batch, input=inputs))
    column = [row[d] for row in grad_weight]
    assert not _zeros(column), f"∂L/∂W[:, {d}] = {column} for a zero input column"
    grad_input, _, _ = _gradient(replace(batch, linear_weight=weights))
    column = [row[d] for row in grad_input]
    assert not _zeros(column), f"∂L/∂x[:, {d}] = {column} for a zero weight column"


@oracle_settings
@given(batch=linear_batches(max_classes=1), smoothing=st.sampled_from([0.0, 0.1, 1.0]))
def test_one_class_has_exactly_zero_gradient(batch: LinearBatch, smoothing: float) -> None:
    """C = 1 ⇒ p = 1 and g = 0: every gradient is exactly 0 (without z-loss).  [ORACLE-LINEAR]"""
    grads = _gradient(batch, label_smoothing=smoothing, reduction="sum")
    for name, grad in zip(("input", "linear_weight"), grads[:2], strict=True):
        for row in grad:
            assert not _zeros(row), f"∂L/∂{name} = {grad} with one class"
    if grads[2] is not None:
        assert not _zeros(grads[2]), f"∂L/∂linear_bias = {grads[2]} with one class"


@oracle_settings
@given(batch=linear_batches(max_rows=2), data=st.data())
def test_identical_rows_with_opposite_upstream_cancel_exactly(
    batch: LinearBatch, data: st.DataObject
) -> None:
    """Rows x and x (or x + c·1 in the logits' span) with the same target and upstream +u, −u:
    their terms of ∂L/∂W and ∂L/∂b cancel to exactly 0.  [ORACLE-LINEAR]"""
    row, target = batch.input[0], data.draw(st.integers(0, batch.classes - 1), label="target")
    u = data.draw(st.floats(min_value=1e-3, max_value=1e3), label="u")
    options = data.draw(
        st.fixed_dictionaries(
            {
                "label_smoothing": st.sampled_from([0.0, 0.25]),
                "z_loss": st.sampled_from([0.0, 1e-4]),
                "softcap": st.sampled_from([None, 30.0]),
            }
        ),
        label="options",
    )
    pair = replace(batch, input=[row, list(row)], targets=[target, target])
    _, grad_weight, grad_bias = _gradient(pair, reduction="none", grad_output=[u, -u], **options)
    for j, weight_row in enumerate(grad_weight):
        assert not _zeros(weight_row), f"∂L/∂W[{j}] = {weight_row} for cancelling rows"
    if grad_bias is not None:
        assert not _zeros(grad_bias), f"∂L/∂b = {grad_bias} for cancelling rows"


@oracle_settings
@given(batch=linear_batches(), data=st.data())
def test_a_constant_weight_column_has_exactly_zero_input_gradient(
    batch: LinearBatch, data: st.DataObject
) -> None:
    """W_jd = c for every class j ⇒ ∂L/∂x_id = c·Σ_j g_ij = 0 exactly (Σ_j g_ij = 0 without
    z-loss and softcap).  [ORACLE-LINEAR]"""
    d = data.draw(st.integers(0, len(batch.linear_weight[0]) - 1), label="column")
    c = batch.linear_weight[0][d]
    weights = [[c if k == d else v for k, v in enumerate(row)] for row in batch.linear_weight]
    smoothing = data.draw(st.sampled_from([0.0, 0.1]), label="label_smoothing")
    grad_input, _, _ = _gradient(replace(batch, linear_weight=weights), label_smoothing=smoothing)
    column = [row[d] for row in grad_input]
    assert not _zeros(column), f"∂L/∂x[:, {d}] = {column} for a constant weight column {c}"


def test_zero_mean_weights_give_nan() -> None:
    """Σ_counted w_y = 0 under the mean: L = NaN, and the counted rows of ∂L/∂x and all of ∂L/∂W
    and ∂L/∂b are NaN (torch's 0/0), the ignored rows exactly 0.  [ORACLE-LINEAR]"""
    args = ([[1.0, 2.0], [3.0, 4.0]], [[1.0, 0.0], [0.0, 1.0]], [0, -100])
    keywords: dict[str, Any] = {"weight": [0.0, 1.0], "linear_bias": [0.5, 0.25]}
    assert math.isnan(reference.linear_cross_entropy(*args, **keywords))
    grad_input, grad_weight, grad_bias = reference.linear_cross_entropy_grad(*args, **keywords)
    assert all(math.isnan(v) for v in grad_input[0]) and not _zeros(grad_input[1])
    assert all(math.isnan(v) for row in grad_weight for v in row)
    assert grad_bias is not None and all(math.isnan(v) for v in grad_bias)


def test_empty_batches_and_no_features() -> None:
    """N = 0 gives the empty loss (NaN mean, 0 sum) and zero gradients; D = 0 leaves the logits
    b, and ∂L/∂b.  [ORACLE-LINEAR]"""
    weights = [[1.0], [2.0]]
    assert math.isnan(reference.linear_cross_entropy([], weights, []))
    assert reference.linear_cross_entropy([], weights, [], reduction="sum") == 0
    grad_input, grad_weight, _ = reference.linear_cross_entropy_grad([], weights, [])
    assert grad_input == [] and grad_weight == [[0], [0]]
    bias = [0.5, -1.0]
    expected = reference.cross_entropy([bias, bias], [0, 1], reduction="sum")
    actual = reference.linear_cross_entropy(
        [[], []], [[], []], [0, 1], linear_bias=bias, reduction="sum"
    )
    assert actual == expected
    grad_input, grad_weight, grad_bias = reference.linear_cross_entropy_grad(
        [[], []], [[], []], [0, 1], linear_bias=bias, reduction="sum"
    )
    logits_grad = reference.cross_entropy_grad([bias, bias], [0, 1], reduction="sum")
    assert grad_input == [[], []] and grad_weight == [[], []]
    assert grad_bias is not None
    assert_rounds_alike(
        grad_bias,
        [logits_grad[0][j] + logits_grad[1][j] for j in range(2)],
        "linear_cross_entropy_grad([[], []], [[], []], [0, 1], linear_bias=[0.5, -1.0])",
        "the sum of cross_entropy_grad's rows",
    )


# ---- bad inputs ----------------------------------------------------------------------------

X = [[1.0, 2.0], [0.5, -1.0]]
W = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]
Y = [0, 2]
CALLS: dict[str, Callable[..., Any]] = {
    "loss": reference.linear_cross_entropy,
    "gradient": reference.linear_cross_entropy_grad,
}
BAD_INPUTS: list[tuple[str, tuple[Any, ...], dict[str, Any], type[Exception], str]] = [
    ("NaN input", ([[1.0, math.nan], X[1]], W, Y), {}, ValueError, r"input\[0\]\[1\] is NaN"),
    ("inf input", ([X[0], [math.inf, 0.0]], W, Y), {}, ValueError, r"input\[1\]\[0\].*inf.*finite"),
    (
        "-inf weight",
        (X, [W[0], [0.0, -math.inf], W[2]], Y),
        {},
        ValueError,
        r"linear_weight\[1\]\[1\].*-inf.*finite",
    ),
    (
        "NaN bias",
        (X, W, Y),
        {"linear_bias": [0.0, math.nan, 0.0]},
        ValueError,
        r"linear_bias\[1\].*nan",
    ),
    (
        "inf bias",
        (X, W, Y),
        {"linear_bias": [math.inf, 0.0, 0.0]},
        ValueError,
        r"linear_bias\[0\].*inf",
    ),
    ("ragged input", ([[1.0, 2.0], [1.0]], W, Y), {}, ValueError, r"ragged input.*row 1 has 1"),
    (
        "ragged weight",
        (X, [[1.0, 0.0], [1.0], [0.0, 1.0]], Y),
        {},
        ValueError,
        r"ragged linear_weight.*row 1 has 1",
    ),
    (
        "D mismatch",
        ([[1.0, 2.0, 3.0]], W, [0]),
        {},
        ValueError,
        r"(?i)mismatch.*D = 3.*linear_weight.*2",
    ),
    (
        "bias length",
        (X, W, Y),
        {"linear_bias": [0.0, 0.0]},
        ValueError,
        r"linear_bias has 2 entries for 3 classes",
    ),
    ("target ≥ C", (X, W, [0, 3]), {}, ValueError, r"targets\[1\] = 3 is out of range for 3"),
    ("negative target", (X, W, [-1, 0]), {}, ValueError, r"targets\[0\] = -1 is out of range"),
    ("target count", (X, W, [0]), {}, ValueError, r"2 rows of input but 1 targets"),
    ("empty C", (X, [], Y), {}, ValueError, r"linear_weight is empty"),
    ("a tensor, not a list", (object(), W, Y), {}, TypeError, r"input must be a sequence of rows"),
    (
        "a string entry",
        ([[1.0, "2"], X[1]], W, Y),
        {},
        TypeError,
        r"input\[0\]\[1\] must be a real",
    ),
    ("class weights", (X, W, Y), {"weight": [1.0, 1.0]}, ValueError, r"weight has 2 entries for 3"),
]


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize(
    ("args", "keywords", "error", "pattern"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUTS],
)
def test_bad_input_is_refused_by_name(
    call: str, args: tuple[Any, ...], keywords: dict[str, Any], error: type[Exception], pattern: str
) -> None:
    """Bad input raises ValueError/TypeError whose message names the problem.  [ORACLE-LINEAR]"""
    with pytest.raises(error, match=pattern):
        CALLS[call](*args, **keywords)


def test_linear_oracle_loads_neither_torch_nor_numpy() -> None:
    """{torch, numpy} ∩ sys.modules = ∅ after a call of linear_cross_entropy and its gradient
    in a fresh interpreter.  [ORACLE-LINEAR]"""
    probe = (
        "import sys, reference\n"
        "reference.linear_cross_entropy([[1.0]], [[1.0], [2.0]], [0])\n"
        "reference.linear_cross_entropy_grad([[1.0]], [[1.0], [2.0]], [0])\n"
        "print(','.join(m for m in ('torch', 'numpy') if m in sys.modules))"
    )
    root = Path(reference.__file__).resolve().parent.parent
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "", f"the linear oracle loaded {loaded}"


HIGH_START_BITS = 2000


@oracle_settings
@given(data=st.data())
def test_default_precision_agrees_with_a_high_start(data: st.DataObject) -> None:
    """round64(L, ∂L at the default start) = round64(L, ∂L started at 2000 bits).  [ORACLE-LINEAR]"""
    batch = data.draw(linear_batches(), label="batch")
    options = _options(data, batch)
    assume(not _zero_mean_weights(batch, options))
    grad_output = data.draw(grad_outputs(options["reduction"], len(batch.targets)), label="g")
    keywords = _keywords(batch, options)
    loss = reference.linear_cross_entropy(*batch.arguments, **keywords)
    grads = _decided(
        lambda: reference.linear_cross_entropy_grad(
            *batch.arguments, **keywords, grad_output=grad_output
        )
    )
    with reference.precision(HIGH_START_BITS):
        loss_high = reference.linear_cross_entropy(*batch.arguments, **keywords)
        grads_high = _decided(
            lambda: reference.linear_cross_entropy_grad(
                *batch.arguments, **keywords, grad_output=grad_output
            )
        )
    call = describe("linear_cross_entropy", *batch.arguments, **keywords)
    assert_rounds_alike(loss, loss_high, call, f"itself at {HIGH_START_BITS} bits")
    call = describe(
        "linear_cross_entropy_grad", *batch.arguments, **keywords, grad_output=grad_output
    )
    for name, grad, grad_high in zip(
        ("input", "linear_weight", "linear_bias"), grads, grads_high, strict=True
    ):
        assert_rounds_alike(
            grad or [], grad_high or [], f"{call} [{name}]", f"itself at {HIGH_START_BITS} bits"
        )
