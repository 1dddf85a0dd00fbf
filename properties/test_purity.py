"""Section purity of the specification: the inputs are left unchanged (clauses in properties/purity.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from properties import purity
from properties._clause import Clause


@pytest.mark.parametrize("clause", purity.CLAUSES, ids=lambda clause: clause.id)
def test_purity_clause_holds(clause: Clause, check: Callable[[Clause], Any]) -> None:
    check(clause)
