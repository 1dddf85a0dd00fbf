"""The checker has teeth for contract 4: `lmloss check --world-size 2` fails every broken
distributed kernel on the clause its docstring names, and passes lmloss's own.

As properties/meta/test_linear_checker.py does for contract 3: ``python -m lmloss check`` in a
subprocess, the ci profile (derandomized, so a CI run is repeatable, and 5 s of shrinking rather
than the quick profile's 30), only the clauses a broken kernel's docstring names
(``Caught by: DIST-… (dtype)``), each of which must fail.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from properties.engine.kernel import KernelSpec  # noqa: E402
from properties.kernels import broken_dist  # noqa: E402
from properties.meta.test_checker import lmloss_check, report_of  # noqa: E402

#: ``Caught by: DIST-VALUE (float32)``: clause IDs, each with an optional dtype.
_CAUGHT_BY = re.compile(r"Caught by: ((?:DIST-[A-Z0-9-]+(?: \(\w+\))?(?:, )?)+)")
_ONE = re.compile(r"(DIST-[A-Z0-9-]+)(?: \((\w+)\))?")
WORLD_SIZE = ("--world-size", "2")


def broken_kernels() -> dict[str, tuple[tuple[str, str], ...]]:
    """SPEC name (a KernelSpec of broken_dist) -> the (clause, dtype) pairs that catch it."""
    found = {}
    for name, obj in vars(broken_dist).items():
        if name.startswith("_") or not isinstance(obj, KernelSpec):
            continue
        caught_by = _CAUGHT_BY.search(" ".join((obj.fn.__doc__ or "").split()))
        assert caught_by, f"{name}: its docstring must name the clause that catches it"
        found[name] = tuple(
            (clause, dtype or "float32") for clause, dtype in _ONE.findall(caught_by[1])
        )
    return found


BROKEN = broken_kernels()


def test_every_bug_class_of_the_issue_has_a_broken_kernel() -> None:
    """Six bug classes (issue 13): local max, unmasked target, local label smoothing, mean of
    means, count not all-reduced, gradient times P; each names clauses that exist."""
    from properties.catalogue import BY_ID

    assert len(BROKEN) == 6, sorted(BROKEN)
    assert all(inspect.isfunction(getattr(broken_dist, name).fn) for name in BROKEN)
    named = {clause for pairs in BROKEN.values() for clause, _ in pairs}
    assert named <= set(BY_ID), sorted(named - set(BY_ID))


def test_check_fails_each_broken_distributed_kernel_on_its_clause(tmp_path: Path) -> None:
    """One run of `lmloss check` for all six (a run per kernel costs a Python start and its
    imports each): every kernel's named clauses fail; the clauses of the other contract, and
    those named by no kernel of its contract, are not run."""
    report = tmp_path / "report.json"
    options = [*WORLD_SIZE, "--profile", "ci"]
    pairs = [pair for named in BROKEN.values() for pair in named]
    for clause in dict.fromkeys(clause for clause, _ in pairs):
        options += ["--clause", clause]
    for dtype in dict.fromkeys(dtype for _, dtype in pairs):
        options += ["--dtype", dtype]
    specs = [f"properties.kernels.broken_dist:{name}" for name in BROKEN]
    result = lmloss_check(*specs, *options, "--json", str(report))
    assert result.returncode == 1, result.stdout + result.stderr
    kernels = {kernel["source"]: kernel for kernel in report_of(report)["kernels"]}
    for name, named in BROKEN.items():
        kernel = kernels[f"properties.kernels.broken_dist:{name}"]
        verdicts = {(r["clause"], r["dtype"]): r["status"] for r in kernel["results"]}
        for pair in named:
            assert verdicts.get(pair) == "fails", (name, pair, verdicts)
        failed = [r for r in kernel["results"] if r["status"] == "fails"]
        assert all(r["violation"]["reproducer"] for r in failed), f"{name}: no reproducer"


def test_check_passes_lmloss_distributed_kernels(tmp_path: Path) -> None:
    """lmloss.vocab_parallel_cross_entropy and lmloss.data_parallel_cross_entropy hold every
    clause of their contracts, in one run."""
    report = tmp_path / "report.json"
    specs = ["lmloss:VOCAB_PARALLEL_SPEC", "lmloss:DATA_PARALLEL_SPEC"]
    result = lmloss_check(*specs, *WORLD_SIZE, "--profile", "ci", "--json", str(report))
    assert result.returncode == 0, result.stdout + result.stderr
    kernels = {kernel["source"]: kernel for kernel in report_of(report)["kernels"]}
    expected = {
        "lmloss:VOCAB_PARALLEL_SPEC": {"DIST-VALUE", "DIST-SMOOTHING", "DIST-GRAD", "DIST-PURE"},
        "lmloss:DATA_PARALLEL_SPEC": {"DIST-DP-MEAN", "DIST-DP-SUM", "DIST-DP-GRAD"},
    }
    for spec, clauses in expected.items():
        statuses = {(r["clause"], r["status"]) for r in kernels[spec]["results"]}
        assert {status for _, status in statuses} == {"holds"}, (spec, statuses)
        assert clauses <= {clause for clause, _ in statuses}, (spec, statuses)
