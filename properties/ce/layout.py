"""Layout: the loss and its gradient do not depend on how the inputs sit in memory.

A kernel handed a transposed, sliced, offset or expanded (stride-0) view must read it through
its strides. The entries a view skips hold NaN (logits) or a class that does not exist
(targets), so a kernel that assumes contiguous rows reads them and fails loudly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from properties.ce.calls import (
    call_source,
    context,
    draw_batch,
    draw_upstream,
    expected_loss,
    loss_and_gradient,
    loss_of,
    reproducer,
)
from properties.ce.oracle import oracle_gradient
from properties.ce.problem import Problem
from properties.engine.checks import check_close
from properties.engine.clause import Trial, clause, differentiable
from properties.strategies import CONTIGUOUS, Batch, Layout, batch_shapes, layouts
from properties.tolerances import gradient_bound, loss_bound


@dataclass(frozen=True)
class _LaidOut:
    batch: Batch
    logits: Layout
    target: Layout

    def setup(self, *, requires_grad: bool = False) -> list[str]:
        """Reproducer lines: the values, then the storages and views (a gradient is taken on
        the logits' storage, so it requires grad before the view is taken)."""
        lines = [self.batch.source()]
        if self.logits is not CONTIGUOUS:
            lines.append(self.logits.store_source.format(var="logits"))
        if requires_grad:
            lines.append(f"{self.stored_logits}.requires_grad_(True)")
        if self.logits is not CONTIGUOUS:
            lines.append(self.logits.view_source.format(var="logits"))
        if self.target is not CONTIGUOUS:
            lines += [self.target.store_source.format(var="target")]
            lines += [self.target.view_source.format(var="target")]
        return lines

    @property
    def stored_logits(self) -> str:
        return "logits" if self.logits is CONTIGUOUS else "logits_storage"

    def problem(self) -> Problem:
        """What the kernel is asked: the values the views show."""
        shown_logits = self.logits.view(self.logits.store(self.batch.x))
        shown_target = self.target.view(self.target.store(self.batch.y))
        return Problem.of(shown_logits, shown_target, **self.batch.keywords())

    def where(self, trial: Trial) -> str:
        return f"{context(self.batch, trial)}; logits {self.logits.name}, target {self.target.name}"


def _laid_out(trial: Trial) -> _LaidOut:
    batch = draw_batch(
        trial,
        options=("ignore_index", "label_smoothing", "weight"),
        shapes=batch_shapes(max_logits=4096),
    )
    rows, vocab = batch.x.shape
    for_logits, for_target = trial.data.draw(layouts(rows=rows, vocab_size=vocab), label="layouts")
    return _LaidOut(batch, for_logits, for_target)


@clause()
def loss_does_not_depend_on_memory_layout(trial: Trial) -> None:
    """L(view(x), view(y)) = L(x', y') for the values x', y' the views show: transposed, sliced, offset and expanded views.  [CE-LAYOUT] tol: loss"""
    laid_out = _laid_out(trial)
    batch, problem = laid_out.batch, laid_out.problem()
    loss = loss_of(
        trial,
        laid_out.logits.store(batch.x),
        laid_out.target.store(batch.y),
        batch.keywords(),
        logits_view=laid_out.logits.view,
        target_view=laid_out.target.view,
    )
    check_close(
        trial,
        quantity="loss",
        actual=loss,
        expected=expected_loss(trial, problem),
        bound=loss_bound(problem),
        context=laid_out.where(trial),
        reproducer=reproducer(
            trial,
            "\n".join(laid_out.setup()),
            call_source(trial.kernel, batch.keywords()),
            "print(loss)",
        ),
    )


@clause(applies=differentiable)
def gradient_does_not_depend_on_memory_layout(trial: Trial) -> None:
    """∂L/∂storage = viewᵀ(∂L/∂x'): the gradient flows back through the view, and the entries it skips get 0.  [CE-LAYOUT-GRAD] tol: gradient"""
    laid_out = _laid_out(trial)
    batch, problem = laid_out.batch, laid_out.problem()
    upstream = draw_upstream(trial, batch)
    storage = laid_out.logits.store(batch.x)
    _, gradient = loss_and_gradient(
        trial,
        storage,
        laid_out.target.store(batch.y),
        batch.keywords(),
        upstream.value,
        logits_view=laid_out.logits.view,
        target_view=laid_out.target.view,
    )
    exact = oracle_gradient(problem, upstream.value)
    exact_bound = gradient_bound(problem, upstream.value)
    expected = torch.zeros(storage.shape, dtype=torch.float64)
    bound = torch.zeros(storage.shape, dtype=torch.float64)
    if laid_out.logits.shared_rows:  # every row reads the one stored row: the sum of theirs
        expected += exact.sum(0, keepdim=True)
        bound += exact_bound.sum(0, keepdim=True)
    else:
        laid_out.logits.view(expected).copy_(exact)
        laid_out.logits.view(bound).copy_(exact_bound)
    stored = laid_out.stored_logits
    check_close(
        trial,
        quantity=f"∂L/∂{stored}",
        actual=gradient,
        expected=expected,
        bound=bound,
        context=laid_out.where(trial),
        reproducer=reproducer(
            trial,
            "\n".join([*laid_out.setup(requires_grad=True), upstream.source()]),
            call_source(trial.kernel, batch.keywords()),
            "loss.backward(grad_output)",
            f"print({stored}.grad)",
        ),
    )


CLAUSES = (loss_does_not_depend_on_memory_layout, gradient_does_not_depend_on_memory_layout)
