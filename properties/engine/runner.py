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

import contextlib
import dataclasses
import functools
import math
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from properties.engine.clause import Clause, ClauseViolation, Trial
from properties.engine.snippet import call_snippet

if TYPE_CHECKING:
    from properties.engine.kernel import KernelUnderTest

Status = Literal["holds", "fails", "not applicable", "error"]
Profile = Literal["quick", "ci", "thorough"]

#: Hypothesis settings per profile (deadline, database and health checks are common to all).
#: quick: `lmloss check`'s default; a correct kernel passes every clause for float32 and bfloat16
#:   in under two minutes on 2 CPU cores (measured with `lmloss check` on an idle 2-core
#:   machine: PyTorch's kernel 91 s, lmloss's 84 s), and most broken kernels fail within the
#:   first examples.
#: ci: derandomized, so a CI run is repeatable; fewer examples, because tox runs every clause for
#:   two kernels and the whole CI must stay well under 20 minutes.
#: thorough: at least 10,000 examples per clause, with ``hypothesis.target`` steering toward the
#:   largest error/bound ratio (see STEERING_PROFILES).
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"max_examples": 50, "derandomize": False},
    "ci": {"max_examples": 15, "derandomize": True},
    "thorough": {"max_examples": 10_000, "derandomize": False},
}
STEERING_PROFILES = frozenset({"thorough"})
#: Seconds Hypothesis may spend shrinking one failure. Its own limit is five minutes; for
#: `lmloss check` a counterexample a little less minimal beats keeping the user waiting, and
#: in CI a failure needs to be shown, not polished.
SHRINKING_SECONDS = {"quick": 30, "ci": 5, "thorough": 300}
#: Seconds for each failure after a kernel's first. A broken kernel usually fails many clauses
#: in both dtypes; shrinking every one for 30 s would keep the user waiting minutes for what the
#: first, fully shrunk counterexample already shows. The report says when shrinking was cut
#: short, and ``--clause ID`` shrinks that clause alone with the full budget.
LATER_SHRINKING_SECONDS = {"quick": 3, "ci": 2, "thorough": 300}


@dataclass
class ClauseResult:
    clause: Clause
    dtype: str
    device: str
    status: Status
    #: Largest error/bound over the examples run (over the failing one too).
    worst_ratio: float
    #: Examples that ran to the end and held before the first failure (shrinking not counted).
    examples: int
    seconds: float
    #: For "fails": what did not hold, on the shrunk counterexample.
    violation: ClauseViolation | None = None
    #: For "not applicable": why; for "error": the exception, in one line.
    reason: str | None = None
    #: For "error": the traceback and Hypothesis's notes, for whoever debugs the suite.
    detail: str | None = None
    #: For "fails": the shrinking budget in seconds when it ran out (the counterexample may
    #: not be the smallest), else None.
    shrinking_cut_at: int | None = None


def hypothesis_settings(profile: str) -> Any:
    """The ``hypothesis.settings`` of a profile."""
    from hypothesis import HealthCheck, Verbosity, settings

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {sorted(PROFILES)}")
    return settings(
        **PROFILES[profile],
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
) -> ClauseResult:
    """Check one clause for one kernel, dtype and device under a profile's settings.

    ``shrinking_seconds`` caps the time spent shrinking a failure (default: the profile's
    SHRINKING_SECONDS).
    """
    from hypothesis import given, target
    from hypothesis import strategies as st

    start = time.perf_counter()
    reason = clause.applies(kernel)
    if reason is not None:
        return ClauseResult(clause, dtype, device, "not applicable", 0.0, 0, 0.0, reason=reason)

    recorder = _CallRecorder(kernel, clause)
    steer = profile in STEERING_PROFILES
    if shrinking_seconds is None:
        shrinking_seconds = SHRINKING_SECONDS[profile]
    worst_ratio = 0.0
    examples = 0
    failed = False
    #: When the first failing example ended: shrinking starts there.
    first_failure_at: float | None = None

    @hypothesis_settings(profile)
    @given(st.data())
    def example(data: Any) -> None:
        nonlocal worst_ratio, examples, failed, first_failure_at
        trial = Trial(kernel=recorder.kernel, dtype=dtype, device=device, data=data)
        recorder.forget()
        try:
            clause.test(trial)
        except ClauseViolation:
            failed = True
            raise
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
            clause, dtype, device, status, worst_ratio, examples, seconds, **outcome
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
    except ClauseViolation as violation:
        worst_ratio = max(worst_ratio, _ratio(violation))
        return result("fails", violation=violation, shrinking_cut_at=shrinking_cut())
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
    and holds its result to contract 2's shape (a Tensor: () for mean and sum, (N,) for none)."""

    def __init__(self, kernel: KernelUnderTest, clause: Clause) -> None:
        self._original = kernel
        self._clause = clause

        # Keep the callable's name and module: clauses write them into their reproducers.
        @functools.wraps(kernel.spec.fn)
        def recording(logits: Any, target: Any, **options: Any) -> Any:
            return self._call(logits, target, **options)

        spec = dataclasses.replace(kernel.spec, fn=recording, name=kernel.name)
        self.kernel = dataclasses.replace(kernel, spec=spec)
        self._last_call: tuple[Any, Any, dict[str, Any]] | None = None
        self._raised: list[BaseException] = []

    def forget(self) -> None:
        self._last_call = None
        self._raised.clear()

    def _call(self, logits: Any, target: Any, **options: Any) -> Any:
        self._last_call = (
            _snapshot(logits),
            _snapshot(target),
            {key: _snapshot(value) for key, value in options.items()},
        )
        try:
            result = self._original.spec.fn(logits, target, **options)
        except Exception as exc:
            self._raised.append(exc)
            raise
        problem = _contract_problem(result, logits, options.get("reduction", "mean"))
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
            logits, target, options = self._last_call
            reproducer = call_snippet(self._original, logits, target, options)
            if logits.requires_grad or _any_requires_grad(options):
                reproducer += "\nloss.sum().backward()"
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


def _contract_problem(result: Any, logits: Any, reduction: str) -> str | None:
    """What is wrong with a kernel's result under contract 2, or None."""
    import torch

    if not isinstance(result, torch.Tensor):
        return f"a {type(result).__name__}, not a Tensor"
    if getattr(logits, "dim", lambda: 0)() != 2:
        return None  # not an (N, C) call: nothing to hold the shape to
    expected = (logits.shape[0],) if reduction == "none" else ()
    if tuple(result.shape) != expected:
        return (
            f"a tensor of shape {tuple(result.shape)}; "
            f"reduction={reduction!r} gives shape {expected}"
        )
    return None


def _any_requires_grad(options: dict[str, Any]) -> bool:
    return any(getattr(value, "requires_grad", False) for value in options.values())


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def _violation_in_group(exc: BaseException) -> ClauseViolation | None:
    """The violation inside Hypothesis's FlakyFailure (a failure that did not repeat on replay)."""
    from hypothesis.errors import FlakyFailure

    if isinstance(exc, FlakyFailure):
        for inner in exc.exceptions:
            if isinstance(inner, ClauseViolation):
                return inner
            found = _violation_in_group(inner)
            if found is not None:
                return found
    return None


def _mark_nondeterministic(violation: ClauseViolation) -> ClauseViolation:
    return ClauseViolation(
        violation.clause,
        message=violation.message + " (nondeterministic: the same input passed when replayed)",
        reproducer=violation.reproducer,
        oracle=violation.oracle,
        kernel=violation.kernel,
        error=violation.error,
        bound=violation.bound,
    )


def _ratio(violation: ClauseViolation) -> float:
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
