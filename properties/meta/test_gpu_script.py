"""Meta test of benchmarks/gpu_check.sh, dry-run on the CPU: it writes each check's report, its
JSON and one summary line per kernel and dtype into one folder, and installs nothing."""

from __future__ import annotations

import os
import subprocess
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
    }
    run = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", str(tmp_path / "out")],
        cwd=REPOSITORY,
        env={**os.environ, **settings},
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
