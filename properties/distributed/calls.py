"""Calling a distributed kernel on a split example, the standard comparisons with the oracle on
the whole example, and the reproducer of such a call: what properties/distributed/vocab.py and
properties/distributed/data.py share.

Each rank is handed its shard (copied; its device's copy made in the rank), the keywords under
the suite's names, and, for a gradient, the upstream gradient; its answer comes back through the
trial's rank group (properties/distributed/group.py). A rank that raised or died fails the clause with
its rank and traceback; one that hung fails it at once, unshrunk (another example would hang as
long again).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from properties.ce.calls import expected_gradient, expected_loss, loss_bound_for
from properties.ce.problem import Problem
from properties.distributed.batches import Split
from properties.distributed.group import RankAnswer, RankCall, RankFailure, group_for
from properties.engine.checks import check_close, check_equal
from properties.engine.clause import Mismatch, Trial
from properties.engine.snippet import kernel_import, with_math_names
from properties.strategies import Drawn, upstream_gradients
from properties.tolerances import (
    data_parallel_gradient_bound,
    data_parallel_loss_bound,
    loss_bound,
    vocab_parallel_gradient_bound,
    vocab_parallel_loss_bound,
)

# --- Calling the ranks ------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """Every rank's answer to one call on a split example."""

    split: Split
    answers: tuple[RankAnswer, ...]

    def loss(self, rank: int) -> torch.Tensor:
        result: torch.Tensor = self.answers[rank].result
        return result

    def gradient(self, rank: int) -> torch.Tensor:
        gradient: torch.Tensor = self.answers[rank].gradient
        return gradient


def draw_split(trial: Trial, examples: Callable[..., Any], **options: object) -> Split:
    """A whole batch for the trial's kernel, split over the trial's ranks by ``examples``
    (``vocab_parallel_examples`` or ``data_parallel_examples``; ``options`` go to it)."""
    strategy = examples(
        dtype=trial.dtype, kernel=trial.kernel, world_size=trial.world_size or 2, **options
    )
    split: Split = trial.data.draw(strategy, label="split example")
    return split


def draw_upstream(trial: Trial, split: Split) -> Drawn:
    """The gradient flowing into the loss: a scalar for mean and sum, one value per row for
    reduction="none" (non-uniform, of either sign, or 1)."""
    batch = split.batch
    rows = batch.x.shape[0] if batch.reduction == "none" else None
    return trial.data.draw(upstream_gradients(rows=rows, dtype=batch.dtype), label="grad_output")


def run_split(trial: Trial, split: Split, grad_output: Drawn | None = None) -> Outcome:
    """Call the kernel on every rank of the trial's group with its shard of ``split``; with
    ``grad_output``, differentiate each rank's loss by its shard."""
    kernel = trial.kernel
    if kernel.source is None:
        raise Mismatch(
            f"{kernel.name}: each rank process loads the kernel by its SPEC (module:attr); "
            "this kernel has none",
            reproducer="# no SPEC to load in the rank processes",
        )
    world_size = trial.world_size or split.world_size
    if world_size != split.world_size:
        raise ValueError(f"a split for {split.world_size} ranks on a group of {world_size}")
    batch = split.batch
    keywords = batch.keywords()
    upstream = None if grad_output is None else grad_output.value
    calls = [
        RankCall(
            arguments=_shard(split, start, stop),
            keywords=keywords,
            placement={"vocab_start": start} if split.axis == "columns" else {},
            grad_output=upstream,
        )
        for start, stop in split.shards
    ]
    group = group_for(world_size, trial.device, trial.rank_seconds)
    try:
        answers = group.call(kernel.source, calls)
    except RankFailure as failure:
        details = f"\n{failure.detail}" if failure.detail else ""
        raise Mismatch(
            f"{failure.message}  [{context(trial, split)}]{_indented(details)}",
            reproducer=reproducer(trial, split, grad_output),
            shrink=failure.kind != "hung",
        ) from None
    for answer, (start, stop) in zip(answers, split.shards, strict=True):
        _check_answer(trial, split, answer, start, stop, grad_output)
    return Outcome(split, tuple(answers))


