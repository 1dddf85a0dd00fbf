"""reference: the arbitrary-precision oracle for sequence probability, NLL and cross-entropy.

Pure Python and mpmath: importing it imports neither torch nor numpy. Every result is an
``mpmath.mpf`` (a list of them for reduction="none" and for gradients) whose ``float()`` is the
correctly rounded float64 of the exact value of the function at the given float inputs.
"""

from reference._cross_entropy import cross_entropy
from reference._gradient import cross_entropy_grad
from reference._precision import PrecisionExhausted, precision
from reference._sequence import log_softmax, logsumexp, sequence_logprob, sequence_prob, token_nll

__all__ = [
    "PrecisionExhausted",
    "cross_entropy",
    "cross_entropy_grad",
    "log_softmax",
    "logsumexp",
    "precision",
    "sequence_logprob",
    "sequence_prob",
    "token_nll",
]
