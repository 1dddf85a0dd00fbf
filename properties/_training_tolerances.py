"""Tolerances of the training-loop clauses that properties/tolerances.py does not cover (yet).

Kept apart only until it is merged into properties/tolerances.py (as the key
"reordered_float64" of TOLERANCES, which test_training's docstrings name); same rules there.

The loss and the gradient that reach the logits are compared with the oracle under the
"loss" and "gradient" bounds of properties/tolerances.py. What is left is the gradient of the
*parameters*, which the oracle cannot give: there two float64 evaluations of the same exact
∂L/∂θ are compared, one on the full batch, one accumulated over micro-batches (or over the
sequences without their padding). Mathematically they are equal; in floating point they differ
only in the order of the roundings (other matmul shapes, other partial sums).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

#: float64 unit roundoff.
FLOAT64_ROUNDOFF = 2.0**-53
#: The longest chain of float64 roundings behind one entry of ∂L/∂θ in the test models, and the
#: cancellation it may meet, as a power of two:
#:   a weight-gradient entry sums at most 2^8 token contributions (B·T ≤ 256 in the tests),
#:   each a product of quantities that passed through at most 2^6 operations (two blocks of
#:   layer norm, attention over T ≤ 16 positions and an MLP of width ≤ 4·32, forward and back),
#:   whose inner sums are at most 2^7 long: 2^(8 + 6 + 7) = 2^21 roundings, γ ≈ 2^21·u;
#:   and the sum of the |contributions| may exceed the largest |entry| of all the gradients
#:   by cancellation, allowed up to 2^8 here. (The scale is the largest entry over every
#:   parameter, not per tensor: some entries are exactly zero in exact arithmetic, such as the
#:   gradient of the attention key bias, which softmax cancels, and hold rounding noise only.)
#: So reordering moves an entry by at most 2^29·u = 2^-24 of the largest |entry| of ∂L/∂θ.
#: The mean-of-means bug scales micro-batch k's contribution by N/(K·N_k) instead of 1, an
#: error of the order of the gradient itself whenever the micro-batches count different numbers
#: of tokens; test_mean_of_micro_batch_means_is_caught checks that the bound catches it.
REORDERING_EXPONENT = 29


def reordered_float64_bound(gradients: Iterable[torch.Tensor]) -> float:
    """Bound on |Δ| of any entry of float64 parameter gradients between two summation orders."""
    largest = max((float(g.detach().abs().max()) for g in gradients if g.numel()), default=0.0)
    return math.ldexp(FLOAT64_ROUNDOFF, REORDERING_EXPONENT) * largest
