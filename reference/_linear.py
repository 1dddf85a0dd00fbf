"""linear_cross_entropy and its gradient: contract 3, the fused projection + loss.

    linear_cross_entropy(x, W, y, linear_bias=b, **options)
        = cross_entropy(z, y, **options),   z_ij = Σ_d x_id·W_jd + b_j exactly

The logits z are exact dyadic rationals of the float inputs (_projection.py: each row scaled to
integers once, one integer dot product per logit) and are never rounded: the rows of the oracle
(_row.py, _fast.py) take them as :class:`~reference._dyadic.Dyadic` values where they take
floats, so the loss is cross_entropy's own code on the exact logits, every option included.
The gradient (_linear_grad.py) is ∂L/∂x_id = Σ_j g_ij·W_jd, ∂L/∂W_jd = Σ_i g_ij·x_id,
∂L/∂b_j = Σ_i g_ij with g = ∂L/∂z, each element certified as one sum, g never rounded.

Inputs are finite floats only: an infinite input or weight meets a zero somewhere in its
products (inf·0 has no value) or another infinity of the other sign, so ±inf and NaN in input,
linear_weight or linear_bias are refused (a masked vocabulary is a question for cross_entropy's
logits, not for the projection's operands). Empty dimensions are allowed: N = 0 (the empty
loss, zero gradients) and D = 0 (the logits are the bias, or 0); C = 0 is refused.

Cost, measured on this project's 2-core machine (shared: load average 1 to 2.5 while it ran,
and runs differ by up to a third), float32-valued operands x ~ N(0, 1), W ~ N(0, 1/D),
b ~ N(0, 0.01), each call from cold row caches, process time, best of 3, with this script run
from the repository root:

    python - 8,16,32 1000,16,128 1000,256,8 100,64,300 64,16,2000 10,100,2000 1000,1,2000 <<'EOF'
    import random, struct, sys, time
    import reference
    def f32(v): return struct.unpack("f", struct.pack("f", v))[0]
    for n, d, c in [tuple(map(int, a.split(","))) for a in sys.argv[1:]]:
        rnd = random.Random(0)
        x = [[f32(rnd.gauss(0, 1)) for _ in range(d)] for _ in range(n)]
        w = [[f32(rnd.gauss(0, d ** -0.5)) for _ in range(d)] for _ in range(c)]
        b = [f32(rnd.gauss(0, 0.1)) for _ in range(c)]
        y = [rnd.randrange(c) for _ in range(n)]
        for f in (reference.linear_cross_entropy, reference.linear_cross_entropy_grad):
            times = []
            for _ in range(3):
                reference._fast.clear_cache()
                start = time.process_time()
                f(x, w, y, linear_bias=b)
                times.append(time.process_time() - start)
            print(n, d, c, f.__name__, round(min(times), 2))
    EOF

       N     D      C   N·D·C    loss    gradient
       8    16     32     4e3    0.00 s    0.02 s
    1000    16    128     2e6    0.9 s     2.6 s
    1000   256      8     2e6    0.5 s     4.7 s
     100    64    300     2e6    0.6 s     2.6 s
      64    16   2000     2e6    1.6 s     3.1 s
      10   100   2000     2e6    0.5 s     2.7 s
    1000     1   2000     2e6   13 s      33 s     (2·10^6 logits: 690 MB resident at most)

What that is: one integer multiply-add per N·D·C for the logits, and once each for the sums of
∂L/∂x and ∂L/∂W (about 0.1 µs each, 0.2–0.6 s in all at 2·10^6); the softmax of each distinct
counted row (the general path's integer terms, about as costly per logit as cross_entropy_grad
itself: the loss is cross_entropy's cost on N·C logits); and a few microseconds for each of the
N·D + C·(D + 1) results, each rounded and certified on its own (the 256,000 of ∂L/∂x dominate
the D = 256 row). Results that the working precision leaves undecided cost a pass at twice the
precision over the rows they need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import mpmath

from reference import _validate
from reference._batch import Batch, options_of
from reference._cross_entropy import batch_loss
from reference._linear_grad import LinearGradient
from reference._projection import Projection, dyadic_row
from reference._validate import DEFAULT_IGNORE_INDEX


def linear_cross_entropy(
    input: Sequence[Sequence[float]],
    linear_weight: Sequence[Sequence[float]],
    targets: Sequence[int],
    *,
    linear_bias: Sequence[float] | None = None,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    weight: Sequence[float] | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> mpmath.mpf | list[mpmath.mpf]:
    """cross_entropy at the exact logits input·Wᵀ + b, correctly rounded."""
    problem = _prepare(
        input,
        linear_weight,
        targets,
        linear_bias,
        ignore_index,
        reduction,
        label_smoothing,
        weight,
        z_loss,
        softcap,
    )
    return batch_loss(problem.batch, "linear_cross_entropy")


def linear_cross_entropy_grad(
    input: Sequence[Sequence[float]],
    linear_weight: Sequence[Sequence[float]],
    targets: Sequence[int],
    *,
    linear_bias: Sequence[float] | None = None,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    weight: Sequence[float] | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    grad_output: float | Sequence[float] | None = None,
) -> tuple[list[list[mpmath.mpf]], list[list[mpmath.mpf]], list[mpmath.mpf] | None]:
    """(∂L/∂input N×D, ∂L/∂linear_weight C×D, ∂L/∂linear_bias C or None), each element
    correctly rounded; ``grad_output`` as for cross_entropy_grad (a number, or N numbers for
    reduction="none"). Ignored rows have exactly zero gradient; with reduction="mean" and
    counted target weights summing to 0, the counted rows and all of ∂L/∂W and ∂L/∂b are NaN."""
    problem = _prepare(
        input,
        linear_weight,
        targets,
        linear_bias,
        ignore_index,
        reduction,
        label_smoothing,
        weight,
        z_loss,
        softcap,
    )
    batch = problem.batch
    upstream = _validate.grad_output(grad_output, batch.options.reduction, len(batch.rows))
    gradient = LinearGradient(batch, problem.projection, problem.logits, problem.features, upstream)
    grad_input, grad_weight = gradient.evaluate()
    if not problem.biased:
        return grad_input, grad_weight, None
    return grad_input, [row[:-1] for row in grad_weight], [row[-1] for row in grad_weight]


@dataclass(frozen=True)
class _Problem:
    batch: Batch  # its rows: the exact logits, as Dyadic values
    projection: Projection
    logits: list[tuple[list[int], int]]  # the same logits, as (integers, exponent) per row
    features: int
    biased: bool


def _prepare(
    input: Any,
    linear_weight: Any,
    targets: Any,
    linear_bias: Any,
    ignore_index: Any,
    reduction: Any,
    label_smoothing: Any,
    weight: Any,
    z_loss: Any,
    softcap: Any,
) -> _Problem:
    weights = _validate.finite_matrix(linear_weight, "linear_weight")
    if not weights:
        raise ValueError("linear_weight is empty: a softmax needs at least one class (row)")
    classes, features = len(weights), len(weights[0])
    inputs = _validate.finite_matrix(input, "input")
    if inputs and len(inputs[0]) != features:
        raise ValueError(
            f"shape mismatch: input rows have D = {len(inputs[0])} features, "
            f"linear_weight rows have {features}"
        )
    bias = None
    if linear_bias is not None:
        bias = _validate.finite_vector(linear_bias, "linear_bias")
        if len(bias) != classes:
            raise ValueError(
                f"length mismatch: linear_bias has {len(bias)} entries for {classes} classes "
                "(rows of linear_weight)"
            )
    options = options_of(classes, ignore_index, reduction, label_smoothing, weight, z_loss, softcap)
    rows = _validate.targets(targets, len(inputs), classes, options.ignore_index, "input")
    projection = Projection(inputs, weights, bias)
    logits = projection.logits()
    batch = Batch([dyadic_row(*row) for row in logits], rows, classes, options)
    return _Problem(batch, projection, logits, features, bias is not None)
