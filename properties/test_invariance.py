"""Section invariance of the specification: a shift of every logit changes nothing (clauses in properties/invariance.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from properties import invariance
from properties._clause import Clause


@pytest.mark.parametrize("clause", invariance.CLAUSES, ids=lambda clause: clause.id)
def test_invariance_clause_holds(clause: Clause, check: Callable[[Clause], Any]) -> None:
    check(clause)
