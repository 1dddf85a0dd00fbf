"""TRAIN-DDP: the data-parallel training step (``lmloss train --nproc P``) gives the one-process
step's gradients on the same global batch.

Two gloo processes run ``lmloss.data_parallel_forward_backward`` with DistributedDataParallel on
their shares of each batch; this process runs ``lmloss.forward_backward`` on the whole batch.
The ranks are started once (one spawn for every case): each builds the case's model and step
and sends back its loss and its gradients after DDP's all-reduce.

Cases are fixed, not drawn: a Hypothesis example here would cost a round trip through two
processes and a DDP construction, and the cases below already hold what matters: ragged shares
(unequal rows, unequal counts of counted targets), a rank with no row, a rank whose targets are
all ignored, and a rank's share split into micro-batches (DDP's no_sync accumulation).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from lmloss import GPT, GPTConfig, cross_entropy, data_parallel_forward_backward, forward_backward
from properties.engine.checks import assert_within
from properties.tolerances import reordered_float64_bound, reordered_float64_loss_bound
from reference import DEFAULT_IGNORE_INDEX

WORLD_SIZE = 2
MODEL = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16)


@dataclass(frozen=True)
class Case:
    """A global batch of ``rows`` sequences, rows[r] of them for rank r, each rank's rows cut
    into micro-batches of the given sizes; ``ignored`` of the targets (a seeded draw) ignored,
    and the rows in ``all_ignored`` ignored entirely."""

    name: str
    shares: tuple[tuple[int, ...], ...]  # per rank: its micro-batches' row counts
    ignored: float
    seed: int
    all_ignored: tuple[int, ...] = ()

    @property
    def rows(self) -> int:
        return sum(sum(share) for share in self.shares)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y (B, T) over MODEL's vocabulary."""
        generator = torch.Generator().manual_seed(self.seed)
        T = MODEL.block_size
        tokens = torch.randint(MODEL.vocab_size, (self.rows, T + 1), generator=generator)
        x, y = tokens[:, :-1], tokens[:, 1:].clone()
        y[torch.rand(self.rows, T, generator=generator) < self.ignored] = DEFAULT_IGNORE_INDEX
        y[list(self.all_ignored)] = DEFAULT_IGNORE_INDEX
        return x, y

    def micro_batches(self, rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.batch()
        start = sum(sum(share) for share in self.shares[:rank])
        parts = []
        for size in self.shares[rank]:
            parts.append((x[start : start + size], y[start : start + size]))
            start += size
        return parts


CASES = [
    Case("ragged rows 2 + 5", shares=((2,), (5,)), ignored=0.25, seed=0),
    Case("ragged padding 3 + 3", shares=((3,), (3,)), ignored=0.6, seed=1),
    Case("rank 0 counts no target", shares=((2,), (3,)), ignored=0.2, seed=2, all_ignored=(0, 1)),
    Case("rank 1 holds no row", shares=((4,), (0,)), ignored=0.3, seed=3),
    Case("micro-batches 1 + 3 and 2", shares=((1, 3), (2,)), ignored=0.4, seed=4),
]


def model_for(case: Case) -> GPT:
    torch.manual_seed(case.seed)
    return GPT(MODEL).to(torch.float64)


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _rank(rank: int, directory: str, cases: Sequence[Case]) -> None:
    """One rank: every case's DDP step on its share; {case name: (loss, ∂L/∂θ)} saved to a file
    of ``directory`` (a pipe would fill and block the rank while the parent waits to join it)."""
    torch.set_num_threads(1)
    store = dist.FileStore(os.path.join(directory, "store"), WORLD_SIZE)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD_SIZE)
    try:
        steps = {}
        for case in cases:
            model = model_for(case)
            loss = data_parallel_forward_backward(
                DistributedDataParallel(model), cross_entropy, case.micro_batches(rank)
            )
            steps[case.name] = (loss, gradients(model))
        torch.save(steps, os.path.join(directory, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


Steps = dict[tuple[int, str], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@pytest.fixture(scope="module")
def ddp_steps() -> Steps:
    """Each rank's (loss, ∂L/∂θ) for each case, by (rank, case name)."""
    with tempfile.TemporaryDirectory() as directory:
        mp.spawn(_rank, args=(directory, CASES), nprocs=WORLD_SIZE)
        saved = [
            torch.load(os.path.join(directory, f"rank{rank}.pt"), weights_only=True)
            for rank in range(WORLD_SIZE)
        ]
    return {(rank, name): step for rank, steps in enumerate(saved) for name, step in steps.items()}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_ddp_step_gives_the_one_process_step_gradients(case: Case, ddp_steps: Steps) -> None:
    """∂L/∂θ on every rank after DDP's all-reduce = ∂L/∂θ of the one-process step on the whole batch, and L too, float64, P = 2.  [TRAIN-DDP] tol: reordered_float64

    The same exact sum Σ_i ∇ℓ_i / N, rounded in another order: each rank sums its own tokens'
    contributions, DDP adds the two ranks' sums (one more addition per entry) after scaling each
    by P = 2 and before dividing by P (both exact, powers of two), so reordered_float64_bound's
    analysis (any order of the batch's 2^8 token contributions) covers it unchanged.
    """
    x, y = case.batch()
    single = model_for(case)
    loss = forward_backward(single, cross_entropy, [(x, y)])
    expected = gradients(single)
    bound = reordered_float64_bound(expected.values())
    for rank in range(WORLD_SIZE):
        rank_loss, rank_gradients = ddp_steps[rank, case.name]
        context = f"{case.name}: rank {rank} of {WORLD_SIZE}, rows per rank {case.shares}, float64"
        assert_within(
            "the DDP step's loss",
            rank_loss,
            loss,
            reordered_float64_loss_bound(loss),
            context,
            expected_by="the one-process step",
        )
        assert rank_gradients.keys() == expected.keys()
        for name, gradient in expected.items():
            assert_within(
                f"∂L/∂{name}",
                rank_gradients[name],
                gradient,
                bound,
                context,
                expected_by="the one-process step",
            )


def test_ddp_step_without_the_world_size_factor_is_caught(
    ddp_steps: Steps,
) -> None:
    """The bug the factor P undoes: DDP averages the ranks' gradients, so a step that divides by
    the global count alone gets ∂L/∂θ / P, which the bound of TRAIN-DDP rejects.  [TRAIN-DDP] meta"""
    case = CASES[0]
    x, y = case.batch()
    single = model_for(case)
    forward_backward(single, cross_entropy, [(x, y)])
    expected = gradients(single)
    _, rank_gradients = ddp_steps[0, case.name]
    halved = {name: gradient / WORLD_SIZE for name, gradient in rank_gradients.items()}
    with pytest.raises(AssertionError, match=r"× bound"):
        for name, gradient in expected.items():
            assert_within(
                f"∂L/∂{name}",
                halved[name],
                gradient,
                reordered_float64_bound(expected.values()),
                "without the factor P",
                expected_by="the one-process step",
            )
