"""How a section module states a clause: a test function whose docstring is the clause.

The docstring opens with the equation, then the clause ID and the tolerance key::

    @clause(applies=accepts("reduction"))
    def loss_is_invariant_under_a_shift(trial: Trial) -> None:
        \"\"\"L(x + c·1, y) = L(x, y) for every scalar c.  [CE-SHIFT] tol: loss\"\"\"

``tol: exact`` marks a clause that admits no error. The decorator turns the function into a
:class:`Clause` (its title is the function's name read as a claim) and turns a
:class:`Mismatch` raised by the checks into a :class:`ClauseViolation` naming the clause.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from properties.engine.clause import Clause, ClauseViolation, Trial
from properties.engine.kernel import KernelUnderTest
from properties.tolerances import TOLERANCES

Applicability = Callable[[KernelUnderTest], "str | None"]

_DOCSTRING = re.compile(
    r"^(?P<equation>.+?)\s+\[(?P<id>CE-[A-Z0-9-]+)\]\s+tol:\s*(?P<tol>\w+)", re.S
)


class Mismatch(Exception):
    """Raised by a check; the clause decorator re-raises it as a ClauseViolation."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


def clause(*, applies: Applicability | None = None) -> Callable[[Callable[[Trial], None]], Clause]:
    """Make a clause of a test function; ``applies`` says why a kernel is out of its scope."""

    def make(test: Callable[[Trial], None]) -> Clause:
        match = _DOCSTRING.match((test.__doc__ or "").strip())
        if match is None:
            raise ValueError(
                f"{test.__name__}: docstring must open with 'equation.  [CE-ID] tol: key'"
            )
        tolerance = match["tol"]
        if tolerance != "exact" and tolerance not in TOLERANCES:
            raise ValueError(f"{test.__name__}: unknown tolerance key {tolerance!r}")
        clause_id = match["id"]
        equation = " ".join(match["equation"].split())

        def run(trial: Trial) -> None:
            try:
                test(trial)
            except Mismatch as mismatch:
                raise ClauseViolation(
                    clause_id, message=f"{equation}\n  {mismatch.message}", **mismatch.details
                ) from None

        run.__name__ = run.__qualname__ = test.__name__
        run.__doc__ = test.__doc__
        return Clause(
            id=clause_id,
            title=test.__name__.replace("_", " "),
            equation=equation,
            tolerance=None if tolerance == "exact" else tolerance,
            test=run,
            applies=applies or always,
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
