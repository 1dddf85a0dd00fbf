"""Underflow and overflow: logits up to the dtype's range, probabilities below its smallest
normal number, and sequences whose probability underflows while its log stays exact.

log turns the product Π_t p(y_t) into the sum Σ_t log p(y_t): the loss is finite and exact where
the probabilities are not representable. (The essay's "0.8^100 ≈ 6·10^-25" is a slip:
0.8^100 ≈ 2.0·10^-10 and 0.8^250 ≈ 5.9·10^-25.)
"""

from __future__ import annotations

import torch

from properties.ce.calls import (
    batch_reproducer,
    context,
    draw_batch,
    expect_oracle_loss,
    loss_of,
    problem_of,
)
from properties.ce.oracle import oracle_sequence_logprob
from properties.engine.checks import check_close
from properties.engine.clause import Trial, clause, supports
from properties.strategies import batch_shapes, long_sequences
from properties.tolerances import FLOAT64_UNDERFLOW_NLL, loss_bound


@clause()
def logits_near_the_dtype_limit_give_exact_losses(trial: Trial) -> None:
    """L(x, y) is exact to the bound for logits whose magnitudes reach the dtype's largest finite value.  [CE-LARGE-LOGITS] tol: loss"""
    batch = draw_batch(
        trial, options=("ignore_index", "weight"), shapes=batch_shapes(max_logits=4096), far=True
    )
    expect_oracle_loss(trial, batch)


@clause()
def targets_below_the_smallest_normal_probability_keep_their_loss(trial: Trial) -> None:
    """ℓ_i = lse(x_i) − x_{i,y_i} stays exact when p(y_i) = exp(−ℓ_i) is below the smallest normal float.  [CE-UNDERFLOW] tol: loss"""
    batch = draw_batch(
        trial,
        options=("ignore_index", "weight"),
        shapes=batch_shapes(max_logits=4096),
        dominance=("below",),
        min_gap=100.0,
    )
    expect_oracle_loss(trial, batch)


@clause(applies=supports("sum"))
def long_sequences_sum_log_probabilities_exactly(trial: Trial) -> None:
    """L_sum(x, y) = −Σ_t log p(y_t | x_<t) = −log Π_t p(y_t | x_<t), also where Π_t p underflows float64.  [CE-LONG-SEQUENCE] tol: loss"""
    batch = trial.data.draw(long_sequences(dtype=trial.dtype), label="sequence")
    problem = problem_of(batch)
    negative_logprob = -oracle_sequence_logprob(problem)
    # The premise: the probability itself is not representable in float64.
    assert negative_logprob > FLOAT64_UNDERFLOW_NLL, negative_logprob
    check_close(
        trial,
        quantity="sum of token losses",
        actual=loss_of(trial, batch.x, batch.y, batch.keywords()),
        expected=torch.tensor(negative_logprob, dtype=torch.float64),
        bound=loss_bound(problem),
        context=f"{context(batch, trial)}; exact −log P = {negative_logprob!r}",
        expected_by="−reference.sequence_logprob",
        reproducer=batch_reproducer(trial, batch, expected=f"# −log P: {negative_logprob!r}"),
    )


CLAUSES = (
    logits_near_the_dtype_limit_give_exact_losses,
    targets_below_the_smallest_normal_probability_keep_their_loss,
    long_sequences_sum_log_probabilities_exactly,
)
