"""Section layout of the specification: the loss and gradient do not depend on memory layout (clauses in properties/layout.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from properties import layout
from properties._clause import Clause


@pytest.mark.parametrize("clause", layout.CLAUSES, ids=lambda clause: clause.id)
def test_layout_clause_holds(clause: Clause, check: Callable[[Clause], Any]) -> None:
    check(clause)
