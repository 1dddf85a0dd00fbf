"""The engine: loads a kernel, runs clauses against it under Hypothesis, and reports, for any
contract (properties/contract/). It knows no clause of its own: the catalogue lists them.

    kernel.py    KernelSpec (what a kernel declares), KernelUnderTest, resolve
    check.py     SPEC loading, dtype and clause selection, check_kernel -> KernelReport
    job.py       Job: one clause × dtype × kernel as picklable data; runs here or in a worker
    workers.py   WorkerPool: worker processes; a crash or a hang is a finding; -j N
    forkserver.py  the server workers fork from and what it preloads (torch-free)
    runner.py    run_clause: one clause under Hypothesis -> ClauseResult (plain data)
    clause.py    Clause, the @clause decorator, Trial, Violation, applicability conditions
    checks.py    elementwise comparison against an expected value within a bound
    snippet.py   runnable Python that reproduces a call
    defaults.py  devices, dtypes, default kernels, profiles, shrinking budgets (defined once)
    dtypes.py    dtype names to torch dtypes and their limits (torch.finfo)
"""
