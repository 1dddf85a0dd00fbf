"""The server the checker's worker processes fork from, and what it imports before it forks.

Torch-free on purpose: ``lmloss check`` starts the server first thing, so that it imports torch
and the catalogue while the command's own process imports them too (two cores, two imports at
once), instead of after.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import ForkServerContext

#: Imported once by the forkserver, so that no worker imports them itself. Besides the suite's
#: own: what the first example of a clause imports lazily, 0.8 s in every worker otherwise
#: (torch 2.13's backward with a grad_output imports symbolic_shapes and with it sympy;
#: Hypothesis seeds numpy.random). A module a version lacks is skipped by the forkserver.
PRELOAD = [
    "torch",
    "hypothesis",
    "properties.catalogue",
    "properties.engine.check",
    "torch.fx.experimental.symbolic_shapes",
    "numpy.random",
]


def context() -> ForkServerContext:
    """The forkserver context, its preload set (the server is started by its first process)."""
    forkserver = multiprocessing.get_context("forkserver")
    forkserver.set_forkserver_preload(PRELOAD)
    return forkserver


def start() -> None:
    """Start the forkserver now; it imports PRELOAD in the background, and the first worker
    waits for it."""
    from multiprocessing import forkserver

    context()
    forkserver.ensure_running()
