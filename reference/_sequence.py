"""Single rows and sequences: logsumexp, log_softmax, token_nll, sequence_logprob, sequence_prob."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import mpmath
from mpmath import libmp

from reference import _fast, _validate
from reference._certified import certified, certified_scalar, mpf_of_float
from reference._enclosure import Enclosure
from reference._row import Row


def logsumexp(row: Sequence[float]) -> mpmath.mpf:
    """log Σ_j exp(x_j), correctly rounded (−inf for a row of −inf, +inf if any x_j = +inf)."""
    values = _validate.row(row)
    if math.inf in values:
        return mpmath.mpf("inf")
    return certified_scalar(lambda bits: Row(values, bits).lse(), "logsumexp")


def log_softmax(row: Sequence[float]) -> list[mpmath.mpf]:
    """[x_j − logsumexp(x)]_j, each correctly rounded (−inf at −inf logits)."""
    values = _validate.row(row)
    _require_finite_mass(values, "row")
    rows: dict[int, Row] = {}

    def evaluate(bits: int, pending: Sequence[int]) -> dict[int, Enclosure]:
        r = rows.setdefault(bits, Row(values, bits))
        return {j: r.nll(j).neg() for j in pending}

    return certified(evaluate, len(values), "log_softmax")


def token_nll(row: Sequence[float], target: Any) -> mpmath.mpf:
    """−log p(target) = logsumexp(x) − x_target, correctly rounded (+inf on a −inf logit)."""
    values = _validate.row(row)
    t = _validate.index(target, "target")
    if not 0 <= t < len(values):
        raise ValueError(f"target = {t} is out of range for {len(values)} classes")
    _require_finite_mass(values, "row")
    return certified_scalar(lambda bits: Row(values, bits).nll(t), "token_nll")


def sequence_logprob(logits: Sequence[Sequence[float]], targets: Sequence[int]) -> mpmath.mpf:
    """log P(y_1..y_N) = Σ_t log p(y_t | x_<t), correctly rounded."""
    rows, ts = _sequence(logits, targets)
    settled = _fast_logprob(rows, ts)
    if settled is not None:
        return mpf_of_float(settled)
    return certified_scalar(lambda bits: _neg_total_nll(rows, ts, bits), "sequence_logprob")


def _fast_logprob(rows: list[list[float]], targets: list[int]) -> float | None:
    """−Σ_t nll_t from the integer first step (_fast.py), where it decides the rounding."""
    if not _fast.enabled():
        return None
    lo = hi = scale = 0
    for r, t in zip(rows, targets, strict=True):
        nll = _fast.negative_log_likelihood(r, t)
        if nll is None:
            return None
        lo, hi, scale = _fast.add((lo, hi, scale), nll)
    return _fast.round_interval(-hi, -lo, scale)


def sequence_prob(logits: Sequence[Sequence[float]], targets: Sequence[int]) -> mpmath.mpf:
    """P(y_1..y_N) = Π_t p(y_t | x_<t) = exp(Σ_t log p), correctly rounded to 53 bits.

    The exponent is unbounded, so the product never underflows: 10,000 tokens at p = 1/2 give
    exactly 2^-10000 (float() of it is 0.0, the correctly rounded float64).
    """
    rows, ts = _sequence(logits, targets)
    return certified_scalar(
        lambda bits: _neg_total_nll(rows, ts, bits).exp(bits + 16 + 32),
        "sequence_prob",
        unbounded=True,
    )


def _sequence(logits: Any, targets: Any) -> tuple[list[list[float]], list[int]]:
    rows = _validate.batch(logits)
    classes = len(rows[0]) if rows else 0
    ts = _validate.targets(targets, len(rows), classes, ignore_index=None)
    for i, r in enumerate(rows):
        _require_finite_mass(r, f"logits[{i}]")
    return rows, ts


def _neg_total_nll(rows: list[list[float]], targets: list[int], bits: int) -> Enclosure:
    prec = bits + 16 + max(len(rows), 1).bit_length()
    total = Enclosure.exact(libmp.fzero)
    for r, t in zip(rows, targets, strict=False):
        total = total.sub(Row(r, bits).nll(t), prec)
    return total


def _require_finite_mass(values: list[float], where: str) -> None:
    """A softmax needs a finite logit or a single +inf."""
    if all(v == -math.inf for v in values):
        raise ValueError(f"{where}: every logit is -inf, so the softmax is undefined")
