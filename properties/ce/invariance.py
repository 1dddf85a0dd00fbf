"""Shift invariance: adding the same constant to every logit of a row changes nothing.

softmax(x + c·1) = softmax(x), so the loss is unchanged; a kernel that exponentiates without
subtracting the row's maximum overflows once the shift is large enough.
"""

from __future__ import annotations

from properties.ce.calls import call_source, context, draw_batch, expected_loss, loss_of, reproducer
from properties.ce.problem import Problem
from properties.engine.checks import check_close
from properties.engine.clause import Trial, clause
from properties.strategies import LARGEST_CLASS_WEIGHT, Batch, batch_shapes, shifted_logits
from properties.tolerances import loss_bound


@clause()
def loss_is_invariant_under_a_shift(trial: Trial) -> None:
    """L(x + c·1, y) = L(x, y) for every scalar c.  [CE-SHIFT] tol: loss"""
    batch = draw_batch(
        trial, options=("ignore_index", "label_smoothing", "weight"), shapes=batch_shapes()
    )
    rows, vocab = batch.x.shape
    smoothing = batch.options.get("label_smoothing", 0.0) > 0.0
    original, shifted, shift = trial.data.draw(
        shifted_logits(
            rows=rows,
            vocab_size=vocab,
            dtype=trial.dtype,
            target=batch.target,
            # Label smoothing over a masked class is infinite: no masking with it; and its sum
            # over the C classes needs C times the headroom, class weights up to 16 times.
            masked=not smoothing,
            headroom=64
            * rows
            * (vocab if smoothing else 1)
            * (LARGEST_CLASS_WEIGHT if batch.weight is not None else 1),
        ),
        label="shifted logits",
    )
    moved = Batch(shifted, batch.target, batch.weight, batch.options)
    keywords = batch.keywords()
    exact = Problem.of(original.value, batch.y, **keywords)
    check_close(
        trial,
        quantity=f"loss after a shift by c = {shift!r}",
        actual=loss_of(trial, shifted.value, batch.y, keywords),
        expected=expected_loss(trial, exact),
        bound=loss_bound(Problem.of(shifted.value, batch.y, **keywords)),
        context=context(moved, trial),
        expected_by="the oracle, unshifted,",
        reproducer=reproducer(
            trial, moved.source(), call_source(trial.kernel, keywords), "print(loss)"
        ),
    )


CLAUSES = (loss_is_invariant_under_a_shift,)
