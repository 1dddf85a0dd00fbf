"""Checks on the oracle's inputs: every bad input is refused with a message naming the problem."""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from itertools import chain
from typing import Any

#: The ignore_index of torch.nn.functional.cross_entropy: a target equal to it does not count.
DEFAULT_IGNORE_INDEX = -100

REDUCTIONS = ("mean", "sum", "none")


def _number(value: Any, where: str) -> float:
    if type(value) is float:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        hint = " (pass tensor.tolist(), not the tensor)" if type(value).__name__ == "Tensor" else ""
        raise TypeError(
            f"{where} must be a real number, got {type(value).__name__} {value!r}{hint}"
        )
    return float(value)


def row(values: Any, where: str = "row") -> list[float]:
    """A row of logits as floats: not empty, no NaN (±inf allowed)."""
    if isinstance(values, (str, bytes)) or not _iterable(values):
        raise TypeError(f"{where} must be a sequence of numbers, got {type(values).__name__}")
    floats = list(values)
    if set(map(type, floats)) != {float}:  # the common case is checked without a Python loop
        floats = [_number(v, f"{where}[{j}]") for j, v in enumerate(floats)]
    if not floats:
        raise ValueError(f"{where} is empty: a softmax needs at least one class")
    if any(map(math.isnan, floats)):
        j = next(j for j, v in enumerate(floats) if v != v)
        raise ValueError(f"{where}[{j}] is NaN")
    return floats


def batch(logits: Any) -> list[list[float]]:
    """N rows of C logits each (N may be 0)."""
    if isinstance(logits, (str, bytes)) or not _iterable(logits):
        raise TypeError(f"logits must be a sequence of rows, got {type(logits).__name__}")
    given = list(logits)  # once: an iterator is not read twice
    rows = _plain_rows(given)
    if rows is not None:
        return rows
    rows = [row(r, f"logits[{i}]") for i, r in enumerate(given)]
    for i, r in enumerate(rows[1:], start=1):
        if len(r) != len(rows[0]):
            raise ValueError(
                f"ragged logits: row 0 has {len(rows[0])} classes, row {i} has {len(r)}"
            )
    return rows


def _plain_rows(given: list[Any]) -> list[list[float]] | None:
    """Copies of the rows, when they are the common case: lists or tuples, equally long, not
    empty, every value a float and none NaN, checked a batch at a time (no Python loop per value);
    None otherwise, and the row-by-row checks name the problem."""
    if not given or not set(map(type, given)) <= {list, tuple}:
        return None
    if len(set(map(len, given))) != 1 or not given[0]:
        return None
    values = chain.from_iterable(given)
    if set(map(type, values)) != {float} or any(map(math.isnan, chain.from_iterable(given))):
        return None
    return list(map(list, given))


def finite_matrix(values: Any, where: str) -> list[list[float]]:
    """Rows of finite floats, all equally long (N and the row length may be 0)."""
    if isinstance(values, (str, bytes)) or not _iterable(values):
        raise TypeError(f"{where} must be a sequence of rows, got {type(values).__name__}")
    given = list(values)
    if set(map(type, given)) <= {list, tuple} and len(set(map(len, given))) <= 1:
        flat = chain.from_iterable(given)
        if set(map(type, flat)) <= {float} and all(map(math.isfinite, chain.from_iterable(given))):
            return list(map(list, given))  # the common case, without a Python loop per value
    rows: list[list[float]] = []
    for i, r in enumerate(given):
        if isinstance(r, (str, bytes)) or not _iterable(r):
            raise TypeError(f"{where}[{i}] must be a sequence of numbers, got {type(r).__name__}")
        entries = [_number(v, f"{where}[{i}][{d}]") for d, v in enumerate(r)]
        for d, v in enumerate(entries):
            if v != v:
                raise ValueError(f"{where}[{i}][{d}] is NaN")
            if not math.isfinite(v):
                raise ValueError(
                    f"{where}[{i}][{d}] is {v!r}: the fused projection takes finite values only "
                    "(an infinite one times a zero has no value)"
                )
        if rows and len(entries) != len(rows[0]):
            raise ValueError(
                f"ragged {where}: row 0 has {len(rows[0])} values, row {i} has {len(entries)}"
            )
        rows.append(entries)
    return rows


