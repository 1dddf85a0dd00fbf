"""lmloss.linear_cross_entropy (contract 3, fused projection + loss) against the unfused loss.

Implementation tests of this project's fused kernel, not its specification (the LCE clauses
state that, against the oracle): the reference is the unfused ``F.cross_entropy(F.linear(...))``
computed in float64 from the same inputs, plus the z-loss term z·w_y·lse² and the softcap, with
torch's autograd for its gradients. The bounds, and their derivation, are properties.tolerances'
exact_logits_loss_bound and exact_logits_gradient_bounds.

Inputs are drawn on a grid so that every logit is exact in every dtype and whatever the GEMM's
order of additions: x has entries k·2^-a and W entries k·2^-b (|k| ≤ 3), the bias k·2^-(a+b)
(|k| ≤ 8), so z = input·Wᵀ + b is an integer times 2^-(a+b) of magnitude at most
16·9 + 8 = 152 < 2^8 units: exact in bfloat16's 8 significant bits, and in float32 and float64.
What these tests measure is therefore the chunked loss arithmetic, not the rounding of a GEMM
(which is F.linear's own, in the input dtype, as the unfused path has it).

Runs on one thread: on a shared two-core machine a second torch thread waits for a core, and a
chunked loop of small operations was measured 10 to 40 times slower with two.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import lmloss
from lmloss import LINEAR_SPEC, linear_cross_entropy
from lmloss._linear import CHUNK_ROWS
from properties.engine.checks import assert_within
from properties.engine.kernel import resolve
from properties.tolerances import (
    ExactLogitsMagnitudes,
    exact_logits_gradient_bounds,
    exact_logits_loss_bound,
)
from reference import DEFAULT_IGNORE_INDEX

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
REDUCTIONS = ("mean", "sum", "none")
#: A small odd chunk, so that a batch of a few dozen rows has several chunks and a ragged tail.
SMALL_CHUNK = 7
HIDDEN = 16  # D: the grid argument above needs D·3·3 + 8 < 2^8
#: Option sets, each alone and all together; ignore_index 0 lies inside the vocabulary.
OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "bias": {"bias": True},
    "weight": {"weight": True},
    "smoothing": {"label_smoothing": 0.1},
    "z_loss": {"z_loss": 1e-2},
    "softcap": {"softcap": 3.0},
    "ignore_index=0": {"ignore_index": 0},
    "all": {
        "bias": True,
        "weight": True,
        "label_smoothing": 0.2,
        "z_loss": 1e-3,
        "softcap": 5.0,
        "ignore_index": 3,
    },
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- Problems and the reference ---------------------------------------------------------------


@dataclass
class Problem:
    """One call: the arguments of linear_cross_entropy, on the grid of the module docstring."""

    input: torch.Tensor  # (N, D)
    linear_weight: torch.Tensor  # (C, D)
    target: torch.Tensor  # (N,)
    linear_bias: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    options: dict[str, Any] = field(default_factory=dict)  # the loss keywords

    @property
    def counted(self) -> torch.Tensor:
        return self.target != self.options.get("ignore_index", DEFAULT_IGNORE_INDEX)

    def keywords(self) -> dict[str, Any]:
        return {"linear_bias": self.linear_bias, "weight": self.weight, **self.options}


def grid_problem(
    rows: int,
    *,
    classes: int = 33,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    ignored_rows: list[int] | None = None,
) -> Problem:
    """Inputs whose logits are exact in every dtype; every third row ignored unless given."""
    options = dict(options or {})
    generator = torch.Generator().manual_seed(seed)
    a, b = (int(e) for e in torch.randint(0, 3, (2,), generator=generator))  # |z| ≤ 152

    def grid(shape: tuple[int, ...], bound: int, exponent: int) -> torch.Tensor:
        values = torch.randint(-bound, bound + 1, shape, generator=generator)
        return (values.double() * 2.0**-exponent).to(dtype)

    ignore_index = options.get("ignore_index", DEFAULT_IGNORE_INDEX)
    target = torch.randint(classes, (rows,), generator=generator)
    if ignore_index in range(classes):
        target[target == ignore_index] = (ignore_index + 1) % classes
    ignored = list(range(0, rows, 3)) if ignored_rows is None else ignored_rows
    target[ignored] = ignore_index
    with_bias, with_weight = options.pop("bias", False), options.pop("weight", False)
    return Problem(
        input=grid((rows, HIDDEN), 3, a).requires_grad_(),
        linear_weight=grid((classes, HIDDEN), 3, b).requires_grad_(),
        target=target,
        linear_bias=grid((classes,), 8, a + b).requires_grad_() if with_bias else None,
        weight=0.5 + 1.5 * torch.rand(classes, generator=generator) if with_weight else None,
        options=options,
    )


@dataclass
class Reference:
    """The unfused loss in float64, its gradients, and what the bounds are built from."""

    loss: torch.Tensor
    grad_input: torch.Tensor
    grad_weight: torch.Tensor
    grad_bias: torch.Tensor | None
    magnitudes: ExactLogitsMagnitudes


def unfused_reference(problem: Problem, reduction: str, grad_output: torch.Tensor) -> Reference:
    """F.cross_entropy(F.linear(x, W, b)) in float64, the z-loss and softcap as contract 3 has them."""
    x = problem.input.detach().double().requires_grad_()
    W = problem.linear_weight.detach().double().requires_grad_()
    b = None if problem.linear_bias is None else problem.linear_bias.detach().double()
    if b is not None:
        b.requires_grad_()
    weight = None if problem.weight is None else problem.weight.double()
    options = dict(problem.options)
    z_loss, softcap = options.pop("z_loss", 0.0), options.pop("softcap", None)
    epsilon = options.get("label_smoothing", 0.0)
    z = F.linear(x, W, b)  # exact (module docstring)
    s = softcap * torch.tanh(z / softcap) if softcap is not None else z
    cross_entropy = F.cross_entropy(
        s, problem.target, weight=weight, reduction=reduction, **options
    )
    counted = problem.counted
    C = s.shape[1]
    class_weight = torch.ones(C, dtype=torch.float64) if weight is None else weight
    w_y = torch.where(counted, class_weight[torch.where(counted, problem.target, 0)], 0.0)
    lse = torch.logsumexp(s, dim=1)
    z_term = torch.where(counted, z_loss * w_y * lse * lse, 0.0)
    total = w_y.sum()
    if reduction == "none":
        loss = cross_entropy + z_term
    elif reduction == "sum":
        loss = cross_entropy + z_term.sum()
    else:
        loss = cross_entropy + z_term.sum() / total
    parameters = (x, W) if b is None else (x, W, b)
    gradients = torch.autograd.grad(loss, parameters, grad_output.double())

    with torch.no_grad():  # M_i and G_ic of properties.tolerances' exact-logits analysis
        row_losses = (
            F.cross_entropy(s, problem.target, weight=weight, reduction="none", **options).abs()
            + z_term.abs()
        )
        largest = s.abs().amax(dim=1)
        spread = (1 - epsilon) * w_y + epsilon * class_weight.max()
        magnitude = spread * (1 + lse.abs() + largest) * (1 + 2 * z_loss * lse.abs())
        upstream = grad_output.double().abs()
        if reduction == "mean":
            upstream = upstream / total
        scale = upstream if reduction == "none" else upstream.expand(len(w_y))
        p = torch.softmax(s, dim=1)
        coefficient = (
            (1 - epsilon) * w_y
            + epsilon / C * class_weight.sum()
            + 2 * z_loss * w_y * (1 + lse.abs() + largest)
        )
        one_hot = F.one_hot(torch.where(counted, problem.target, 0), C).double()
        terms = (
            coefficient[:, None] * p
            + (1 - epsilon) * w_y[:, None] * one_hot
            + epsilon / C * class_weight
        )
        logit_gradient = torch.where(counted[:, None], scale[:, None] * terms, 0.0)
    return Reference(
        loss=loss.detach(),
        grad_input=gradients[0],
        grad_weight=gradients[1],
        grad_bias=gradients[2] if b is not None else None,
        magnitudes=ExactLogitsMagnitudes(
            row_magnitude=torch.where(counted, magnitude, 0.0),
            row_losses=row_losses,
            logit_gradient_magnitude=logit_gradient,
            total_weight=float(total),
        ),
    )


def upstream_gradient(reduction: str, rows: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Non-uniform: a scalar ≠ 1 for mean and sum, values of both signs per row for none."""
    generator = torch.Generator().manual_seed(seed + 1)
    if reduction == "none":
        return ((torch.rand(rows, generator=generator) - 0.5) * 8).to(dtype)
    return torch.tensor(-2.5, dtype=dtype)


