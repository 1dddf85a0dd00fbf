"""The shape of a clause: an ID, its equation, its tolerance key, and the test that states it.

A clause's test draws its inputs from a Hypothesis ``data`` object, calls the kernel, compares
with the oracle, and raises :class:`ClauseViolation` when the clause does not hold. The same
test runs under pytest (properties/test_*.py) and under ``lmloss check``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hypothesis.strategies import DataObject

    from properties.engine.kernel import KernelUnderTest


@dataclass
class Trial:
    """One run of a clause against one kernel in one dtype on one device."""

    kernel: KernelUnderTest
    dtype: str  # "float32" | "bfloat16" | "float16"
    device: str  # "cpu" | "cuda"
    data: DataObject
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
class Clause:
    id: str  # e.g. "CE-SHIFT"
    title: str  # e.g. "shift invariance"
    equation: str  # e.g. "L(x + c·1, y) = L(x, y) for every scalar c"
    tolerance: str | None  # key in properties.tolerances; None for exact clauses
    test: Callable[[Trial], None]
    #: kernel -> None when the clause applies, else the reason it does not (shown in the report).
    applies: Callable[[KernelUnderTest], str | None] = field(default=lambda kernel: None)


class ClauseViolation(AssertionError):
    """A clause did not hold. The message names the clause, the input, both values, the error and the bound."""

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
        self.clause = clause
        self.message = message
        self.reproducer = reproducer  # a short Python snippet that reproduces the failure
        self.oracle = oracle
        self.kernel = kernel
        self.error = error
        self.bound = bound
        super().__init__(self.render())

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
