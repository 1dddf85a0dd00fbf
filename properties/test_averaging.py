"""Section averaging of the specification: the mean is over counted tokens and micro-batches accumulate to the batch (clauses in properties/averaging.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from properties import averaging
from properties._clause import Clause


@pytest.mark.parametrize("clause", averaging.CLAUSES, ids=lambda clause: clause.id)
def test_averaging_clause_holds(clause: Clause, check: Callable[[Clause], Any]) -> None:
    check(clause)
