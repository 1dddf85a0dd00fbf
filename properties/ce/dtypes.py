"""dtypes: the results in every dtype of the run, on identical inputs, each meet their bound.

The dtypes are those chosen for the run (``--dtype``, or the device's defaults: float32 and
bfloat16 on the CPU, float16 too on CUDA). The inputs are drawn exactly representable in
bfloat16 *and* float16 (hence in float32), so every call computes the loss of the very same
numbers and the one oracle value judges all of them, each against its own dtype's bound (see
properties/tolerances.py). One policy for the dtype's range, as in every clause: when the exact
result is finite and representable in the result dtype, an inf or NaN is a failure. (PyTorch's
float16 mean with label smoothing and class weights overflows an intermediate sum where the loss
is small: a finding, reported wherever float16 is checked.)
"""

from __future__ import annotations

from dataclasses import replace

from properties.ce.calls import (
    batch_reproducer,
    context,
    draw_batch,
    draw_upstream,
    expected_loss,
    loss_and_gradient,
    loss_of,
    problem_of,
)
from properties.ce.oracle import oracle_gradient
from properties.engine.checks import check_close
from properties.engine.clause import Trial, clause
from properties.strategies import DTYPES, Drawn, batch_shapes
from properties.tolerances import gradient_bound, loss_bound

#: Values of a float16 draw that bfloat16 also holds exactly (others become 0, exact in both).
_SHARED_VALUES = "{var} = torch.where({var}.half().to(torch.bfloat16) == {var}, {var}, 0)"


def _in_shared_values(drawn: Drawn) -> Drawn:
    """``drawn`` rounded to bfloat16 and kept where float16 holds the same value."""
    return drawn.then(
        f"{drawn.name} = {drawn.name}.to(torch.bfloat16)",
        _SHARED_VALUES.format(var=drawn.name),
    )


def _as_dtype(drawn: Drawn, dtype: str) -> Drawn:
    return drawn.then(f"{drawn.name} = {drawn.name}.to({DTYPES[dtype]})")


def _dtypes_to_check(trial: Trial) -> tuple[str, ...]:
    return trial.run_dtypes or (trial.dtype,)


@clause()
def every_dtype_meets_its_bound_on_shared_inputs(trial: Trial) -> None:
    """|L_d(x) − L(x)| ≤ bound_d and |∇L_d − ∇L| ≤ bound_d for every dtype d of the run, on x and w exact in bfloat16 and float16.  [CE-DTYPES] tol: loss"""
    # Drawn in float16, whose range is the narrower, so every value fits both (_in_shared_values).
    drawn = draw_batch(
        trial,
        dtype="float16",
        options=("ignore_index", "label_smoothing", "weight"),
        shapes=batch_shapes(max_logits=2048),
    )
    shared = replace(
        drawn,
        logits=_in_shared_values(drawn.logits),
        weight=None if drawn.weight is None else _in_shared_values(drawn.weight),
    )
    upstream = _in_shared_values(draw_upstream(trial, drawn))
    exact = problem_of(shared)
    exact_gradient = None
    for dtype in _dtypes_to_check(trial):
        batch = replace(
            shared,
            logits=_as_dtype(shared.logits, dtype),
            weight=None if shared.weight is None else _as_dtype(shared.weight, dtype),
        )
        problem = exact.but(dtype=dtype)
        where = f"{context(batch, trial)}; the same values in {', '.join(_dtypes_to_check(trial))}"
        grad_output = _as_dtype(upstream, dtype)
        keywords = batch.keywords()
        if trial.kernel.spec.differentiable:
            loss, gradient = loss_and_gradient(trial, batch.x, batch.y, keywords, grad_output.value)
        else:
            loss, gradient = loss_of(trial, batch.x, batch.y, keywords), None
        check_close(
            trial,
            quantity=f"{dtype} loss",
            actual=loss,
            expected=expected_loss(trial, problem),
            bound=loss_bound(problem),
            context=where,
            reproducer=batch_reproducer(trial, batch),
        )
        if gradient is not None:
            if exact_gradient is None:
                exact_gradient = oracle_gradient(exact, upstream.value)
            check_close(
                trial,
                quantity=f"{dtype} ∂L/∂logits",
                actual=gradient,
                expected=exact_gradient,
                bound=gradient_bound(problem, upstream.value),
                context=where,
                reproducer=batch_reproducer(trial, batch, grad_output=grad_output),
            )


CLAUSES = (every_dtype_meets_its_bound_on_shared_inputs,)
