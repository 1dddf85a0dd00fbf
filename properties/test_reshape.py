"""Section reshape of the specification: the loss of a reshaped, reordered or split batch is the token-weighted mean (clauses in properties/reshape.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from properties import reshape
from properties._clause import Clause


@pytest.mark.parametrize("clause", reshape.CLAUSES, ids=lambda clause: clause.id)
def test_reshape_clause_holds(clause: Clause, check: Callable[[Clause], Any]) -> None:
    check(clause)
