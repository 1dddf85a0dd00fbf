"""Drawing a distributed example: one whole batch, drawn once, and how it is split over P ranks.

The batch is contract 2's (properties.strategies.batches: options, targets, logits, weights);
the split is drawn after it, so a failure shrinks the batch and the split separately:

- vocab-parallel: P contiguous column slices in rank order, each at least one column wide, of
  any widths (C not divisible by P, a rank with one column, the target on another rank), or
  equal widths when the kernel declares ``shards="even"`` (C then a multiple of P);
- data-parallel: P contiguous row ranges in rank order, any of them empty (N_r = 0), with many
  ignored targets often, so that a rank holds no counted token.

Examples are smaller than contract 2's (at most :data:`DISTRIBUTED_LOGITS` logits): the bugs of
a split loss are in how partial results are combined, which a few rows and columns show, and
each example costs a round trip through P processes besides the oracle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from hypothesis import strategies as st

from properties.engine.kernel import KernelUnderTest
from properties.strategies import Batch, batch_shapes, batches

#: The oracle's budget for one distributed example (N·(C + ROW_COST) logits).
DISTRIBUTED_LOGITS = 2048
#: Keywords and options a vocab-parallel example may draw (class weights are not in contract 4).
VOCAB_PARALLEL_OPTIONS = ("ignore_index", "label_smoothing", "z_loss", "softcap")
DATA_PARALLEL_OPTIONS = ("ignore_index", "label_smoothing", "weight", "z_loss", "softcap")


@dataclass(frozen=True)
class Split:
    """A batch and its shards: (start, stop) per rank, of columns (vocab-parallel) or rows."""

    batch: Batch
    shards: tuple[tuple[int, int], ...]
    #: "columns" or "rows".
    axis: str

    @property
    def world_size(self) -> int:
        return len(self.shards)

    def describe(self) -> str:
        what = "vocabulary columns" if self.axis == "columns" else "rows"
        ranges = ", ".join(
            f"rank {rank}: [{start}, {stop})" for rank, (start, stop) in enumerate(self.shards)
        )
        return f"{self.batch.describe()}; {what} {ranges}"


@st.composite
def vocab_parallel_examples(
    draw: st.DrawFn,
    *,
    dtype: str,
    kernel: KernelUnderTest,
    world_size: int,
    reductions: Sequence[str] = ("mean", "sum", "none"),
    options: Sequence[str] = VOCAB_PARALLEL_OPTIONS,
    require: Sequence[str] = (),
    **batch_options: Any,
) -> Split:
    """A whole batch with C ≥ P columns and its vocabulary cut into P slices."""
    even = kernel.spec.shards == "even"
    shapes = batch_shapes(min_vocab=world_size, max_logits=DISTRIBUTED_LOGITS)
    if even:  # C a multiple of P: round the drawn C down (it is at least P)
        shapes = shapes.map(lambda shape: (shape[0], shape[1] - shape[1] % world_size))
    batch = draw(
        batches(
            dtype=dtype,
            kernel=kernel,
            reductions=reductions,
            options=tuple(o for o in options if o in VOCAB_PARALLEL_OPTIONS),
            require=require,
            shapes=shapes,
            **batch_options,
        )
    )
    classes = batch.vocab_size
    if even:
        width = classes // world_size
        shards = tuple((r * width, (r + 1) * width) for r in range(world_size))
    else:
        shards = tuple(draw(_cuts(classes, world_size, empty=False)))
    return Split(batch, shards, "columns")


@st.composite
def data_parallel_examples(
    draw: st.DrawFn,
    *,
    dtype: str,
    kernel: KernelUnderTest,
    world_size: int,
    reductions: Sequence[str] = ("mean", "sum"),
    options: Sequence[str] = DATA_PARALLEL_OPTIONS,
    require: Sequence[str] = (),
    **batch_options: Any,
) -> Split:
    """A whole batch and its rows cut into P ranges (some possibly empty)."""
    batch = draw(
        batches(
            dtype=dtype,
            kernel=kernel,
            reductions=tuple(r for r in reductions if r != "none"),
            options=options,
            require=require,
            shapes=batch_shapes(max_logits=DISTRIBUTED_LOGITS),
            **batch_options,
        )
    )
    rows = batch.x.shape[0]
    shards = tuple(draw(_cuts(rows, world_size, empty=True)))
    return Split(batch, shards, "rows")


def _cuts(length: int, parts: int, *, empty: bool) -> st.SearchStrategy[list[tuple[int, int]]]:
    """``parts`` contiguous (start, stop) ranges covering [0, length) in order: non-empty
    ranges (``empty=False``, which needs length ≥ parts) or any, empty ones included. The cut
    points are drawn as integers, so a failure shrinks them toward 0: toward the first ranks
    holding one column each (or none of the rows)."""
    if parts == 1:
        return st.just([(0, length)])
    if empty:
        points = st.lists(st.integers(0, length), min_size=parts - 1, max_size=parts - 1)
        return points.map(lambda chosen: list(pairwise([0, *sorted(chosen), length])))
    if length < parts:
        raise ValueError(f"cannot cut {length} columns into {parts} non-empty slices")
    # Non-empty ranges: distinct cut points in [1, length − 1].
    points = st.lists(
        st.integers(1, length - 1), min_size=parts - 1, max_size=parts - 1, unique=True
    )
    return points.map(lambda chosen: list(pairwise([0, *sorted(chosen), length])))