def check_against_reference(
    problem: Problem, reduction: str, *, seed: int = 0, **call: Any
) -> torch.Tensor:
    """Run the fused loss forward and backward and compare everything with the reference."""
    dtype = problem.input.dtype
    loss = linear_cross_entropy(
        problem.input,
        problem.linear_weight,
        problem.target,
        reduction=reduction,
        **problem.keywords(),
        **call,
    )
    assert loss.dtype == dtype, f"the loss came back in {loss.dtype}, the input is {dtype}"
    grad_output = upstream_gradient(reduction, problem.input.shape[0], dtype, seed)
    parameters = [problem.input, problem.linear_weight]
    if problem.linear_bias is not None:
        parameters.append(problem.linear_bias)
    gradients = torch.autograd.grad(loss, parameters, grad_output)
    reference = unfused_reference(problem, reduction, grad_output)

    N, C = problem.input.shape[0], problem.linear_weight.shape[0]
    context = (
        f"N={N}, C={C}, {dtype}, reduction={reduction!r}, {problem.options}, "
        f"bias={problem.linear_bias is not None}, weight={problem.weight is not None}, {call}"
    )
    by = "the unfused float64 reference"
    dtype_name = str(dtype).removeprefix("torch.")
    assert_within(
        "loss",
        loss,
        reference.loss,
        exact_logits_loss_bound(
            reference.magnitudes, reference.loss, reduction=reduction, dtype=dtype_name
        ),
        context,
        expected_by=by,
    )
    expected = (reference.grad_input, reference.grad_weight, reference.grad_bias)
    bounds = exact_logits_gradient_bounds(
        reference.magnitudes,
        problem.input,
        problem.linear_weight,
        expected,
        reduction=reduction,
        dtype=dtype_name,
    )
    names = ("∂L/∂input", "∂L/∂W", "∂L/∂b")[: len(gradients)]
    for name, actual, wanted, bound in zip(
        names, gradients, expected[: len(names)], bounds[: len(names)], strict=True
    ):
        assert wanted is not None and bound is not None
        assert actual.dtype == dtype, f"{name} came back in {actual.dtype}, the input is {dtype}"
        assert_within(name, actual, wanted, bound, context, expected_by=by)
    ignored = ~problem.counted
    assert bool((gradients[0][ignored] == 0).all()), (
        f"an ignored row's ∂L/∂input is not 0  [{context}]"
    )
    return loss


