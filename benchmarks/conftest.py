"""The benchmarks' shared fixture: a ratio to the straightforward loop, printed at the end of a run.

A benchmark times the oracle with pytest-benchmark and the straightforward 30-digit mpmath loop
once, in the same run; ``ratio(benchmark, label, straightforward_seconds)`` keeps both (also in
the benchmark's extra_info, so ``--benchmark-json`` holds them) and the terminal summary lists
straightforward time / the oracle's fastest round.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

_RATIOS: list[tuple[str, float, float]] = []


@pytest.fixture
def ratio() -> Callable[[Any, str, float], None]:
    def record(benchmark: Any, label: str, straightforward_seconds: float) -> None:
        stats = getattr(benchmark, "stats", None)
        if stats is None:  # --benchmark-disable: nothing was timed
            return
        fastest = stats.stats.min
        benchmark.extra_info["straightforward_seconds"] = straightforward_seconds
        benchmark.extra_info["speedup"] = straightforward_seconds / fastest
        _RATIOS.append((label, fastest, straightforward_seconds))

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _RATIOS:
        return
    write = terminalreporter.write_line
    write("")
    write("oracle vs the straightforward 30-digit mpmath loop (same run):")
    write(f"  {'':44} {'oracle':>10} {'30 digits':>10} {'ratio':>7}")
    for label, fastest, baseline in _RATIOS:
        write(f"  {label:44} {fastest:9.3f}s {baseline:9.3f}s {baseline / fastest:6.1f}x")
