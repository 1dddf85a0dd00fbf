"""Gradient: ∂L/∂x is softmax minus the target distribution, scaled, and nothing else.

For a counted row i with upstream gradient g_i (a scalar g for mean and sum), row scale
a_i = g_i (sum, none) or g/Σ_{counted} w_{y_k} (mean), label smoothing ε over C classes, class
weights w (all 1 without), z-loss z and soft cap s (reference/_gradient.py states the same):
    x̃_ij = s·tanh(x_ij/s) (x̃ = x without a cap),  p_ij = softmax(x̃_i)_j,  lse_i = lse(x̃_i),
    t_ij = (1 − ε)·w_{y_i}·[j = y_i] + (ε/C)·w_j,  T_i = Σ_j t_ij,
    ∂L/∂x_ij = a_i·((T_i + 2z·w_{y_i}·lse_i)·p_ij − t_ij)·(1 − tanh²(x_ij/s)),
the last factor being 1 without a cap: softmax − one-hot, scaled, in the plain case. Ignored
rows get exactly zero.
"""

from __future__ import annotations

import torch

from properties.ce.calls import (
    batch_reproducer,
    context,
    draw_batch,
    draw_upstream,
    expect_oracle_gradient,
    loss_and_gradient,
    problem_of,
)
from properties.engine.checks import check_close, check_equal
from properties.engine.clause import Trial, accepts, all_of, clause, differentiable, supports
from properties.strategies import LOGITS_PER_EXAMPLE, batch_shapes
from properties.tolerances import gradient_row_sum_bound

#: The oracle's gradient costs two to three times its loss: half the loss clauses' budget.
GRADIENT_LOGITS = LOGITS_PER_EXAMPLE // 2


@clause(applies=differentiable)
def gradient_is_softmax_minus_one_hot_scaled(trial: Trial) -> None:
    """∂L/∂x_ij = a_i·((T_i + 2z·w_{y_i}·lse(x̃_i))·p_ij − t_ij)·(1 − tanh²(x_ij/s)) where p_i = softmax(x̃_i), x̃ = s·tanh(x/s): softmax − target distribution times the row scale, plus the z-loss term, times the soft cap's chain factor.  [CE-GRAD] tol: gradient"""
    batch = draw_batch(
        trial,
        reductions=("mean", "sum"),
        options=("ignore_index", "label_smoothing", "weight", "z_loss", "softcap"),
        # Two rows and two classes at least: with one row a mean has no scale to get
        # wrong, and with one class the gradient is identically zero.
        shapes=batch_shapes(min_rows=2, min_vocab=2, max_logits=GRADIENT_LOGITS),
    )
    upstream = draw_upstream(trial, batch)
    expect_oracle_gradient(trial, batch, upstream)


@clause(applies=all_of(differentiable, supports("none")))
def gradient_follows_each_tokens_upstream_gradient(trial: Trial) -> None:
    """∂(Σ_i g_i·ℓ_i)/∂x_ij = g_i·((T_i + 2z·w_{y_i}·lse(x̃_i))·p_ij − t_ij)·(1 − tanh²(x_ij/s)) for reduction="none" and non-uniform g.  [CE-GRAD-UPSTREAM] tol: gradient"""
    batch = draw_batch(
        trial,
        reductions=("none",),
        options=("ignore_index", "label_smoothing", "weight", "z_loss", "softcap"),
        shapes=batch_shapes(max_logits=GRADIENT_LOGITS),
    )
    upstream = draw_upstream(trial, batch)
    expect_oracle_gradient(trial, batch, upstream)


@clause(applies=all_of(differentiable, accepts("ignore_index")))
def ignored_rows_get_exactly_zero_gradient(trial: Trial) -> None:
    """∂L/∂x_i· = 0 exactly when y_i = ignore_index, for every reduction and option.  [CE-GRAD-IGNORED] tol: exact"""
    batch = draw_batch(
        trial,
        options=("label_smoothing", "weight", "z_loss", "softcap"),
        require=("ignore_index",),
        shapes=batch_shapes(max_logits=4 * GRADIENT_LOGITS),
    )
    upstream = draw_upstream(trial, batch)
    _, gradient = loss_and_gradient(trial, batch.x, batch.y, batch.keywords(), upstream.value)
    ignored = ~batch.counted
    check_equal(
        trial,
        quantity="∂L/∂logits of ignored rows",
        actual=gradient[ignored],
        expected=torch.zeros_like(gradient[ignored], dtype=torch.float64),
        context=context(batch, trial),
        reproducer=batch_reproducer(trial, batch, grad_output=upstream),
        expected_by="the definition",
    )


@clause(applies=differentiable)
def gradient_rows_sum_to_zero(trial: Trial) -> None:
    """Σ_j ∂L/∂x_ij = a_i·T_i·(Σ_j p_ij − 1) = 0 for every row, since Σ_j p_ij = 1 (without z-loss or a soft cap).  [CE-GRAD-ROW-SUM] tol: gradient_row_sum"""
    batch = draw_batch(
        trial,
        options=("ignore_index", "label_smoothing", "weight"),
        shapes=batch_shapes(max_logits=4 * GRADIENT_LOGITS),
    )
    upstream = draw_upstream(trial, batch)
    _, gradient = loss_and_gradient(trial, batch.x, batch.y, batch.keywords(), upstream.value)
    problem = problem_of(batch)
    check_close(
        trial,
        quantity="Σ_j ∂L/∂logits[i, j]",
        actual=gradient.double().sum(dim=1),
        expected=torch.zeros(gradient.shape[0], dtype=torch.float64),
        bound=gradient_row_sum_bound(problem, upstream.value),
        context=context(batch, trial),
        reproducer=batch_reproducer(trial, batch, grad_output=upstream),
    )


CLAUSES = (
    gradient_is_softmax_minus_one_hot_scaled,
    gradient_follows_each_tokens_upstream_gradient,
    ignored_rows_get_exactly_zero_gradient,
    gradient_rows_sum_to_zero,
)