def finite_vector(values: Any, where: str) -> list[float]:
    """A sequence of finite floats."""
    if isinstance(values, (str, bytes)) or not _iterable(values):
        raise TypeError(f"{where} must be a sequence of numbers, got {type(values).__name__}")
    return [finite(v, f"{where}[{j}]") for j, v in enumerate(values)]


def index(value: Any, where: str) -> int:
    if isinstance(value, (bool, float)):
        raise TypeError(
            f"{where} must be an integer class index, got {type(value).__name__} {value!r}"
        )
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"{where} must be an integer class index, got {type(value).__name__} {value!r}"
        ) from None


def targets(
    values: Any, rows: int, classes: int, ignore_index: int | None, rows_of: str = "logits"
) -> list[int]:
    """N class indices in [0, C), or the ignore_index (``rows_of`` names what has the N rows)."""
    if isinstance(values, (str, bytes)) or not _iterable(values):
        raise TypeError(f"targets must be a sequence of ints, got {type(values).__name__}")
    result = list(values)
    if set(map(type, result)) - {int}:  # plain ints (the common case) need no loop per value
        result = [index(v, f"targets[{i}]") for i, v in enumerate(result)]
    if len(result) != rows:
        raise ValueError(f"length mismatch: {rows} rows of {rows_of} but {len(result)} targets")
    classes_used = set(result)
    classes_used.discard(ignore_index)
    if not classes_used or (min(classes_used) >= 0 and max(classes_used) < classes):
        return result
    for i, t in enumerate(result):  # some target is out of range: name the first
        if t != ignore_index and not 0 <= t < classes:
            raise ValueError(
                f"targets[{i}] = {t} is out of range for {classes} classes"
                + (
                    f" and is not the ignore_index ({ignore_index})"
                    if ignore_index is not None
                    else ""
                )
            )
    return result


def reduction(value: Any) -> str:
    if value not in REDUCTIONS:
        raise ValueError(
            f"unknown reduction {value!r}: expected one of {', '.join(map(repr, REDUCTIONS))}"
        )
    return str(value)


def label_smoothing(value: Any) -> float:
    smoothing = _number(value, "label_smoothing")
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {smoothing!r}")
    return smoothing


def finite(value: Any, where: str) -> float:
    number = _number(value, where)
    if not math.isfinite(number):
        raise ValueError(f"{where} must be finite, got {number!r}")
    return number


def softcap(value: Any) -> float | None:
    if value is None:
        return None
    cap = finite(value, "softcap")
    if cap <= 0:
        raise ValueError(f"softcap must be positive (or None), got {cap!r}")
    return cap


def weight(values: Any, classes: int | None) -> list[float] | None:
    """One finite weight per class, or None."""
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not _iterable(values):
        raise TypeError(f"weight must be a sequence of numbers, got {type(values).__name__}")
    weights = [finite(w, f"weight[{j}]") for j, w in enumerate(values)]
    if classes is not None and len(weights) != classes:
        raise ValueError(
            f"length mismatch: weight has {len(weights)} entries for {classes} classes"
        )
    return weights


def grad_output(value: Any, reduction_: str, rows: int) -> list[float]:
    """The upstream gradient: a number for mean/sum, N numbers for none (default 1)."""
    if reduction_ == "none":
        if value is None:
            return [1.0] * rows
        if isinstance(value, (str, bytes)) or not _iterable(value):
            raise TypeError('grad_output must be a sequence of N numbers for reduction="none"')
        values = [finite(v, f"grad_output[{i}]") for i, v in enumerate(value)]
        if len(values) != rows:
            raise ValueError(
                f"length mismatch: grad_output has {len(values)} entries for {rows} rows"
            )
        return values
    if value is None:
        return [1.0]
    if _iterable(value) and not isinstance(value, (str, bytes)):
        raise TypeError(f'grad_output must be a single number for reduction="{reduction_}"')
    return [finite(value, "grad_output")]


def _iterable(value: Any) -> bool:
    if isinstance(value, Sequence):
        return True
    try:
        iter(value)
    except TypeError:
        return False
    return True
