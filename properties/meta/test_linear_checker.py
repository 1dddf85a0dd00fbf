"""The checker has teeth for contract 3: `lmloss check` fails every broken fused projection +
loss kernel on the clause its docstring names, and passes correct ones.

As properties/meta/test_checker.py does for contract 2: the broken kernels run in this process
through the engine call every `lmloss check` job makes, the ci profile (derandomized), only the
clauses a broken kernel's docstring names (``Caught by: LCE-… (dtype)``, float32 unless a dtype
is named), each of which must fail; the correct kernels run ``python -m lmloss check`` in a
subprocess, every clause.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from properties.engine.check import load_kernel  # noqa: E402
from properties.engine.kernel import KernelSpec  # noqa: E402
from properties.kernels import broken_linear  # noqa: E402
from properties.meta.test_checker import lmloss_check, report_of, run_named_clauses  # noqa: E402

#: ``Caught by: LCE-GRAD (bfloat16), LCE-VALUE``: clause IDs, each with an optional dtype.
_CAUGHT_BY = re.compile(r"Caught by: ((?:LCE-[A-Z0-9-]+(?: \(\w+\))?(?:, )?)+)")
_ONE = re.compile(r"(LCE-[A-Z0-9-]+)(?: \((\w+)\))?")


def broken_kernels() -> dict[str, tuple[tuple[str, str], ...]]:
    """SPEC name -> the (clause, dtype) pairs its docstring says catch it."""
    found = {}
    for name, obj in vars(broken_linear).items():
        fn = obj.fn if isinstance(obj, KernelSpec) else obj
        if name.startswith("_") or not callable(fn) or inspect.isclass(fn):
            continue
        if getattr(fn, "__module__", None) != broken_linear.__name__:
            continue
        caught_by = _CAUGHT_BY.search(" ".join((fn.__doc__ or "").split()))
        assert caught_by, f"{name}: its docstring must name the clause that catches it"
        found[name] = tuple(
            (clause, dtype or "float32") for clause, dtype in _ONE.findall(caught_by[1])
        )
    return found


BROKEN = broken_kernels()


def test_every_bug_class_of_the_issue_has_a_broken_kernel() -> None:
    from properties.catalogue import BY_ID

    assert len(BROKEN) >= 8
    named = {clause for pairs in BROKEN.values() for clause, _ in pairs}
    assert named <= set(BY_ID), sorted(named - set(BY_ID))


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_check_fails_a_broken_linear_kernel_on_its_clause(name: str) -> None:
    spec = f"properties.kernels.broken_linear:{name}"
    assert load_kernel(spec).contract.name == "linear"
    verdicts = {}
    for dtype in dict.fromkeys(dtype for _, dtype in BROKEN[name]):
        clauses = tuple(dict.fromkeys(clause for clause, _ in BROKEN[name]))
        for result in run_named_clauses(spec, clauses, dtype):
            verdicts[(result.clause.id, dtype)] = result
            if result.status == "fails":
                assert result.violation and result.violation.reproducer, (
                    "a failure needs a reproducer"
                )
    for pair in BROKEN[name]:
        assert verdicts[pair].status == "fails", (pair, verdicts[pair])


@pytest.mark.parametrize(
    "spec",
    [
        "torch.nn.functional:linear_cross_entropy",
        "properties.kernels.correct:chunked_linear_cross_entropy",
    ],
)
def test_check_passes_a_correct_linear_kernel(spec: str, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = lmloss_check(spec, "--profile", "ci", "--json", str(report))
    assert result.returncode == 0, result.stdout + result.stderr
    (kernel,) = report_of(report)["kernels"]
    statuses = {(r["clause"], r["status"]) for r in kernel["results"]}
    assert {status for _, status in statuses} <= {"holds", "not applicable"}
    assert {clause for clause, _ in statuses} >= {"LCE-VALUE", "LCE-GRAD", "LCE-PURE"}
    assert "linear_cross_entropy" in result.stdout.splitlines()[1], result.stdout
