"""The checker has teeth: `lmloss check` fails every broken kernel and passes correct ones.

Broken kernels run under the ci profile (derandomized), float32, and only the clauses their
docstring names (``Caught by: CE-…``); each of those clauses must fail. They run in this
process, through the engine call that every `lmloss check` job makes (``run_clause`` on the
kernel loaded from its SPEC): a subprocess per kernel would spend most of its time starting
Python and importing torch, once for itself and once per worker. The command itself runs in a
subprocess, as a user would run it, in the other tests: on a broken kernel with ``-x``, on the
chunked reimplementation in kernels/correct.py (every clause in float32 and bfloat16), and with
no SPEC (one clause, CE-SUM, which shows that no SPEC checks both default kernels).
"""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from properties.engine.kernel import KernelSpec  # noqa: E402
from properties.engine.runner import ClauseResult  # noqa: E402
from properties.kernels import broken  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[2]
#: Generous: a broken kernel is caught within seconds, but shrinking may take up to 30 s
#: (properties.engine.runner.SHRINKING_SECONDS["ci"]) and the machine may be shared.
SECONDS_PER_RUN = 300


def broken_kernels() -> dict[str, tuple[str, ...]]:
    """SPEC name -> the clauses its docstring says catch it, for every kernel in broken.py."""
    found = {}
    for name, obj in vars(broken).items():
        fn = obj.fn if isinstance(obj, KernelSpec) else obj
        if name.startswith("_") or not callable(fn) or inspect.isclass(fn):
            continue
        if getattr(fn, "__module__", None) != broken.__name__:
            continue
        caught_by = re.search(r"Caught by: (CE-[A-Z0-9-]+(?:, CE-[A-Z0-9-]+)*)", fn.__doc__ or "")
        assert caught_by, f"{name}: its docstring must name the clause that catches it"
        found[name] = tuple(caught_by[1].split(", "))
    return found


BROKEN = broken_kernels()


def lmloss_check(*arguments: str) -> subprocess.CompletedProcess[str]:
    """``python -m lmloss check ARGUMENTS`` run from the repository, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "lmloss", "check", *arguments],
        capture_output=True,
        text=True,
        timeout=SECONDS_PER_RUN,
        cwd=REPOSITORY,
    )


def clause_options(name: str) -> list[str]:
    """Check a broken kernel only on the clauses that catch it, float32, ci profile."""
    options = ["--profile", "ci", "--dtype", "float32"]
    for clause in BROKEN[name]:
        options += ["--clause", clause]
    return options


def report_of(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def test_every_broken_kernel_names_a_clause_that_exists() -> None:
    from properties.catalogue import CLAUSES

    known = {clause.id for clause in CLAUSES}
    assert len(BROKEN) >= 12
    named = {clause for clauses in BROKEN.values() for clause in clauses}
    assert named - known == set()


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_check_fails_a_broken_kernel_on_its_clause(name: str) -> None:
    # Each clause the kernel names fails (not "error": the check itself must not crash), and
    # none of them is excused as not applicable: a docstring that names a clause which does
    # not catch the bug fails here, even when another named clause does.
    results = run_named_clauses(f"properties.kernels.broken:{name}", BROKEN[name], "float32")
    verdicts = {(r.clause.id, r.dtype): r.status for r in results}
    assert verdicts == {(clause, "float32"): "fails" for clause in BROKEN[name]}, verdicts
    assert all(r.violation and r.violation.reproducer for r in results), (
        "a failure needs a reproducer"
    )


def run_named_clauses(spec: str, clauses: tuple[str, ...], dtype: str) -> list[ClauseResult]:
    """What `lmloss check SPEC --profile ci --dtype DTYPE --clause ...` runs, in this process:
    the first failure shrunk with the profile's budget, later ones briefly, as the command does."""
    from properties.catalogue import BY_ID
    from properties.engine.check import load_kernel
    from properties.engine.defaults import shrinking_seconds
    from properties.engine.runner import run_clause

    kernel = load_kernel(spec)
    results: list[ClauseResult] = []
    for clause in clauses:
        failed_before = any(result.status == "fails" for result in results)
        results.append(
            run_clause(
                BY_ID[clause],
                kernel,
                dtype=dtype,
                device="cpu",
                profile="ci",
                shrinking_seconds=shrinking_seconds("ci", failed_before=failed_before),
            )
        )
    return results


