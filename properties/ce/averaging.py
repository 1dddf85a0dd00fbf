"""Averaging: the mean is over counted tokens only, and micro-batches accumulate to the batch.

A mean that divides by every row, counted or not, is a classic bug; so is gradient
accumulation that averages micro-batch means (the bug transformers fixed in 2024): with
ragged micro-batches, micro-batch k must weigh n_k/N, n_k its counted tokens.
"""

from __future__ import annotations

import torch
from hypothesis import assume
from hypothesis import strategies as st

from properties.ce.calls import (
    batch_reproducer,
    call_expression,
    call_source,
    context,
    draw_batch,
    draw_upstream,
    loss_and_gradient,
    loss_of,
    problem_of,
    reproducer,
)
from properties.ce.oracle import oracle_gradient
from properties.ce.problem import Problem
from properties.engine.checks import check_close, check_equal
from properties.engine.clause import Trial, accepts, all_of, clause, differentiable, supports
from properties.strategies import batch_shapes, splits
from properties.tolerances import gradient_bound, loss_bound


@clause(applies=supports("mean", "sum"))
def mean_divides_the_sum_by_the_counted_weight(trial: Trial) -> None:
    """L_mean(x, y) = L_sum(x, y) / Σ_{i counted} w_{y_i} (w ≡ 1 without class weights).  [CE-MEAN-COUNTED] tol: loss"""
    batch = draw_batch(
        trial,
        reductions=("mean",),
        options=("ignore_index", "label_smoothing", "weight"),
        ignored=st.sampled_from([0.25, 0.5]),
    )
    keywords = {**batch.keywords(), "reduction": "mean"}
    problem = problem_of(batch)
    weight_total = float(_counted_weight(problem))
    # No counted token: neither mean nor quotient is defined (CE-EMPTY-MEAN states that case).
    assume(weight_total > 0.0)
    mean = loss_of(trial, batch.x, batch.y, keywords)
    total = loss_of(trial, batch.x, batch.y, {**keywords, "reduction": "sum"})
    # Both within their bounds of the exact values; the division by Σw adds nothing in float64.
    bound = loss_bound(problem) + loss_bound(problem.but(reduction="sum")) / weight_total
    check_close(
        trial,
        quantity="mean",
        actual=mean,
        expected=total.double().cpu() / weight_total,
        bound=bound,
        context=f"{context(batch, trial)}; counted weight {weight_total!r}",
        expected_by="the kernel's sum over the counted weight",
        reproducer=reproducer(
            trial,
            batch.source(),
            call_source(trial.kernel, keywords, result="mean"),
            call_source(trial.kernel, {**keywords, "reduction": "sum"}, result="total"),
            f"print(mean, total / {weight_total!r})",
        ),
    )


def _counted_weight(problem: Problem) -> torch.Tensor:
    weight = problem.weight if problem.weight is not None else torch.ones(problem.classes)
    counted = problem.target[problem.counted]
    return weight.double()[counted].sum()


@clause(applies=all_of(differentiable, supports("mean")))
def micro_batch_gradients_accumulate_to_the_full_batch(trial: Trial) -> None:
    """∇L(x, y) = Σ_k (n_k/N)·∇L(x_k, y_k) for ragged micro-batches k holding n_k of the N counted tokens.  [CE-ACCUMULATE] tol: gradient"""
    batch = draw_batch(
        trial,
        reductions=("mean",),
        options=("ignore_index", "label_smoothing"),
        shapes=batch_shapes(min_rows=2, max_logits=4096),
    )
    keywords = batch.keywords()
    problem = problem_of(batch)
    total = int(problem.counted.sum())
    # No counted token: the full batch's mean is undefined (CE-EMPTY-MEAN states that case).
    assume(total > 0)
    parts = trial.data.draw(
        splits(rows=batch.x.shape[0], min_parts=2, max_parts=4), label="micro-batches"
    )
    accumulated = torch.zeros_like(problem.logits)
    bound = torch.zeros_like(problem.logits)
    one = torch.tensor(1.0, dtype=batch.x.dtype)
    for start, stop in parts:
        part = problem.but(logits=problem.logits[start:stop], target=problem.target[start:stop])
        counted = int(part.counted.sum())
        if counted == 0:  # its mean is undefined and it contributes nothing
            continue
        _, gradient = loss_and_gradient(
            trial, batch.x[start:stop], batch.y[start:stop], keywords, one
        )
        accumulated[start:stop] = counted / total * gradient.double()
        bound[start:stop] = counted / total * gradient_bound(part, one)
    expression = call_expression(trial.kernel, keywords, logits="x[a:b]", target="target[a:b]")
    check_close(
        trial,
        quantity="accumulated ∂L/∂logits",
        actual=accumulated,
        expected=oracle_gradient(problem, one),
        bound=bound,
        context=f"{context(batch, trial)}; micro-batches (start, stop): {parts}",
        reproducer=reproducer(
            trial,
            batch.source(),
            f"parts = {parts!r}",
            f"counts = [int((target[a:b] != {batch.ignore_index}).sum()) for a, b in parts]",
            "x = logits.clone().requires_grad_(True)",
            "for (a, b), n in zip(parts, counts):",
            f"    if n: (n / sum(counts) * {expression}).backward()",
            "print(x.grad)",
        ),
    )


@clause(applies=accepts("ignore_index"))
def a_mean_over_no_counted_token_is_empty(trial: Trial) -> None:
    """L_mean = NaN (or 0 where KernelSpec.empty_mean = "zero"), L_sum = 0, L_none = 0 and ∇L = 0 when every target is ignored.  [CE-EMPTY-MEAN] tol: exact"""
    batch = draw_batch(
        trial,
        options=("label_smoothing", "weight"),
        require=("ignore_index",),
        ignored=st.just(1.0),
    )
    keywords = batch.keywords()
    rows = batch.x.shape[0]
    empty_mean = 0.0 if trial.kernel.spec.empty_mean == "zero" else float("nan")
    empty = {"mean": empty_mean, "sum": 0.0}
    expected = (
        torch.zeros(rows, dtype=torch.float64)
        if batch.reduction == "none"
        else torch.tensor(empty[batch.reduction], dtype=torch.float64)
    )
    if trial.kernel.spec.differentiable:
        upstream = draw_upstream(trial, batch)
        loss, gradient = loss_and_gradient(trial, batch.x, batch.y, keywords, upstream.value)
        check_equal(
            trial,
            quantity="∂L/∂logits",
            actual=gradient,
            expected=torch.zeros_like(gradient, dtype=torch.float64),
            context=context(batch, trial),
            reproducer=batch_reproducer(trial, batch, grad_output=upstream),
            expected_by="the definition",
        )
    else:
        loss = loss_of(trial, batch.x, batch.y, keywords)
    check_equal(
        trial,
        quantity="loss",
        actual=loss,
        expected=expected,
        context=context(batch, trial),
        reproducer=batch_reproducer(trial, batch),
        expected_by="the definition",
    )


CLAUSES = (
    mean_divides_the_sum_by_the_counted_weight,
    micro_batch_gradients_accumulate_to_the_full_batch,
    a_mean_over_no_counted_token_is_empty,
)
