"""pytest configuration of the property suite: which kernels it checks, in which dtypes, how hard.

The kernel under test, like array-api-tests' module variable:

    pytest properties --kernel my_pkg.ops:cross_entropy        (repeat for several)
    LMLOSS_KERNEL=my_pkg.ops:cross_entropy pytest properties   (comma-separated for several)

Default: the kernels `lmloss check` checks with no SPEC (this project's loss and PyTorch's).
dtypes: ``--dtype`` / ``LMLOSS_DTYPE`` (default: the device's, float32 and bfloat16 on the CPU),
restricted to those a KernelSpec declares. Profile: ``LMLOSS_PROFILE`` = quick (default) | ci
(tox) | thorough. The defaults are properties/engine/defaults.py's, as `lmloss check`'s are.

properties/test_clauses.py asks for the ``check`` fixture and hands it each clause of the
catalogue; it runs once per kernel and dtype (the ``kernel`` and ``dtype`` fixtures are
parametrized here)::

    @pytest.mark.parametrize("clause", CLAUSES, ids=lambda clause: clause.id)
    def test_clause_holds(clause, check):
        check(clause)

Nothing here imports torch at import time: tox's oracle-standalone environment runs
properties/oracle/ with torch not installed.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import settings

from properties.engine.defaults import (
    DEFAULT_DISTRIBUTED_KERNELS,
    DEFAULT_DTYPES,
    DEFAULT_KERNELS,
    DEFAULT_PROFILE,
    DEFAULT_WORLD_SIZE,
    DEVICES,
    DTYPES,
    PROFILES,
)

if TYPE_CHECKING:
    from properties.engine.clause import Clause
    from properties.engine.kernel import KernelUnderTest

PROFILE = os.environ.get("LMLOSS_PROFILE", DEFAULT_PROFILE)

# Profiles for every @given test in the repository (the oracle's tests among them); the clauses
# run under properties.engine.runner's own settings for the same profile name. ci is repeatable.
settings.register_profile("quick", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, database=None, print_blob=False)
settings.register_profile("thorough", deadline=None)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lmloss", "the kernel the property suite checks")
    group.addoption(
        "--kernel",
        action="append",
        default=[],
        metavar="MODULE:ATTR",
        help="kernel under test (repeat for several); env LMLOSS_KERNEL; "
        f"default {', '.join(DEFAULT_KERNELS)}",
    )
    group.addoption(
        "--dtype",
        action="append",
        default=[],
        choices=DTYPES,
        help="dtype to check (repeat for several); env LMLOSS_DTYPE; default: the device's, "
        f"on CPU {', '.join(DEFAULT_DTYPES['cpu'])}",
    )
    group.addoption(
        "--world-size",
        type=int,
        default=int(os.environ.get("LMLOSS_WORLD_SIZE", DEFAULT_WORLD_SIZE)),
        help="rank processes the distributed clauses run on; env LMLOSS_WORLD_SIZE; "
        f"default {DEFAULT_WORLD_SIZE}",
    )
    group.addoption(
        "--device",
        default=os.environ.get("LMLOSS_DEVICE", "cpu"),
        choices=DEVICES,
        help="device to check on; env LMLOSS_DEVICE; default cpu",
    )


def kernel_specs(config: pytest.Config) -> list[str]:
    chosen = config.getoption("kernel") or _split(os.environ.get("LMLOSS_KERNEL", ""))
    return chosen or list(DEFAULT_KERNELS)


def dtypes(config: pytest.Config) -> list[str]:
    return (
        config.getoption("dtype")
        or _split(os.environ.get("LMLOSS_DTYPE", ""))
        or list(DEFAULT_DTYPES[config.getoption("device")])
    )


def pytest_configure(config: pytest.Config) -> None:
    if PROFILE not in PROFILES:
        raise pytest.UsageError(
            f"LMLOSS_PROFILE={PROFILE!r}: expected one of {', '.join(PROFILES)}"
        )
    settings.load_profile(PROFILE)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Everything imported for the tests (torch, Hypothesis, the catalogue) lives to the end of
    the run: out of the collector's reach, it is not traversed at every collection, as in
    ``lmloss check``'s workers (properties/engine/workers.py)."""
    gc.freeze()


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [
        f"lmloss kernels: {', '.join(kernel_specs(config))} (--kernel or LMLOSS_KERNEL)",
        f"lmloss dtypes: {', '.join(dtypes(config))} on {config.getoption('device')}; "
        f"profile: {PROFILE} (LMLOSS_PROFILE)",
    ]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kernel" in metafunc.fixturenames:
        specs = kernel_specs(metafunc.config)
        metafunc.parametrize("kernel", specs, ids=specs, indirect=True, scope="session")
    if "dtype" in metafunc.fixturenames:
        metafunc.parametrize("dtype", dtypes(metafunc.config), indirect=True, scope="session")


