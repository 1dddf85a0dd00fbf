"""Section value of the specification: the loss equals the oracle's for every reduction and option (clauses in properties/value.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from properties import value
from properties._clause import Clause


@pytest.mark.parametrize("clause", value.CLAUSES, ids=lambda clause: clause.id)
def test_value_clause_holds(clause: Clause, check: Callable[[Clause], Any]) -> None:
    check(clause)
