"""A group of P rank processes that run distributed kernels, for as long as a checker runs.

The coordinator (a checker worker, or the pytest process) starts P processes, one per rank,
each a fresh Python (``python -m properties.distributed.rank``, see there) that joins a
``torch.distributed`` process group (gloo on the CPU, NCCL with CUDA) over a FileStore in a
temporary directory. Then each call is one message per rank: the kernel's SPEC, the rank's
shard and keywords in, the rank's answer out (its loss, the gradient of its shard, which inputs
it wrote into, or the exception it raised with its traceback). A rank loads each SPEC once, and
runs its KernelSpec's ``setup`` then, so one group serves every kernel of a run.

Why fresh processes (``subprocess``), not ``torch.multiprocessing.spawn``: a checker worker is a
daemonic multiprocessing process, and those may not start multiprocessing children. Each rank
talks to the coordinator over a socket pair inherited at start; it dies with its coordinator
(``PR_SET_PDEATHSIG``) and when the socket closes.

Failures are findings, reported with the rank:

- a rank that raises: its exception and traceback (the other ranks, left waiting in a
  collective, get a short grace to answer, then the group is killed);
- a rank that does not answer within the per-call limit (``LMLOSS_RANK_TIMEOUT``, ``lmloss check
  --rank-timeout``; default :data:`DEFAULT_RANK_SECONDS`): reported with the Python stack each
  unanswered rank was in (faulthandler dumps it just before the limit), then every rank is killed;
- a rank process that dies: its exit status and the tail of its stderr.

After any failure every rank process is killed and waited for; the next call starts a fresh
group. Starting one costs an import of torch per rank (seconds on 2 cores), so a group lives
as long as its coordinator: :func:`group_for` keeps one per world size and device.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing.connection
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Seconds a rank may take to answer one call before it counts as hung.
DEFAULT_RANK_SECONDS = 60.0
#: Environment variable that overrides it (``lmloss check --rank-timeout`` sets it).
RANK_TIMEOUT_ENV = "LMLOSS_RANK_TIMEOUT"
#: Seconds the other ranks get to answer once one rank has raised: a rank that raised before
#: a collective leaves the others waiting in it, forever.
GRACE_SECONDS = 3.0
#: Seconds P fresh processes may take to import torch and the kernel and join the group: on 2
#: busy cores one import of torch took 7 s of wall time; four ranks share those cores.
START_SECONDS = 180.0


def rank_seconds() -> float:
    """The per-call limit: ``LMLOSS_RANK_TIMEOUT`` when set, else :data:`DEFAULT_RANK_SECONDS`."""
    text = os.environ.get(RANK_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_RANK_SECONDS
    value = float(text)
    if not value > 0:
        raise ValueError(f"{RANK_TIMEOUT_ENV}={text!r}: the per-call limit must be positive")
    return value


@dataclass(frozen=True)
class RankCall:
    """What one rank is asked to do: call the kernel on its shard, and maybe differentiate.

    ``arguments`` are the positional tensors (CPU; the rank moves them to its device), the
    first of them the one differentiated. ``keywords`` are under the suite's names (the rank
    translates them, KernelSpec.options); ``placement`` are the contract's own keywords (e.g.
    vocab_start), passed as they are; the process group is added by the rank."""

    arguments: tuple[Any, ...]
    keywords: dict[str, Any] = field(default_factory=dict)
    placement: dict[str, Any] = field(default_factory=dict)
    #: The upstream gradient for backward (CPU, the loss's shape); None: forward only.
    grad_output: Any = None


@dataclass(frozen=True)
class RankAnswer:
    """What a rank computed: plain data and CPU tensors."""

    rank: int
    #: The kernel's result (a CPU tensor, detached), or what it was when not a tensor.
    result: Any = None
    #: ∂(result·grad_output)/∂arguments[0] on this rank; None without backward.
    gradient: Any = None
    #: Names of the inputs the kernel wrote into (arguments, keywords, grad_output).
    modified: tuple[str, ...] = ()
    #: Set when the loss could not be differentiated (no grad_fn, no gradient left).
    not_differentiable: str | None = None


class RankFailure(Exception):
    """A rank raised, hung or died; ``rank`` is the first rank at fault.

    ``kind`` is "raised", "hung" or "died"; ``detail`` the traceback or the stacks."""

    def __init__(self, rank: int, kind: str, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.rank = rank
        self.kind = kind
        self.message = message
        self.detail = detail


@dataclass
class _Rank:
    process: subprocess.Popen[bytes]
    connection: multiprocessing.connection.Connection
    stderr: Path
    stacks: Path


class RankGroup:
    """P rank processes on ``device`` (gloo for "cpu", NCCL for "cuda") that run the kernels
    they are handed by SPEC. Started on the first call, restarted on the call after a failure."""

    def __init__(self, world_size: int, device: str = "cpu", seconds: float | None = None) -> None:
        if world_size < 1:
            raise ValueError(f"a group needs at least one rank, not {world_size}")
        self.world_size = world_size
        self.device = device
        self.seconds = rank_seconds() if seconds is None else seconds
        self._ranks: list[_Rank] = []
        self._directory: tempfile.TemporaryDirectory[str] | None = None
        #: How many times the group was started (the first start included).
        self.starts = 0

    @property
    def running(self) -> bool:
        return bool(self._ranks)

    def pids(self) -> list[int]:
        return [rank.process.pid for rank in self._ranks]

    def call(self, spec: str, calls: Sequence[RankCall]) -> list[RankAnswer]:
        """Hand each rank its call of the kernel at ``spec`` (module:attr); the answers in rank
        order, or RankFailure (after which every rank process is gone)."""
        if len(calls) != self.world_size:
            raise ValueError(f"{len(calls)} calls for {self.world_size} ranks")
        if not self._ranks:
            self._start()
        for rank, call in zip(self._ranks, calls, strict=True):
            # A rank that died cannot be sent to: it is collected below as a rank that died.
            with contextlib.suppress(OSError):
                send(rank.connection, ("call", (spec, call), self.seconds))
        try:
            return self._answers()
        except RankFailure:
            self.kill()
            raise

    def close(self) -> None:
        """Stop every rank process and wait for it: none outlives the group."""
        for rank in self._ranks:
            with contextlib.suppress(OSError):
                send(rank.connection, ("stop", None, 0.0))
        deadline = time.monotonic() + 2.0
        for rank in self._ranks:
            try:
                rank.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                rank.process.kill()
                rank.process.wait()
            rank.connection.close()
        self._ranks.clear()
        if self._directory is not None:
            self._directory.cleanup()
            self._directory = None

    def kill(self) -> None:
        """Kill every rank process at once (SIGKILL) and wait for each."""
        for rank in self._ranks:
            with contextlib.suppress(ProcessLookupError):
                rank.process.kill()
        self.close()

    # --- Starting ---------------------------------------------------------------------------

    def _start(self) -> None:
        self.starts += 1
        self._directory = tempfile.TemporaryDirectory(prefix="lmloss-ranks-")
        directory = Path(self._directory.name)
        store = directory / "store"
        backend = "nccl" if self.device == "cuda" else "gloo"
        for index in range(self.world_size):
            ours, theirs = socket.socketpair()
            stderr = directory / f"rank-{index}.stderr"
            stacks = directory / f"rank-{index}.stacks"
            command = [
                sys.executable,
                "-m",
                "properties.distributed.rank",
                "--rank",
                str(index),
                "--world-size",
                str(self.world_size),
                "--backend",
                backend,
                "--device",
                self.device,
                "--store",
                str(store),
                "--socket",
                str(theirs.fileno()),
                "--stacks",
                str(stacks),
            ]
            with stderr.open("wb") as errors:
                process = subprocess.Popen(
                    command,
                    pass_fds=(theirs.fileno(),),
                    stdin=subprocess.DEVNULL,
                    stdout=errors,
                    stderr=errors,
                    env={**os.environ, "PYTHONPATH": _python_path()},
                )
            theirs.close()
            connection = multiprocessing.connection.Connection(ours.detach())
            self._ranks.append(_Rank(process, connection, stderr, stacks))
        try:
            self._wait_ready()
        except RankFailure:
            self.kill()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + max(START_SECONDS, self.seconds)
        waiting = dict(enumerate(self._ranks))
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                late = sorted(waiting)
                raise RankFailure(
                    late[0],
                    "hung",
                    f"rank{_plural(late)} {_list(late)} did not join the process group within "
                    f"{max(START_SECONDS, self.seconds):g} s",
                    self._stderr_tails(late),
                )
            ready = multiprocessing.connection.wait(
                [rank.connection for rank in waiting.values()], timeout=left
            )
            for index, rank in list(waiting.items()):
                if rank.connection not in ready:
                    continue
                try:
                    kind, payload = receive(rank.connection)
                except (EOFError, OSError):
                    raise self._died(index, "while starting") from None
                if kind == "error":
                    message, trace = payload
                    raise RankFailure(index, "raised", f"rank {index} {message}", trace)
                del waiting[index]

    # --- Answers ----------------------------------------------------------------------------

    def _answers(self) -> list[RankAnswer]:
        answers: dict[int, RankAnswer] = {}
        raised: RankFailure | None = None
        deadline = time.monotonic() + self.seconds
        while len(answers) < self.world_size:
            pending = {i: r for i, r in enumerate(self._ranks) if i not in answers}
            left = deadline - time.monotonic()
            if left <= 0:
                if raised is not None:
                    raised.message += (
                        f"; rank{_plural(list(pending))} {_list(list(pending))} then waited "
                        f"{GRACE_SECONDS:g} s without answering (in a collective, most likely)"
                    )
                    raise raised
                self._hang(sorted(pending))
            ready = multiprocessing.connection.wait(
                [rank.connection for rank in pending.values()], timeout=left
            )
            for index, rank in pending.items():
                if rank.connection not in ready:
                    continue
                try:
                    kind, payload = receive(rank.connection)
                except (EOFError, OSError):
                    raise self._died(index, "during the call") from None
                if kind == "answer":
                    answers[index] = payload
                    continue
                answers[index] = RankAnswer(index)  # "error": it answered, with an exception
                if raised is None:  # the first rank to raise is the one reported
                    message, trace = payload
                    raised = RankFailure(index, "raised", f"rank {index} {message}", trace)
                    deadline = min(deadline, time.monotonic() + GRACE_SECONDS)
        if raised is not None:
            raise raised
        return [answers[index] for index in range(self.world_size)]

    def _hang(self, late: list[int]) -> None:
        # Each rank's faulthandler writes its stacks shortly before the limit; give it a moment.
        stacks_due = time.monotonic() + 2.0
        while time.monotonic() < stacks_due and not all(
            self._ranks[i].stacks.exists() and self._ranks[i].stacks.stat().st_size for i in late
        ):
            time.sleep(0.05)
        stacks = "\n".join(
            f"rank {i}:\n{_text_of(self._ranks[i].stacks) or '  (no stack written)'}" for i in late
        )
        raise RankFailure(
            late[0],
            "hung",
            f"rank{_plural(late)} {_list(late)} did not answer within {self.seconds:g} s "
            f"(the per-call limit, {RANK_TIMEOUT_ENV} or --rank-timeout); every rank was killed",
            stacks,
        )

    def _died(self, index: int, when: str) -> RankFailure:
        process = self._ranks[index].process
        try:
            code = process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        if code is not None and code < 0:
            status = f"killed by {_signal_name(-code)}"
        else:
            status = f"exit code {code}"
        return RankFailure(
            index,
            "died",
            f"rank {index}'s process ended {when} ({status})",
            self._stderr_tails([index]),
        )

    def _stderr_tails(self, ranks: list[int]) -> str:
        return "\n".join(
            f"rank {i} stderr:\n{_text_of(self._ranks[i].stderr, tail=2000) or '  (empty)'}"
            for i in ranks
        )


def send(connection: multiprocessing.connection.Connection, message: Any) -> None:
    """Send a message pickled by plain pickle: a Connection's own pickler is multiprocessing's,
    for which torch shares a tensor's memory through a descriptor server that needs the
    sender's authentication key; plain pickle copies the tensor's bytes."""
    connection.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def receive(connection: multiprocessing.connection.Connection) -> Any:
    """A message sent by :func:`send` (between this coordinator and its own ranks only)."""
    return pickle.loads(connection.recv_bytes())


# --- One group per kernel, world size and device, for the life of the process ----------------

_GROUPS: dict[tuple[int, str], RankGroup] = {}


def group_for(world_size: int, device: str, seconds: float | None = None) -> RankGroup:
    """This process's group of ``world_size`` ranks on ``device``, started on its first call
    and closed when this process exits; ``seconds`` sets its per-call limit (None: the
    default)."""
    key = (world_size, device)
    if key not in _GROUPS:
        # One group at a time: each holds P processes, and a run checks at one world size.
        close_groups()
        _GROUPS[key] = RankGroup(world_size, device)
    group = _GROUPS[key]
    group.seconds = rank_seconds() if seconds is None else seconds
    return group


def close_groups() -> None:
    """Stop every group this process started."""
    while _GROUPS:
        _GROUPS.popitem()[1].close()


atexit.register(close_groups)


def _python_path() -> str:
    """The coordinator's import path, so a rank imports the same modules (a SPEC may name a
    module of the current directory, or of a test directory on sys.path)."""
    paths = [os.getcwd() if entry == "" else entry for entry in sys.path]
    return os.pathsep.join(dict.fromkeys(paths))


def _text_of(path: Path, tail: int | None = None) -> str:
    try:
        text = path.read_text(errors="replace").rstrip()
    except FileNotFoundError:
        return ""
    if tail is not None and len(text) > tail:
        text = "…" + text[-tail:]
    return "\n".join("  " + line for line in text.splitlines())


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _plural(ranks: list[int]) -> str:
    return "s" if len(ranks) > 1 else ""


def _list(ranks: list[int]) -> str:
    return ", ".join(str(rank) for rank in ranks)