@pytest.fixture(scope="session")
def kernel(request: pytest.FixtureRequest) -> KernelUnderTest:
    """The kernel under test, loaded from its SPEC."""
    from properties.engine.check import SpecError, load_kernel

    try:
        return load_kernel(request.param)
    except SpecError as exc:
        pytest.fail(f"--kernel / LMLOSS_KERNEL: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def dtype(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> str:
    chosen: str = request.config.getoption("device")
    if chosen == "cuda":
        import torch

        if not torch.cuda.is_available():
            pytest.skip("--device cuda: no CUDA device is available")
    return chosen


@pytest.fixture(scope="session")
def profile() -> str:
    return PROFILE


@pytest.fixture
def check(
    request: pytest.FixtureRequest, kernel: KernelUnderTest, dtype: str, device: str, profile: str
) -> Callable[[Clause], Any]:
    """check(clause): run it for this kernel and dtype; fail with the shrunk counterexample."""
    from properties.engine.runner import run_clause

    declared = kernel.spec.dtypes
    if declared is not None and dtype not in declared:
        pytest.skip(f"{kernel.name} declares dtypes {', '.join(declared)}")
    if device not in kernel.spec.devices:
        pytest.skip(f"{kernel.name} declares devices {', '.join(kernel.spec.devices)}")
    run_dtypes = tuple(d for d in dtypes(request.config) if declared is None or d in declared)

    def run(clause: Clause) -> Any:
        result = run_clause(
            clause, kernel, dtype=dtype, device=device, profile=profile, run_dtypes=run_dtypes
        )
        return _verdict(clause, result)

    return run


@pytest.fixture
def check_distributed(
    request: pytest.FixtureRequest, dtype: str, device: str, profile: str
) -> Callable[[Clause], Any]:
    """check_distributed(clause): run a distributed clause in this dtype on ``--world-size``
    ranks against every ``--kernel`` of its contract, or else against this project's own kernel
    of that contract (skipped, with the reason, when it cannot be loaded)."""
    from properties.engine.check import SpecError, load_kernel
    from properties.engine.runner import run_clause

    world_size: int = request.config.getoption("world_size")
    explicit = request.config.getoption("kernel") or _split(os.environ.get("LMLOSS_KERNEL", ""))

    def run(clause: Clause) -> Any:
        kernels = []
        for spec in explicit:
            try:
                loaded = load_kernel(spec)
            except SpecError as exc:
                pytest.fail(f"--kernel / LMLOSS_KERNEL: {exc}", pytrace=False)
            if loaded.contract.name == clause.contract:
                kernels.append(loaded)
        if not kernels:
            default = DEFAULT_DISTRIBUTED_KERNELS[clause.contract]
            try:
                kernels.append(load_kernel(default))
            except SpecError as exc:
                pytest.skip(f"no {clause.contract} kernel to check: {exc}")
        results = []
        for kernel in kernels:
            declared = kernel.spec.dtypes
            if (declared is not None and dtype not in declared) or (
                device not in kernel.spec.devices
            ):
                continue
            result = run_clause(
                clause, kernel, dtype=dtype, device=device, profile=profile, world_size=world_size
            )
            results.append(_verdict(clause, result))
        if not results:
            pytest.skip(f"no {clause.contract} kernel declares {dtype} on {device}")
        return results

    return run


def _verdict(clause: Clause, result: Any) -> Any:
    """The result of a clause run, or pytest's skip or failure with the shrunk counterexample."""
    if result.status == "not applicable":
        pytest.skip(f"{clause.id}: {result.reason}")
    if result.status == "fails" and result.violation is not None:
        pytest.fail(result.violation.render(), pytrace=False)
    if result.status == "error":
        pytest.fail(f"{clause.id}: the check itself raised\n{result.detail}", pytrace=False)
    return result


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]
