"""Bounds: every token's loss lies in [0, x_max − x_target + log C].

−log p_y ≥ 0 because p_y ≤ 1, and lse(x) ≤ x_max + log C because each of the C terms of the
sum is at most exp(x_max). No oracle: the bounds hold for any input, so they are checked on
inputs larger than the oracle could afford.
"""

from __future__ import annotations

import math

import torch

from properties.ce.calls import batch_reproducer, context, draw_batch, loss_of, problem_of
from properties.engine.checks import check_close
from properties.engine.clause import Trial, clause, supports
from properties.strategies import LOGITS_PER_EXAMPLE, batch_shapes
from properties.tolerances import loss_bound


@clause(applies=supports("none"))
def token_loss_lies_between_zero_and_the_logit_gap_plus_log_c(trial: Trial) -> None:
    """0 ≤ ℓ_i ≤ (max_j x_ij − x_{i,y_i}) + log C for every counted token.  [CE-BOUNDS] tol: loss"""
    batch = draw_batch(
        trial,
        reductions=("none",),
        options=("ignore_index",),
        shapes=batch_shapes(max_logits=4 * LOGITS_PER_EXAMPLE),
    )
    problem = problem_of(batch)
    losses = loss_of(trial, batch.x, batch.y, batch.keywords()).double()
    x = problem.logits
    safe_target = torch.where(problem.counted, problem.target, 0)
    gap = x.amax(1) - x.gather(1, safe_target[:, None])[:, 0]
    upper = torch.where(problem.counted, gap + math.log(problem.classes), 0.0)
    # Report the distance outside [0, upper] (0 inside) against the loss bound.
    outside = torch.clamp(-losses, min=0) + torch.clamp(losses - upper, min=0)
    outside = torch.where(losses.isnan(), math.inf, outside)
    check_close(
        trial,
        quantity="distance of the token loss outside [0, x_max − x_target + log C]",
        actual=outside,
        expected=torch.zeros_like(outside),
        bound=loss_bound(problem),
        context=context(batch, trial),
        expected_by="the bound",
        reproducer=batch_reproducer(trial, batch),
    )


CLAUSES = (token_loss_lies_between_zero_and_the_logit_gap_plus_log_c,)
