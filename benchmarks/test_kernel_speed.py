"""Loss kernels' speed: forward, and forward + backward, of every kernel present, side by side.

Two families (benchmarks/_kernels.py): cross-entropy on logits (N × C) and the fused projection
+ loss on hidden states (N × D) and a head weight (C × D). Each benchmark checks the kernel's
values first (benchmarks/_check.py: float64 PyTorch, the bounds of properties/tolerances.py; a
kernel past its bound fails, it is not timed), measures its peak extra memory in one call, then
times it with pytest-benchmark (CUDA events on CUDA, perf_counter on the CPU). Its extra_info
holds the median time; for cross-entropy the bandwidth against the 2-pass floor (read the
logits once, write the gradient once: 2·N·C·itemsize bytes; forward only, N·C·itemsize) and
that as a percentage of the device's copy bandwidth measured in the same session; for the
fused family TFLOP/s (6·N·D·C flops forward + backward, 2·N·D·C forward); the peak memory, the
check's error/bound ratios, the card, torch and triton versions and the commit.

Shapes: on CUDA N × C = 4096 × 32000, 8192 × 128256 and 16384 × 256000 in bfloat16 and float32,
and N × D × C = 8192 × 4096 × 128256 in bfloat16 (a case that cannot fit in the card's memory
is skipped, saying so); on the CPU tiny ones, with Triton kernels under the interpreter, so CI
keeps every path working (those times measure the interpreter, not the kernels). The values are
checked on the first CHECK_ROWS rows (the whole batch on the CPU): the float64 bounds of a
full LLM-sized batch would take tens of GB on the host.

Run::

    tox -e bench                                        # CPU, tiny shapes, with the oracle's
    bash benchmarks/run_gpu.sh                          # GPU: keeps benchmarks/results/<card>-<date>-<commit>.json
    pytest benchmarks/test_kernel_speed.py --benchmark-only --kernel my_pkg.ops:cross_entropy

Compare with the last kept run of the same card (run_gpu.sh does it when one exists)::

    pytest benchmarks/test_kernel_speed.py --benchmark-only \\
        --benchmark-compare=benchmarks/results/<previous>.json --benchmark-compare-fail=median:10%
    pytest-benchmark compare benchmarks/results/<previous>.json benchmarks/results/<new>.json \\
        --columns=median --group-by=group

and draw them: ``python benchmarks/plot.py benchmarks/results/<run>.json -o speed.png``.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture

from benchmarks import _check, _kernels, _machine, _timing
from properties.engine.kernel import KernelUnderTest

CROSS_ENTROPY_SHAPES = {
    "cuda": ((4096, 32_000), (8192, 128_256), (16_384, 256_000)),
    "cpu": ((64, 512),),
}
CROSS_ENTROPY_DTYPES = ("bfloat16", "float32")
LINEAR_SHAPES = {"cuda": ((8192, 4096, 128_256),), "cpu": ((32, 16, 256),)}
LINEAR_DTYPES = ("bfloat16",)
DIRECTIONS = ("forward", "forward+backward")
#: Rows whose values are checked before timing (all of a CPU batch).
CHECK_ROWS = 64
#: (warmup rounds, timed rounds). A CUDA round takes milliseconds. A CPU round of a Triton kernel
#: under the interpreter takes up to a second, and on the CPU the check before timing is a call
#: on the very inputs being timed (all CHECK_ROWS rows, same grad mode): it is the warm-up.
ROUNDS = {"cuda": (3, 20), "cpu": (0, 3)}
SEED = 0


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    config = metafunc.config
    device = _machine.bench_device(config.getoption("bench_device"))
    shapes: Mapping[str, tuple[tuple[int, ...], ...]]
    dtypes: tuple[str, ...]
    if "depth" in metafunc.fixturenames:
        family, shapes, dtypes = "linear", LINEAR_SHAPES, LINEAR_DTYPES
    elif "classes" in metafunc.fixturenames:
        family, shapes, dtypes = "cross_entropy", CROSS_ENTROPY_SHAPES, CROSS_ENTROPY_DTYPES
    else:
        return
    labels = [k.label for k in _all_kernels(config) if k.family == family]
    metafunc.parametrize("kernel_label", labels)
    names = ("rows", "depth", "classes") if family == "linear" else ("rows", "classes")
    metafunc.parametrize(
        ",".join(names), shapes[device], ids=["x".join(map(str, s)) for s in shapes[device]]
    )
    metafunc.parametrize("dtype", dtypes)
    metafunc.parametrize("direction", DIRECTIONS)


def _all_kernels(config: pytest.Config) -> tuple[_kernels.BenchKernel, ...]:
    return _kernels.BUILTIN + tuple(_kernels.named(spec) for spec in config.getoption("kernel"))


@pytest.fixture(scope="module")
def kernels(pytestconfig: pytest.Config) -> dict[str, _kernels.BenchKernel]:
    return {kernel.label: kernel for kernel in _all_kernels(pytestconfig)}


@pytest.fixture(autouse=True)
def _release_cuda_memory(device: str) -> Iterator[None]:
    yield
    if device == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def test_cross_entropy_speed(
    benchmark: BenchmarkFixture,
    kernels: dict[str, _kernels.BenchKernel],
    kernel_label: str,
    rows: int,
    classes: int,
    dtype: str,
    direction: str,
    device: str,
    copy_bandwidth: float,
    provenance: dict[str, Any],
) -> None:
    """Cross-entropy of (rows × classes) logits, mean over the rows."""
    kernel = _usable(kernels[kernel_label], device)
    backward = direction == "forward+backward"
    itemsize = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    floor_bytes = (2 if backward else 1) * rows * classes * itemsize
    shape = f"{rows}x{classes}"
    with _skip_when_out_of_memory(device, f"{shape} {dtype}", floor_bytes):
        generator = torch.Generator(device).manual_seed(SEED)
        logits = torch.randn(
            rows, classes, dtype=getattr(torch, dtype), device=device, generator=generator
        )
        target = torch.randint(0, classes, (rows,), device=device, generator=generator)
        ratios = _check.check_cross_entropy(
            kernel, logits[:CHECK_ROWS], target[:CHECK_ROWS], backward=backward
        )
        logits.requires_grad_(backward)

        def forward() -> Any:
            with torch.no_grad():
                return kernel(logits, target)

        def forward_backward() -> Any:
            return torch.autograd.grad(kernel(logits, target), logits)

        run = forward_backward if backward else forward
        peak = _timing.peak_extra_memory(run, device)
        _time(benchmark, run, device, group=f"cross_entropy {shape} {dtype} {direction}")
    info = _common_info(kernel_label, kernel, shape, dtype, direction, ratios, peak, provenance)
    info["check_rows"] = min(rows, CHECK_ROWS)
    info["floor_bytes"] = floor_bytes
    info["copy_gb_per_s"] = copy_bandwidth / 1e9
    seconds = _median_seconds(benchmark)
    if seconds is not None:
        info["median_ms"] = seconds * 1e3
        info["gb_per_s"] = floor_bytes / seconds / 1e9
        info["percent_of_copy"] = 100 * floor_bytes / seconds / copy_bandwidth
    benchmark.extra_info.update(info)


def test_linear_cross_entropy_speed(
    benchmark: BenchmarkFixture,
    kernels: dict[str, _kernels.BenchKernel],
    kernel_label: str,
    rows: int,
    depth: int,
    classes: int,
    dtype: str,
    direction: str,
    device: str,
    provenance: dict[str, Any],
) -> None:
    """Fused projection + loss: hidden states (rows × depth), head weight (classes × depth)."""
    kernel = _usable(kernels[kernel_label], device)
    backward = direction == "forward+backward"
    itemsize = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    # The inputs, and their gradients when the backward runs.
    input_bytes = (2 if backward else 1) * (rows + classes) * depth * itemsize
    shape = f"{rows}x{depth}x{classes}"
    with _skip_when_out_of_memory(device, f"{shape} {dtype}", input_bytes):
        generator = torch.Generator(device).manual_seed(SEED)
        torch_dtype = getattr(torch, dtype)
        input = torch.randn(rows, depth, dtype=torch_dtype, device=device, generator=generator)
        # Scaled so that the logits are of order 1, as a trained head's are.
        linear_weight = torch.randn(
            classes, depth, dtype=torch_dtype, device=device, generator=generator
        ) * (depth**-0.5)
        target = torch.randint(0, classes, (rows,), device=device, generator=generator)
        ratios = _check.check_linear_cross_entropy(
            kernel, input[:CHECK_ROWS], linear_weight, target[:CHECK_ROWS], backward=backward
        )
        input.requires_grad_(backward)
        linear_weight.requires_grad_(backward)

        def forward() -> Any:
            with torch.no_grad():
                return kernel(input, linear_weight, target)

        def forward_backward() -> Any:
            loss = kernel(input, linear_weight, target)
            return torch.autograd.grad(loss, (input, linear_weight))

        run = forward_backward if backward else forward
        peak = _timing.peak_extra_memory(run, device)
        _time(benchmark, run, device, group=f"linear_cross_entropy {shape} {dtype} {direction}")
    info = _common_info(kernel_label, kernel, shape, dtype, direction, ratios, peak, provenance)
    info["check_rows"] = min(rows, CHECK_ROWS)
    flops = (6 if backward else 2) * rows * depth * classes
    info["flops"] = flops
    seconds = _median_seconds(benchmark)
    if seconds is not None:
        info["median_ms"] = seconds * 1e3
        info["tflop_per_s"] = flops / seconds / 1e12
    benchmark.extra_info.update(info)


def _usable(kernel: _kernels.BenchKernel, device: str) -> KernelUnderTest:
    try:
        return _kernels.usable(kernel, device)
    except _kernels.Unavailable as reason:
        pytest.skip(f"{kernel.label}: {reason}")


@contextlib.contextmanager
def _skip_when_out_of_memory(device: str, case: str, least_bytes: int) -> Iterator[None]:
    """Skip, saying why, a case whose tensors cannot fit in the device's free memory."""
    if device != "cuda":
        yield
        return
    free, total = torch.cuda.mem_get_info()
    if least_bytes > free:
        pytest.skip(
            f"{case} needs at least {least_bytes / 1e9:.1f} GB for its inputs and gradients; "
            f"{free / 1e9:.1f} GB of {total / 1e9:.1f} GB are free"
        )
    try:
        yield
    except torch.cuda.OutOfMemoryError as error:
        message = str(error).splitlines()[0]
    else:
        return
    gc.collect()
    torch.cuda.empty_cache()
    pytest.skip(f"{case} does not fit in {total / 1e9:.1f} GB: {message}")


def _time(benchmark: BenchmarkFixture, run: Callable[[], Any], device: str, *, group: str) -> None:
    benchmark.group = group
    warmup, rounds = ROUNDS[device]
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=warmup, iterations=1)


def _median_seconds(benchmark: BenchmarkFixture) -> float | None:
    stats = getattr(benchmark, "stats", None)
    return None if stats is None else float(stats.stats.median)  # None: --benchmark-disable


def _common_info(
    label: str,
    kernel: KernelUnderTest,
    shape: str,
    dtype: str,
    direction: str,
    ratios: dict[str, float],
    peak: int | None,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    return {
        "kernel": label,
        "kernel_name": kernel.name,
        "family": kernel.contract.name,
        "shape": shape,
        "dtype": dtype,
        "direction": direction,
        "writes_input": kernel.spec.writes_input,
        **ratios,
        "peak_extra_memory_bytes": peak,
        "peak_extra_memory": "not measured on the CPU" if peak is None else f"{peak / 1e9:.3f} GB",
        **provenance,
    }
