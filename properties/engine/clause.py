"""The shape of a clause: an ID, its equation, its tolerance key, and the test that states it.

A clause's test draws its inputs from a Hypothesis ``data`` object, calls the kernel, compares
with the oracle, and raises :class:`ClauseViolation` when the clause does not hold. The same
test runs under pytest (properties/test_clauses.py) and under ``lmloss check``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from properties.contract import contract_of_clause
from properties.engine.kernel import KernelUnderTest
from properties.tolerances import TOLERANCES

if TYPE_CHECKING:
    from hypothesis.strategies import DataObject


@dataclass
class Trial:
    """One run of a clause against one kernel in one dtype on one device."""

    kernel: KernelUnderTest
    dtype: str  # "float32" | "bfloat16" | "float16"
    device: str  # "cpu" | "cuda"
    data: DataObject
    #: Every dtype chosen for the run (``--dtype`` or the device's defaults, less those the
    #: kernel rules out); a clause that compares dtypes (CE-DTYPES) compares these.
    run_dtypes: tuple[str, ...] = ()
    #: Distributed contracts: the number of rank processes the kernel runs on (None for the
    #: others), and the seconds a rank may take to answer one call (None: the default).
    world_size: int | None = None
    rank_seconds: float | None = None
    #: Largest error/bound seen in this example; the checker reports the worst over examples.
    worst_ratio: float = 0.0
    #: Largest error/bound per label in this example. In the thorough profile the runner hands
    #: them to ``hypothesis.target`` once the example ends (target takes one value per label).
    observations: dict[str, float] = field(default_factory=dict)

    def record(self, ratio: float, label: str = "error/bound") -> None:
        """Note an error as a fraction of its bound (1.0 is the bound)."""
        self.worst_ratio = max(self.worst_ratio, ratio)
        self.observations[label] = max(self.observations.get(label, 0.0), ratio)


@dataclass(frozen=True)
class ClauseInfo:
    """What a report says about a clause: plain data, so it crosses process boundaries."""

    id: str  # e.g. "CE-SHIFT"
    title: str  # e.g. "loss is invariant under a shift"
    equation: str  # e.g. "L(x + c·1, y) = L(x, y) for every scalar c"
    tolerance: str | None  # key in properties.tolerances; None for exact clauses
    contract: str  # the name of the contract whose prefix opens the ID


@dataclass(frozen=True)
class Clause(ClauseInfo):
    """A clause and the test that states it."""

    test: Callable[[Trial], None] = field(repr=False, default=lambda trial: None)
    #: kernel -> None when the clause applies, else the reason it does not (shown in the report).
    applies: Callable[[KernelUnderTest], str | None] = field(
        repr=False, default=lambda kernel: None
    )
    #: At most this many Hypothesis examples per run, whatever the profile allows; None: the
    #: profile's count. For clauses each of whose examples is expensive by design (CE-LARGE-VOCAB
    #: draws hundreds of thousands of logits per example).
    max_examples: int | None = None

    def info(self) -> ClauseInfo:
        return ClauseInfo(self.id, self.title, self.equation, self.tolerance, self.contract)


@dataclass(frozen=True)
class Violation:
    """What did not hold, as plain data: the clause, the message (the input, both values), the
    oracle's and the kernel's value, the error, the bound, and a snippet that reproduces it."""

    clause: str
    message: str
    reproducer: str  # a short Python snippet that reproduces the failure
    oracle: Any = None
    kernel: Any = None
    error: float | None = None
    bound: float | None = None

    def render(self) -> str:
        lines = [f"[{self.clause}] {self.message}"]
        if self.oracle is not None or self.kernel is not None:
            lines.append(f"  oracle: {self.oracle!r}")
            lines.append(f"  kernel: {self.kernel!r}")
        if self.error is not None and self.bound is not None:
            ratio = self.error / self.bound if self.bound else float("inf")
            lines.append(
                f"  error:  {self.error:.3g}  bound: {self.bound:.3g}  ({ratio:.3g} × bound)"
            )
        lines.append("  reproduce with:")
        lines.extend("    " + line for line in self.reproducer.splitlines())
        return "\n".join(lines)


class UnshrinkableViolation(BaseException):
    """A violation that ends the clause's run at once, without shrinking: raised where trying
    another example would cost as much as the failure did (a rank process that hung for the
    whole per-call limit). Not an Exception, so Hypothesis lets it through unshrunk; the
    runner reports it as the clause's failure."""

    def __init__(self, violation: Violation) -> None:
        super().__init__(violation.render())
        self.violation = violation


