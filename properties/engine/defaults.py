"""The engine's defaults, each defined once: devices, dtypes, kernels, profiles.

Nothing here imports torch or Hypothesis, so pytest's configuration and the command line can
read them before either is loaded.
"""

from __future__ import annotations

from typing import Any

#: What `lmloss check` with no SPEC checks, and what the pytest suite checks with no --kernel:
#: this project's production loss and PyTorch's.
DEFAULT_KERNELS = ("lmloss:cross_entropy", "torch.nn.functional:cross_entropy")
DEVICES = ("cpu", "cuda")
#: Distributed contracts (vocab- and data-parallel): the rank processes a kernel runs on when
#: no --world-size is given.
DEFAULT_WORLD_SIZE = 2
#: What the pytest suite checks the distributed clauses against with no --kernel of their
#: contract: this project's own implementations, one per distributed contract.
DEFAULT_DISTRIBUTED_KERNELS = {
    "vocab_parallel": "lmloss:vocab_parallel_cross_entropy",
    "data_parallel": "lmloss:data_parallel_cross_entropy",
}
#: dtypes the suite has tolerances for, by torch name (their limits: properties/engine/dtypes.py).
DTYPES = ("float32", "bfloat16", "float16")
#: dtypes checked when none are asked for: on CPU the two that training uses there (float32,
#: and bfloat16 under autocast); float16 is one --dtype away.
DEFAULT_DTYPES = {"cpu": ("float32", "bfloat16"), "cuda": ("float32", "bfloat16", "float16")}

#: Hypothesis settings per profile (deadline, database and health checks are common to all).
#: quick: `lmloss check`'s default; a correct kernel passes every clause for float32 and bfloat16
#:   in well under a minute on 2 CPU cores (PyTorch's kernel, the 37 contract-2 clauses, -j auto:
#:   35.2 to 41.0 s wall, README "Conformance"), and most broken kernels fail within the first
#:   examples.
#: ci: derandomized, so a CI run is repeatable; fewer examples, because tox runs every clause for
#:   two kernels and the whole CI must stay well under 20 minutes.
#: thorough: at least 10,000 examples per clause, with ``hypothesis.target`` steering toward the
#:   largest error/bound ratio (see STEERING_PROFILES).
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"max_examples": 50, "derandomize": False},
    "ci": {"max_examples": 15, "derandomize": True},
    "thorough": {"max_examples": 10_000, "derandomize": False},
}
DEFAULT_PROFILE = "quick"
STEERING_PROFILES = frozenset({"thorough"})
#: Seconds Hypothesis may spend shrinking a kernel's first failure. Its own limit is five
#: minutes; for `lmloss check` a counterexample a little less minimal beats keeping the user
#: waiting, and in CI a failure needs to be shown, not polished.
SHRINKING_SECONDS = {"quick": 30, "ci": 5, "thorough": 300}
#: Seconds for each failure after a kernel's first. A broken kernel usually fails many clauses
#: in both dtypes; shrinking every one for 30 s would keep the user waiting minutes for what the
#: first, fully shrunk counterexample already shows. The report says when shrinking was cut
#: short, and ``--clause ID`` shrinks that clause alone with the full budget.
LATER_SHRINKING_SECONDS = {"quick": 3, "ci": 2, "thorough": 300}


def shrinking_seconds(profile: str, *, failed_before: bool) -> int:
    """The shrinking budget of one clause run: the full one until the kernel's first failure."""
    return (LATER_SHRINKING_SECONDS if failed_before else SHRINKING_SECONDS)[profile]
