"""The clauses of contract 2 (a kernel shaped like ``F.cross_entropy``), one module per section
of DESIGN.md, with what they share: the problem the oracle sees, the oracle adapter, the calls."""
