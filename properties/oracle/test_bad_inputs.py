"""Bad input is refused with a ValueError or TypeError whose message names the problem.

Each case gives the call, the exception type and a pattern the message must match: the name of
the offending argument and, where there is one, the offending value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

import reference

NAN = math.nan
ROW = [0.0, 1.0, 2.0]

CASES: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    (
        "NaN logit",
        lambda: reference.cross_entropy([ROW, [0.0, NAN, 1.0]], [0, 1]),
        ValueError,
        r"NaN",
    ),
    ("NaN logit in logsumexp", lambda: reference.logsumexp([NAN]), ValueError, r"NaN"),
    (
        "NaN logit in the gradient",
        lambda: reference.cross_entropy_grad([[NAN, 0.0]], [1]),
        ValueError,
        r"NaN",
    ),
    (
        "target ≥ C",
        lambda: reference.cross_entropy([ROW], [3]),
        ValueError,
        r"(?i)target.*\b3\b.*range|range.*\b3\b",
    ),
    (
        "negative target",
        lambda: reference.cross_entropy([ROW], [-1]),
        ValueError,
        r"(?i)target.*-1.*range",
    ),
    (
        "target out of range in token_nll",
        lambda: reference.token_nll(ROW, 5),
        ValueError,
        r"(?i)target.*\b5\b",
    ),
    (
        "target out of range in sequence_prob",
        lambda: reference.sequence_prob([ROW], [7]),
        ValueError,
        r"(?i)target.*\b7\b",
    ),
    (
        "target ≥ C with another ignore_index",
        lambda: reference.cross_entropy([ROW], [3], ignore_index=0),
        ValueError,
        r"(?i)target.*\b3\b",
    ),
    (
        "ragged rows",
        lambda: reference.cross_entropy([ROW, [0.0, 1.0]], [0, 0]),
        ValueError,
        r"(?i)ragged|same (length|number)",
    ),
    (
        "more targets than rows",
        lambda: reference.cross_entropy([ROW], [0, 1]),
        ValueError,
        r"(?i)(length|mismatch).*\b1\b.*\b2\b|\b2\b.*target",
    ),
    (
        "fewer targets than rows",
        lambda: reference.cross_entropy([ROW, ROW], [0]),
        ValueError,
        r"(?i)length|mismatch",
    ),
    (
        "targets/rows mismatch in sequence_logprob",
        lambda: reference.sequence_logprob([ROW, ROW], [0]),
        ValueError,
        r"(?i)length|mismatch",
    ),
    (
        "weight shorter than C",
        lambda: reference.cross_entropy([ROW], [0], weight=[1.0, 1.0]),
        ValueError,
        r"(?i)weight.*\b2\b.*\b3\b",
    ),
    (
        "weight longer than C",
        lambda: reference.cross_entropy_grad([ROW], [0], weight=[1.0] * 4),
        ValueError,
        r"(?i)weight.*\b4\b",
    ),
    (
        "NaN weight",
        lambda: reference.cross_entropy([ROW], [0], weight=[1.0, NAN, 1.0]),
        ValueError,
        r"(?i)weight.*nan",
    ),
    (
        "grad_output shorter than N",
        lambda: reference.cross_entropy_grad(
            [ROW, ROW], [0, 1], reduction="none", grad_output=[1.0]
        ),
        ValueError,
        r"(?i)grad_output.*\b1\b.*\b2\b",
    ),
    (
        "grad_output a list for mean",
        lambda: reference.cross_entropy_grad([ROW], [0], grad_output=[1.0]),
        TypeError,
        r"(?i)grad_output",
    ),
    (
        "grad_output a number for none",
        lambda: reference.cross_entropy_grad([ROW], [0], reduction="none", grad_output=1.0),
        TypeError,
        r"(?i)grad_output",
    ),
    (
        "NaN grad_output",
        lambda: reference.cross_entropy_grad([ROW], [0], grad_output=NAN),
        ValueError,
        r"(?i)grad_output.*nan",
    ),
    ("empty row", lambda: reference.cross_entropy([[]], [0]), ValueError, r"(?i)empty"),
    ("empty row in logsumexp", lambda: reference.logsumexp([]), ValueError, r"(?i)empty"),
    ("empty row in log_softmax", lambda: reference.log_softmax([]), ValueError, r"(?i)empty"),
    (
        "empty row in the gradient",
        lambda: reference.cross_entropy_grad([[]], [-100]),
        ValueError,
        r"(?i)empty",
    ),
    (
        "unknown reduction",
        lambda: reference.cross_entropy([ROW], [0], reduction="avg"),
        ValueError,
        r"(?i)reduction.*'avg'",
    ),
    (
        "unknown reduction in the gradient",
        lambda: reference.cross_entropy_grad([ROW], [0], reduction="Mean"),
        ValueError,
        r"(?i)reduction.*'Mean'",
    ),
    (
        "label_smoothing below 0",
        lambda: reference.cross_entropy([ROW], [0], label_smoothing=-0.1),
        ValueError,
        r"label_smoothing.*-0\.1",
    ),
    (
        "label_smoothing above 1",
        lambda: reference.cross_entropy([ROW], [0], label_smoothing=1.5),
        ValueError,
        r"label_smoothing.*1\.5",
    ),
    (
        "NaN label_smoothing",
        lambda: reference.cross_entropy([ROW], [0], label_smoothing=NAN),
        ValueError,
        r"label_smoothing.*nan",
    ),
    (
        "non-integer target",
        lambda: reference.cross_entropy([ROW], [1.5]),
        TypeError,
        r"(?i)target.*1\.5",
    ),
    (
        "integral float target",
        lambda: reference.cross_entropy([ROW], [1.0]),
        TypeError,
        r"(?i)target.*float",
    ),
    ("bool target", lambda: reference.cross_entropy([ROW], [True]), TypeError, r"(?i)target.*bool"),
    (
        "bool target in token_nll",
        lambda: reference.token_nll(ROW, False),
        TypeError,
        r"(?i)target.*bool",
    ),
    (
        "string logit",
        lambda: reference.cross_entropy([[0.0, "1.0"]], [0]),
        TypeError,
        r"(?i)logits.*str",
    ),
    (
        "a row that is not a sequence",
        lambda: reference.cross_entropy([1.0, 2.0], [0, 0]),
        TypeError,
        r"(?i)logits",
    ),
    (
        "zero softcap",
        lambda: reference.cross_entropy([ROW], [0], softcap=0.0),
        ValueError,
        r"softcap",
    ),
    ("NaN z_loss", lambda: reference.cross_entropy([ROW], [0], z_loss=NAN), ValueError, r"z_loss"),
]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [pytest.param(call, error, message, id=name) for name, call, error, message in CASES],
)
def test_bad_input_is_refused_by_name(
    call: Callable[[], Any], error: type[Exception], message: str
) -> None:
    """bad input ⇒ ValueError/TypeError whose message names the argument and value.  [ORACLE-INPUT]"""
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("ignore_index", [3, -1, 0, 1, 10**6])
def test_ignore_index_is_accepted_anywhere(ignore_index: int) -> None:
    """y_i = ignore_index is never "out of range": the row is just not counted.  [ORACLE-INPUT]"""
    rows, targets = [ROW, ROW], [ignore_index, 2]
    expected = reference.cross_entropy([ROW], [2])
    assert float(reference.cross_entropy(rows, targets, ignore_index=ignore_index)) == float(
        expected
    )


@pytest.mark.parametrize(("reduction", "expected"), [("mean", math.nan), ("sum", 0.0)])
def test_a_batch_with_no_counted_token(reduction: str, expected: float) -> None:
    """mean over no counted token = NaN (as torch); sum over none = 0.  [ORACLE-INPUT]"""
    for logits, targets in [([ROW, ROW], [-100, -100]), ([], [])]:
        loss = float(reference.cross_entropy(logits, targets, reduction=reduction))
        assert loss == expected or (math.isnan(loss) and math.isnan(expected))
