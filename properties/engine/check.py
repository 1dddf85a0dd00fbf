"""Checking a kernel: load it from a SPEC, run each clause of its contract in each dtype as a
:class:`~properties.engine.job.Job`, collect the results in a :class:`KernelReport`.

`lmloss check` (lmloss/_check_cli.py) and the pytest suite (properties/conftest.py) both stand
on this; rendering a report lives in lmloss/_check_report.py. The clauses come from
``properties.catalogue``; each runs once per dtype under the Hypothesis settings of the chosen
profile (:mod:`properties.engine.runner`).
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING

from properties.engine.defaults import DEFAULT_DTYPES, DEFAULT_WORLD_SIZE, shrinking_seconds
from properties.engine.job import CATALOGUE, Job, clauses_in, find_clause
from properties.engine.kernel import KernelSpec, KernelUnderTest, resolve

if TYPE_CHECKING:
    from properties.engine.clause import Clause
    from properties.engine.runner import ClauseResult
    from properties.engine.workers import WorkerPool

#: Packages whose version every report names anyway (or that are part of lmloss).
_NAMED_ALREADY = frozenset({"torch", "lmloss", "properties", "reference", "hypothesis"})


class SpecError(Exception):
    """The SPEC or the arguments cannot be used; the message says why, for a person."""


@dataclass
class KernelReport:
    """Everything `lmloss check` found out about one kernel."""

    kernel: KernelUnderTest
    device: str
    profile: str
    dtypes: tuple[str, ...]
    #: dtype -> why it was not checked (the kernel declares it does not support it).
    skipped_dtypes: dict[str, str]
    #: Versions the report names (see :func:`versions`).
    versions: dict[str, str] = field(default_factory=dict)
    results: list[ClauseResult] = field(default_factory=list)
    seconds: float = 0.0
    #: True when the run stopped at the first failure (--exitfirst) with clauses left unchecked.
    stopped_early: bool = False
    #: Distributed contracts: the rank processes the kernel runs on (None for the others), and
    #: the seconds each rank may take to answer a call (None: properties.distributed.group's).
    world_size: int | None = None
    rank_seconds: float | None = None

    @property
    def passed(self) -> bool:
        """True when every applicable clause holds for every dtype."""
        return all(result.status in ("holds", "not applicable") for result in self.results)


def load_kernel(spec: str) -> KernelUnderTest:
    """Import ``module:attr`` and resolve it to a kernel; SpecError says what is wrong."""
    module_name, colon, attribute = spec.strip().partition(":")
    if not colon or not module_name or not attribute:
        hint = ""
        if not colon and "." in spec:
            head, _, tail = spec.strip().rpartition(".")
            hint = f" (did you mean {head}:{tail}?)"
        raise SpecError(
            f"SPEC {spec!r} is not of the form module:attr, "
            f"e.g. torch.nn.functional:cross_entropy{hint}"
        )
    module = _import(module_name)
    obj: object = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise SpecError(_missing_attribute(spec, obj, part))
        obj = getattr(obj, part)
    try:
        return resolve(obj, source=spec.strip())
    except ValueError as exc:  # a declaration the contract does not allow
        raise SpecError(f"{spec}: {exc}") from None
    except TypeError as exc:
        if isinstance(obj, KernelSpec):
            raise SpecError(f"{spec}: the KernelSpec's fn is not callable ({exc})") from None
        raise SpecError(
            f"{spec} is a {type(obj).__name__}, not a callable or a lmloss.KernelSpec"
        ) from None


def choose_dtypes(
    kernel: KernelUnderTest, requested: Sequence[str], device: str
) -> tuple[tuple[str, ...], dict[str, str]]:
    """The dtypes to check (asked for, or the device's defaults) and those the kernel rules out."""
    wanted = tuple(dict.fromkeys(requested)) or DEFAULT_DTYPES[device]
    declared = kernel.spec.dtypes
    if declared is None:
        return wanted, {}
    chosen = tuple(dtype for dtype in wanted if dtype in declared)
    skipped = {
        dtype: f"the kernel declares dtypes {', '.join(declared)}"
        for dtype in wanted
        if dtype not in declared
    }
    if not chosen:
        raise SpecError(
            f"{kernel.name} declares dtypes {', '.join(declared)}; "
            f"none of {', '.join(wanted)} can be checked"
        )
    return chosen, skipped


def check_device(kernel: KernelUnderTest, device: str) -> None:
    """SpecError unless the kernel declares ``device`` and the machine has it."""
    if device not in kernel.spec.devices:
        raise SpecError(
            f"{kernel.name} declares devices {', '.join(kernel.spec.devices)}, not {device}"
        )
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SpecError("--device cuda: no CUDA device is available to this PyTorch")


def choose_world_size(kernel: KernelUnderTest, requested: int | None) -> int | None:
    """The rank processes for a distributed kernel (``requested``, else DEFAULT_WORLD_SIZE);
    None for any other kernel, and SpecError when a world size is asked of one."""
    if kernel.contract.distributed:
        return DEFAULT_WORLD_SIZE if requested is None else requested
    if requested is not None:
        raise SpecError(
            f"--world-size {requested}: {kernel.name} follows contract "
            f"{kernel.contract.name!r}, which runs in one process; --world-size is for the "
            "distributed contracts (vocab_parallel, data_parallel)"
        )
    return None


def select_clauses(ids: Sequence[str], catalogue: str = CATALOGUE) -> tuple[Clause, ...]:
    """Every clause of the catalogue, or those named (SpecError for an unknown ID)."""
    clauses = clauses_in(catalogue)
    if not ids:
        return tuple(clauses)
    try:
        return tuple(find_clause(catalogue, clause_id) for clause_id in dict.fromkeys(ids))
    except KeyError:
        unknown = [clause_id for clause_id in ids if all(c.id != clause_id for c in clauses)]
        known = ", ".join(clause.id for clause in clauses)
        raise SpecError(f"unknown clause {', '.join(unknown)}; the clauses are {known}") from None


def check_kernel(
    report: KernelReport,
    clauses: Sequence[Clause],
    *,
    on_start: Callable[[Clause, str], None] = lambda clause, dtype: None,
    on_result: Callable[[ClauseResult], None] = lambda result: None,
    exit_first: bool = False,
    pool: WorkerPool | None = None,
) -> KernelReport:
    """Run every clause of the kernel's contract for every dtype of ``report``, appending
    results in clause order as they finish.

    With a ``pool`` the jobs run in its worker processes (a kernel that crashes or hangs is
    reported on its clause; several jobs run at once), else one after another in this process.
    The kernel's first failure is shrunk with the profile's full budget, later ones briefly
    (properties.engine.defaults.shrinking_seconds): a job started after a failure came back gets
    the short budget. ``exit_first`` stops at the first failure.
    """
    if pool is not None and report.kernel.source is None:
        raise ValueError(
            f"{report.kernel.name}: a worker loads its kernel by SPEC; this one has none"
        )
    start = time.perf_counter()
    own = [clause for clause in clauses if clause.contract == report.kernel.contract.name]
    clause_of = {clause.id: clause for clause in own}

    def jobs() -> Iterator[Job]:
        for clause in own:
            for dtype in report.dtypes:
                on_start(clause, dtype)
                failed_before = any(result.status == "fails" for result in report.results)
                yield Job(
                    # In this process the loaded kernel is handed to the job; a worker needs
                    # its SPEC (checked above).
                    spec=report.kernel.source or report.kernel.name,
                    clause=clause.id,
                    dtype=dtype,
                    device=report.device,
                    profile=report.profile,
                    shrinking_seconds=shrinking_seconds(
                        report.profile, failed_before=failed_before
                    ),
                    run_dtypes=report.dtypes,
                    world_size=report.world_size,
                    rank_seconds=report.rank_seconds,
                )

    if pool is None:
        results: Iterator[ClauseResult] = (
            job.run(kernel=report.kernel, clause=clause_of[job.clause]) for job in jobs()
        )
    else:
        results = pool.run(jobs(), report.kernel)
    try:
        for result in results:
            report.results.append(result)
            on_result(result)
            if exit_first and result.status == "fails":
                report.stopped_early = len(report.results) < len(own) * len(report.dtypes)
                break
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()
    report.seconds = time.perf_counter() - start
    return report


def versions(kernel: KernelUnderTest) -> dict[str, str]:
    """Versions a report names: Python, torch, hypothesis, lmloss, and the kernel's package."""
    import platform
    from importlib import metadata

    import hypothesis
    import torch

    found = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "hypothesis": hypothesis.__version__,
        "lmloss": _distribution_version("lmloss") or "not installed (source tree)",
    }
    # The package the callable comes from, and the one its declared name points to (a wrapper
    # such as properties.kernels.real names the package it wraps).
    modules = (getattr(kernel.spec.fn, "__module__", None) or "", kernel.name)
    packages = {module.partition(".")[0] for module in modules} - _NAMED_ALREADY
    distributions = metadata.packages_distributions() if packages else {}
    for package in sorted(packages):
        for distribution in distributions.get(package, []):
            found.setdefault(distribution, _distribution_version(distribution) or "?")
    return found


def _distribution_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _import(module_name: str) -> ModuleType:
    # Like `python -m`, let a SPEC name a module in the current directory, also when run
    # through the `lmloss` console script (whose sys.path does not hold the current directory).
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise SpecError(
                f"cannot import {module_name!r}: no module named {exc.name!r}"
            ) from None
        raise SpecError(f"importing {module_name!r} failed: {exc}") from None
    except Exception as exc:  # the user's module raised while importing: say so, briefly
        raise SpecError(f"importing {module_name!r} raised {type(exc).__name__}: {exc}") from None


def _missing_attribute(spec: str, owner: object, name: str) -> str:
    where = getattr(owner, "__name__", type(owner).__name__)
    message = f"{spec}: {where!r} has no attribute {name!r}"
    close = difflib.get_close_matches(name, [n for n in dir(owner) if not n.startswith("__")])
    if close:
        message += f" (did you mean {', '.join(close[:3])}?)"
    return message
