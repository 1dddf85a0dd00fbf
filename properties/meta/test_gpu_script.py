"""Meta test of benchmarks/gpu_check.sh, dry-run on the CPU: it writes each check's report, its
JSON and one summary line per kernel and dtype into one folder, times the kernel benchmarks it is
asked for (benchmarks/run_gpu.sh) into a JSON of its own, and installs nothing."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

pytest.importorskip("torch")

REPOSITORY = Path(__file__).resolve().parents[2]


def test_the_gpu_script_writes_reports_and_a_summary(tmp_path: Path) -> None:
    settings = {
        "DEVICE": "cpu",
        "JOBS": "1",
        "PROFILE": "ci",
        "STEP_SECONDS": "300",
        "KERNELS": "properties.kernels.broken:mean_counts_ignored_tokens",
        "CLAUSES": "CE-MEAN",
        "PYTEST_MARK": "",
        # Two benchmarks of PyTorch's own kernel: the step, not the kernels, is under test.
        "BENCH_SELECT": "test_cross_entropy_speed and torch-eager and float32",
    }
    run = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", str(tmp_path / "out")],
        cwd=REPOSITORY,
        # Without this test's pytest-xdist variables: pytest-benchmark, seeing them, would take
        # the script's benchmark run for an xdist worker and refuse to time anything.
        env={**_without_pytest_variables(os.environ), **settings},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    written = {path.name for path in (tmp_path / "out").iterdir()}
    report = "properties.kernels.broken_mean_counts_ignored_tokens"
    assert {"summary.txt", "versions.txt", f"{report}.json", f"{report}.txt"} <= written
    summary = (tmp_path / "out" / "summary.txt").read_text(encoding="utf-8")
    assert "lmloss check properties.kernels.broken:mean_counts_ignored_tokens: exit 1" in summary
    assert "float32: 1 fails (complete); not holding: CE-MEAN" in summary
    assert "kernel benchmarks: exit 0" in summary, summary
    (kept,) = (tmp_path / "out" / "benchmarks").glob("*.json")
    timed = json.loads(kept.read_text(encoding="utf-8"))["benchmarks"]
    assert {b["extra_info"]["direction"] for b in timed} == {"forward", "forward+backward"}
    for benchmark in timed:
        info = benchmark["extra_info"]
        assert (info["kernel"], info["dtype"], info["device"]) == ("torch-eager", "float32", "cpu")
        assert info["gb_per_s"] > 0 and info["percent_of_copy"] > 0
        assert info["loss_error_ratio"] <= 1
    if importlib.util.find_spec("matplotlib") is not None:
        assert kept.with_suffix(".png").exists()


def _without_pytest_variables(environment: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in environment.items() if not name.startswith("PYTEST_")}
