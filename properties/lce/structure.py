"""Structure: the rows of a batch are independent tokens, and the inputs are only read.

Permuting the rows leaves the mean and the sum as they are; cutting the batch into parts (at
any row, so across any chunk edge) and adding the parts' sums gives the whole batch's sum. And
after the forward and the backward pass every input is bit for bit what it was.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from properties.engine.checks import check_close, check_equal
from properties.engine.clause import Mismatch, Trial, accepts, all_of, clause, supports
from properties.lce.batches import LinearBatch, linear_shapes
from properties.lce.calls import (
    batch_reproducer,
    context,
    draw_linear_batch,
    draw_upstream,
    expect_oracle_loss,
    expected_loss,
    loss_of,
    problem_of,
)
from properties.strategies import row_permutations, splits
from properties.tolerances import linear_loss_bound


def _rows_of(batch: LinearBatch, rows: str, note: str) -> LinearBatch:
    """The batch restricted to ``rows`` (a Python index expression over the rows)."""
    return LinearBatch(
        batch.input.then(f"input = input[{rows}]  # {note}"),
        batch.linear_weight,
        batch.target.then(f"target = target[{rows}]  # {note}"),
        batch.linear_bias,
        batch.weight,
        batch.options,
    )


@clause(applies=supports("sum"))
def row_order_and_splitting_do_not_matter(trial: Trial) -> None:
    """L(x[π], W, b, y[π]) = L(x, W, b, y) for a row permutation π, and Σ_k L_sum(part_k) = L_sum(x, W, b, y) for any cut into parts.  [LCE-SPLIT] tol: linear_loss"""
    batch = draw_linear_batch(
        trial, reductions=("sum",), options=("ignore_index", "weight", "linear_bias")
    ).with_options(reduction="sum")
    problem = problem_of(batch)
    expected = expected_loss(trial, problem)
    order = trial.data.draw(row_permutations(rows=batch.rows), label="order")
    permuted = LinearBatch(
        batch.input.then("input = input[order]  # rows permuted", scope={"order": order.value}),
        batch.linear_weight,
        batch.target.then("target = target[order]  # rows permuted", scope={"order": order.value}),
        batch.linear_bias,
        batch.weight,
        batch.options,
    )
    check_close(
        trial,
        quantity="sum over permuted rows",
        actual=loss_of(trial, permuted),
        expected=expected,
        bound=linear_loss_bound(problem),
        context=context(trial, batch),
        reproducer=batch_reproducer(trial, permuted),
    )
    parts = trial.data.draw(splits(rows=batch.rows, max_parts=8), label="parts")
    pieces = [
        _rows_of(batch, f"{start}:{stop}", f"rows {start} to {stop - 1}") for start, stop in parts
    ]
    losses = [loss_of(trial, piece).double() for piece in pieces]
    total = torch.stack(losses).sum()
    # Each part's sum lies within its own bound (which covers its rounding to the result
    # dtype); their float values are added in float64, whose k − 1 roundings are far below it.
    bound = torch.stack([linear_loss_bound(problem_of(piece)) for piece in pieces]).sum()
    check_close(
        trial,
        quantity=f"sum of the sums of {len(pieces)} parts",
        actual=total,
        expected=expected,
        bound=bound,
        context=f"{context(trial, batch)}; parts {parts}",
        reproducer=batch_reproducer(trial, pieces[-1]),
    )


@clause()
def inputs_are_left_unchanged(trial: Trial) -> None:
    """After L = kernel(x, W, y, linear_bias=b, weight=w) and L.backward(g): x, W, b, y, w and g are unchanged.  [LCE-PURE] tol: exact"""
    batch = draw_linear_batch(
        trial,
        reductions=("mean", "sum", "mean", "none"),
        options=("ignore_index", "label_smoothing", "weight", "linear_bias", "z_loss", "softcap"),
    )
    inputs = {
        "input": batch.input.value,
        "linear_weight": batch.linear_weight.value,
        "target": batch.target.value,
    }
    inputs.update({k: v for k, v in batch.keywords().items() if isinstance(v, torch.Tensor)})
    handed = {name: value.clone().to(trial.device) for name, value in inputs.items()}
    grad = trial.kernel.spec.differentiable
    for name in ("input", "linear_weight", "linear_bias"):
        if name in handed:
            handed[name].requires_grad_(grad)
    keywords = {**batch.keywords(), **{k: handed[k] for k in batch.keywords() if k in handed}}
    loss = trial.kernel(handed["input"], handed["linear_weight"], handed["target"], **keywords)
    upstream = None
    if grad:
        upstream = draw_upstream(trial, batch)
        if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
            raise Mismatch(
                "the loss does not require grad: the kernel is not differentiable",
                reproducer=batch_reproducer(trial, batch, grad_output=upstream),
            )
        handed["grad_output"] = (
            upstream.value.to(device=loss.device, dtype=loss.dtype).reshape(loss.shape).clone()
        )
        inputs["grad_output"] = upstream.value.to(loss.dtype).reshape(loss.shape)
        loss.backward(handed["grad_output"])
    for name, value in handed.items():
        check_equal(
            trial,
            quantity=f"{name} after the call",
            actual=value.detach().cpu(),
            expected=inputs[name] if name == "target" else inputs[name].double(),
            context=context(trial, batch),
            reproducer=batch_reproducer(trial, batch, grad_output=upstream),
        )


CLAUSES = (row_order_and_splitting_do_not_matter, inputs_are_left_unchanged)


@st.composite
def _sequence_shapes(draw: st.DrawFn) -> tuple[int, int, int]:
    """(N, D, C) with N = B·T for at least two sequences of at least two positions."""
    rows, depth, classes = draw(linear_shapes())
    return max(rows, 4), depth, classes


@clause(applies=all_of(supports("mean"), accepts("ignore_index")))
def flattened_sequences_give_the_token_weighted_mean(trial: Trial) -> None:
    """L(h.reshape(B·T, D), W, y.reshape(B·T)) = Σ_{b,t counted} ℓ_bt / #{counted}, for B ragged sequences padded to T with ignore_index.  [LCE-FLATTEN] tol: linear_loss"""
    batch = draw_linear_batch(
        trial,
        reductions=("mean",),
        options=("ignore_index", "linear_bias"),
        shapes=_sequence_shapes(),
        ignored=st.just(0.0),
    ).with_options(reduction="mean")
    rows = batch.rows
    count = trial.data.draw(
        st.sampled_from([d for d in range(2, rows + 1) if rows % d == 0 and rows // d >= 2] or [1]),
        label="sequences",
    )
    length = rows // count
    lengths = [
        trial.data.draw(st.integers(1, length), label=f"tokens of sequence {b}")
        for b in range(count)
    ]
    padding = [
        f"target[{b * length + n}:{(b + 1) * length}] = {batch.ignore_index}  # sequence {b} holds {n} tokens"
        for b, n in enumerate(lengths)
        if n < length
    ]
    padded = LinearBatch(
        batch.input.then(
            f"input = input.reshape({count}, {length}, -1).reshape({rows}, -1)  # (B, T, D) flattened"
        ),
        batch.linear_weight,
        batch.target.then(*padding) if padding else batch.target,
        batch.linear_bias,
        batch.weight,
        batch.options,
    )
    expect_oracle_loss(trial, padded)


CLAUSES = (*CLAUSES, flattened_sequences_give_the_token_weighted_mean)