class ClauseViolation(AssertionError):
    """A clause did not hold: raised inside a clause's test, carries a :class:`Violation`."""

    def __init__(
        self,
        clause: str,
        *,
        message: str,
        reproducer: str,
        oracle: Any = None,
        kernel: Any = None,
        error: float | None = None,
        bound: float | None = None,
    ) -> None:
        self.violation = Violation(
            clause, message, reproducer, _plain(oracle), _plain(kernel), error, bound
        )
        super().__init__(self.violation.render())


def _plain(value: Any) -> Any:
    """A value as plain Python (floats, lists of them): mpmath numbers and tensors are not."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    try:
        return float(value)
    except (TypeError, ValueError):
        return repr(value)


# --- Declaring a clause ----------------------------------------------------------------------

Applicability = Callable[[KernelUnderTest], "str | None"]

#: The ID opens with its contract's prefix (``CE-``, ``LCE-``...): see properties/contract/.
_DOCSTRING = re.compile(
    r"^(?P<equation>.+?)\s+\[(?P<id>[A-Z]+-[A-Z0-9-]+)\]\s+tol:\s*(?P<tol>\w+)", re.S
)


class Mismatch(Exception):
    """Raised by a check; the clause decorator re-raises it as a ClauseViolation."""

    def __init__(self, message: str, *, shrink: bool = True, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        #: False: report this example as it is, without trying others (UnshrinkableViolation).
        self.shrink = shrink
        self.details = details


def clause(
    *, applies: Applicability | None = None, max_examples: int | None = None
) -> Callable[[Callable[[Trial], None]], Clause]:
    """Make a clause of a test function; ``applies`` says why a kernel is out of its scope;
    ``max_examples`` caps the examples of every run below the profile's count (Clause.max_examples)."""
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be at least 1, not {max_examples}")

    def make(test: Callable[[Trial], None]) -> Clause:
        match = _DOCSTRING.match((test.__doc__ or "").strip())
        if match is None:
            raise ValueError(
                f"{test.__name__}: docstring must open with 'equation.  [PREFIX-ID] tol: key'"
            )
        contract = contract_of_clause(match["id"])
        tolerance = match["tol"]
        if tolerance != "exact" and tolerance not in TOLERANCES:
            raise ValueError(f"{test.__name__}: unknown tolerance key {tolerance!r}")
        clause_id = match["id"]
        equation = " ".join(match["equation"].split())

        def run(trial: Trial) -> None:
            try:
                test(trial)
            except Mismatch as mismatch:
                violation = ClauseViolation(
                    clause_id, message=f"{equation}\n  {mismatch.message}", **mismatch.details
                )
                if not mismatch.shrink:
                    raise UnshrinkableViolation(violation.violation) from None
                raise violation from None

        run.__name__ = run.__qualname__ = test.__name__
        run.__doc__ = test.__doc__
        return Clause(
            id=clause_id,
            title=test.__name__.replace("_", " "),
            equation=equation,
            tolerance=None if tolerance == "exact" else tolerance,
            contract=contract.name,
            test=run,
            applies=applies or always,
            max_examples=max_examples,
        )

    return make


def always(kernel: KernelUnderTest) -> str | None:
    return None


def accepts(*keywords: str) -> Applicability:
    """Applies when the kernel accepts every keyword (standard ones or declared options)."""

    def check(kernel: KernelUnderTest) -> str | None:
        missing = [k for k in keywords if k not in kernel.accepts]
        return f"the kernel does not accept {', '.join(missing)}" if missing else None

    return check


def supports(*reductions: str) -> Applicability:
    """Applies when the kernel can be asked for each reduction."""

    def check(kernel: KernelUnderTest) -> str | None:
        if any(r != "mean" for r in reductions) and "reduction" not in kernel.accepts:
            return "the kernel does not accept reduction"
        missing = [r for r in reductions if r not in kernel.spec.reductions]
        return f"the kernel does not support reduction={', '.join(missing)}" if missing else None

    return check


def differentiable(kernel: KernelUnderTest) -> str | None:
    return None if kernel.spec.differentiable else "the kernel declares no backward pass"


def all_of(*conditions: Applicability) -> Applicability:
    def check(kernel: KernelUnderTest) -> str | None:
        reasons = [r for r in (c(kernel) for c in conditions) if r]
        return "; ".join(reasons) or None

    return check
