"""Section extremes of the specification: the loss stays exact where probabilities underflow and logits are huge (clauses in properties/extremes.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from properties import extremes
from properties._clause import Clause


@pytest.mark.parametrize("clause", extremes.CLAUSES, ids=lambda clause: clause.id)
def test_extremes_clause_holds(clause: Clause, check: Callable[[Clause], Any]) -> None:
    check(clause)
