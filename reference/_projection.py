"""The fused projection's logits, exactly: z_ij = Σ_d x_id·W_jd + b_j as dyadic numbers.

Each row of the input and of the weight is scaled to integers once (x_i = X_i·2^(e_i) with an
integer vector X_i, see integer_vector), so that a logit is one integer dot product, shifted:
Python's integers are exact at any size, and sum(map(mul, …)) runs its loop in C. The bias is one
more column: the input gets a column of ones and the weight a column of biases, so that the
gradient with respect to the bias is that column of the gradient with respect to the weight.
The gradients' sums run over the other index (classes for ∂L/∂x, rows for ∂L/∂W), so both
matrices are also kept as integer columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import mul

from reference._dyadic import Dyadic, integer_vector


class Projection:
    """input (N × D') and weight (C × D') as integers, by rows and by columns (D' = D, or D + 1
    with a bias)."""

    def __init__(
        self,
        inputs: list[list[float]],
        weights: list[list[float]],
        bias: Sequence[float] | None,
    ) -> None:
        if bias is not None:
            inputs = [row + [1.0] for row in inputs]
            weights = [row + [b] for row, b in zip(weights, bias, strict=True)]
        self.width = len(weights[0])
        self.input_rows = [integer_vector(row) for row in inputs]
        self.weight_rows = [integer_vector(row) for row in weights]
        #: (integers over the rows, exponent) for each column d
        self.input_columns = _columns(self.input_rows, self.width)
        self.weight_columns = _columns(self.weight_rows, self.width)

    def logits(self) -> list[tuple[list[int], int]]:
        """Each row's logits as (integers Z_j, exponent e): z_ij = Z_j·2^e exactly."""
        nonzero = [exp for ints, exp in self.weight_rows if any(ints)]
        base = min(nonzero, default=0)
        weights = [(ints, exp - base if any(ints) else 0) for ints, exp in self.weight_rows]
        rows = []
        for x, x_exp in self.input_rows:
            rows.append(([sum(map(mul, x, w)) << shift for w, shift in weights], x_exp + base))
        return rows


def _columns(rows: list[tuple[list[int], int]], width: int) -> list[tuple[list[int], int]]:
    """The columns of integer rows, each column on the smallest exponent among its rows' (a
    shift per entry, not a new ratio)."""
    found = []
    for d in range(width):
        entries = [(ints[d], exp) for ints, exp in rows]
        base = min((exp for v, exp in entries if v), default=0)
        found.append(([v << (exp - base) if v else 0 for v, exp in entries], base))
    return found


def dyadic_row(integers: list[int], exponent: int) -> list[Dyadic]:
    return [Dyadic(z, exponent) for z in integers]
