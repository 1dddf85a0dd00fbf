"""Row independence: a token's loss depends on its own row of logits and its target only."""

from __future__ import annotations

import torch

from properties.ce.calls import (
    call_source,
    context,
    draw_batch,
    loss_bound_for,
    loss_of,
    problem_of,
    reproducer,
)
from properties.engine.checks import check_close
from properties.engine.clause import Trial, clause, supports
from properties.strategies import logits, row_masks


@clause(applies=supports("none"))
def a_rows_loss_does_not_depend_on_other_rows(trial: Trial) -> None:
    """L_none(x', y)[i] = L_none(x, y)[i] for every row i that x' shares with x.  [CE-ROW-INDEPENDENT] tol: loss"""
    batch = draw_batch(
        trial,
        reductions=("none",),
        options=("ignore_index", "label_smoothing", "weight", "z_loss", "softcap"),
    )
    rows, vocab = batch.x.shape
    others = trial.data.draw(
        logits(rows=rows, vocab_size=vocab, dtype=trial.dtype, target=batch.target, name="others"),
        label="other rows",
    )
    kept = trial.data.draw(row_masks(rows=rows, name="kept"), label="kept rows")
    mixed = torch.where(kept.value[:, None], batch.x, others.value)
    keywords = batch.keywords()
    alone = loss_of(trial, batch.x, batch.y, keywords)
    together = loss_of(trial, mixed, batch.y, keywords)
    keep = kept.value.to(alone.device)
    # Both are within the row's bound of its one exact loss, so within twice it of each other.
    bound = 2 * loss_bound_for(trial, problem_of(batch))[kept.value]
    check_close(
        trial,
        quantity="loss of a shared row, among other rows",
        actual=together[keep],
        expected=alone[keep].double(),
        bound=bound,
        context=f"{context(batch, trial)}; rows kept: {int(kept.value.sum())}",
        expected_by="the kernel among the original rows",
        reproducer=reproducer(
            trial,
            "\n".join([batch.source(), others.source(), kept.source()]),
            call_source(trial.kernel, keywords, result="alone"),
            "mixed = torch.where(kept[:, None], logits, others)",
            call_source(trial.kernel, keywords, logits="mixed", result="together"),
            "print(alone[kept], together[kept])",
        ),
    )


CLAUSES = (a_rows_loss_does_not_depend_on_other_rows,)
