"""Memory: a fused kernel that claims O(chunk) extra memory never holds the (N, C) logits.

A kernel declares the claim with ``KernelSpec(builds_logits=False)``; the clause applies to it
alone. Its forward and backward run on shapes whose logits dwarf every input and output, and the
peak of the memory allocated meanwhile, above what was allocated before, must stay below
N·C·itemsize (the budget's derivation is in properties/tolerances.py, ``linear_memory_budget``).

What is measured, per device:

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, less the memory
  allocated before the call: every byte PyTorch's caching allocator hands out on the device.
- CPU: the allocation and free events of PyTorch's CPU allocator, recorded by
  ``torch.profiler`` (``profile_memory=True``), summed in time order; their running maximum is
  the peak. Memory a kernel takes outside PyTorch's allocator is not seen: NumPy arrays, and the
  host copies the Triton interpreter makes of every tensor a kernel touches. A kernel run under
  ``TRITON_INTERPRET=1`` is therefore measured only for the tensors it allocates with torch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import torch
from hypothesis import strategies as st

from properties.engine.clause import Mismatch, Trial, all_of, clause, differentiable
from properties.engine.kernel import KernelUnderTest
from properties.engine.snippet import program
from properties.lce.batches import LinearBatch
from properties.lce.calls import call_expression, context, draw_linear_batch
from properties.lce.value import EVERY_OPTION
from properties.tolerances import linear_memory_budget

#: Shapes whose logits dwarf the inputs and outputs (see linear_memory_budget's derivation):
#: N from 8,192 to 16,384 rows, D from 1 to 32, C from 1,024 to 2,048.
MEMORY_SHAPES = st.tuples(st.integers(8192, 16384), st.integers(1, 32), st.integers(1024, 2048))


def claims_chunked_memory(kernel: KernelUnderTest) -> str | None:
    if kernel.spec.builds_logits:
        return "the kernel does not claim O(chunk) memory (KernelSpec(builds_logits=False))"
    return None


@clause(applies=all_of(claims_chunked_memory, differentiable), max_examples=4)
def chunked_kernel_never_holds_the_logits(trial: Trial) -> None:
    """peak(memory allocated during L = kernel(x, W, y); L.backward()) − memory before < N·C·s, s the input's item size.  [LCE-MEMORY] tol: linear_memory"""
    batch = draw_linear_batch(trial, options=EVERY_OPTION, shapes=MEMORY_SHAPES)
    rows, classes = batch.rows, batch.linear_weight.value.shape[0]
    budget = linear_memory_budget(rows, classes, trial.dtype)
    # detach(): a new tensor on the same storage, so the drawn one is left as it was drawn.
    x = batch.input.value.detach().to(trial.device).requires_grad_(True)
    w = batch.linear_weight.value.detach().to(trial.device).requires_grad_(True)
    y = batch.target.value.to(trial.device)
    keywords = {
        key: value.to(trial.device) if isinstance(value, torch.Tensor) else value
        for key, value in batch.keywords().items()
    }

    def forward_and_backward() -> None:
        loss = trial.kernel(x, w, y, **keywords)
        loss.backward(torch.ones_like(loss))

    peak = peak_extra_bytes(forward_and_backward, trial.device)
    trial.record(peak / budget, "peak memory/budget")
    if peak >= budget:
        logits = rows * classes
        raise Mismatch(
            f"peak extra memory {peak / 2**20:.2f} MiB is not below the (N, C) logits' "
            f"{budget / 2**20:.2f} MiB ({logits:,} logits × {budget // logits} bytes): "
            f"the kernel claims O(chunk) memory but holds {peak / budget:.2f} × the logits "
            f"[{context(trial, batch)}]",
            reproducer=_memory_reproducer(trial, batch, budget),
        )


def _memory_reproducer(trial: Trial, batch: LinearBatch, budget: int) -> str:
    """The call and its backward pass, measured as the clause measures them."""
    calls = [
        "from properties.lce.memory import peak_extra_bytes",
        "input.requires_grad_(True)",
        "linear_weight.requires_grad_(True)",
        "",
        "def forward_and_backward():",
        f"    loss = {call_expression(trial, batch.keywords())}",
        "    loss.backward(torch.ones_like(loss))",
        "",
        f'peak = peak_extra_bytes(forward_and_backward, "{trial.device}")',
        f'print(peak, "bytes at the peak; the (N, C) logits are {budget} bytes")',
    ]
    return program(
        trial.kernel, [batch.source()], calls, device=trial.device, tensors=batch.tensor_names()
    )


def peak_extra_bytes(run: Callable[[], None], device: str) -> int:
    """The most memory PyTorch's allocator held during ``run()`` above what it held before."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    profiler = torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    )
    with _quiet_stderr():
        profiler.start()
    try:
        run()
    finally:
        with _quiet_stderr():
            profiler.stop()
    events = profiler.profiler.kineto_results.events()  # type: ignore[union-attr]
    changes = sorted(
        (event.start_ns(), event.nbytes())
        for event in events
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    )
    held = peak = 0
    for _, change in changes:
        held += change
        peak = max(peak, held)
    return peak


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Starting and stopping the profiler prints a line each from C++ (Kineto's
    "profiler_start"/"profiler_stop") that no setting silences; they would interleave with the
    report. Only those two calls run with file descriptor 2 on /dev/null."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


CLAUSES = (chunked_kernel_never_holds_the_logits,)
