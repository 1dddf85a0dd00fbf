"""Run one clause against one kernel under Hypothesis, and say what happened.

The clause's test draws its inputs from ``st.data()``; this module wraps it in ``@given`` with
the settings of a profile, lets Hypothesis search and shrink, and turns the outcome into a
:class:`ClauseResult`: the clause holds, fails (with the shrunk counterexample), does not apply
to this kernel, or could not be checked (an error in the check itself).

A kernel that raises on valid input fails the clause it raised in: the report carries the
exception and a snippet that repeats the call. The kernel's callable is wrapped so that its
latest call is remembered, inputs copied before the kernel sees them (it may write into them).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import math
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from properties.engine.clause import (
    Clause,
    ClauseInfo,
    ClauseViolation,
    Trial,
    UnshrinkableViolation,
    Violation,
)
from properties.engine.defaults import (
    DEFAULT_WORLD_SIZE,
    PROFILES,
    SHRINKING_SECONDS,
    STEERING_PROFILES,
)
from properties.engine.snippet import call_snippet

if TYPE_CHECKING:
    from properties.engine.kernel import KernelUnderTest

Status = Literal["holds", "fails", "not applicable", "error"]


class CallWatch(Protocol):
    """Told of each call of the kernel: its inputs (copies, the kernel's own keyword names)."""

    def started(self, arguments: tuple[Any, ...], options: dict[str, Any]) -> None: ...

    def finished(self) -> None: ...


@dataclass
class ClauseResult:
    """The outcome of one clause in one dtype: plain data, so a worker process can return it."""

    clause: ClauseInfo
    dtype: str
    device: str
    status: Status
    #: Largest error/bound over the examples run (over the failing one too).
    worst_ratio: float
    #: Examples that ran to the end and held before the first failure (shrinking not counted).
    examples: int
    seconds: float
    #: For "fails": what did not hold, on the shrunk counterexample.
    violation: Violation | None = None
    #: For "not applicable": why; for "error": the exception, in one line.
    reason: str | None = None
    #: For "error": the traceback and Hypothesis's notes, for whoever debugs the suite.
    detail: str | None = None
    #: For "fails": the shrinking budget in seconds when it ran out (the counterexample may
    #: not be the smallest), else None.
    shrinking_cut_at: int | None = None
    #: Warnings the kernel's calls raised, "Category: message" -> how many times.
    warnings: dict[str, int] = dataclasses.field(default_factory=dict)


def hypothesis_settings(profile: str, *, max_examples: int | None = None) -> Any:
    """The ``hypothesis.settings`` of a profile; ``max_examples`` caps its example count (a
    clause's own cap, Clause.max_examples)."""
    from hypothesis import HealthCheck, Verbosity, settings

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {sorted(PROFILES)}")
    chosen = dict(PROFILES[profile])
    if max_examples is not None:
        chosen["max_examples"] = min(chosen["max_examples"], max_examples)
    return settings(
        **chosen,
        # The suite itself reports the shrunk example; Hypothesis's own printing would repeat it.
        verbosity=Verbosity.quiet,
        # A kernel and the arbitrary-precision oracle on thousands of classes take time on
        # purpose: large inputs are where kernels go wrong.
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        # One counterexample per clause: the first bug found, shrunk.
        report_multiple_bugs=False,
        # `lmloss check` must not write a .hypothesis/ directory into the user's project; the
        # report's reproducer replaces the example database.
        database=None,
        print_blob=False,
    )


def run_clause(
    clause: Clause,
    kernel: KernelUnderTest,
    *,
    dtype: str,
    device: str,
    profile: str = "quick",
    shrinking_seconds: int | None = None,
    run_dtypes: tuple[str, ...] = (),
    watch: CallWatch | None = None,
    world_size: int | None = None,
    rank_seconds: float | None = None,
) -> ClauseResult:
    """Check one clause for one kernel, dtype and device under a profile's settings.

    ``world_size``: the rank processes a distributed kernel runs on (default
    DEFAULT_WORLD_SIZE for a distributed contract; ignored for the others); ``rank_seconds``
    the per-call limit of each rank (properties/distributed/group.py).

    ``watch`` is told of each kernel call before it starts and when it ends (a worker process
    keeps the call's inputs, so a call that kills the process or never returns can be reported).

    ``shrinking_seconds`` caps the time spent shrinking a failure (default: the profile's
    SHRINKING_SECONDS).
    """
    from hypothesis import given, target
    from hypothesis import strategies as st
    from hypothesis.errors import UnsatisfiedAssumption

    start = time.perf_counter()
    if clause.contract != kernel.contract.name:
        reason: str | None = (
            f"a clause of contract {clause.contract!r}; the kernel is {kernel.contract.name!r}"
        )
    else:
        reason = clause.applies(kernel)
    if reason is not None:
        return ClauseResult(
            clause.info(), dtype, device, "not applicable", 0.0, 0, 0.0, reason=reason
        )

    # Only a distributed contract runs on several processes.
    world_size = (world_size or DEFAULT_WORLD_SIZE) if kernel.contract.distributed else None
    recorder = _CallRecorder(kernel, clause, device, watch)
    steer = profile in STEERING_PROFILES
    if shrinking_seconds is None:
        shrinking_seconds = SHRINKING_SECONDS[profile]
    worst_ratio = 0.0
    examples = 0
    failed = False
    #: When the first failing example ended: shrinking starts there.
    first_failure_at: float | None = None

    @hypothesis_settings(profile, max_examples=clause.max_examples)
    @given(st.data())
    def example(data: Any) -> None:
        nonlocal worst_ratio, examples, failed, first_failure_at
        trial = Trial(
            kernel=recorder.kernel,
            dtype=dtype,
            device=device,
            data=data,
            run_dtypes=run_dtypes or (dtype,),
            world_size=world_size,
            rank_seconds=rank_seconds,
        )
        recorder.forget()
        try:
            clause.test(trial)
        except ClauseViolation:
            failed = True
            raise
        except UnsatisfiedAssumption:
            raise  # assume() or the oracle's reject(): not an example, and not a failure
        except Exception as exc:
            failed = True
            if recorder.raised_in_kernel(exc):
                message = f"the kernel raised {type(exc).__name__}: {exc}".strip()
                raise recorder.violation(message) from exc
            raise
        finally:
            if failed and first_failure_at is None:
                first_failure_at = time.perf_counter()
            worst_ratio = max(worst_ratio, trial.worst_ratio)
            if steer:
                for label, ratio in trial.observations.items():
                    if math.isfinite(ratio):
                        target(ratio, label=label)
        if not failed:
            examples += 1

    def result(status: Status, **outcome: Any) -> ClauseResult:
        seconds = time.perf_counter() - start
        return ClauseResult(
            clause.info(),
            dtype,
            device,
            status,
            worst_ratio,
            examples,
            seconds,
            warnings=dict(recorder.warnings),
            **outcome,
        )

    def shrinking_cut() -> int | None:
        # Hypothesis stops shrinking silently at the deadline; the time since the first failure
        # tells. (Replaying the shrunk example afterwards adds one call, hence "about".)
        if first_failure_at is None:
            return None
        spent = time.perf_counter() - first_failure_at
        return shrinking_seconds if spent >= shrinking_seconds else None

    try:
        with _shrinking_limited_to(shrinking_seconds):
            example()
    except UnshrinkableViolation as stopped:
        return result("fails", violation=stopped.violation)
    except ClauseViolation as raised:
        worst_ratio = max(worst_ratio, _ratio(raised.violation))
        return result("fails", violation=raised.violation, shrinking_cut_at=shrinking_cut())
    except Exception as exc:  # every other outcome is reported, not raised
        flaky = _violation_in_group(exc)
        if flaky is not None:
            worst_ratio = max(worst_ratio, _ratio(flaky))
            return result(
                "fails",
                violation=_mark_nondeterministic(flaky),
                shrinking_cut_at=shrinking_cut(),
            )
        return result("error", reason=_one_line(exc), detail=_detail(exc))
    return result("holds")


class _CallRecorder:
    """Wraps a kernel's callable: remembers its latest call and which exceptions it raised,
    and holds its result to the rule of the kernel's contract (e.g. contract 2's shapes)."""

    def __init__(
        self, kernel: KernelUnderTest, clause: Clause, device: str, watch: CallWatch | None
    ) -> None:
        self._original = kernel
        self._clause = clause
        self._device = device
        self._watch = watch

        # Keep the callable's name and module: clauses write them into their reproducers.
        @functools.wraps(kernel.spec.fn)
        def recording(*arguments: Any, **options: Any) -> Any:
            return self._call(*arguments, **options)

        spec = dataclasses.replace(kernel.spec, fn=recording, name=kernel.name)
        self.kernel = dataclasses.replace(kernel, spec=spec)
        self._last_call: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self._raised: list[BaseException] = []
        #: "Category: message" -> count, over every call (a compiler may repeat one per call).
        self.warnings: collections.Counter[str] = collections.Counter()

    def forget(self) -> None:
        self._last_call = None
        self._raised.clear()

    def _call(self, *arguments: Any, **options: Any) -> Any:
        self._last_call = (
            tuple(_snapshot(argument) for argument in arguments),
            {key: _snapshot(value) for key, value in options.items()},
        )
        if self._watch is not None:
            self._watch.started(*self._last_call)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = self._original.spec.fn(*arguments, **options)
        except Exception as exc:
            self._raised.append(exc)
            raise
        finally:
            self.warnings.update(_warning_text(warning) for warning in caught)
            if self._watch is not None:
                self._watch.finished()
        # The options arrive under the kernel's own names; the rule reads the suite's.
        suite_names = {own: name for name, own in self._original.spec.options.items()}
        keywords = {suite_names.get(key, key): value for key, value in options.items()}
        problem = self._original.contract.result_rule(result, arguments, keywords)
        if problem is not None:
            raise self.violation(f"the kernel returned {problem}")
        return result

    def raised_in_kernel(self, exc: BaseException) -> bool:
        """True when ``exc`` came out of the kernel's forward call or out of its backward."""
        chain = list(_exception_chain(exc))
        if any(raised is link for raised in self._raised for link in chain):
            return True
        # The backward pass runs through autograd into the graph the kernel built.
        frames = traceback.extract_tb(exc.__traceback__)
        return any("torch/autograd/" in frame.filename.replace("\\", "/") for frame in frames)

    def violation(self, message: str) -> ClauseViolation:
        """A violation of the clause by the latest call, with a snippet that repeats the call."""
        if self._last_call is None:
            reproducer = "# no call of the kernel was recorded in this example"
        else:
            arguments, options = self._last_call
            reproducer = call_snippet(self._original, arguments, options, device=self._device)
        return ClauseViolation(self._clause.id, message=message, reproducer=reproducer)


@contextlib.contextmanager
def _shrinking_limited_to(seconds: int) -> Iterator[None]:
    """Cap Hypothesis's time for shrinking. There is no setting for it, only the engine's
    module constant; if a Hypothesis release renames it, its own five-minute limit applies."""
    from hypothesis.internal.conjecture import engine

    previous = getattr(engine, "MAX_SHRINKING_SECONDS", None)
    if previous is None:
        yield
        return
    engine.MAX_SHRINKING_SECONDS = seconds
    try:
        yield
    finally:
        engine.MAX_SHRINKING_SECONDS = previous


def _snapshot(value: Any) -> Any:
    """A copy of a tensor argument, same layout over a copy of its storage; other values as they are."""
    import torch

    if not isinstance(value, torch.Tensor):
        return value
    storage = value.untyped_storage().clone()
    copy = (
        value.detach()
        .new_empty(0)
        .set_(storage, value.storage_offset(), value.size(), value.stride())
    )
    return copy.requires_grad_(value.requires_grad)


def _warning_text(warning: warnings.WarningMessage) -> str:
    lines = str(warning.message).strip().splitlines() or [""]
    return f"{warning.category.__name__}: {lines[0]}"


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def _violation_in_group(exc: BaseException) -> Violation | None:
    """The violation inside Hypothesis's FlakyFailure (a failure that did not repeat on replay)."""
    from hypothesis.errors import FlakyFailure

    if isinstance(exc, FlakyFailure):
        for inner in exc.exceptions:
            if isinstance(inner, ClauseViolation):
                return inner.violation
            found = _violation_in_group(inner)
            if found is not None:
                return found
    return None


def _mark_nondeterministic(violation: Violation) -> Violation:
    message = violation.message + " (nondeterministic: the same input passed when replayed)"
    return dataclasses.replace(violation, message=message)


def _ratio(violation: Violation) -> float:
    """The violation's error/bound; inf where either is missing or not a number."""
    error, bound = violation.error, violation.bound
    if error is None or bound is None or math.isnan(error) or math.isnan(bound):
        return math.inf
    if bound == 0:
        return 0.0 if error == 0 else math.inf
    return error / bound


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0] if text else type(exc).__name__


def _detail(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).rstrip()
