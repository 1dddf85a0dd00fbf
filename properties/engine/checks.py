"""Comparing a kernel's values with the expected ones, for every contract.

A failed check raises :class:`properties.engine.clause.Mismatch` with what was compared, the
kernel's value, the expected value, the error, the bound and the reproducer the caller wrote.
"""

from __future__ import annotations

import math

import torch

from properties.engine.clause import Mismatch, Trial

# --- Comparing --------------------------------------------------------------------------------


def discrepancy(actual: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """|actual − expected| in float64, with the non-finite cases settled: equal infinities,
    two NaNs, and an exact value that overflows the result's dtype met by that infinity count as
    no error; a non-finite value where the other is finite is an infinite error."""
    a = actual.detach().cpu().double()
    e = expected.double()
    rounded = e.to(actual.dtype).double() if actual.is_floating_point() else e
    agree = (a == e) | (a.isnan() & e.isnan()) | (rounded.isinf() & (a == rounded))
    error = torch.where(agree, 0.0, (a - e).abs())
    return torch.where(error.isnan(), math.inf, error)


def check_close(
    trial: Trial,
    *,
    quantity: str,
    actual: torch.Tensor,
    expected: torch.Tensor,
    bound: torch.Tensor,
    context: str,
    reproducer: str,
    expected_by: str = "the oracle",
) -> None:
    """Every entry of ``actual`` lies within ``bound`` of ``expected`` (elementwise)."""
    _check_shape(quantity, actual, expected, context, reproducer)
    if actual.numel() == 0:  # e.g. the gradient of a rank that holds no row: nothing to differ
        trial.record(0.0, label=quantity)
        return
    error = discrepancy(actual, expected)
    ratio = torch.where(error == 0, 0.0, error / bound.double())
    worst = int(torch.argmax(torch.where(ratio.isnan(), math.inf, ratio).reshape(-1)))
    worst_ratio = float(ratio.reshape(-1)[worst])
    if math.isfinite(worst_ratio):
        trial.record(worst_ratio, label=quantity)
    if not worst_ratio <= 1.0:
        where = _index(actual, worst)
        raise Mismatch(
            f"{quantity}{where} = {_value(actual, worst)}, but {expected_by} says "
            f"{_value(expected, worst)}  [{context}]",
            reproducer=reproducer,
            oracle=float(expected.reshape(-1)[worst]),
            kernel=float(actual.detach().cpu().double().reshape(-1)[worst]),
            error=float(error.reshape(-1)[worst]),
            bound=float(bound.reshape(-1)[worst]),
        )


def check_equal(
    trial: Trial,
    *,
    quantity: str,
    actual: torch.Tensor,
    expected: torch.Tensor,
    context: str,
    reproducer: str,
    expected_by: str = "the oracle",
) -> None:
    """``actual`` equals ``expected`` exactly (NaN equals NaN)."""
    _check_shape(quantity, actual, expected, context, reproducer)
    error = discrepancy(actual, expected)
    if bool((error > 0).any()):
        worst = int(torch.argmax(error.reshape(-1)))
        raise Mismatch(
            f"{quantity}{_index(actual, worst)} = {_value(actual, worst)}, but {expected_by} "
            f"says exactly {_value(expected, worst)}  [{context}]",
            reproducer=reproducer,
            oracle=float(expected.reshape(-1)[worst]),
            kernel=float(actual.detach().cpu().double().reshape(-1)[worst]),
            error=float(error.reshape(-1)[worst]),
            bound=0.0,
        )
    trial.record(0.0, label=quantity)


def _check_shape(
    quantity: str, actual: torch.Tensor, expected: torch.Tensor, context: str, reproducer: str
) -> None:
    if tuple(actual.shape) != tuple(expected.shape):
        raise Mismatch(
            f"{quantity} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}  [{context}]",
            reproducer=reproducer,
        )


def _index(tensor: torch.Tensor, flat: int) -> str:
    if tensor.dim() == 0:
        return ""
    index = torch.unravel_index(torch.tensor(flat), tuple(tensor.shape))
    return "[" + ", ".join(str(int(i)) for i in index) + "]"


def _value(tensor: torch.Tensor, flat: int) -> str:
    return repr(float(tensor.detach().cpu().double().reshape(-1)[flat]))


def assert_within(
    quantity: str,
    actual: torch.Tensor,
    expected: torch.Tensor,
    bound: torch.Tensor,
    context: str,
    *,
    expected_by: str = "the oracle",
) -> None:
    """:func:`check_close`'s rule for tests outside the clauses (the production loss, the
    training step), which have no Trial and no reproducer: discrepancy ≤ bound everywhere, or an
    AssertionError naming the worst entry, both values, its error as a multiple of its bound,
    and the call."""
    if tuple(actual.shape) != tuple(expected.shape):
        raise AssertionError(
            f"{quantity} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}  [{context}]"
        )
    error = discrepancy(actual, expected).reshape(-1)
    bound = bound.double().expand(actual.shape).reshape(-1)
    ratio = torch.where(error == 0, 0.0, error / bound)
    worst = int(torch.argmax(torch.where(ratio.isnan(), math.inf, ratio)))
    if not bool((ratio <= 1.0).all()):
        where = f"[{worst}]" if actual.dim() else ""
        raise AssertionError(
            f"{quantity}{where} = {actual.detach().double().reshape(-1)[worst].item()!r}, but "
            f"{expected_by} says {expected.double().reshape(-1)[worst].item()!r}: error "
            f"{error[worst].item():.3g} is {ratio[worst].item():.3g} × bound "
            f"{bound[worst].item():.3g}  [{context}]"
        )
