"""The specification under pytest: every clause of the catalogue, once per kernel and dtype.

The kernels, dtypes, device and profile come from properties/conftest.py (``--kernel``,
``--dtype``, ``--device``, ``LMLOSS_PROFILE``); ``lmloss check`` runs the very same clauses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from properties.catalogue import CLAUSES
from properties.engine.clause import Clause


@pytest.mark.parametrize("clause", CLAUSES, ids=lambda clause: clause.id)
def test_clause_holds(clause: Clause, check: Callable[[Clause], Any]) -> None:
    check(clause)
