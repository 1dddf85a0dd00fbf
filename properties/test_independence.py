"""Section independence of the specification: a row's loss depends on its own row only (clauses in properties/independence.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from properties import independence
from properties._clause import Clause


@pytest.mark.parametrize("clause", independence.CLAUSES, ids=lambda clause: clause.id)
def test_independence_clause_holds(clause: Clause, check: Callable[[Clause], Any]) -> None:
    check(clause)