def _shard(split: Split, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch = split.batch
    if split.axis == "columns":
        return batch.x[:, start:stop].clone(), batch.y.clone()
    return batch.x[start:stop].clone(), batch.y[start:stop].clone()


def _check_answer(
    trial: Trial,
    split: Split,
    answer: RankAnswer,
    start: int,
    stop: int,
    grad_output: Drawn | None,
) -> None:
    """The rank's result meets the contract's rule (a tensor of the right shape), and it has a
    gradient when one was asked for."""
    arguments = _shard(split, start, stop)
    problem = (
        f"returned a {answer.result}, not a Tensor"
        if isinstance(answer.result, str)
        else _rule_problem(trial, answer.result, arguments, split)
    )
    if problem is None and grad_output is not None:
        problem = answer.not_differentiable
    if problem is not None:
        raise Mismatch(
            f"rank {answer.rank}: {problem}  [{context(trial, split)}]",
            reproducer=reproducer(trial, split, grad_output),
        )


def _rule_problem(trial: Trial, result: Any, arguments: Any, split: Split) -> str | None:
    found = trial.kernel.contract.result_rule(result, arguments, split.batch.keywords())
    return None if found is None else f"the kernel returned {found}"


# --- The standard comparisons -----------------------------------------------------------------


def problem_of(split: Split) -> Problem:
    """The whole example as the oracle and the bounds see it."""
    batch = split.batch
    return Problem.of(batch.x, batch.y, **batch.keywords())


def loss_bound_of(trial: Trial, split: Split, problem: Problem) -> torch.Tensor:
    if split.axis == "columns":
        return vocab_parallel_loss_bound(problem)
    # The kernel's declared z-loss convention adds what it adds for contract 2.
    convention = loss_bound_for(trial, problem) - loss_bound(problem)
    return data_parallel_loss_bound(problem, split.world_size) + convention


def gradient_bound_of(split: Split, problem: Problem, grad_output: torch.Tensor) -> torch.Tensor:
    if split.axis == "columns":
        return vocab_parallel_gradient_bound(problem, grad_output)
    return data_parallel_gradient_bound(problem, grad_output, split.world_size)


def expect_oracle_loss(trial: Trial, split: Split, outcome: Outcome | None = None) -> Outcome:
    """Every rank's loss is within the bound of the oracle's loss of the whole example."""
    outcome = outcome or run_split(trial, split)
    problem = problem_of(split)
    expected = expected_loss(trial, problem)
    bound = loss_bound_of(trial, split, problem)
    for rank in range(split.world_size):
        check_close(
            trial,
            quantity=f"rank {rank}'s loss",
            actual=outcome.loss(rank),
            expected=expected,
            bound=bound,
            context=context(trial, split),
            reproducer=reproducer(trial, split, None, expected=expected),
        )
    return outcome


def expect_oracle_gradient(trial: Trial, split: Split, upstream: Drawn) -> Outcome:
    """Every rank's loss, and the gradient of its shard, are within their bounds of the
    oracle's loss and of the shard's part of the oracle's whole-example gradient."""
    outcome = run_split(trial, split, upstream)
    expect_oracle_loss(trial, split, outcome)
    problem = problem_of(split)
    grad_output = upstream.value
    expected = expected_gradient(trial, problem, grad_output)
    bound = gradient_bound_of(split, problem, grad_output)
    for rank, (start, stop) in enumerate(split.shards):
        part = _part(split, start, stop)
        check_close(
            trial,
            quantity=f"rank {rank}'s ∂L/∂local_logits",
            actual=outcome.gradient(rank),
            expected=part(expected),
            bound=part(bound),
            context=f"{context(trial, split)}; rank {rank} holds {_what(split, start, stop)}",
            reproducer=reproducer(trial, split, upstream),
        )
    return outcome


def expect_same_loss(trial: Trial, split: Split, outcome: Outcome) -> None:
    """Every rank returned bit for bit the loss rank 0 returned."""
    for rank in range(1, split.world_size):
        check_equal(
            trial,
            quantity=f"rank {rank}'s loss",
            actual=outcome.loss(rank),
            expected=outcome.loss(0).double(),
            context=context(trial, split),
            reproducer=reproducer(trial, split, None),
            expected_by="rank 0",
        )


def expect_untouched(trial: Trial, split: Split, outcome: Outcome, upstream: Drawn | None) -> None:
    """No rank wrote into its inputs (its shard, the target, the weights, grad_output)."""
    for answer in outcome.answers:
        if answer.modified:
            raise Mismatch(
                f"rank {answer.rank} wrote into {', '.join(answer.modified)}  "
                f"[{context(trial, split)}]",
                reproducer=reproducer(trial, split, upstream),
            )


def _part(split: Split, start: int, stop: int) -> Callable[[torch.Tensor], torch.Tensor]:
    if split.axis == "columns":
        return lambda whole: whole[:, start:stop]
    return lambda whole: whole[start:stop]


def _what(split: Split, start: int, stop: int) -> str:
    return f"{'columns' if split.axis == 'columns' else 'rows'} [{start}, {stop})"


def context(trial: Trial, split: Split) -> str:
    return f"{split.describe()}; {trial.kernel.name} on {split.world_size} {trial.device} ranks"


def _indented(text: str) -> str:
    return text.replace("\n", "\n  ")


# --- The reproducer ---------------------------------------------------------------------------


def reproducer(
    trial: Trial, split: Split, grad_output: Drawn | None, *, expected: Any = None
) -> str:
    """A script that starts ``world_size`` processes (torch.multiprocessing, gloo on the CPU,
    NCCL on CUDA), hands each its shard, and prints each rank's loss (and gradient)."""
    kernel = trial.kernel
    batch = split.batch
    keywords = batch.keywords()
    tensors = ["logits", "target"]
    tensors += [key for key, value in keywords.items() if isinstance(value, torch.Tensor)]
    sources = [batch.source()]
    if grad_output is not None:
        sources.append(grad_output.source())
        tensors.append("grad_output")
    cuda = trial.device == "cuda"
    columns = split.axis == "columns"
    on_device = "f'cuda:{rank}'" if cuda else "'cpu'"
    if columns:
        shard = [
            "local_logits = logits[:, start:stop].clone()",
            "local_target = target",
        ]
        call_head = ["local_logits", "local_target", "vocab_start=start"]
    else:
        shard = [
            "local_logits = logits[start:stop].clone()",
            "local_target = target[start:stop].clone()",
        ]
        call_head = ["local_logits", "local_target"]
    if kernel.spec.process_group is not None:
        call_head.append(f"{kernel.spec.process_group}=dist.group.WORLD")
    for key, value in keywords.items():
        name = kernel.spec.options.get(key, key)
        call_head.append(
            f"{name}={key}" if isinstance(value, torch.Tensor) else f"{name}={value!r}"
        )
    body = [
        f'dist.init_process_group("{"nccl" if cuda else "gloo"}", '
        'init_method=f"file://{store}", rank=rank, world_size=WORLD_SIZE)',
    ]
    if cuda:
        body.append("torch.cuda.set_device(rank)")
    setup = _setup_call(trial)
    if setup:
        body.append(setup)
    body += [
        f"{', '.join(tensors)} = (t.to({on_device}) for t in inputs())",
        "start, stop = SHARDS[rank]",
        *shard,
    ]
    if grad_output is not None:
        body.append("local_logits.requires_grad_(True)")
    body.append(f"loss = kernel({', '.join(call_head)})")
    report = 'f"rank {rank}: loss {loss.tolist()}"'
    if grad_output is not None:
        body.append("loss.backward(grad_output.reshape(loss.shape))")
        report = 'f"rank {rank}: loss {loss.tolist()}\\n  gradient {local_logits.grad.tolist()}"'
    body += [f"print({report}, flush=True)", "dist.destroy_process_group()"]
    what = "vocabulary columns" if columns else "rows"
    comment = (
        f"  # the oracle: {float(expected)!r}"
        if expected is not None and expected.dim() == 0
        else ""
    )
    lines = [
        f'"""Save as repro.py and run: python repro.py  ({split.world_size} processes)."""',
        "import tempfile",
        "",
        "import torch",
        "import torch.distributed as dist",
        "import torch.multiprocessing as mp",
        "",
        *kernel_import(kernel),
        "",
        f"WORLD_SIZE = {split.world_size}",
        f"SHARDS = {list(split.shards)}  # {what} [start, stop) of each rank",
        "",
        "",
        "def inputs():",
        *_indent("\n".join(sources)),
        f"    return {', '.join(tensors)}",
        "",
        "",
        "def rank_main(rank, store):",
        *_indent("\n".join(body)),
        "",
        "",
        'if __name__ == "__main__":' + comment,
        '    mp.spawn(rank_main, args=(tempfile.mktemp(prefix="lmloss-store-"),), '
        "nprocs=WORLD_SIZE)",
    ]
    return with_math_names("\n".join(lines))


def _setup_call(trial: Trial) -> str | None:
    kernel = trial.kernel
    if not kernel.declared or kernel.spec.setup is None or kernel.source is None:
        return None
    attribute = kernel.source.partition(":")[2]
    return f"{attribute}.setup(rank, WORLD_SIZE)"


def _indent(text: str) -> list[str]:
    return ["    " + line if line else "" for line in text.splitlines()]
