"""Section gradient of the specification: the gradient is softmax minus the target distribution, scaled (clauses in properties/gradient.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from properties import gradient
from properties._clause import Clause


@pytest.mark.parametrize("clause", gradient.CLAUSES, ids=lambda clause: clause.id)
def test_gradient_clause_holds(clause: Clause, check: Callable[[Clause], Any]) -> None:
    check(clause)
