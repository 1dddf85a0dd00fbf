"""A deliberately plain evaluator of the oracle's definitions, used only to check the oracle.

Every formula is written straight from its definition in mpmath, at a precision chosen from the
inputs so that no cancellation can reach the float64 result (see :func:`working_bits`). It is
slow and makes no attempt to certify anything; it shares no code with ``reference/``.
Precision is scoped with ``mpmath.workprec``; the caller's mpmath context is never changed.

Definitions (row x of C logits, target y, class weights w, W = Σ_j w_j, w = 1 when not given):

    z_j       = s·tanh(x_j / s) with a softcap s, else x_j
    lse       = log Σ_j exp(z_j)
    p_j       = exp(z_j − lse)
    term      = (1 − ε)·w_y·(lse − z_y) + (ε/C)·Σ_j w_j·(lse − z_j) + ζ·w_y·lse²
    mean      = Σ_counted term / Σ_counted w_y  (NaN when no token is counted)
    ∂term/∂z_j = (1 − ε)·w_y·(p_j − [j = y]) + (ε/C)·(W·p_j − w_j) + 2ζ·w_y·lse·p_j
    ∂z_j/∂x_j = sech²(x_j / s) with a softcap, else 1
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import mpmath
from mpmath import mpf

#: Bits kept beyond what decides a float64 rounding; a result closer than 2^-GUARD_BITS (relative
#: to its last float64 unit) to a rounding boundary could round the wrong way here.
GUARD_BITS = 64
#: Absolute accuracy below 2^-1075 (half the smallest subnormal) decides the rounding of a
#: subnormal result; a normal result needs only its relative 2^-53, which is weaker.
SUBNORMAL_BITS = 1075
#: How far any result of this module is from the exact value at working_bits (its promise): a
#: result this close to a float64 rounding boundary does not say which way the exact one rounds.
ABSOLUTE_ERROR = mpf(2) ** -(SUBNORMAL_BITS + GUARD_BITS)


def _magnitude_bits(values: Sequence[float]) -> int:
    """Bits above the binary point of the largest finite |value| (0 when all are below 1)."""
    finite = [abs(v) for v in values if math.isfinite(v) and v != 0]
    return max((max(0, math.frexp(v)[1]) for v in finite), default=0)


def working_bits(
    logits: Sequence[Sequence[float]],
    *,
    weight: Sequence[float] | None = None,
    grad_output: float | Sequence[float] | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> int:
    """A precision at which every formula above has absolute error below 2^-(1075 + GUARD_BITS).

    The only cancellations are lse − z_j and p_j − [j = y] (and sums of the gradient's terms).
    Their absolute error is 2^-P times the magnitude of the operands, which is at most the
    largest |x| (or s) plus log C; it is then multiplied by at most the weights' spread, the
    number of rows, |grad_output| and ζ·|lse|. P covers the bits of each of these factors.
    """
    rows = list(logits)
    classes = max((len(row) for row in rows), default=1)
    values = [float(v) for row in rows for v in row]
    if softcap is not None:
        values.append(float(softcap))
    lse_bits = _magnitude_bits(values) + classes.bit_length()
    # lse − z_j, p_j − [j = y]; then Σ over N rows and the smoothing's W = Σ_j w_j.
    bits = SUBNORMAL_BITS + GUARD_BITS + lse_bits + len(rows).bit_length() + classes.bit_length()
    if weight is not None:
        positive = [float(w) for w in weight if w > 0]
        bits += _magnitude_bits(positive) + _magnitude_bits([1 / w for w in positive])
    if grad_output is not None:
        outputs = grad_output if isinstance(grad_output, Sequence) else [grad_output]
        bits += _magnitude_bits([float(g) for g in outputs])
    if z_loss:
        bits += _magnitude_bits([float(z_loss)]) + lse_bits + 1  # the gradient's 2ζ·lse
    return bits


def _capped(row: Sequence[float], softcap: float | None) -> list[mpf]:
    if softcap is None:
        return [mpf(x) for x in row]
    s = mpf(softcap)
    return [s * mpmath.tanh(mpf(x) / s) for x in row]


def _logsumexp(z: Sequence[mpf]) -> mpf:
    largest = max(z)
    if largest == mpf("-inf"):
        return largest
    return largest + mpmath.log(mpmath.fsum(mpmath.exp(zj - largest) for zj in z))


def logsumexp(row: Sequence[float], *, bits: int | None = None) -> mpf:
    """log Σ_j exp(x_j)."""
    with mpmath.workprec(bits or working_bits([row])):
        return _logsumexp(_capped(row, None))


def log_softmax(row: Sequence[float], *, bits: int | None = None) -> list[mpf]:
    """x_j − log Σ_k exp(x_k)."""
    with mpmath.workprec(bits or working_bits([row])):
        z = _capped(row, None)
        lse = _logsumexp(z)
        return [zj - lse for zj in z]


def softmax(row: Sequence[float], *, bits: int | None = None) -> list[mpf]:
    """exp(x_j) / Σ_k exp(x_k)."""
    with mpmath.workprec(bits or working_bits([row])):
        z = _capped(row, None)
        lse = _logsumexp(z)
        return [mpmath.exp(zj - lse) for zj in z]


def token_nll(row: Sequence[float], target: int, *, bits: int | None = None) -> mpf:
    """−log p(y) = log Σ_j exp(x_j) − x_y."""
    with mpmath.workprec(bits or working_bits([row])):
        z = _capped(row, None)
        return _logsumexp(z) - z[target]


def sequence_logprob(
    logits: Sequence[Sequence[float]], targets: Sequence[int], *, bits: int | None = None
) -> mpf:
    """Σ_t log p(y_t | x_<t)."""
    with mpmath.workprec(bits or working_bits(logits)):
        total = mpf(0)
        for row, target in zip(logits, targets, strict=True):
            z = _capped(row, None)
            total += z[target] - _logsumexp(z)
        return total


def sequence_prob(
    logits: Sequence[Sequence[float]], targets: Sequence[int], *, bits: int | None = None
) -> mpf:
    """Π_t p(y_t | x_<t), a product of softmax probabilities (mpmath's exponent is unbounded)."""
    with mpmath.workprec((bits or working_bits(logits)) + len(targets).bit_length()):
        product = mpf(1)
        for row, target in zip(logits, targets, strict=True):
            z = _capped(row, None)
            product *= mpmath.exp(z[target] - _logsumexp(z))
        return product


def _class_weights(weight: Sequence[float] | None, classes: int) -> list[mpf]:
    return [mpf(1)] * classes if weight is None else [mpf(w) for w in weight]


def _token_loss(
    z: list[mpf], target: int, w: list[mpf], label_smoothing: mpf, z_loss: mpf
) -> tuple[mpf, mpf]:
    """(term, lse) for one counted token; a zero coefficient drops its term (0·inf is not 0)."""
    lse = _logsumexp(z)
    term = mpf(0)
    if label_smoothing != 1:
        term += (1 - label_smoothing) * w[target] * (lse - z[target])
    if label_smoothing:
        term += (
            label_smoothing
            / len(z)
            * mpmath.fsum(wj * (lse - zj) for wj, zj in zip(w, z, strict=True))
        )
    if z_loss:
        term += z_loss * w[target] * lse**2
    return term, lse


def cross_entropy(
    logits: Sequence[Sequence[float]],
    targets: Sequence[int],
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    weight: Sequence[float] | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    bits: int | None = None,
) -> mpf | list[mpf]:
    """The loss of torch.nn.functional.cross_entropy, plus ζ·w_y·lse² and the softcap."""
    bits = bits or working_bits(logits, weight=weight, z_loss=z_loss, softcap=softcap)
    with mpmath.workprec(bits):
        terms: list[mpf] = []
        denominator = mpf(0)
        for row, target in zip(logits, targets, strict=True):
            if target == ignore_index:
                terms.append(mpf(0))
                continue
            w = _class_weights(weight, len(row))
            z = _capped(row, softcap)
            term, _ = _token_loss(z, target, w, mpf(label_smoothing), mpf(z_loss))
            terms.append(term)
            denominator += w[target]
        if reduction == "none":
            return terms
        total = mpmath.fsum(terms)
        if reduction == "sum":
            return total
        return mpf("nan") if denominator == 0 else total / denominator


def cross_entropy_grad(
    logits: Sequence[Sequence[float]],
    targets: Sequence[int],
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    weight: Sequence[float] | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    grad_output: float | Sequence[float] | None = None,
    bits: int | None = None,
) -> list[list[mpf]]:
    """∂(grad_output · loss)/∂logits, from the closed form in this module's docstring."""
    bits = bits or working_bits(
        logits, weight=weight, grad_output=grad_output, z_loss=z_loss, softcap=softcap
    )
    with mpmath.workprec(bits):
        eps, zeta = mpf(label_smoothing), mpf(z_loss)
        counted = [target != ignore_index for target in targets]
        denominator = mpmath.fsum(
            _class_weights(weight, len(row))[target]
            for row, target, count in zip(logits, targets, counted, strict=True)
            if count
        )
        gradient: list[list[mpf]] = []
        for i, (row, target) in enumerate(zip(logits, targets, strict=True)):
            if not counted[i]:
                gradient.append([mpf(0)] * len(row))
                continue
            if reduction == "none":
                scale = mpf(1 if grad_output is None else grad_output[i])  # type: ignore[index]
            else:
                scale = mpf(1 if grad_output is None else grad_output)  # type: ignore[arg-type]
                if reduction == "mean":
                    scale /= denominator
            w = _class_weights(weight, len(row))
            z = _capped(row, softcap)
            lse = _logsumexp(z)
            total_weight = mpmath.fsum(w)
            grad_row = []
            for j, zj in enumerate(z):
                p = mpmath.exp(zj - lse)
                d = (1 - eps) * w[target] * (p - (1 if j == target else 0))
                if eps:
                    d += eps / len(z) * (total_weight * p - w[j])
                if zeta:
                    d += 2 * zeta * w[target] * lse * p
                if softcap is not None:
                    d *= mpmath.sech(mpf(row[j]) / mpf(softcap)) ** 2
                grad_row.append(d * scale)
            gradient.append(grad_row)
        return gradient
