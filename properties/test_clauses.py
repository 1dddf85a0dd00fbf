"""The specification under pytest: every clause of the catalogue, once per kernel and dtype.

The kernels, dtypes, device and profile come from properties/conftest.py (``--kernel``,
``--dtype``, ``--device``, ``LMLOSS_PROFILE``); ``lmloss check`` runs the very same clauses.
The distributed clauses (contract 4) run against the ``--kernel`` kernels of their contract, or
else this project's own (DEFAULT_DISTRIBUTED_KERNELS), on ``--world-size`` rank processes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from properties.catalogue import CLAUSES
from properties.contract import contract_named
from properties.engine.clause import Clause

DISTRIBUTED = tuple(clause for clause in CLAUSES if contract_named(clause.contract).distributed)
IN_ONE_PROCESS = tuple(clause for clause in CLAUSES if clause not in DISTRIBUTED)


@pytest.mark.parametrize("clause", IN_ONE_PROCESS, ids=lambda clause: clause.id)
def test_clause_holds(clause: Clause, check: Callable[[Clause], Any]) -> None:
    check(clause)


@pytest.mark.parametrize("clause", DISTRIBUTED, ids=lambda clause: clause.id)
def test_distributed_clause_holds(
    clause: Clause, check_distributed: Callable[[Clause], Any]
) -> None:
    check_distributed(clause)
