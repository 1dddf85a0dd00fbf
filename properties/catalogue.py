"""Every clause of the specification, by contract and ID, in the order of DESIGN.md.

Each section module states its clauses as test functions whose docstrings open with the
equation, then the clause ID (its prefix names the contract) and the tolerance key (see
properties/engine/clause.py).
"""

from __future__ import annotations

from collections.abc import Mapping

from properties.ce import (
    autocast,
    averaging,
    bounds,
    dtypes,
    extremes,
    gradient,
    independence,
    invariance,
    layout,
    masking,
    offset,
    purity,
    reshape,
    scale,
    value,
)
from properties.distributed import data as data_parallel
from properties.distributed import vocab as vocab_parallel
from properties.engine.clause import Clause
from properties.lce import gradient as linear_gradient
from properties.lce import memory as linear_memory
from properties.lce import structure as linear_structure
from properties.lce import value as linear_value

#: Contract 2 (``F.cross_entropy``-shaped kernels), section by section.
CROSS_ENTROPY_SECTIONS = (
    value,
    gradient,
    reshape,
    averaging,
    independence,
    invariance,
    offset,
    extremes,
    scale,
    masking,
    layout,
    purity,
    dtypes,
    autocast,
    bounds,
)

#: Contract 3 (``F.linear_cross_entropy``-shaped kernels).
LINEAR_SECTIONS = (linear_value, linear_gradient, linear_structure, linear_memory)

#: Contract 4 (a loss split across processes): vocab-parallel, then data-parallel.
DISTRIBUTED_SECTIONS = (vocab_parallel, data_parallel)

CLAUSES: tuple[Clause, ...] = tuple(
    clause
    for section in CROSS_ENTROPY_SECTIONS + LINEAR_SECTIONS + DISTRIBUTED_SECTIONS
    for clause in section.CLAUSES
)
BY_ID: Mapping[str, Clause] = {clause.id: clause for clause in CLAUSES}
BY_CONTRACT: Mapping[str, tuple[Clause, ...]] = {
    contract: tuple(clause for clause in CLAUSES if clause.contract == contract)
    for contract in dict.fromkeys(clause.contract for clause in CLAUSES)
}
if len(BY_ID) != len(CLAUSES):
    raise ValueError("two clauses share an ID")
