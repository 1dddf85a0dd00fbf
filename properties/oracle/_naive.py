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

The fused projection (contract 3) takes the exact logits z = x·Wᵀ + b as Fractions and then
these formulas, and sums g against W and x in mpmath (see linear_working_bits).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import mpmath
from mpmath import libmp, mpf

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


# ---- the fused projection (contract 3) ---------------------------------------------------------


def exact_logits(
    input: Sequence[Sequence[float]],
    linear_weight: Sequence[Sequence[float]],
    linear_bias: Sequence[float] | None = None,
) -> list[list[Fraction]]:
    """z_ij = Σ_d x_id·W_jd + b_j as exact rationals (Fraction takes each float exactly)."""
    bias = [Fraction(0)] * len(linear_weight) if linear_bias is None else linear_bias
    return [
        [
            sum((Fraction(x) * Fraction(w) for x, w in zip(row, weights, strict=True)), Fraction(b))
            for weights, b in zip(linear_weight, bias, strict=True)
        ]
        for row in input
    ]


def _exact_mpf(value: Fraction) -> mpf:
    """A dyadic rational as an mpf, exactly (mpf(·) would round it to the working precision)."""
    shift = value.denominator.bit_length() - 1  # the denominator is 2^shift
    return mpmath.mp.make_mpf(libmp.from_man_exp(value.numerator, -shift))


def linear_working_bits(
    logits: Sequence[Sequence[Fraction]],
    input: Sequence[Sequence[float]],
    linear_weight: Sequence[Sequence[float]],
    *,
    weight: Sequence[float] | None = None,
    grad_output: float | Sequence[float] | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> int:
    """working_bits of the exact logits, plus what the sums over classes and rows take.

    working_bits(z) (sized from float proxies of the logits, which keep their magnitudes: the
    callers keep |z| below 2^1023) puts each loss and each g_ij within E = 2^-(1075 + GUARD_BITS)
    of its value; rounding the exact logits to that precision first is one more error of the
    size its lse − z_j terms already allow for, covered by 2 more bits. ∂L/∂x_id = Σ_j g_ij·W_jd
    is then within C·max|W|·E plus the rounding of C products and their sum, and ∂L/∂W likewise
    with N·max|x|; bits(C) + bits(N) + the magnitude bits of W and x, and 2 more, bring both back
    below E, so ABSOLUTE_ERROR stays the promise of every result here.
    """
    proxy = [[float(z) for z in row] for row in logits]
    bits = working_bits(
        proxy, weight=weight, grad_output=grad_output, z_loss=z_loss, softcap=softcap
    )
    operands = [float(v) for row in input for v in row]
    weights = [float(v) for row in linear_weight for v in row]
    return (
        bits
        + 4
        + len(input).bit_length()
        + len(linear_weight).bit_length()
        + _magnitude_bits(operands)
        + _magnitude_bits(weights)
    )


def linear_cross_entropy(
    input: Sequence[Sequence[float]],
    linear_weight: Sequence[Sequence[float]],
    targets: Sequence[int],
    *,
    linear_bias: Sequence[float] | None = None,
    bits: int | None = None,
    **options: Any,
) -> mpf | list[mpf]:
    """cross_entropy at the exact logits input·Wᵀ + b."""
    logits = exact_logits(input, linear_weight, linear_bias)
    sizing = {k: options[k] for k in ("weight", "z_loss", "softcap") if k in options}
    bits = bits or linear_working_bits(logits, input, linear_weight, **sizing)
    exact = [[_exact_mpf(z) for z in row] for row in logits]
    return cross_entropy(exact, targets, bits=bits, **options)


def linear_cross_entropy_grad(
    input: Sequence[Sequence[float]],
    linear_weight: Sequence[Sequence[float]],
    targets: Sequence[int],
    *,
    linear_bias: Sequence[float] | None = None,
    grad_output: float | Sequence[float] | None = None,
    bits: int | None = None,
    **options: Any,
) -> tuple[list[list[mpf]], list[list[mpf]], list[mpf]]:
    """(Σ_j g_ij·W_jd, Σ_i g_ij·x_id, Σ_i g_ij) with g = ∂(grad_output · loss)/∂z at the exact z."""
    logits = exact_logits(input, linear_weight, linear_bias)
    sizing = {k: options[k] for k in ("weight", "z_loss", "softcap") if k in options}
    bits = bits or linear_working_bits(
        logits, input, linear_weight, grad_output=grad_output, **sizing
    )
    exact = [[_exact_mpf(z) for z in row] for row in logits]
    g = cross_entropy_grad(exact, targets, grad_output=grad_output, bits=bits, **options)
    classes, features = len(linear_weight), len(linear_weight[0])
    with mpmath.workprec(bits):
        grad_input = [
            [
                mpmath.fsum(g_i[j] * linear_weight[j][d] for j in range(classes))
                for d in range(features)
            ]
            for g_i in g
        ]
        grad_weight = [
            [
                mpmath.fsum(g_i[j] * row[d] for g_i, row in zip(g, input, strict=True))
                for d in range(features)
            ]
            for j in range(classes)
        ]
        grad_bias = [mpmath.fsum(g_i[j] for g_i in g) for j in range(classes)]
    return grad_input, grad_weight, grad_bias
