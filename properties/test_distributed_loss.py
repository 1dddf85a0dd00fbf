"""lmloss's losses split across processes (contract 4) against the oracle on the whole example.

``lmloss.vocab_parallel_cross_entropy`` and ``lmloss.data_parallel_cross_entropy`` run in groups
of 2 and 3 gloo processes on the CPU: three processes started once for the module
(:class:`RankGroup`), the first two of them also a subgroup, which run every example sent to
them. Each example is drawn here, in this process, cut into shards
(uneven on purpose: columns of any width of at least one, rows of any count including none),
computed by every rank, and the gathered results are compared with ``reference`` on the whole
example, under contract 2's bounds: splitting a row's sum of exponentials or the batch's sum of
losses across ranks only reorders float32 additions that those bounds already allow in any order.
"""

from __future__ import annotations

import os
import tempfile
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

import lmloss
from properties.ce.oracle import oracle_gradient, oracle_loss
from properties.ce.problem import Problem
from properties.engine.checks import assert_within
from properties.strategies import batch_shapes, batches, upstream_gradients
from properties.tolerances import TOLERANCES

WORLD_SIZES = (2, 3)
#: Seconds a rank may take to answer one example before the test calls the group hung.
ANSWER_TIMEOUT = 120.0
EXAMPLES = min(settings().max_examples, 25)
#: Small examples: the oracle's gradient costs about 100 µs per logit.
SHAPES = {
    world_size: batch_shapes(max_rows=12, min_vocab=world_size, max_vocab=48, max_logits=480)
    for world_size in WORLD_SIZES
}
distributed_settings = settings(max_examples=EXAMPLES, deadline=None)


# --- The rank processes -----------------------------------------------------------------------


