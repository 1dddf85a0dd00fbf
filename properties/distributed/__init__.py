"""Contract 4 (a loss split across processes): the rank-group runtime and the DIST clauses.

    group.py    RankGroup: P rank processes (gloo on the CPU, NCCL on CUDA), calls, failures
    rank.py     one rank process: python -m properties.distributed.rank
    batches.py  one whole example drawn once, and its split into column slices or row ranges
    calls.py    calling the ranks on a split, comparing with the oracle, the reproducer script
    vocab.py    vocab-parallel clauses (DIST-…)
    data.py     data-parallel clauses (DIST-DP-…)

Not named ``dist``: the repository's .gitignore ignores every directory of that name (build
output), which would hide the package from git and from ruff.
"""
