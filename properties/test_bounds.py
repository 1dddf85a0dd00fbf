"""Section bounds of the specification: every token's loss lies in [0, x_max - x_target + log C] (clauses in properties/bounds.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from properties import bounds
from properties._clause import Clause


@pytest.mark.parametrize("clause", bounds.CLAUSES, ids=lambda clause: clause.id)
def test_bounds_clause_holds(clause: Clause, check: Callable[[Clause], Any]) -> None:
    check(clause)
