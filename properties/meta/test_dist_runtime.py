"""The rank-group runtime of contract 4 (properties/distributed/): a rank that raises or hangs is
reported with its rank, a hung group is killed within its limit and leaves no process behind, the
next call starts a fresh group, and the DIST clauses fail kernels that combine ranks wrongly.

The kernels below are this test's own, loaded by each rank from this module's SPEC: one that
misbehaves on rank 1 when asked (by its reduction), and two classic vocab- and data-parallel
bugs written on purpose. Each group start costs a torch import per rank (seconds on 2 cores), so
the tests start few groups (one group serves every SPEC) and run few examples.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from properties.distributed.group import RankCall, RankFailure, RankGroup, group_for
from properties.engine.check import load_kernel

HERE = "properties.meta.test_dist_runtime"
MISBEHAVES = f"{HERE}:rank_one_misbehaves"
#: The per-call limit of the hang test: short, so the test is quick.
LIMIT = 4.0


def rank_one_misbehaves(
    local_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    vocab_start: int,
    group: dist.ProcessGroup,
    reduction: str = "mean",
) -> torch.Tensor:
    """The sum of each row's local maxima, all-reduced (any answer will do here), except on
    rank 1: reduction="sum" raises there, reduction="none" sleeps there for ten minutes."""
    rank = dist.get_rank(group)
    if rank == 1 and reduction == "sum":
        raise ValueError("rank 1 refuses")
    if rank == 1 and reduction == "none":
        time.sleep(600)
    peak = local_logits.detach().amax(dim=1)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
    return peak.sum()


def rank_one_hangs(
    local_logits: torch.Tensor, target: torch.Tensor, *, vocab_start: int, group: dist.ProcessGroup
) -> torch.Tensor:
    """Rank 1 sleeps for ten minutes on every call; rank 0 waits for it in an all-reduce."""
    if dist.get_rank(group) == 1:
        time.sleep(600)
    total = local_logits.detach().sum()
    dist.all_reduce(total, group=group)
    return total


def vocab_parallel_with_local_max(
    local_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    vocab_start: int,
    group: dist.ProcessGroup,
    reduction: str = "mean",
) -> torch.Tensor:
    """Vocab-parallel loss whose partial sums are taken relative to each rank's own max, then
    added as if relative to one shared max: wrong unless every rank's max is the same."""
    x = local_logits.float()
    local_max = x.amax(dim=1, keepdim=True).detach()
    partial = torch.exp(x - local_max).sum(dim=1)
    dist.all_reduce(partial, group=group)  # the bug: the partial sums have different scales
    lse = torch.log(partial) + local_max[:, 0]
    width = x.shape[1]
    inside = (target >= vocab_start) & (target < vocab_start + width)
    local_target = torch.where(inside, target - vocab_start, 0)
    picked = torch.where(inside, x.gather(1, local_target[:, None])[:, 0], 0.0)
    target_logit = picked.clone()
    dist.all_reduce(target_logit, group=group)
    losses = lse - target_logit
    return _reduce(losses, reduction)


def data_parallel_mean_of_means(
    local_logits: torch.Tensor,
    local_target: torch.Tensor,
    *,
    group: dist.ProcessGroup,
    reduction: str = "mean",
) -> torch.Tensor:
    """Each rank's mean over its own rows, averaged over ranks: the global mean only when every
    rank counts as many tokens."""
    if local_logits.shape[0] == 0:
        local = local_logits.sum() * 0.0
    else:
        local = torch.nn.functional.cross_entropy(
            local_logits.float(), local_target, reduction=reduction
        )
    total = local.detach().clone()
    dist.all_reduce(total, group=group)
    size = dist.get_world_size(group)
    # Autograd sees this rank's own term only, as in a correct data-parallel loss.
    mean_of_means = (local + (total - local.detach())) / size
    return mean_of_means.to(local_logits.dtype)


