"""Meta tests of the engine's seams: a contract declared outside the engine runs end to end, and a
job (with its result) crosses a process boundary.

The throwaway contract: "the mean cross-entropy of the logits halved", prefix HALF. It is
declared here, with one clause and two kernels, and nothing in properties/engine names it.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import pickle

import pytest

pytest.importorskip("torch")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from properties.ce.oracle import oracle_loss  # noqa: E402
from properties.ce.problem import Problem  # noqa: E402
from properties.contract import Contract, register  # noqa: E402
from properties.contract.cross_entropy import result_problem  # noqa: E402
from properties.engine.check import (  # noqa: E402
    KernelReport,
    check_kernel,
    load_kernel,
    select_clauses,
)
from properties.engine.checks import check_close  # noqa: E402
from properties.engine.clause import Trial, clause  # noqa: E402
from properties.engine.job import Job, run_job  # noqa: E402
from properties.engine.kernel import KernelSpec  # noqa: E402
from properties.engine.runner import run_clause  # noqa: E402
from properties.strategies import batches  # noqa: E402
from properties.tolerances import loss_bound  # noqa: E402

HALVED = register(
    Contract(
        name="halved_cross_entropy",
        prefix="HALF",
        shape="fn(logits (N, C), target (N,)) = mean cross-entropy of logits / 2",
        arguments=("logits", "target"),
        keywords=(),
        options=(),
        result_rule=result_problem,
    )
)

HERE = "properties.meta.test_contracts"


@clause()
def the_loss_is_cross_entropy_of_the_halved_logits(trial: Trial) -> None:
    """L(x, y) = CE_mean(x/2, y), every row counted.  [HALF-VALUE] tol: loss"""
    batch = trial.data.draw(
        batches(dtype=trial.dtype, reductions=("mean",), options=()),
        label="batch",
    )
    # Halving a float is exact but for subnormals, whose lost bit is far below any bound.
    problem = Problem.of(batch.x.double() / 2, batch.y).but(dtype=trial.dtype)
    actual = trial.kernel(batch.x.clone(), batch.y.clone()).detach()
    check_close(
        trial,
        quantity="loss",
        actual=actual,
        expected=oracle_loss(problem),
        bound=loss_bound(problem),
        context=batch.describe(),
        reproducer=batch.source(),
    )


CLAUSES = (the_loss_is_cross_entropy_of_the_halved_logits,)


def halved(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float() / 2, target).to(logits.dtype)


def not_halved(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), target).to(logits.dtype)


HALVED_KERNEL = KernelSpec(fn=halved, contract="halved_cross_entropy")
NOT_HALVED_KERNEL = KernelSpec(fn=not_halved, contract="halved_cross_entropy")


def report_of(spec: str) -> KernelReport:
    clauses = select_clauses([], catalogue=f"{HERE}:CLAUSES")
    report = KernelReport(load_kernel(spec), "cpu", "ci", ("float32",), {})
    return check_kernel(report, clauses)


def test_a_contract_declared_outside_the_engine_runs_end_to_end() -> None:
    holds = report_of(f"{HERE}:HALVED_KERNEL")
    assert holds.kernel.contract is HALVED
    assert [(r.clause.id, r.status) for r in holds.results] == [("HALF-VALUE", "holds")]
    fails = report_of(f"{HERE}:NOT_HALVED_KERNEL")
    assert [(r.clause.id, r.status) for r in fails.results] == [("HALF-VALUE", "fails")]
    assert fails.results[0].violation is not None
    assert fails.results[0].violation.clause == "HALF-VALUE"


def test_a_kernel_is_checked_only_against_its_own_contract() -> None:
    cross_entropy = load_kernel("torch.nn.functional:cross_entropy")
    result = run_clause(CLAUSES[0], cross_entropy, dtype="float32", device="cpu", profile="ci")
    assert result.status == "not applicable"
    assert "halved_cross_entropy" in (result.reason or "")
    report = KernelReport(cross_entropy, "cpu", "ci", ("float32",), {})
    assert check_kernel(report, CLAUSES).results == []


def test_a_clause_id_must_open_with_a_known_contract_prefix() -> None:
    def stated_for_no_contract(trial: Trial) -> None:
        """L = L.  [NOPE-THING] tol: loss"""

    with pytest.raises(
        ValueError,
        match=r"clause NOPE-THING: no contract's prefix opens it; known: CE- \(cross_entropy\)",
    ):
        clause()(stated_for_no_contract)


def test_a_job_and_its_result_round_trip_through_pickle() -> None:
    job = Job(
        spec=f"{HERE}:NOT_HALVED_KERNEL",
        clause="HALF-VALUE",
        dtype="float32",
        device="cpu",
        profile="ci",
        catalogue=f"{HERE}:CLAUSES",
    )
    assert pickle.loads(pickle.dumps(job)) == job
    result = job.run()
    assert result.status == "fails"
    assert pickle.loads(pickle.dumps(result)) == result


def test_a_job_runs_in_a_worker_process() -> None:
    job = Job(
        spec=f"{HERE}:HALVED_KERNEL",
        clause="HALF-VALUE",
        dtype="bfloat16",
        device="cpu",
        profile="ci",
        catalogue=f"{HERE}:CLAUSES",
    )
    # spawn: a fresh interpreter that must load the kernel and the clause from the job alone.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        result = pool.submit(run_job, job).result(timeout=300)
    assert (result.clause.id, result.dtype, result.status) == ("HALF-VALUE", "bfloat16", "holds")
    assert result.examples > 0
