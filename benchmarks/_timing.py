"""How a kernel benchmark is timed, and the yardsticks it is measured against.

- The clock: pytest-benchmark times each round as ``timer()`` after the call minus ``timer()``
  before it. On the CPU the timer is ``time.perf_counter``. On CUDA it is
  :func:`cuda_event_clock`: each reading records a CUDA event on the current stream, and the
  difference of two readings waits for the later event and is the GPU time between them
  (``torch.cuda.Event.elapsed_time``), so pytest-benchmark's statistics are CUDA-event times.
- The copy bandwidth: ``y.copy_(x)`` on a large buffer, timed with the same clock, counting the
  read and the write (2 × the buffer's bytes per copy); the median of its rounds.
- Peak extra memory (CUDA only): the most bytes allocated during one call above what was
  allocated before it (the inputs), so it includes the gradient the call returns.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

#: The copy buffer: 2 GiB on CUDA (issue 12's figure was measured on 2.1 GB, far past any L2
#: cache), at most a quarter of the free memory; 256 MiB on the CPU, past its caches.
CUDA_COPY_BYTES = 2**31
CPU_COPY_BYTES = 2**28
COPY_WARMUP_ROUNDS = 3
COPY_ROUNDS = 10


class CudaEventReading:
    """A CUDA event recorded on the current stream when this reading was taken."""

    def __init__(self) -> None:
        import torch

        self.event = torch.cuda.Event(enable_timing=True)
        self.event.record()

    def __sub__(self, earlier: CudaEventReading) -> float:
        """Seconds of GPU time from ``earlier`` to this reading (waits for this event)."""
        self.event.synchronize()
        return float(earlier.event.elapsed_time(self.event)) / 1e3


def cuda_event_clock() -> CudaEventReading:
    return CudaEventReading()


def clock_for(device: str) -> Callable[[], Any]:
    """The timer pytest-benchmark is given for benchmarks on ``device``."""
    return cuda_event_clock if device == "cuda" else time.perf_counter


def median_seconds(fn: Callable[[], object], device: str, *, warmup: int, rounds: int) -> float:
    """The median time of ``rounds`` calls of ``fn`` after ``warmup`` untimed ones."""
    clock = clock_for(device)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def copy_bandwidth(device: str) -> float:
    """Bytes per second of ``y.copy_(x)`` on ``device``, read and write counted."""
    import torch

    size = CPU_COPY_BYTES
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        size = min(CUDA_COPY_BYTES, free // 4)
    seconds = _copy_seconds(size, device)
    if device == "cuda":
        torch.cuda.empty_cache()  # the buffers are gone; give their memory back to the card
    return 2 * size / seconds


def _copy_seconds(size: int, device: str) -> float:
    import torch

    source = torch.ones(size, dtype=torch.uint8, device=device)
    destination = torch.empty_like(source)
    return median_seconds(
        lambda: destination.copy_(source), device, warmup=COPY_WARMUP_ROUNDS, rounds=COPY_ROUNDS
    )


def peak_extra_memory(fn: Callable[[], object], device: str) -> int | None:
    """Bytes allocated at the peak of one call of ``fn`` above those allocated before it, after
    an uncounted call (compilation and autotuning allocate too); None on the CPU, where torch
    keeps no such count (its allocations go straight to the C library)."""
    if device != "cuda":
        return None
    import torch

    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del result
    return int(peak)
