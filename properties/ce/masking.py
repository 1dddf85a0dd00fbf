"""Masked vocabulary: a −inf logit is a class the model rules out.

exp(−inf) = 0: the class drops out of the softmax, its gradient is exactly 0 (not NaN), and
a target on a masked class has probability 0 and an infinite loss.
"""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

from properties.ce.calls import (
    batch_reproducer,
    context,
    draw_batch,
    draw_upstream,
    expect_oracle_loss,
    loss_and_gradient,
)
from properties.engine.checks import check_equal
from properties.engine.clause import Trial, clause, differentiable, supports
from properties.strategies import Batch, batch_shapes, masked_fractions, row_masks


def _masked_batch(trial: Trial) -> Batch:
    return draw_batch(
        trial,
        options=("ignore_index", "weight", "z_loss", "softcap"),
        masked=masked_fractions(always=True),
        shapes=batch_shapes(min_vocab=2),
    )


@clause()
def masked_classes_drop_out_of_the_softmax(trial: Trial) -> None:
    """L(x, y) with x_ij = −inf for masked classes j equals the loss over the unmasked classes alone.  [CE-MASKED] tol: loss"""
    expect_oracle_loss(trial, _masked_batch(trial))


@clause(applies=differentiable)
def masked_classes_get_exactly_zero_gradient(trial: Trial) -> None:
    """∂L/∂x_ij = 0 exactly (not NaN) where x_ij = −inf, with no soft cap.  [CE-MASKED-GRAD] tol: exact"""
    batch = draw_batch(
        trial,
        options=("ignore_index", "weight", "z_loss"),
        masked=masked_fractions(always=True),
        shapes=batch_shapes(min_vocab=2),
    )
    upstream = draw_upstream(trial, batch)
    _, gradient = loss_and_gradient(trial, batch.x, batch.y, batch.keywords(), upstream.value)
    masked = batch.x == -math.inf
    check_equal(
        trial,
        quantity="∂L/∂logits at masked classes",
        actual=gradient[masked],
        expected=torch.zeros(int(masked.sum()), dtype=torch.float64),
        context=context(batch, trial),
        reproducer=batch_reproducer(trial, batch, grad_output=upstream),
        expected_by="the definition",
    )


@clause(applies=supports("none"))
def a_target_on_a_masked_class_has_infinite_loss(trial: Trial) -> None:
    """ℓ_i = +inf when x_{i,y_i} = −inf (p(y_i) = 0), and every other token's loss is unchanged.  [CE-MASKED-TARGET] tol: loss"""
    batch = draw_batch(
        trial,
        reductions=("none",),
        options=("ignore_index", "weight"),
        masked=st.just(0.0),  # every row keeps a finite logit besides its target
        shapes=batch_shapes(min_vocab=2),
    )
    rows, vocab = batch.x.shape
    sunk = trial.data.draw(row_masks(rows=rows, name="sunk"), label="rows whose target is masked")
    scope = {"target": batch.y, sunk.name: sunk.value}
    logits = batch.logits.then(
        f"logits[sunk, target[sunk].clamp(0, {vocab - 1})] = float('-inf')", scope=scope
    )
    expect_oracle_loss(trial, Batch(logits, batch.target, batch.weight, batch.options, (sunk,)))


CLAUSES = (
    masked_classes_drop_out_of_the_softmax,
    masked_classes_get_exactly_zero_gradient,
    a_target_on_a_masked_class_has_infinite_loss,
)
