"""Worker processes that run jobs, so that a kernel that crashes or hangs is a finding.

New CUDA and Triton kernels die in ways no ``except`` catches: an illegal memory access poisons
the process, an abort ends it, a wrong loop bound never returns. `lmloss check` therefore runs
every job in a worker process. Before each kernel call the worker keeps the call's inputs in a
file of its own and notes the time the call started in memory the parent can read. The parent
waits on the workers; when one dies, or one call outlives the per-call limit (the parent then
kills that worker), the job's clause fails with what happened and a reproducer of the call that
did it, built from the saved inputs, and a fresh worker takes the next job. The input is the one
that crashed, not a shrunk one: shrinking would need the process that died.

Results come back in the order the jobs were given, whatever order the workers finish in, so a
run with ``-j N`` reads like a run with one worker. Workers start from a forkserver that has
imported torch, Hypothesis and the catalogue once, so a fresh worker costs a fork, not an import.

Several workers share the machine's cores: each runs torch on its share of them
(:func:`worker_threads`; one thread each with one worker per core, `lmloss check`'s default).
With torch's own default, a thread per core in every process, two workers on two cores waited on
each other's threads: -j 2 took 95 s and 184 s of CPU where one worker took 120 s and 143 s.
A single worker keeps torch's default.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.context import ForkServerContext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from properties.engine import forkserver
from properties.engine.clause import Violation
from properties.engine.job import Job, find_clause

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess
    from multiprocessing.sharedctypes import Synchronized

    from properties.engine.kernel import KernelUnderTest
    from properties.engine.runner import ClauseResult

#: Seconds one kernel call may take before it counts as hung: generous, since a compiled
#: kernel's first call compiles it (torch.compile took tens of seconds per new shape here).
DEFAULT_CALL_SECONDS = 300.0
#: How often the parent looks at the workers' clocks while none has finished.
_POLL_SECONDS = 0.25


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, where the OS tells it), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def worker_threads(workers: int, cores: int | None = None) -> int | None:
    """torch's intra-op threads for each of ``workers`` workers on ``cores`` cores (default: the
    usable ones): its share of the cores, at least 1; None for a single worker (torch's default)."""
    if workers <= 1:
        return None
    return max(1, (usable_cores() if cores is None else cores) // workers)


@dataclass
class _Worker:
    process: BaseProcess
    connection: Connection
    #: time.monotonic() when the current kernel call started; 0.0 between calls.
    call_started: Synchronized[float]
    inputs: Path
    #: The position of the job it runs, and the job; None while idle.
    running: tuple[int, Job] | None = None
    #: time.monotonic() when it was handed its job.
    since: float = 0.0


@dataclass
class WorkerPool:
    """``size`` worker processes for the jobs of one kernel."""

    size: int = 1
    call_seconds: float = DEFAULT_CALL_SECONDS
    #: torch's intra-op threads in each worker; None: :func:`worker_threads` of ``size``.
    threads: int | None = None
    _context: ForkServerContext = field(init=False, repr=False)
    _directory: tempfile.TemporaryDirectory[str] = field(init=False, repr=False)
    _workers: list[_Worker] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"a pool needs at least one worker, not {self.size}")
        if not self.call_seconds > 0:
            raise ValueError(f"the per-call limit must be positive, not {self.call_seconds}")
        if self.threads is None:
            self.threads = worker_threads(self.size)
        elif self.threads < 1:
            raise ValueError(f"a worker needs at least one thread, not {self.threads}")
        self._context = forkserver.context()
        self._directory = tempfile.TemporaryDirectory(prefix="lmloss-workers-")

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for worker in self._workers:
            _stop(worker)
        self._workers.clear()
        self._directory.cleanup()

    def run(self, jobs: Iterable[Job], kernel: KernelUnderTest) -> Iterator[ClauseResult]:
        """Run the jobs, yielding their results in the jobs' order. ``kernel`` is the jobs'
        kernel, loaded here too, for the reproducer of a call that ended its worker. The next
        job is taken from ``jobs`` only when a worker is free. Closing the iterator early
        stops the workers' jobs in flight."""
        pending = iter(jobs)
        finished: dict[int, ClauseResult] = {}
        submitted = 0
        emitted = 0
        exhausted = False
        try:
            while True:
                while not exhausted and self._idle() is not None:
                    job = next(pending, None)
                    if job is None:
                        exhausted = True
                        break
                    self._submit(submitted, job)
                    submitted += 1
                while emitted in finished:
                    yield finished.pop(emitted)
                    emitted += 1
                if exhausted and emitted == submitted:
                    return
                for index, result in self._collect(kernel):
                    finished[index] = result
        finally:
            # Closed early (--exitfirst, Ctrl-C): the jobs in flight are not wanted any more.
            for worker in self._workers:
                if worker.running is not None:
                    _stop(worker)
            self._workers = [worker for worker in self._workers if worker.running is None]

    def _idle(self) -> _Worker | None:
        for worker in self._workers:
            if worker.running is None:
                return worker
        if len(self._workers) < self.size:
            self._workers.append(self._start())
            return self._workers[-1]
        return None

    def _start(self) -> _Worker:
        parent_end, child_end = self._context.Pipe()
        call_started = self._context.Value("d", 0.0, lock=False)
        inputs = (
            Path(self._directory.name) / f"worker-{len(self._workers)}-{time.monotonic_ns()}.pt"
        )
        process = self._context.Process(
            target=_serve, args=(child_end, call_started, str(inputs), self.threads), daemon=True
        )
        process.start()
        child_end.close()
        return _Worker(process, parent_end, call_started, inputs)

    def _submit(self, index: int, job: Job) -> None:
        worker = self._idle()
        assert worker is not None  # run() submits only while a worker is free
        worker.call_started.value = 0.0
        worker.connection.send(job)
        worker.running = (index, job)
        worker.since = time.monotonic()

    def _replace(self, worker: _Worker) -> None:
        _stop(worker)
        self._workers[self._workers.index(worker)] = self._start()

    def _collect(self, kernel: KernelUnderTest) -> Iterator[tuple[int, ClauseResult]]:
        """Wait until a worker finishes, dies or overruns; yield what became of its job."""
        busy = [worker for worker in self._workers if worker.running is not None]
        waitables = [w.connection for w in busy] + [w.process.sentinel for w in busy]
        ready = multiprocessing.connection.wait(waitables, timeout=_POLL_SECONDS)
        now = time.monotonic()
        for worker in busy:
            assert worker.running is not None
            index, job = worker.running
            if worker.connection in ready:
                try:
                    result: ClauseResult = worker.connection.recv()
                except (EOFError, OSError):
                    pass  # it died while answering: its sentinel says so below
                else:
                    worker.running = None
                    yield index, result
                    continue
            started = worker.call_started.value
            if worker.process.sentinel in ready or not worker.process.is_alive():
                worker.process.join()
                what = f"the kernel ended its worker process ({_exit_text(worker.process)})"
            elif started and now - started > self.call_seconds:
                what = (
                    f"the kernel's call did not return within {self.call_seconds:g} s "
                    "(the per-call limit, --call-timeout)"
                )
            else:
                continue
            yield index, _lost_job(job, what, worker.inputs, kernel, now - worker.since)
            self._replace(worker)


def _serve(
    connection: Connection, call_started: Synchronized[float], inputs: str, threads: int | None
) -> None:
    """A worker: run each job it is sent until it is sent None or its parent goes away."""
    # Ctrl-C is the parent's to handle: it stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # What the forkserver imported (torch, Hypothesis, the catalogue) lives as long as the
    # worker: out of the collector's reach, it is not traversed again at every collection that
    # the oracle's and the strategies' many small objects set off (eight clauses in one
    # process: 8.0 s and 7.9 s of CPU without, 5.7 s and 5.9 s with).
    gc.freeze()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    from properties.engine.check import load_kernel

    kernels: dict[str, KernelUnderTest] = {}
    watch = _InputKeeper(call_started, Path(inputs))
    while True:
        try:
            job = connection.recv()
        except EOFError:
            return
        if job is None:
            return
        if job.spec not in kernels:
            kernels[job.spec] = load_kernel(job.spec)
        watch.forget()
        connection.send(job.run(kernel=kernels[job.spec], watch=watch))


class _InputKeeper:
    """Keeps each kernel call's inputs in the worker's file before the call (pickled and flushed
    to the OS, so they outlive the process, each tensor as :class:`_KeptTensor`) and notes when
    the call started."""

    def __init__(self, call_started: Synchronized[float], path: Path) -> None:
        self._call_started = call_started
        self._file = path.open("wb")

    def forget(self) -> None:
        """A new job: no call of it is kept yet."""
        self._file.seek(0)
        self._file.truncate()
        self._file.flush()

    def started(self, arguments: tuple[Any, ...], options: dict[str, Any]) -> None:
        kept = {
            "arguments": tuple(_KeptTensor.kept(argument) for argument in arguments),
            "options": {key: _KeptTensor.kept(value) for key, value in options.items()},
        }
        self._file.seek(0)
        pickle.dump(kept, self._file, protocol=pickle.HIGHEST_PROTOCOL)
        self._file.truncate()
        self._file.flush()
        self._call_started.value = time.monotonic()

    def finished(self) -> None:
        self._call_started.value = 0.0


@dataclass(frozen=True)
class _KeptTensor:
    """A tensor as a worker keeps it: the bytes of its storage, copied to the CPU (a device's
    kernel may have poisoned the device by the time the parent reads them), and its view of
    them. Pickling the tensor itself took about 0.6 ms a call, most of it torch's serialisation
    of the storage; plain bytes take a few microseconds."""

    dtype: str
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    requires_grad: bool
    data: bytes

    @classmethod
    def kept(cls, value: Any) -> Any:
        """A tensor as kept; other values as they are."""
        import torch

        if not isinstance(value, torch.Tensor):
            return value
        storage = value.untyped_storage().cpu()
        size = storage.nbytes()
        return cls(
            dtype=str(value.dtype).removeprefix("torch."),
            size=tuple(value.size()),
            stride=tuple(value.stride()),
            offset=int(value.storage_offset()),
            requires_grad=value.requires_grad,
            data=ctypes.string_at(storage.data_ptr(), size) if size else b"",
        )

    def tensor(self) -> Any:
        """The tensor again, on the CPU: the same values, in the same view of its storage."""
        import torch

        dtype = getattr(torch, self.dtype)
        if self.data:
            storage = torch.frombuffer(bytearray(self.data), dtype=torch.uint8).clone()
        else:
            storage = torch.empty(0, dtype=torch.uint8)
        view = torch.empty(0, dtype=dtype).set_(
            storage.untyped_storage(), self.offset, self.size, self.stride
        )
        return view.requires_grad_(self.requires_grad)


def _restored(value: Any) -> Any:
    return value.tensor() if isinstance(value, _KeptTensor) else value


def _lost_job(
    job: Job, what: str, inputs: Path, kernel: KernelUnderTest, seconds: float
) -> ClauseResult:
    """The result of a job whose worker died or hung: its clause fails, with the last call."""
    from properties.engine.runner import ClauseResult
    from properties.engine.snippet import call_snippet

    clause = find_clause(job.catalogue, job.clause)
    if inputs.exists() and inputs.stat().st_size > 0:
        with inputs.open("rb") as kept:
            saved = pickle.load(kept)  # written by this run's own worker
        arguments = tuple(_restored(argument) for argument in saved["arguments"])
        options = {key: _restored(value) for key, value in saved["options"].items()}
        reproducer = call_snippet(kernel, arguments, options, device=job.device)
    else:
        reproducer = "# the worker ended before it called the kernel: no call to repeat"
        what = what.replace("the kernel", "the job", 1)
    violation = Violation(
        clause.id,
        f"{clause.equation}\n  {what}; the input of that call (not shrunk: the process is gone)",
        reproducer,
    )
    return ClauseResult(
        clause.info(), job.dtype, job.device, "fails", float("inf"), 0, seconds, violation=violation
    )


def _exit_text(process: BaseProcess) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _stop(worker: _Worker) -> None:
    if worker.process.is_alive() and worker.running is None:
        with contextlib.suppress(OSError):  # it may be on its way out already
            worker.connection.send(None)
        worker.process.join(timeout=5)
    if worker.process.is_alive():
        worker.process.kill()
        worker.process.join()
    worker.connection.close()
