"""Vocab-parallel clauses (contract 4, prefix DIST): P ranks, each holding a slice of the
vocabulary, together compute the loss of the whole example.

Each example is drawn once, split into column slices (uneven ones, C not divisible by P, a rank
with one column, targets on another rank's slice), handed to the ranks, and every rank's result
is compared with the oracle on the whole example.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from properties.distributed import calls
from properties.distributed.batches import Split, vocab_parallel_examples
from properties.distributed.calls import (
    context,
    draw_upstream,
    expect_oracle_gradient,
    expect_oracle_loss,
    expect_same_loss,
    expect_untouched,
    reproducer,
    run_split,
)
from properties.engine.checks import check_equal
from properties.engine.clause import (
    Trial,
    accepts,
    all_of,
    clause,
    differentiable,
)
from properties.engine.kernel import KernelUnderTest


def draw_split(trial: Trial, **options: object) -> Split:
    """A whole batch for the trial's kernel and its vocabulary split over the trial's ranks."""
    return calls.draw_split(trial, vocab_parallel_examples, **options)


@clause()
def loss_is_the_whole_examples_loss(trial: Trial) -> None:
    """L(x[:, slice_r] on each rank r, y) = CE(x, y) on every rank, for every reduction and option the kernel accepts.  [DIST-VALUE] tol: dist_loss"""
    expect_oracle_loss(trial, draw_split(trial))


@clause(applies=accepts("label_smoothing"))
def label_smoothing_spreads_over_the_whole_vocabulary(trial: Trial) -> None:
    """ℓ_i = (1 − ε)·(lse(x_i) − x_{i,y_i}) + (ε/C)·Σ_{j<C} (lse(x_i) − x_ij), C the whole vocabulary, not a rank's C_r.  [DIST-SMOOTHING] tol: dist_loss"""
    expect_oracle_loss(trial, draw_split(trial, require=("label_smoothing",)))


@clause(applies=differentiable)
def each_slice_gets_its_columns_of_the_gradient(trial: Trial) -> None:
    """∂L/∂x[:, slice_r] on rank r = columns slice_r of ∂CE(x, y)/∂x, for every reduction and option (a non-uniform upstream gradient for "none").  [DIST-GRAD] tol: dist_gradient"""
    split = draw_split(trial)
    expect_oracle_gradient(trial, split, draw_upstream(trial, split))


@clause()
def every_rank_returns_the_same_loss(trial: Trial) -> None:
    """L on rank r = L on rank 0, bit for bit, for every r.  [DIST-SAME-LOSS] tol: exact"""
    split = draw_split(trial)
    expect_same_loss(trial, split, run_split(trial, split))


@clause(applies=all_of(accepts("ignore_index"), differentiable))
def ignored_rows_get_no_gradient_on_any_slice(trial: Trial) -> None:
    """∂L/∂x_ij = 0 on every rank's slice for every row i with y_i = ignore_index.  [DIST-IGNORED] tol: exact"""
    split = draw_split(
        trial,
        options=("ignore_index", "label_smoothing", "z_loss", "softcap"),
        require=("ignore_index",),
        ignored=st.sampled_from([0.5, 0.75, 1.0]),
    )
    upstream = draw_upstream(trial, split)
    outcome = run_split(trial, split, upstream)
    ignored = ~split.batch.counted
    for rank, (start, stop) in enumerate(split.shards):
        gradient = outcome.gradient(rank)[ignored]
        check_equal(
            trial,
            quantity=f"rank {rank}'s ∂L/∂local_logits on ignored rows",
            actual=gradient,
            expected=torch.zeros_like(gradient, dtype=torch.float64),
            context=f"{context(trial, split)}; rank {rank} holds columns [{start}, {stop})",
            reproducer=reproducer(trial, split, upstream),
            expected_by="the contract",
        )


def _pure(kernel: KernelUnderTest) -> str | None:
    return "the kernel declares writes_input" if kernel.spec.writes_input else None


@clause(applies=_pure)
def no_rank_writes_into_its_inputs(trial: Trial) -> None:
    """Every rank's local_logits, target and grad_output are unchanged by the call and its backward.  [DIST-PURE] tol: exact"""
    split = draw_split(trial)
    upstream = draw_upstream(trial, split) if trial.kernel.spec.differentiable else None
    expect_untouched(trial, split, run_split(trial, split, upstream), upstream)


CLAUSES = (
    loss_is_the_whole_examples_loss,
    label_smoothing_spreads_over_the_whole_vocabulary,
    each_slice_gets_its_columns_of_the_gradient,
    every_rank_returns_the_same_loss,
    ignored_rows_get_no_gradient_on_any_slice,
    no_rank_writes_into_its_inputs,
)
