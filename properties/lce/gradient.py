"""Gradient: ∂L/∂input = G·W, ∂L/∂W = Gᵀ·input and ∂L/∂b = Σ_i G_i, with G = ∂L/∂z the
gradient of contract 2 at the exact logits; with a non-uniform upstream gradient for "none";
ignored rows contribute nothing to any of them.
"""

from __future__ import annotations

from hypothesis import strategies as st

from properties.engine.clause import Trial, accepts, all_of, clause, differentiable, supports
from properties.lce.batches import GRADIENT_LOGITS, GRADIENT_PRODUCTS, linear_shapes
from properties.lce.calls import draw_linear_batch, draw_upstream, expect_oracle_gradients
from properties.lce.value import EVERY_OPTION

_GRADIENT_SHAPES = linear_shapes(most_logits=GRADIENT_LOGITS, most_products=GRADIENT_PRODUCTS)


@clause(applies=differentiable)
def gradients_are_the_exact_logits_gradient_carried_back(trial: Trial) -> None:
    """∂L/∂x = G·W, ∂L/∂W = Gᵀ·x, ∂L/∂b = Σ_i G_i with G = ∂L/∂z at z = x·Wᵀ + b, for mean and sum and every option.  [LCE-GRAD] tol: linear_gradient"""
    batch = draw_linear_batch(
        trial, reductions=("mean", "sum"), options=EVERY_OPTION, shapes=_GRADIENT_SHAPES
    )
    expect_oracle_gradients(trial, batch, draw_upstream(trial, batch))


@clause(applies=all_of(differentiable, supports("none")))
def gradients_follow_each_tokens_upstream_gradient(trial: Trial) -> None:
    """For reduction="none" and upstream g: ∂(Σ_i g_i·ℓ_i)/∂x_i = g_i·G_i·W, ∂/∂W = Σ_i g_i·G_iᵀ·x_i, ∂/∂b = Σ_i g_i·G_i.  [LCE-GRAD-UPSTREAM] tol: linear_gradient"""
    batch = draw_linear_batch(
        trial, reductions=("none",), options=EVERY_OPTION, shapes=_GRADIENT_SHAPES
    )
    expect_oracle_gradients(trial, batch, draw_upstream(trial, batch))


#: How much larger the hidden states of ignored rows are made: a kernel that lets them into
#: ∂L/∂W or ∂L/∂b is then off by far more than the bound, which they do not enter.
IGNORED_ROWS_SCALE = 256


@clause(applies=all_of(differentiable, accepts("ignore_index")))
def ignored_rows_contribute_nothing(trial: Trial) -> None:
    """For ignored rows i: ∂L/∂x_i = 0, and ∂L/∂W, ∂L/∂b are those of the counted rows alone, however large the ignored rows' x_i.  [LCE-IGNORED] tol: linear_gradient"""
    batch = draw_linear_batch(
        trial,
        reductions=("mean", "sum", "none"),
        options=("ignore_index", "weight", "linear_bias"),
        shapes=_GRADIENT_SHAPES,
        ignored=st.sampled_from([0.25, 0.5, 0.9]),
    )
    ignored = f"target == {batch.ignore_index}"
    hidden = batch.input.then(
        f"input[{ignored}] = input[{ignored}] * {IGNORED_ROWS_SCALE}  # ignored rows, enlarged",
        scope={"target": batch.target.value},
    )
    batch = type(batch)(
        hidden, batch.linear_weight, batch.target, batch.linear_bias, batch.weight, batch.options
    )
    expect_oracle_gradients(trial, batch, draw_upstream(trial, batch))


CLAUSES = (
    gradients_are_the_exact_logits_gradient_carried_back,
    gradients_follow_each_tokens_upstream_gradient,
    ignored_rows_contribute_nothing,
)


#: Rows of an LCE-GRAD-ACCUMULATE batch: thousands, so that a kernel chunking its rows (by 7 in
#: properties/kernels/) adds hundreds of parts into each entry of ∂L/∂W.
ACCUMULATED_ROWS = (2048, 4096)
#: Examples per run, whatever the profile: each costs the oracle about a second (thousands of
#: rows, each entry of ∂L/∂W a certified sum over all of them).
ACCUMULATE_EXAMPLES = 10


@st.composite
def _accumulation_shapes(draw: st.DrawFn) -> tuple[int, int, int]:
    return (
        draw(st.integers(*ACCUMULATED_ROWS)),
        draw(st.integers(1, 4)),
        draw(st.integers(3, 8)),
    )


@clause(applies=differentiable, max_examples=ACCUMULATE_EXAMPLES)
def weight_gradient_accumulates_every_row(trial: Trial) -> None:
    """∂L/∂W_j = Σ_i G_ij·x_i and ∂L/∂b_j = Σ_i G_ij over thousands of rows of non-negative x, half the classes nobody's target (contributions of one sign), accumulated as in float32.  [LCE-GRAD-ACCUMULATE] tol: linear_gradient"""
    batch = draw_linear_batch(
        trial,
        reductions=("sum", "mean"),
        options=("linear_bias",),
        shapes=_accumulation_shapes(),
        families=("non-negative",),
        rare_classes=st.just(True),
    )
    expect_oracle_gradients(trial, batch, draw_upstream(trial, batch))


CLAUSES = (*CLAUSES, weight_gradient_accumulates_every_row)