# --- Values and gradients ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("option_set", list(OPTIONS))
def test_fused_loss_and_gradients_equal_the_unfused_loss(
    option_set: str, reduction: str, dtype_name: str
) -> None:
    """L(x, W, b) = CE(x·Wᵀ + b), with ∂L/∂x, ∂L/∂W, ∂L/∂b, for each option and reduction.

    Three chunks of seven rows and a tail of three, every third row ignored.
    """
    problem = grid_problem(
        3 * SMALL_CHUNK + 3, dtype=DTYPES[dtype_name], options=OPTIONS[option_set]
    )
    check_against_reference(problem, reduction, chunk_rows=SMALL_CHUNK)


def chunk_edge_cases(chunk: int) -> list[Any]:
    sizes = {
        "one row": 1,
        "chunk - 1": chunk - 1,
        "chunk": chunk,
        "chunk + 1": chunk + 1,
        "several chunks and a tail": 4 * chunk + 2,
    }
    return [pytest.param(rows, id=f"{name} ({rows})") for name, rows in sizes.items()]


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("rows", chunk_edge_cases(SMALL_CHUNK))
def test_chunk_edges_change_nothing(rows: int, reduction: str, dtype_name: str) -> None:
    """Batches of 1, k − 1, k, k + 1 and 4k + 2 rows for chunks of k rows, ignored rows at the
    chunk edges (the first and last row of every chunk), every option on."""
    edges = sorted(
        {r for start in range(0, rows, SMALL_CHUNK) for r in (start, start + SMALL_CHUNK - 1)}
    )
    problem = grid_problem(
        rows,
        dtype=DTYPES[dtype_name],
        options=OPTIONS["all"],
        ignored_rows=[r for r in edges if r < rows and rows > 1],
        seed=rows,
    )
    check_against_reference(problem, reduction, seed=rows, chunk_rows=SMALL_CHUNK)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("rows", chunk_edge_cases(CHUNK_ROWS))
