"""Value: a fused projection + loss is contract 2's loss of the exact logits input·Wᵀ + b.

Every option and reduction, shapes that cross any chunking of the rows, and the mean's divisor:
the counted tokens (their class weights) of the whole batch, never of a chunk.
"""

from __future__ import annotations

from hypothesis import strategies as st

from properties.engine.clause import Trial, clause, supports
from properties.lce.calls import draw_linear_batch, expect_oracle_loss

#: Every keyword of contract 3 and the options a kernel may declare.
EVERY_OPTION = ("ignore_index", "label_smoothing", "weight", "linear_bias", "z_loss", "softcap")


@clause()
def loss_is_cross_entropy_of_the_exact_logits(trial: Trial) -> None:
    """L(x, W, b, y) = CE(x·Wᵀ + b, y) for every option and reduction, the logits exact.  [LCE-VALUE] tol: linear_loss"""
    expect_oracle_loss(trial, draw_linear_batch(trial, options=EVERY_OPTION))


@clause(applies=supports("mean"))
def mean_divides_by_the_whole_batch(trial: Trial) -> None:
    """L_mean = Σ_i ℓ_i / Σ_{i counted} w_{y_i} over every row of the batch, not per chunk.  [LCE-MEAN-DIVISOR] tol: linear_loss"""
    # Many rows, a half to nine tenths of them ignored (in a block, often): chunks then count
    # different numbers of tokens, and a mean of chunk means differs from the mean.
    batch = draw_linear_batch(
        trial,
        reductions=("mean",),
        options=("ignore_index", "weight", "linear_bias"),
        ignored=st.sampled_from([0.5, 0.9]),
    )
    expect_oracle_loss(trial, batch)


CLAUSES = (loss_is_cross_entropy_of_the_exact_logits, mean_divides_by_the_whole_batch)
