"""reference: the arbitrary-precision oracle for sequence probability, NLL and cross-entropy,
and for the fused projection + loss (linear_cross_entropy: cross-entropy at the exact logits).

Pure Python and mpmath: importing it imports neither torch nor numpy. Every result is an
``mpmath.mpf`` (a list of them for reduction="none" and for gradients) holding exactly the
correctly rounded float64 of the exact value of the function at the given float inputs, so
that ``float()`` of it is that float64 (mpmath's own float() would round subnormals twice;
these need no rounding). The exception is sequence_prob, rounded to 53 bits with an unbounded
exponent so that a probability of 2^-10000 is returned as exactly that. Zero carries no sign.
cross_entropy and cross_entropy_grad take ``as_float=True`` to return those float64 values as
Python floats, without building an mpf for each (the property suite asks for millions).
"""

from reference._cross_entropy import cross_entropy
from reference._gradient import cross_entropy_grad
from reference._linear import linear_cross_entropy, linear_cross_entropy_grad
from reference._precision import PrecisionExhausted, precision
from reference._sequence import log_softmax, logsumexp, sequence_logprob, sequence_prob, token_nll
from reference._validate import DEFAULT_IGNORE_INDEX

__all__ = [
    "DEFAULT_IGNORE_INDEX",
    "PrecisionExhausted",
    "cross_entropy",
    "cross_entropy_grad",
    "linear_cross_entropy",
    "linear_cross_entropy_grad",
    "log_softmax",
    "logsumexp",
    "precision",
    "sequence_logprob",
    "sequence_prob",
    "token_nll",
]
