"""Meta tests of the worker processes: a kernel that kills its process or never returns is a
finding on its clause, with the input of that call, and the run goes on with a fresh worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

REPOSITORY = Path(__file__).resolve().parents[2]
HERE = "properties.meta.test_workers"
#: Rows from which the kernels below misbehave: the batches the clauses draw reach it early.
MISBEHAVES_FROM_ROWS = 4


def aborts_on_four_rows_or_more(logits: Any, target: Any, **options: Any) -> Any:
    if logits.shape[0] >= MISBEHAVES_FROM_ROWS:
        os.abort()
    return torch.nn.functional.cross_entropy(logits, target, **options)


def hangs_on_four_rows_or_more(logits: Any, target: Any, **options: Any) -> Any:
    if logits.shape[0] >= MISBEHAVES_FROM_ROWS:
        time.sleep(3600)
    return torch.nn.functional.cross_entropy(logits, target, **options)


def tells_its_torch_threads(logits: Any, target: Any, **options: Any) -> Any:
    raise RuntimeError(f"torch runs {torch.get_num_threads()} threads here")


def check(kernel: str, *options: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "lmloss", "check", f"{HERE}:{kernel}"]
    command += ["--clause", "CE-MEAN", "--clause", "CE-SUM", "--dtype", "float32"]
    return subprocess.run(
        [*command, "--profile", "ci", *options],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=600,
    )


def reproduced_rows(output: str) -> int:
    """The rows of the logits in the report's first reproducer, by running it."""
    snippet = output.split("reproduce with:\n", 1)[1].split("\n\n", 1)[0]
    lines = [line.strip() for line in snippet.splitlines()]
    program = "\n".join(line for line in lines if not line.startswith("loss ="))
    namespace: dict[str, Any] = {}
    exec(program, namespace)
    return int(namespace["logits"].shape[0])


def test_a_kernel_that_kills_its_process_is_reported_and_the_run_goes_on() -> None:
    run = check("aborts_on_four_rows_or_more")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "the kernel ended its worker process (killed by SIGABRT)" in run.stdout
    assert reproduced_rows(run.stdout) >= MISBEHAVES_FROM_ROWS
    # Both clauses were reported: a fresh worker took the job after the crash.
    assert "CE-MEAN                float32   FAILS" in run.stdout
    assert "CE-SUM                 float32   FAILS" in run.stdout


def test_a_kernel_call_that_does_not_return_is_reported_as_hung() -> None:
    started = time.monotonic()
    run = check("hangs_on_four_rows_or_more", "--call-timeout", "3")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "the kernel's call did not return within 3 s" in run.stdout
    assert reproduced_rows(run.stdout) >= MISBEHAVES_FROM_ROWS
    assert "CE-SUM                 float32   FAILS" in run.stdout
    assert time.monotonic() - started < 300


def test_several_workers_give_the_report_of_one() -> None:
    one = check("aborts_on_four_rows_or_more", "--jobs", "1")
    two = check("aborts_on_four_rows_or_more", "--jobs", "2")
    assert two.returncode == one.returncode == 1

    def verdicts(output: str) -> list[str]:
        return [line.split()[:3] for line in output.splitlines() if line.startswith("  CE-")]

    assert verdicts(two.stdout) == verdicts(one.stdout)


def test_each_of_several_workers_runs_torch_on_its_share_of_the_cores() -> None:
    from properties.engine.workers import worker_threads

    run = check("tells_its_torch_threads", "--jobs", "2")
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"torch runs {worker_threads(2)} threads here" in run.stdout


def test_worker_threads_share_the_cores() -> None:
    from properties.engine.workers import worker_threads

    assert worker_threads(1, cores=2) is None  # one worker: torch's default
    assert worker_threads(2, cores=2) == 1
    assert worker_threads(3, cores=2) == 1
    assert worker_threads(2, cores=16) == 8


def test_jobs_default_to_one_worker_per_usable_core() -> None:
    from lmloss.__main__ import build_parser
    from properties.engine.workers import usable_cores

    parser = build_parser()
    assert parser.parse_args(["check"]).jobs == usable_cores()
    assert parser.parse_args(["check", "-j", "auto"]).jobs == usable_cores()
    assert parser.parse_args(["check", "-j", "1"]).jobs == 1
    assert parser.parse_args(["check", "--jobs", "3"]).jobs == 3
    for wrong in ("0", "-2", "many"):
        with pytest.raises(SystemExit):
            parser.parse_args(["check", "-j", wrong])