def _serve(world_size: int, rank: int, store_path: str, connection: Connection) -> None:
    """One rank: join the gloo group and its subgroups of the first P ranks, then run each task
    sent until told to stop (None)."""
    torch.set_num_threads(1)
    store = dist.FileStore(store_path, world_size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    # Every rank takes part in creating each subgroup, members or not.
    subgroups = {size: dist.new_group(list(range(size))) for size in WORLD_SIZES}
    try:
        while (task := connection.recv()) is not None:
            name, size, arguments = task
            try:
                connection.send(("ok", TASKS[name](group=subgroups[size], **arguments)))
            except Exception as error:
                connection.send(("raised", (type(error).__name__, str(error))))
    finally:
        dist.destroy_process_group()


def _vocab_parallel(
    local_logits: torch.Tensor,
    target: torch.Tensor,
    vocab_start: int,
    keywords: dict[str, Any],
    grad_output: torch.Tensor,
    group: dist.ProcessGroup,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    local_logits = local_logits.clone().requires_grad_()
    loss = lmloss.vocab_parallel_cross_entropy(
        local_logits, target, vocab_start=vocab_start, group=group, **keywords
    )
    loss.backward(grad_output)
    return loss.detach(), local_logits.grad


def _data_parallel(
    local_logits: torch.Tensor,
    local_target: torch.Tensor,
    keywords: dict[str, Any],
    grad_output: torch.Tensor,
    group: dist.ProcessGroup,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    local_logits = local_logits.clone().requires_grad_()
    loss = lmloss.data_parallel_cross_entropy(local_logits, local_target, group=group, **keywords)
    loss.backward(grad_output)
    return loss.detach(), local_logits.grad


TASKS = {"vocab_parallel": _vocab_parallel, "data_parallel": _data_parallel}


class RankGroup:
    """max(WORLD_SIZES) spawned processes in one gloo group (a FileStore in a temporary
    directory), each running the tasks sent to it over its own pipe; a task for P ranks runs on
    the first P in their own subgroup. One group for every world size: each process costs a few
    seconds of imports."""

    def __init__(self, directory: str) -> None:
        context = mp.get_context("spawn")
        world_size = max(WORLD_SIZES)
        self.connections: list[Connection] = []
        self.processes = []
        store = os.path.join(directory, "store")
        for rank in range(world_size):
            here, there = context.Pipe()
            process = context.Process(
                target=_serve, args=(world_size, rank, store, there), daemon=True
            )
            process.start()
            self.connections.append(here)
            self.processes.append(process)

    def run(self, name: str, per_rank: list[dict[str, Any]]) -> list[tuple[str, Any]]:
        """Each of the first len(per_rank) ranks' answer to task ``name`` with its own
        arguments: ("ok", result) or ("raised", (exception type, message))."""
        size = len(per_rank)
        for connection, arguments in zip(self.connections, per_rank, strict=False):
            connection.send((name, size, arguments))
        answers = []
        for rank, connection in enumerate(self.connections[:size]):
            if not connection.poll(ANSWER_TIMEOUT):
                raise AssertionError(f"rank {rank} gave no answer in {ANSWER_TIMEOUT} s")
            answers.append(connection.recv())
        return answers

    def close(self) -> None:
        for connection in self.connections:
            try:
                connection.send(None)
            except (BrokenPipeError, OSError):
                traceback.print_exc()
        for process in self.processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()


@pytest.fixture(scope="module")
def ranks() -> Iterator[RankGroup]:
    with tempfile.TemporaryDirectory() as directory:
        group = RankGroup(directory)
        try:
            yield group
        finally:
            group.close()


def results(answers: list[tuple[str, Any]]) -> list[Any]:
    raised = [(rank, detail) for rank, (status, detail) in enumerate(answers) if status != "ok"]
    assert not raised, f"ranks raised: {raised}"
    return [detail for _, detail in answers]


def assert_identical_on_every_rank(clause: str, losses: list[torch.Tensor], context: str) -> None:
    """The same loss, bit for bit (a NaN equal to a NaN), on every rank."""
    for rank, loss in enumerate(losses[1:], start=1):
        same = loss.dtype == losses[0].dtype and bool(
            torch.equal(loss, losses[0]) or (loss.isnan() & losses[0].isnan()).all()
        )
        assert same, f"[{clause}] rank {rank} returned {loss}, rank 0 {losses[0]}  [{context}]"


# --- Shards -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shards:
    """Where each rank's part starts and stops, in rank order."""

    bounds: tuple[tuple[int, int], ...]

    def describe(self, what: str) -> str:
        return f"{what} per rank {[stop - start for start, stop in self.bounds]}"


@st.composite
def column_shards(draw: st.DrawFn, *, classes: int, world_size: int) -> Shards:
    """Contiguous slices of the C columns, one per rank, each at least one column wide."""
    cuts = draw(
        st.lists(
            st.integers(1, classes - 1),
            min_size=world_size - 1,
            max_size=world_size - 1,
            unique=True,
        ).map(sorted),
        label="column cuts",
    )
    edges = [0, *cuts, classes]
    return Shards(tuple(zip(edges, edges[1:], strict=False)))


@st.composite
def row_shards(draw: st.DrawFn, *, rows: int, world_size: int) -> Shards:
    """Contiguous runs of the N rows, one per rank; a rank may get none."""
    cuts = draw(
        st.lists(st.integers(0, rows), min_size=world_size - 1, max_size=world_size - 1).map(
            sorted
        ),
        label="row cuts",
    )
    edges = [0, *cuts, rows]
    return Shards(tuple(zip(edges, edges[1:], strict=False)))


# --- Vocab-parallel ---------------------------------------------------------------------------


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("logits_dtype", ["float32", "bfloat16"])
@distributed_settings
@given(data=st.data())
def test_vocab_parallel_loss_and_slice_gradients_match_the_oracle(
    ranks: RankGroup, world_size: int, logits_dtype: str, data: st.DataObject
) -> None:
    """L(concat_r x_r, y) on every rank = the oracle's L(x, y); ∂L/∂x_r = columns r of the oracle's ∂L/∂x.  [DIST-VALUE, DIST-GRAD] tol: loss, gradient

    Every option the kernel takes (ignore_index of any value, reductions, label smoothing over
    all C classes, z-loss, softcap) as drawn; the loss is the same tensor, bit for bit, on every
    rank.
    """
    batch = data.draw(
        batches(
            dtype=logits_dtype,
            shapes=SHAPES[world_size],
            options=("ignore_index", "label_smoothing", "z_loss", "softcap"),
        ),
        label="batch",
    )
    shards = data.draw(column_shards(classes=batch.vocab_size, world_size=world_size))
    rows = batch.x.shape[0] if batch.reduction == "none" else None
    grad_output = data.draw(
        upstream_gradients(rows=rows, dtype=logits_dtype), label="grad_output"
    ).value
    keywords = batch.keywords()
    per_rank = [
        {
            "local_logits": batch.x[:, start:stop],
            "target": batch.y,
            "vocab_start": start,
            "keywords": keywords,
            "grad_output": grad_output,
        }
        for start, stop in shards.bounds
    ]

    answers = results(ranks.run("vocab_parallel", per_rank))

    context = (
        f"{batch.describe()}, {shards.describe('columns')}, lmloss.vocab_parallel_cross_entropy"
    )
    losses = [loss for loss, _ in answers]
    assert_identical_on_every_rank("DIST-SAME-LOSS", losses, context)
    problem = Problem.of(batch.x, batch.y, **keywords)
    assert_within(
        "[DIST-VALUE] loss", losses[0], oracle_loss(problem), TOLERANCES["loss"](problem), context
    )
    gradient = torch.cat([grad for _, grad in answers], dim=1)
    assert_within(
        "[DIST-GRAD] ∂L/∂x",
        gradient,
        oracle_gradient(problem, grad_output),
        TOLERANCES["gradient"](problem, grad_output),
        context,
    )


def test_vocab_parallel_refuses_slices_that_do_not_tile_the_vocabulary(
    ranks: RankGroup,
) -> None:
    """Every rank raises the same ValueError (none waits in a collective) for overlapping
    slices, a gap, rows that differ between ranks, and a target beyond the gathered C."""
    x = torch.randn(3, 4)
    cases = [
        ([(x, 0), (x, 3)], torch.tensor([0, 1, 2]), "vocab_start of rank 1 is 3"),
        ([(x, 0), (x, 5)], torch.tensor([0, 1, 2]), "vocab_start of rank 1 is 5"),
        ([(x, 0), (x[:2], 4)], torch.tensor([0, 1, 2]), "N = 3 rows here and 2 on rank 1"),
        ([(x, 0), (x, 4)], torch.tensor([0, 8, 2]), "target holds 8, outside the vocabulary"),
    ]
    for slices, target, message in cases:
        per_rank = [
            {
                "local_logits": local,
                "target": target[: local.shape[0]],
                "vocab_start": start,
                "keywords": {},
                "grad_output": torch.tensor(1.0),
            }
            for local, start in slices
        ]
        for rank, (status, detail) in enumerate(ranks.run("vocab_parallel", per_rank)):
            assert status == "raised" and detail[0] == "ValueError", (rank, status, detail)
            if rank == 0:
                assert message in detail[1], detail


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"vocab_start": -1}, ValueError, "vocab_start must be at least 0"),
        ({"vocab_start": 1.0}, TypeError, "vocab_start must be an int"),
        ({"vocab_start": 0, "local_logits": torch.randn(3)}, ValueError, "logits must have shape"),
        ({"vocab_start": 0, "target": torch.zeros(2, dtype=torch.long)}, ValueError, "target"),
        ({"vocab_start": 0, "reduction": "avg"}, ValueError, "reduction must be one of"),
        ({"vocab_start": 0, "softcap": 0.0}, ValueError, "softcap must be a positive"),
    ],
)
def test_vocab_parallel_names_a_bad_argument_before_any_collective(
    arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    """No process group exists in this process: each error is raised before any communication."""
    call = {"local_logits": torch.randn(3, 4), "target": torch.zeros(3, dtype=torch.long)}
    call.update(arguments)
    with pytest.raises(error, match=message):
        lmloss.vocab_parallel_cross_entropy(call.pop("local_logits"), call.pop("target"), **call)


# --- Data-parallel ----------------------------------------------------------------------------


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("logits_dtype", ["float32", "bfloat16"])
@distributed_settings
@given(data=st.data())
def test_data_parallel_global_mean_and_row_gradients_match_the_oracle(
    ranks: RankGroup, world_size: int, logits_dtype: str, data: st.DataObject
) -> None:
    """L(rows of every rank) on every rank = the oracle's L over the whole batch (Σ w_y·ℓ / Σ w_y, or Σ ℓ); ∂L/∂x_r = rows r of the oracle's ∂L/∂x.  [DIST-DP-MEAN, DIST-DP-GRAD] tol: loss, gradient

    Ranks get ragged runs of rows, some none, some with no counted token; class weights, label
    smoothing and ignore_index as drawn.
    """
    batch = data.draw(
        batches(
            dtype=logits_dtype,
            shapes=SHAPES[world_size],
            reductions=("mean", "sum"),
            options=("ignore_index", "label_smoothing", "weight"),
        ),
        label="batch",
    )
    shards = data.draw(row_shards(rows=batch.x.shape[0], world_size=world_size))
    grad_output = data.draw(
        upstream_gradients(rows=None, dtype=logits_dtype), label="grad_output"
    ).value
    keywords = batch.keywords()
    per_rank = [
        {
            "local_logits": batch.x[start:stop],
            "local_target": batch.y[start:stop],
            "keywords": keywords,
            "grad_output": grad_output,
        }
        for start, stop in shards.bounds
    ]

    answers = results(ranks.run("data_parallel", per_rank))

    context = f"{batch.describe()}, {shards.describe('rows')}, lmloss.data_parallel_cross_entropy"
    losses = [loss for loss, _ in answers]
    assert_identical_on_every_rank("DIST-DP-SAME-LOSS", losses, context)
    problem = Problem.of(batch.x, batch.y, **keywords)
    assert_within(
        "[DIST-DP-MEAN] loss",
        losses[0],
        oracle_loss(problem),
        TOLERANCES["loss"](problem),
        context,
    )
    gradient = torch.cat([grad for _, grad in answers], dim=0)
    assert_within(
        "[DIST-DP-GRAD] ∂L/∂x",
        gradient,
        oracle_gradient(problem, grad_output),
        TOLERANCES["gradient"](problem, grad_output),
        context,
    )


def test_data_parallel_refuses_reduction_none() -> None:
    """reduction="none" is not part of the data-parallel contract: refused before any collective."""
    with pytest.raises(ValueError, match="reduction='none' is not a data-parallel reduction"):
        lmloss.data_parallel_cross_entropy(
            torch.randn(2, 3), torch.zeros(2, dtype=torch.long), reduction="none"
        )
