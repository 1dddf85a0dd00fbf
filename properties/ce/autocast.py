"""autocast: under torch.autocast(device, bfloat16), the loss of bfloat16 logits is as exact as the
dtype it comes back in.

A training step runs its model under ``torch.autocast(device, dtype=torch.bfloat16)`` and calls
the loss inside it, on the model's bfloat16 logits (the essay does). A float32 result promises
float32's accuracy on those logits, and that is what the bound of its dtype asks. PyTorch's
``F.cross_entropy`` holds it on the CPU, where autocast runs ``cross_entropy_loss`` in
float32. It fails on CUDA. There autocast lets ``cross_entropy_loss`` decompose into
``log_softmax``, which keeps the input's dtype and so rounds every log-probability to bfloat16,
and ``nll_loss``, which returns float32. The result is float32 in dtype and bfloat16 in
accuracy.
"""

from __future__ import annotations

import torch

from properties.ce.calls import (
    call_reproducer,
    call_source,
    context,
    draw_batch,
    expected_loss,
    on_device,
    problem_of,
    reproducer,
)
from properties.engine.checks import check_close
from properties.engine.clause import Mismatch, Trial, clause
from properties.engine.kernel import KernelUnderTest
from properties.strategies import Batch
from properties.tolerances import loss_bound

#: The autocast dtype of the clause, and the dtype of the logits it hands the kernel.
AUTOCAST_DTYPE = "bfloat16"


def _takes_bfloat16(kernel: KernelUnderTest) -> str | None:
    dtypes = kernel.spec.dtypes
    if dtypes is None or AUTOCAST_DTYPE in dtypes:
        return None
    return f"the kernel declares dtypes {', '.join(dtypes)}, not {AUTOCAST_DTYPE}"


def _bound_dtype(result: torch.Tensor) -> str:
    """The dtype whose bound the result is held to: its own. A float64 result is held to
    float32's bound, since the error model promises no more than float32 computation (a float64
    result computed in float32 meets it)."""
    name = str(result.dtype).removeprefix("torch.")
    return "float32" if name == "float64" else name


def _loss_under_autocast(trial: Trial, batch: Batch) -> torch.Tensor:
    """The kernel's loss on fresh copies of the inputs, called inside
    ``torch.autocast(device, dtype=torch.bfloat16)``. The dtype it returns is kept."""
    device_type = torch.device(trial.device).type
    keywords = {key: on_device(trial, value) for key, value in batch.keywords().items()}
    with torch.no_grad(), torch.autocast(device_type, dtype=getattr(torch, AUTOCAST_DTYPE)):
        result = trial.kernel(on_device(trial, batch.x), on_device(trial, batch.y), **keywords)
    if not isinstance(result, torch.Tensor):
        raise Mismatch(
            f"the loss is a {type(result).__name__}, not a tensor",
            reproducer=call_reproducer(trial, (batch.x, batch.y), batch.keywords()),
        )
    return result.detach().cpu()


def _autocast_reproducer(trial: Trial, batch: Batch, expected: str) -> str:
    """The call inside autocast, then the dtype and value it returned."""
    keywords = batch.keywords()
    tensors = ["logits", "target"]
    tensors += [key for key, value in keywords.items() if isinstance(value, torch.Tensor)]
    device_type = torch.device(trial.device).type
    return reproducer(
        trial,
        batch.source(),
        f'with torch.autocast("{device_type}", dtype=torch.{AUTOCAST_DTYPE}):',
        "    " + call_source(trial.kernel, keywords),
        f"print(loss.dtype, loss)  {expected}".rstrip(),
        tensors=tensors,
    )


@clause(applies=_takes_bfloat16)
def autocast_result_meets_the_bound_of_its_dtype(trial: Trial) -> None:
    """|L̂(x) − L(x)| ≤ bound_d(x) for bfloat16 logits x, where L̂(x) = kernel(x) called under torch.autocast(device, bfloat16) and d is L̂'s dtype.  [CE-AUTOCAST] tol: loss"""
    # The logits are bfloat16 whatever the trial's dtype. The clause is about bfloat16 logits
    # under bfloat16 autocast, so in a float32 run it checks the same thing as in a bfloat16 run
    # (CE-DTYPES draws its own dtypes the same way). It is never skipped: `lmloss check --dtype
    # float32` still reports it. A per-dtype skip would need the runner to know the dtype, and
    # a skipped example counted as a pass would be dishonest.
    batch = draw_batch(trial, dtype=AUTOCAST_DTYPE)
    loss = _loss_under_autocast(trial, batch)
    if not loss.is_floating_point():
        raise Mismatch(
            f"under autocast the loss came back as {loss.dtype}, not a floating dtype  "
            f"[{context(batch, trial)}]",
            reproducer=_autocast_reproducer(trial, batch, ""),
        )
    dtype = _bound_dtype(loss)
    problem = problem_of(batch).but(dtype=dtype)
    expected = expected_loss(trial, problem)
    comment = f"# the oracle: {float(expected)!r}" if expected.dim() == 0 else ""
    check_close(
        trial,
        quantity=f"the {dtype} loss under autocast",
        actual=loss,
        expected=expected,
        bound=loss_bound(problem),
        context=f"{context(batch, trial)}, under torch.autocast({AUTOCAST_DTYPE})",
        reproducer=_autocast_reproducer(trial, batch, comment),
    )


CLAUSES = (autocast_result_meets_the_bound_of_its_dtype,)
