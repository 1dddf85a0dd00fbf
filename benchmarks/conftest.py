"""The benchmarks' shared configuration.

The oracle's benchmarks: a benchmark times the oracle with pytest-benchmark and the
straightforward 30-digit mpmath loop once, in the same run; ``ratio(benchmark, label,
straightforward_seconds)`` keeps both (also in the benchmark's extra_info, so
``--benchmark-json`` holds them) and the terminal summary lists straightforward time / the
oracle's fastest round.

The kernels' benchmarks (test_kernel_speed.py): ``--bench-device cpu|cuda`` (default: CUDA when
torch sees one), ``--kernel module:attr`` to time a kernel of one's own beside the others
(repeat for several), the session's ``device``, ``copy_bandwidth`` and ``provenance``, and their
clock: CUDA events on CUDA, ``time.perf_counter`` on the CPU (benchmarks/_timing.py). On the
CPU the Triton interpreter is switched on (TRITON_INTERPRET=1, unless set) before anything
imports triton, so that Triton kernels run there.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks import _machine, _timing


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lmloss-bench", "the loss kernels' speed benchmarks")
    group.addoption(
        "--bench-device",
        choices=("cpu", "cuda"),
        default=None,
        help="device the kernel benchmarks run on; default: cuda when available, else cpu",
    )
    # Collected together with properties/, whose conftest adds the same --kernel (append,
    # MODULE:ATTR) first, adding it again raises ValueError: then one option serves both.
    with contextlib.suppress(ValueError):
        group.addoption(
            "--kernel",
            action="append",
            default=[],
            metavar="MODULE:ATTR",
            help="a kernel to time beside the others (repeat for several)",
        )


def pytest_configure(config: pytest.Config) -> None:
    # torch.compile imports torch.utils.mkldnn, whose torch.jit.script_method warns at import
    # (torch 2.13): under the project's filterwarnings = error that import would fail.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning",
    )
    # A kernel benchmark that fails its value check (or is skipped) never times: pytest-benchmark
    # then warns that the fixture was not used, which filterwarnings = error would add as an error.
    config.addinivalue_line(
        "filterwarnings", "ignore:Benchmark fixture was not used at all in this test!"
    )
    if _machine.bench_device(config.getoption("bench_device")) == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The kernel benchmarks (those that take ``device``) get the device's clock."""
    clock = _timing.clock_for(_machine.bench_device(config.getoption("bench_device")))
    here = Path(__file__).parent
    for item in items:
        if item.path.parent == here and "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.benchmark(timer=clock))


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> str:
    return _machine.bench_device(pytestconfig.getoption("bench_device"))


@pytest.fixture(scope="session")
def copy_bandwidth(device: str) -> float:
    """Bytes per second of y.copy_(x) on the device, read and write counted, in this session."""
    return _timing.copy_bandwidth(device)


@pytest.fixture(scope="session")
def provenance(device: str) -> dict[str, Any]:
    return _machine.provenance(device)


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
