"""Every clause of the specification, section by section (the order of DESIGN.md).

Each section module states its clauses as test functions whose docstrings open with the
equation, then the clause ID and the tolerance key (see properties/_spec.py).
"""

from __future__ import annotations

from properties.ce import (
    averaging,
    bounds,
    dtypes,
    extremes,
    gradient,
    independence,
    invariance,
    layout,
    masking,
    purity,
    reshape,
    value,
)
from properties.engine.clause import Clause

SECTIONS = (
    value,
    gradient,
    reshape,
    averaging,
    independence,
    invariance,
    extremes,
    masking,
    layout,
    purity,
    dtypes,
    bounds,
)

CLAUSES: tuple[Clause, ...] = tuple(clause for section in SECTIONS for clause in section.CLAUSES)