def test_default_chunk_edges_change_nothing(rows: int, reduction: str) -> None:
    """The same at the default chunk size (lmloss._linear.CHUNK_ROWS), in float32."""
    problem = grid_problem(rows, options=OPTIONS["all"], seed=rows, classes=17)
    check_against_reference(problem, reduction, seed=rows)


def test_mean_divides_by_the_whole_batch_when_a_chunk_counts_nothing() -> None:
    """mean = Σ_i l_i / Σ_i w_{y_i} over the batch: a chunk whose rows are all ignored adds
    nothing to either sum (a mean of chunk means would count it)."""
    rows = 3 * SMALL_CHUNK
    problem = grid_problem(
        rows, options={"weight": True}, ignored_rows=list(range(SMALL_CHUNK, 2 * SMALL_CHUNK))
    )
    check_against_reference(problem, "mean", chunk_rows=SMALL_CHUNK)


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_mean_over_no_counted_row_is_nan_with_zero_gradients(dtype_name: str) -> None:
    """mean over an all-ignored batch = 0/0 = NaN, as F.cross_entropy; every gradient exactly 0."""
    problem = grid_problem(
        2 * SMALL_CHUNK + 1,
        dtype=DTYPES[dtype_name],
        options={"bias": True, "z_loss": 1e-2},
        ignored_rows=list(range(2 * SMALL_CHUNK + 1)),
    )
    loss = linear_cross_entropy(
        problem.input,
        problem.linear_weight,
        problem.target,
        chunk_rows=SMALL_CHUNK,
        **problem.keywords(),
    )
    assert torch.isnan(loss), f"the empty mean is {loss.item()!r}, F.cross_entropy gives nan"
    loss.backward()
    for name, tensor in (
        ("input", problem.input),
        ("W", problem.linear_weight),
        ("b", problem.linear_bias),
    ):
        assert tensor is not None and tensor.grad is not None
        assert bool((tensor.grad == 0).all()), f"∂L/∂{name} is not 0 where no row counts"


def test_autocast_runs_the_projection_in_bfloat16_and_returns_float32() -> None:
    """Under torch.autocast("cpu", bfloat16) the GEMM takes bfloat16 operands (as F.linear does
    there) and the loss comes back float32, as lmloss.cross_entropy's does; gradients reach the
    float32 parameters in float32. Grid inputs are exact in bfloat16, so the float32 reference
    bounds apply."""
    problem = grid_problem(2 * SMALL_CHUNK + 3, options={"bias": True, "softcap": 4.0})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(
            problem.input,
            problem.linear_weight,
            problem.target,
            chunk_rows=SMALL_CHUNK,
            **problem.keywords(),
        )
    assert loss.dtype == torch.float32, loss.dtype
    loss.backward()
    reference = unfused_reference(problem, "mean", torch.tensor(1.0))
    assert_within(
        "loss under autocast",
        loss,
        reference.loss,
        exact_logits_loss_bound(
            reference.magnitudes, reference.loss, reduction="mean", dtype="float32"
        ),
        "autocast bfloat16",
        expected_by="the unfused float64 reference",
    )
    assert problem.linear_weight.grad is not None
    assert problem.linear_weight.grad.dtype == torch.float32


