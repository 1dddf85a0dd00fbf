"""Data-parallel clauses (contract 4, prefix DIST-DP): P ranks, each holding some rows of the
global batch, together compute the loss of the whole batch.

Each example is drawn once and its rows cut into P ranges in rank order (ragged, empty ones
included, often with most targets ignored, so that a rank counts no token), and every rank's
result is compared with the oracle on the whole batch.
"""

from __future__ import annotations

from hypothesis import strategies as st

from properties.distributed import calls
from properties.distributed.batches import Split, data_parallel_examples
from properties.distributed.calls import (
    draw_upstream,
    expect_oracle_gradient,
    expect_oracle_loss,
    expect_same_loss,
    expect_untouched,
    run_split,
)
from properties.engine.clause import Trial, clause, differentiable, supports
from properties.engine.kernel import KernelUnderTest


def draw_split(trial: Trial, **options: object) -> Split:
    """A whole batch for the trial's kernel and its rows split over the trial's ranks."""
    return calls.draw_split(trial, data_parallel_examples, **options)


#: Often most of the targets ignored: a rank then counts no token, and a mean of per-rank means
#: or a forgotten all-reduce of the count shows.
_MOSTLY_IGNORED = st.sampled_from([0.0, 0.5, 0.75, 0.9, 1.0])


@clause(applies=supports("mean"))
def mean_is_over_the_counted_tokens_of_every_rank(trial: Trial) -> None:
    """L = Σ_r Σ_{i∈r, counted} w_{y_i}·ℓ_i / Σ_r Σ_{i∈r, counted} w_{y_i} on every rank: one mean over the whole batch, not a mean of the ranks' means.  [DIST-DP-MEAN] tol: dist_dp_loss"""
    split = draw_split(
        trial,
        reductions=("mean",),
        options=("ignore_index", "weight"),
        ignored=_MOSTLY_IGNORED,
    )
    expect_oracle_loss(trial, split)


@clause(applies=supports("sum"))
def sum_is_over_the_tokens_of_every_rank(trial: Trial) -> None:
    """L = Σ_r Σ_{i∈r, counted} w_{y_i}·ℓ_i on every rank, for every option the kernel accepts.  [DIST-DP-SUM] tol: dist_dp_loss"""
    expect_oracle_loss(trial, draw_split(trial, reductions=("sum",)))


@clause(applies=differentiable)
def each_rank_gets_its_rows_of_the_gradient(trial: Trial) -> None:
    """∂L/∂x[rows_r] on rank r = rows rows_r of ∂CE(x, y)/∂x of the whole batch, for mean and sum and every option.  [DIST-DP-GRAD] tol: dist_dp_gradient"""
    split = draw_split(trial, ignored=_MOSTLY_IGNORED)
    expect_oracle_gradient(trial, split, draw_upstream(trial, split))


@clause()
def every_rank_returns_the_same_global_loss(trial: Trial) -> None:
    """L on rank r = L on rank 0, bit for bit, for every r.  [DIST-DP-SAME-LOSS] tol: exact"""
    split = draw_split(trial, ignored=_MOSTLY_IGNORED)
    expect_same_loss(trial, split, run_split(trial, split))


def _pure(kernel: KernelUnderTest) -> str | None:
    return "the kernel declares writes_input" if kernel.spec.writes_input else None


@clause(applies=_pure)
def no_rank_writes_into_its_rows(trial: Trial) -> None:
    """Every rank's local_logits, local_target, weight and grad_output are unchanged by the call and its backward.  [DIST-DP-PURE] tol: exact"""
    split = draw_split(trial)
    upstream = draw_upstream(trial, split) if trial.kernel.spec.differentiable else None
    expect_untouched(trial, split, run_split(trial, split, upstream), upstream)


CLAUSES = (
    mean_is_over_the_counted_tokens_of_every_rank,
    sum_is_over_the_tokens_of_every_rank,
    each_rank_gets_its_rows_of_the_gradient,
    every_rank_returns_the_same_global_loss,
    no_rank_writes_into_its_rows,
)
