"""Meta tests of `lmloss check`'s report as it streams: a stopped run keeps what it found, and
failures of one cause are told once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

REPOSITORY = Path(__file__).resolve().parents[2]
HERE = "properties.meta.test_report_stream"


def always_raises(logits: object, target: object, *, reduction: str = "mean") -> object:
    raise RuntimeError("this kernel is not written yet")


def lmloss_check(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "lmloss", "check", *arguments]


def test_a_stopped_run_keeps_its_findings_in_the_json(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    command = lmloss_check(
        "properties.kernels.broken:mean_counts_ignored_tokens",
        *("--clause", "CE-MEAN", "--clause", "CE-SUM", "--clause", "CE-NONE"),
        *("--dtype", "float32", "--json", str(report)),
        # One worker: with several, CE-SUM and CE-NONE may finish while CE-MEAN is still
        # shrinking, and the run would be complete before it could be stopped.
        *("-j", "1"),
    )
    with subprocess.Popen(command, cwd=REPOSITORY, stdout=subprocess.PIPE, text=True) as run:
        assert run.stdout is not None
        for line in run.stdout:
            if "CE-MEAN" in line and "FAILS" in line:
                break
        # The JSON is rewritten right after the result is printed; give it a moment.
        deadline = time.monotonic() + 60
        while not report.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        run.kill()  # stopped before CE-SUM and CE-NONE are done
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["complete"] is False
    (kernel,) = data["kernels"]
    assert kernel["results"][0]["clause"] == "CE-MEAN"
    assert kernel["results"][0]["status"] == "fails"
    assert kernel["results"][0]["violation"]["reproducer"]


def test_failures_of_one_cause_are_told_once(tmp_path: Path) -> None:
    run = subprocess.run(
        lmloss_check(
            f"{HERE}:always_raises",
            "--clause",
            "CE-MEAN",
            "--clause",
            "CE-SUM",
            "--dtype",
            "float32",
            "--profile",
            "ci",
        ),
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 1, run.stderr
    assert run.stdout.count("RuntimeError: this kernel is not written yet") == 2
    assert run.stdout.count("reproduce with:") == 1, run.stdout
    assert "CE-SUM · float32 · FAILS" in run.stdout
    assert "same cause as CE-MEAN · float32 (shown above)" in run.stdout


def warns_on_every_call(logits: Any, target: Any, **options: Any) -> Any:
    warnings.warn("recompiling for a new shape", UserWarning, stacklevel=1)
    return torch.nn.functional.cross_entropy(logits, target, **options)


def test_a_kernels_warnings_are_shown_once_each_with_a_count() -> None:
    run = subprocess.run(
        lmloss_check(
            f"{HERE}:warns_on_every_call",
            *("--clause", "CE-SUM", "--dtype", "float32", "--profile", "ci"),
        ),
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("UserWarning: recompiling for a new shape") == 1, run.stdout
    # Every call warned: the count is the number of calls, at least one per example.
    (line,) = [line for line in run.stdout.splitlines() if "recompiling" in line]
    assert int(line.split("×")[0]) >= 15
