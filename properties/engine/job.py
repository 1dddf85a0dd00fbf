"""A job: one clause, one dtype, one kernel, as plain data that runs in this process or another.

A :class:`Job` names its kernel and its clause by import path (``module:attr`` and a clause ID
in a catalogue at ``module:attr``), so it pickles, and a worker process can load both and run
it. What it returns, a :class:`~properties.engine.runner.ClauseResult`, is plain data too: the
parent renders it. In this process, :meth:`Job.run` takes the already loaded kernel and clause.

Each job runs alone in its process (one after another here, one per worker elsewhere): the
runner sets Hypothesis's shrinking deadline, a module-level value, for the job's duration.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from properties.engine.defaults import DEFAULT_PROFILE

if TYPE_CHECKING:
    from properties.engine.clause import Clause
    from properties.engine.kernel import KernelUnderTest
    from properties.engine.runner import CallWatch, ClauseResult

#: Where the clauses of the specification are listed, by contract and ID.
CATALOGUE = "properties.catalogue:CLAUSES"


@dataclass(frozen=True)
class Job:
    """Check one clause for one kernel in one dtype on one device under one profile."""

    #: ``module:attr`` of the kernel (a callable or a KernelSpec).
    spec: str
    clause: str  # the clause's ID, e.g. "CE-SHIFT"
    dtype: str
    device: str
    profile: str = DEFAULT_PROFILE
    #: Seconds Hypothesis may shrink a failure; None: the profile's full budget.
    shrinking_seconds: int | None = None
    #: ``module:attr`` of the sequence of clauses that holds ``clause``.
    catalogue: str = CATALOGUE
    #: Every dtype of the run (a clause that compares dtypes compares these); () : ``dtype``.
    run_dtypes: tuple[str, ...] = ()
    #: Distributed contracts: the number of rank processes (None: the default, 2) and the
    #: seconds each may take to answer a call (None: properties.distributed.group's default).
    world_size: int | None = None
    rank_seconds: float | None = None

    def run(
        self,
        *,
        kernel: KernelUnderTest | None = None,
        clause: Clause | None = None,
        watch: CallWatch | None = None,
    ) -> ClauseResult:
        """Run the job; ``kernel`` and ``clause``, when given, are the ones it names, loaded;
        ``watch`` is told of each kernel call (see properties.engine.runner.run_clause)."""
        from properties.engine.check import load_kernel
        from properties.engine.runner import run_clause

        return run_clause(
            clause if clause is not None else find_clause(self.catalogue, self.clause),
            kernel if kernel is not None else load_kernel(self.spec),
            dtype=self.dtype,
            device=self.device,
            profile=self.profile,
            shrinking_seconds=self.shrinking_seconds,
            run_dtypes=self.run_dtypes,
            watch=watch,
            world_size=self.world_size,
            rank_seconds=self.rank_seconds,
        )


def run_job(job: Job) -> ClauseResult:
    """``job.run()``: a module-level function, for a pool of worker processes."""
    return job.run()


def clauses_in(catalogue: str) -> Sequence[Clause]:
    """The clauses of the catalogue at ``module:attr``."""
    module, _, attribute = catalogue.partition(":")
    clauses: Sequence[Clause] = getattr(importlib.import_module(module), attribute)
    return clauses


def find_clause(catalogue: str, clause_id: str) -> Clause:
    """The clause ``clause_id`` of the catalogue at ``module:attr`` (KeyError names the known IDs)."""
    clauses = clauses_in(catalogue)
    for clause in clauses:
        if clause.id == clause_id:
            return clause
    raise KeyError(
        f"no clause {clause_id} in {catalogue}; it has {', '.join(c.id for c in clauses)}"
    )
