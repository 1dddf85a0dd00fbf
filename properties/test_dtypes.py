"""Section dtypes of the specification: every dtype meets its bound on the same inputs (clauses in properties/dtypes.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from properties import dtypes
from properties._clause import Clause


@pytest.mark.parametrize("clause", dtypes.CLAUSES, ids=lambda clause: clause.id)
def test_dtypes_clause_holds(clause: Clause, check: Callable[[Clause], Any]) -> None:
    check(clause)
