"""Reshape: the loss of a language-model batch is the token-weighted mean, whatever its shape.

The training code flattens logits (B, T, C) → (B·T, C) and targets (B, T) → (B·T); the mean
is then over every counted token of every sequence, not a mean of per-sequence means. Row
order does not matter, and a batch split into parts recombines by token counts.
"""

from __future__ import annotations

import torch
from hypothesis import assume

from properties.ce.calls import (
    call_expression,
    call_source,
    context,
    draw_batch,
    expected_loss,
    loss_bound_for,
    loss_of,
    problem_of,
    reproducer,
)
from properties.ce.problem import Problem
from properties.engine.checks import check_close
from properties.engine.clause import Trial, clause, supports
from properties.strategies import row_permutations, sequences, splits
from properties.tolerances import loss_bound


@clause(applies=supports("mean"))
def flattened_sequences_give_the_token_weighted_mean(trial: Trial) -> None:
    """L(x.reshape(B·T, C), y.reshape(B·T)) = Σ_{b,t counted} ℓ_bt / #{counted}, for ragged padded sequences.  [CE-FLATTEN] tol: loss"""
    batch = trial.data.draw(sequences(dtype=trial.dtype, kernel=trial.kernel), label="sequences")
    vocab = batch.vocab_size
    flat_logits, flat_target = batch.x.reshape(-1, vocab), batch.y.reshape(-1)
    keywords = batch.keywords()
    problem = Problem.of(flat_logits, flat_target, **keywords)
    call = call_source(
        trial.kernel, keywords, logits=f"logits.reshape(-1, {vocab})", target="target.reshape(-1)"
    )
    check_close(
        trial,
        quantity="loss of the flattened batch",
        actual=loss_of(trial, flat_logits, flat_target, keywords),
        expected=expected_loss(trial, problem),
        bound=loss_bound_for(trial, problem),
        context=context(batch, trial),
        reproducer=reproducer(trial, batch.source(), call, "print(loss)"),
    )


@clause()
def row_order_does_not_matter(trial: Trial) -> None:
    """L(P·x, P·y) = L(x, y) for mean and sum, and L_none(P·x, P·y) = P·L_none(x, y), for every row permutation P.  [CE-ROW-ORDER] tol: loss"""
    batch = draw_batch(
        trial, options=("ignore_index", "label_smoothing", "weight", "z_loss", "softcap")
    )
    rows = batch.x.shape[0]
    permutation = trial.data.draw(row_permutations(rows=rows), label="permutation")
    order = permutation.value
    keywords = batch.keywords()
    problem = problem_of(batch)
    original = loss_of(trial, batch.x, batch.y, keywords)
    permuted = loss_of(trial, batch.x[order], batch.y[order], keywords)
    if batch.reduction == "none":
        original = original[order.to(original.device)]
    # Both results are within the bound of the one exact value, so within twice it of each other.
    bound = 2 * loss_bound_for(trial, problem)
    if batch.reduction == "none":
        bound = bound[order]
    check_close(
        trial,
        quantity="loss of the permuted rows",
        actual=permuted,
        expected=original.double(),
        bound=bound,
        context=context(batch, trial),
        expected_by="the kernel on the original order",
        reproducer=reproducer(
            trial,
            f"{batch.source()}\n{permutation.source()}",
            call_source(trial.kernel, keywords),
            call_source(
                trial.kernel,
                keywords,
                logits="logits[order]",
                target="target[order]",
                result="permuted",
            ),
            "print(loss, permuted)",
        ),
    )


@clause(applies=supports("mean"))
def split_batches_recombine_by_token_counts(trial: Trial) -> None:
    """L(x, y) = Σ_k n_k·L(x_k, y_k) / Σ_k n_k for a batch split into parts k holding n_k counted tokens.  [CE-SPLIT] tol: loss"""
    batch = draw_batch(trial, reductions=("mean",), options=("ignore_index",))
    parts = trial.data.draw(splits(rows=batch.x.shape[0], max_parts=4), label="parts")
    keywords = batch.keywords()
    problem = problem_of(batch)
    counted_total = int(problem.counted.sum())
    # No counted token: the batch's mean is undefined (CE-EMPTY-MEAN states that case).
    assume(counted_total > 0)
    recombined = torch.tensor(0.0, dtype=torch.float64)
    bound = torch.tensor(0.0, dtype=torch.float64)
    for start, stop in parts:
        part = Problem.of(batch.x[start:stop], batch.y[start:stop], **keywords)
        counted = int(part.counted.sum())
        if counted == 0:  # a part with no counted token has no mean, and weighs nothing
            continue
        mean = loss_of(trial, batch.x[start:stop], batch.y[start:stop], keywords).double()
        recombined = recombined + counted * mean.cpu() / counted_total
        bound = bound + counted * loss_bound(part) / counted_total
    check_close(
        trial,
        quantity="token-count recombination of the parts' means",
        actual=recombined,
        expected=expected_loss(trial, problem),
        bound=bound,
        context=f"{context(batch, trial)}; parts (start, stop): {parts}",
        reproducer=reproducer(
            trial,
            batch.source(),
            f"parts = {parts!r}",
            f"ignore_index = {batch.ignore_index}",
            "counts = [int((target[a:b] != ignore_index).sum()) for a, b in parts]",
            "means = ["
            + call_expression(trial.kernel, keywords, logits="logits[a:b]", target="target[a:b]")
            + " for a, b in parts]",
            "print(sum(n * m.double() for n, m in zip(counts, means) if n) / sum(counts))",
        ),
    )


CLAUSES = (
    flattened_sequences_give_the_token_weighted_mean,
    row_order_does_not_matter,
    split_batches_recombine_by_token_counts,
)