# --- Purity, memory, errors, declaration ------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_inputs_are_not_modified(reduction: str) -> None:
    """Forward and backward leave input, linear_weight, linear_bias, target and weight as given."""
    problem = grid_problem(2 * SMALL_CHUNK + 1, options=OPTIONS["all"])
    given = {
        "input": problem.input,
        "linear_weight": problem.linear_weight,
        "target": problem.target,
        "linear_bias": problem.linear_bias,
        "weight": problem.weight,
    }
    copies = {name: tensor.detach().clone() for name, tensor in given.items() if tensor is not None}
    loss = linear_cross_entropy(
        problem.input,
        problem.linear_weight,
        problem.target,
        reduction=reduction,
        chunk_rows=SMALL_CHUNK,
        **problem.keywords(),
    )
    loss.backward(torch.ones_like(loss))
    for name, copy in copies.items():
        tensor = given[name]
        assert tensor is not None and torch.equal(tensor.detach(), copy), f"{name} was modified"


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any ATen operation returns while it is active.

    A dispatch mode sees every operation, the backward pass's too (on the CPU the autograd engine
    runs it on the calling thread, and the mode is part of the thread-local state it copies)."""

    def __init__(self) -> None:
        super().__init__()
        self.nbytes, self.where = 0, ""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.nbytes > self.nbytes:
                self.nbytes, self.where = tensor.nbytes, f"{func} -> {tuple(tensor.shape)}"
        return out


def test_no_tensor_of_all_the_logits_is_allocated() -> None:
    """Forward and backward at the default chunk size allocate nothing of N·C elements.

    Measured with a TorchDispatchMode: the largest tensor any ATen operation returns during
    forward and backward. For N = 4·255 + 1 rows and C = 512 classes it must not exceed one
    float32 chunk of logits (255 × 512); the unfused F.cross_entropy(F.linear(...)) under the
    same measurement returns the (N, C) logits, which shows that the measurement sees them.
    """
    rows, classes = 4 * CHUNK_ROWS + 1, 512
    problem = grid_problem(rows, classes=classes, options={"bias": True})
    chunk_bytes = CHUNK_ROWS * classes * 4
    assert classes * HIDDEN * 4 <= chunk_bytes  # ∂L/∂W's float32 accumulator is smaller
    fused = LargestTensor()
    with fused:
        linear_cross_entropy(
            problem.input, problem.linear_weight, problem.target, **problem.keywords()
        ).backward()
    unfused = LargestTensor()
    with unfused:
        logits = F.linear(problem.input, problem.linear_weight, problem.linear_bias)
        F.cross_entropy(logits, problem.target).backward()

    assert unfused.nbytes >= rows * classes * 4, (
        f"the measurement missed the logits: {unfused.where}"
    )
    assert fused.nbytes <= chunk_bytes, (
        f"the fused loss allocated {fused.nbytes:,} bytes at once ({fused.where}); one chunk of "
        f"logits is {chunk_bytes:,}, all of them {rows * classes * 4:,}"
    )


def _problem_arguments() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.zeros(4, 3), torch.zeros(5, 3), torch.zeros(4, dtype=torch.long)


BAD_CALLS = [
    pytest.param(
        lambda x, W, t: ([x[0], W, t], {}), "input must have shape (N, D)", id="1-d input"
    ),
    pytest.param(
        lambda x, W, t: ([x.long(), W, t], {}),
        "input must be a floating tensor",
        id="integer input",
    ),
    pytest.param(
        lambda x, W, t: ([x, W[:, :2], t], {}),
        "linear_weight must have shape (C, D) = (C, 3)",
        id="D mismatch",
    ),
    pytest.param(
        lambda x, W, t: ([x, W.double(), t], {}),
        "linear_weight has dtype torch.float64",
        id="dtype mismatch",
    ),
    pytest.param(
        lambda x, W, t: ([x, W, t[:3]], {}), "input has N = 4 rows, target has 3", id="N mismatch"
    ),
    pytest.param(
        lambda x, W, t: ([x, W, t.float()], {}),
        "target must be an integer tensor",
        id="float target",
    ),
    pytest.param(
        lambda x, W, t: ([x, W, t], {"linear_bias": torch.zeros(4)}),
        "linear_bias must have shape (C,) = (5,)",
        id="bias shape",
    ),
    pytest.param(
        lambda x, W, t: ([x, W, t], {"weight": torch.zeros(3)}),
        "weight must have shape (C,) = (5,)",
        id="weight shape",
    ),
    pytest.param(
        lambda x, W, t: ([x, W, t + 5], {}),
        "target 5 is outside [0, C) = [0, 5)",
        id="target range",
    ),
    pytest.param(
        lambda x, W, t: ([x, W, t], {"reduction": "avg"}),
        "reduction must be one of",
        id="reduction",
    ),
    pytest.param(
        lambda x, W, t: ([x, W, t], {"chunk_rows": 0}),
        "chunk_rows must be at least 1",
        id="chunk_rows",
    ),
    pytest.param(
        lambda x, W, t: ([x, W, t], {"softcap": 0.0}),
        "softcap must be finite and > 0",
        id="softcap",
    ),
]


@pytest.mark.parametrize(("make", "message"), BAD_CALLS)
def test_bad_arguments_are_named(make: Any, message: str) -> None:
    arguments, keywords = make(*_problem_arguments())
    with pytest.raises((TypeError, ValueError)) as raised:
        linear_cross_entropy(*arguments, **keywords)
    assert message in str(raised.value)


def test_linear_spec_declares_contract_three_with_both_options() -> None:
    """lmloss:LINEAR_SPEC is what `lmloss check lmloss:LINEAR_SPEC` loads: contract "linear",
    every contract keyword accepted, z_loss and softcap declared."""
    kernel = resolve(LINEAR_SPEC, source="lmloss:LINEAR_SPEC")
    assert kernel.contract.name == "linear"
    assert kernel.accepts == frozenset(kernel.contract.keywords) | {"z_loss", "softcap"}
    assert "linear_cross_entropy" in lmloss.__all__ and "LINEAR_SPEC" in lmloss.__all__


def test_a_mean_of_huge_z_losses_is_finite_where_the_exact_mean_is() -> None:
    """300 rows of z·lse² ≈ 8.5e37 each: their float32 sum overflows (2.6e40), their mean does
    not. The rows are added in float64, so the mean is the oracle's within contract 2's loss
    bound on these logits (x·Wᵀ = 2^63 and 0, exact in float32), and the sum is inf, as the
    exact sum rounds to in float32."""
    import reference
    from properties.ce.problem import Problem
    from properties.tolerances import loss_bound

    x = torch.full((300, 1), 2.0**32)
    w = torch.tensor([[2.0**31], [0.0]])
    y = torch.zeros(300, dtype=torch.long)
    mean = linear_cross_entropy(x, w, y, z_loss=1.0)
    exact = float(reference.linear_cross_entropy(x.tolist(), w.tolist(), y.tolist(), z_loss=1.0))
    logits = (x.double() @ w.double().T).float()
    bound = float(loss_bound(Problem.of(logits, y, z_loss=1.0)))
    assert abs(float(mean) - exact) <= bound, (float(mean), exact, bound)
    assert float(linear_cross_entropy(x, w, y, z_loss=1.0, reduction="sum")) == float("inf")
