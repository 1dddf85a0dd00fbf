"""Layout: the loss and its gradient do not depend on how the inputs sit in memory.

A kernel handed a transposed, sliced, offset or expanded (stride-0) view must read it through
its strides. The entries a view skips hold NaN (logits) or a class that does not exist
(targets), so a kernel that assumes contiguous rows reads them and fails loudly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import strategies as st

from properties.ce.calls import (
    call_source,
    context,
    expected_loss,
    loss_and_gradient,
    loss_of,
    reproducer,
)
from properties.ce.oracle import oracle_gradient
from properties.ce.problem import Problem
from properties.engine.checks import check_close
from properties.engine.clause import Trial, clause, differentiable
from properties.strategies import Batch, batch_shapes, batches, upstream_gradients
from properties.tolerances import gradient_bound, loss_bound


@dataclass(frozen=True)
class Layout:
    """How a tensor sits in memory, as Python: ``store_source`` makes ``{var}_storage`` from
    the values in ``{var}``, ``view_source`` makes ``{var}`` a view of it. The same statements
    build the test's tensors and the reproducer's."""

    name: str
    store_source: str
    view_source: str
    #: True when every row reads the same stored row (stride 0).
    shared_rows: bool = False

    def store(self, values: torch.Tensor) -> torch.Tensor:
        return _run(self.store_source, {"x": values})["x_storage"]

    def view(self, storage: torch.Tensor) -> torch.Tensor:
        return _run(self.view_source, {"x_storage": storage})["x"]


def _run(source: str, names: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    namespace: dict[str, Any] = {"torch": torch, **names}
    exec(source.format(var="x"), namespace)
    return namespace


NAN = "float('nan')"
CONTIGUOUS = Layout("contiguous", "{var}_storage = {var}", "{var} = {var}_storage")


def logit_layouts(rows: int) -> dict[str, Layout]:
    """Every way the suite lays out logits (rows, C); skipped entries hold NaN."""
    return {
        "transposed": Layout(
            "transposed", "{var}_storage = {var}.t().contiguous()", "{var} = {var}_storage.t()"
        ),
        "sliced": Layout(
            "sliced (every other column)",
            f"{{var}}_storage = torch.full(({{var}}.shape[0], 2 * {{var}}.shape[1]), {NAN}, "
            "dtype={var}.dtype)\n{var}_storage[:, ::2] = {var}",
            "{var} = {var}_storage[:, ::2]",
        ),
        "offset": Layout(
            "offset (a window of a larger tensor)",
            f"{{var}}_storage = torch.full(({{var}}.shape[0] + 1, {{var}}.shape[1] + 3), {NAN}, "
            "dtype={var}.dtype)\n{var}_storage[1:, 2:-1] = {var}",
            "{var} = {var}_storage[1:, 2:-1]",
        ),
        "strided rows": Layout(
            "strided rows (every other row)",
            f"{{var}}_storage = torch.full((2 * {{var}}.shape[0], {{var}}.shape[1]), {NAN}, "
            "dtype={var}.dtype)\n{var}_storage[::2] = {var}",
            "{var} = {var}_storage[::2]",
        ),
        "expanded": _expanded(rows),
    }


def target_layouts(rows: int, vocab: int) -> dict[str, Layout]:
    """Every way the suite lays out targets (rows,); skipped entries hold a class that does not
    exist, so reading one is an error, not a quiet mistake."""
    missing_class = vocab + 7
    return {
        "sliced": Layout(
            "sliced (every other entry)",
            f"{{var}}_storage = torch.full((2 * {{var}}.shape[0],), {missing_class})\n"
            "{var}_storage[::2] = {var}",
            "{var} = {var}_storage[::2]",
        ),
        "expanded": _expanded(rows),
    }


def _expanded(rows: int) -> Layout:
    """One stored row (or target) read by every row: stride 0."""
    return Layout(
        "expanded (stride 0)",
        "{var}_storage = {var}[:1].clone()",
        f"{{var}} = {{var}}_storage.expand({rows}, *{{var}}_storage.shape[1:])",
        shared_rows=True,
    )


@st.composite
def layouts(draw: st.DrawFn, *, rows: int, vocab: int) -> tuple[Layout, Layout]:
    """A layout for the logits and one for the targets, at least one not contiguous."""
    for_logits = logit_layouts(rows)
    for_targets = target_layouts(rows, vocab)
    logits_name = draw(st.sampled_from(["contiguous", *for_logits]))
    target_choices = (
        ["contiguous", *for_targets] if logits_name != "contiguous" else list(for_targets)
    )
    target_name = draw(st.sampled_from(target_choices))
    return for_logits.get(logits_name, CONTIGUOUS), for_targets.get(target_name, CONTIGUOUS)


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
    batch = trial.data.draw(
        batches(
            dtype=trial.dtype,
            kernel=trial.kernel,
            options=("ignore_index", "label_smoothing", "weight"),
            shapes=batch_shapes(max_logits=4096),
        ),
        label="batch",
    )
    rows, vocab = batch.x.shape
    for_logits, for_target = trial.data.draw(layouts(rows=rows, vocab=vocab), label="layouts")
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
    rows = problem.logits.shape[0] if batch.reduction == "none" else None
    upstream = trial.data.draw(
        upstream_gradients(rows=rows, dtype=trial.dtype), label="grad_output"
    )
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