def test_exitfirst_stops_at_the_first_failure(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    spec = "properties.kernels.broken:mean_counts_ignored_tokens"
    clauses = ("--clause", "CE-MEAN", "--clause", "CE-SUM")
    result = lmloss_check(spec, *clauses, "--profile", "ci", "-x", "--json", str(report))
    assert result.returncode == 1, result.stdout + result.stderr
    (kernel,) = report_of(report)["kernels"]
    assert [(r["clause"], r["status"]) for r in kernel["results"]] == [("CE-MEAN", "fails")]
    assert kernel["stopped_early"] is True
    assert "stopped at the first failure" in result.stdout.splitlines()[-1]


def test_check_passes_a_correct_kernel_on_every_clause(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    spec = "properties.kernels.correct:chunked_kernel"
    result = lmloss_check(spec, "--profile", "ci", "--json", str(report))
    assert result.returncode == 0, result.stdout + result.stderr
    (kernel,) = report_of(report)["kernels"]
    assert {r["status"] for r in kernel["results"]} <= {"holds", "not applicable"}
    assert {r["dtype"] for r in kernel["results"]} == {"float32", "bfloat16"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("torch.nn.functional.cross_entropy", "did you mean torch.nn.functional:cross_entropy"),
        ("no_such_module_for_lmloss:kernel", "cannot import 'no_such_module_for_lmloss'"),
        ("torch.nn.functional:cross_entropi", "did you mean cross_entropy"),
        ("properties.kernels.correct:CHUNK_ROWS", "not a callable"),
    ],
)
def test_check_exits_2_with_a_message_on_an_unusable_spec(spec: str, message: str) -> None:
    result = lmloss_check(spec)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_check_exits_2_on_an_unknown_clause() -> None:
    result = lmloss_check("torch.nn.functional:cross_entropy", "--clause", "CE-NO-SUCH")
    assert result.returncode == 2
    assert "unknown clause CE-NO-SUCH" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_check_exits_2_when_cuda_is_asked_for_and_missing() -> None:
    result = lmloss_check("torch.nn.functional:cross_entropy", "--device", "cuda")
    assert result.returncode == 2
    assert "no CUDA device" in result.stderr


def test_check_exits_2_on_a_bad_option() -> None:
    assert lmloss_check("--dtype", "float8").returncode == 2


def test_report_shows_the_failure_and_a_runnable_reproducer(tmp_path: Path) -> None:
    name = "mean_counts_ignored_tokens"
    spec = f"properties.kernels.broken:{name}"
    report = tmp_path / "report.json"
    result = lmloss_check(spec, *clause_options(name), "--json", str(report))
    text = result.stdout
    (clause,) = BROKEN[name]
    verdict = re.search(rf"^  {clause} +float32 +FAILS", text, re.M)
    assert verdict, text
    # The header is what comes before the first verdict; its lines are found by what they say,
    # so a header line added for a new fact (the contract, say) does not break the test.
    header = text[: verdict.start()].splitlines()
    assert f"lmloss check: properties.kernels.broken.{name}" in header[0]
    assert any("device cpu" in line and "profile ci" in line for line in header), header
    assert any("torch " in line and "hypothesis " in line for line in header), header
    (kernel,) = report_of(report)["kernels"]
    (failure,) = [r for r in kernel["results"] if r["status"] == "fails"]
    violation = failure["violation"]
    for shown in (failure["equation"], "reproduce with:", "oracle:", "kernel:", "bound:"):
        assert shown in text
    assert violation["error"] > violation["bound"]
    assert "DOES NOT CONFORM" in text.splitlines()[-1]
    # The reproducer is Python a person can paste: it runs.
    run = subprocess.run(
        [sys.executable, "-c", violation["reproducer"]],
        capture_output=True,
        text=True,
        timeout=SECONDS_PER_RUN,
        cwd=REPOSITORY,
    )
    assert run.returncode == 0, run.stderr


def test_report_shows_a_kernel_that_raises_and_how_to_repeat_the_call(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    spec = "properties.kernels.broken:flattens_with_view"
    result = lmloss_check(spec, *clause_options("flattens_with_view"), "--json", str(report))
    assert result.returncode == 1
    (kernel,) = report_of(report)["kernels"]
    (failure,) = [r for r in kernel["results"] if r["status"] == "fails"]
    assert "the kernel raised RuntimeError" in failure["violation"]["message"]
    run = subprocess.run(
        [sys.executable, "-c", failure["violation"]["reproducer"]],
        capture_output=True,
        text=True,
        timeout=SECONDS_PER_RUN,
        cwd=REPOSITORY,
    )
    assert "RuntimeError" in run.stderr, "the reproducer must raise as the kernel did"


def test_no_spec_checks_the_production_loss_and_pytorch(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = lmloss_check("--clause", "CE-SUM", "--profile", "ci", "--json", str(report))
    assert result.returncode == 0, result.stdout + result.stderr
    data = report_of(report)
    assert [k["source"] for k in data["kernels"]] == [
        "lmloss:cross_entropy",
        "torch.nn.functional:cross_entropy",
    ]
    assert data["exit_code"] == 0 and data["profile"] == "ci" and data["device"] == "cpu"


def test_report_shows_what_a_kernel_declares(tmp_path: Path) -> None:
    pytest.importorskip("liger_kernel")
    report = tmp_path / "report.json"
    spec = "properties.kernels.real:liger_cross_entropy"
    options = ("--clause", "CE-PURE", "--profile", "ci", "--dtype", "float32")
    result = lmloss_check(spec, *options, "--json", str(report))
    assert "declares: writes into its logits argument" in result.stdout
    (kernel,) = report_of(report)["kernels"]
    assert kernel["declares"]["writes_input"] is True