def _reduce(losses: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()


# --- The runtime -----------------------------------------------------------------------------


def _children() -> set[int]:
    """Process IDs of this process's living children (from /proc: no psutil here)."""
    me = os.getpid()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def _calls(reduction: str) -> list[RankCall]:
    logits = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    target = torch.tensor([0, 2, 3])
    return [
        RankCall((logits[:, :1], target), {"reduction": reduction}, {"vocab_start": 0}),
        RankCall((logits[:, 1:], target), {"reduction": reduction}, {"vocab_start": 1}),
    ]


@pytest.fixture
def group() -> RankGroup:
    """This process's group of two ranks (the one the clauses use: a start saved), with the
    short limit."""
    return group_for(2, "cpu", LIMIT)


def test_a_rank_that_raises_is_named_and_the_group_restarts(group: RankGroup) -> None:
    answers = group.call(MISBEHAVES, _calls("mean"))
    # The row maxima 0..3 ∪ 4..7 ∪ 8..11 → 3 + 7 + 11, on both ranks.
    assert [float(a.result) for a in answers] == [21.0, 21.0]
    ranks = set(group.pids())
    with pytest.raises(RankFailure) as raised:
        group.call(MISBEHAVES, _calls("sum"))
    assert (raised.value.rank, raised.value.kind) == (1, "raised")
    assert "ValueError: rank 1 refuses" in raised.value.message
    assert "rank_one_misbehaves" in raised.value.detail  # the traceback, from the rank
    assert not group.running and not ranks & _children()
    starts = group.starts
    assert [float(a.result) for a in group.call(MISBEHAVES, _calls("mean"))] == [21.0, 21.0]
    assert group.starts == starts + 1


@pytest.mark.parametrize(
    ("kernel_name", "clause_id"),
    [
        ("vocab_parallel_with_local_max", "DIST-VALUE"),
        ("data_parallel_mean_of_means", "DIST-DP-MEAN"),
    ],
)
def test_a_wrong_combination_of_ranks_fails_its_clause(kernel_name: str, clause_id: str) -> None:
    from properties.catalogue import BY_ID
    from properties.engine.runner import run_clause

    result = run_clause(
        BY_ID[clause_id],
        load_kernel(f"{HERE}:{kernel_name}"),
        dtype="float32",
        device="cpu",
        profile="ci",
        world_size=2,
        shrinking_seconds=2,
    )
    assert result.status == "fails", result.detail or result.reason
    assert result.violation is not None
    assert "rank" in result.violation.message and "mp.spawn" in result.violation.reproducer


def test_a_hung_rank_fails_the_clause_unshrunk_and_no_rank_outlives_the_limit() -> None:
    """Rank 1 sleeps; rank 0 waits for it in the all-reduce. The clause fails on that first
    example (another would hang as long again), every rank process is killed, and the next call
    gets a fresh group."""
    from properties.catalogue import BY_ID
    from properties.engine.runner import run_clause

    group = group_for(2, "cpu", LIMIT)
    group.call(MISBEHAVES, _calls("mean"))  # started before the clock starts
    ranks = set(group.pids())
    assert ranks <= _children()
    start = time.monotonic()
    result = run_clause(
        BY_ID["DIST-SAME-LOSS"],
        load_kernel(f"{HERE}:rank_one_hangs"),
        dtype="float32",
        device="cpu",
        profile="ci",
        world_size=2,
        rank_seconds=LIMIT,
    )
    elapsed = time.monotonic() - start
    assert result.status == "fails" and result.violation is not None
    message = result.violation.message
    assert f"did not answer within {LIMIT:g} s" in message and "rank" in message
    assert "time.sleep" in message or "rank_one_hangs" in message  # the ranks' stacks
    # One hang of LIMIT seconds, then the kill; not one hang per shrinking step.
    assert LIMIT <= elapsed < 2 * LIMIT + 5
    assert not ranks & _children(), "a rank process outlived the hung group"
    assert all(not Path(f"/proc/{pid}").exists() for pid in ranks)
    assert [float(a.result) for a in group.call(MISBEHAVES, _calls("mean"))] == [21.0, 21.0]
