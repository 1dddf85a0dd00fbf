"""Section masking of the specification: a -inf logit is a class ruled out (clauses in properties/masking.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from properties import masking
from properties._clause import Clause


@pytest.mark.parametrize("clause", masking.CLAUSES, ids=lambda clause: clause.id)
def test_masking_clause_holds(clause: Clause, check: Callable[[Clause], Any]) -> None:
    check(clause)
