"""The broken contract-3 kernels are broken as their docstrings say, and the correct one is right.

A sanity check of properties/kernels/broken_linear.py on small hand-made inputs, each kernel
beside properties.kernels.correct.chunked_linear_cross_entropy (which every broken one is a
variant of): where the docstring says they agree, they agree bit for bit (the same code computes
both); where it says they differ, the difference is the one described. Whether ``lmloss check``
catches each one by the clause its docstring names is a separate meta test.

The correct kernel itself is compared with torch's ``F.linear_cross_entropy`` in float64.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from properties.engine.kernel import KernelSpec, resolve
from properties.kernels import broken_linear
from properties.kernels.correct import (
    CHUNK_ROWS,
    ChunkedLinearLoss,
    chunked_linear_cross_entropy,
)
from reference import DEFAULT_IGNORE_INDEX

Kernel = Callable[..., torch.Tensor]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Chunk loops of small operations: a second torch thread only waits for a shared core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batch(
    rows: int,
    classes: int = 11,
    *,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    ignored: tuple[int, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """input (rows, 6), linear_weight (classes, 6), target (rows,), linear_bias (classes,)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 6, generator=generator).to(dtype)
    w = torch.randn(classes, 6, generator=generator).to(dtype)
    b = torch.randn(classes, generator=generator).to(dtype)
    y = torch.randint(classes, (rows,), generator=generator)
    y[list(ignored)] = DEFAULT_IGNORE_INDEX
    return x, w, y, b


def run(
    kernel: Kernel,
    arguments: tuple[torch.Tensor, ...],
    grad_output: float | torch.Tensor = 1.0,
    **keywords: Any,
) -> tuple[torch.Tensor, ...]:
    """loss, ∂/∂input, ∂/∂linear_weight, ∂/∂linear_bias of kernel(...)·grad_output."""
    x, w, y, b = (t.detach().clone() for t in arguments)
    leaves = [t.requires_grad_() for t in (x, w, b)]
    loss = kernel(x, w, y, linear_bias=b, **keywords)
    upstream = torch.as_tensor(grad_output, dtype=loss.dtype).expand(loss.shape)
    gradients = torch.autograd.grad(loss, leaves, upstream)
    return (loss.detach(), *gradients)


def test_every_broken_kernel_names_the_clause_that_catches_it() -> None:
    """Each public kernel of broken_linear.py says 'Caught by: LCE-…' and declares contract 3
    (by its parameters, or as a KernelSpec)."""
    found = {}
    for name, obj in vars(broken_linear).items():
        fn = obj.fn if isinstance(obj, KernelSpec) else obj
        if (
            name.startswith("_")
            or not callable(fn)
            or isinstance(fn, type)
            or getattr(fn, "__module__", None) != broken_linear.__name__
        ):
            continue
        caught_by = re.search(r"Caught by: (LCE-[A-Z0-9-]+)", fn.__doc__ or "")
        assert caught_by, f"{name}: its docstring must name the clause that catches it"
        assert resolve(obj).contract.name == "linear", f"{name} is not a contract-3 kernel"
        found[name] = caught_by[1]
    assert found == {
        "drops_chunk_tail": "LCE-VALUE",
        "mean_of_chunk_means": "LCE-MEAN-DIVISOR",
        "weight_grad_accumulated_in_bf16": "LCE-GRAD-ACCUMULATE",
        "forgets_bias_gradient": "LCE-GRAD",
        "ignored_rows_leak_into_weight_grad": "LCE-IGNORED",
        "softcap_grad_without_sech2": "LCE-GRAD",
        "smoothing_over_chunk_classes": "LCE-VALUE",
        "ignores_upstream_gradient": "LCE-GRAD-UPSTREAM",
        "chunks_by_count": "LCE-MEMORY",
    }


def test_drops_chunk_tail_loses_the_ragged_chunk() -> None:
    """Rows past the last full chunk have loss 0 and no gradient; the others are untouched."""
    rows = 2 * CHUNK_ROWS + 3
    arguments = batch(rows)
    full = 2 * CHUNK_ROWS
    correct = run(chunked_linear_cross_entropy, arguments, torch.ones(rows), reduction="none")
    broken = run(broken_linear.drops_chunk_tail, arguments, torch.ones(rows), reduction="none")
    assert torch.equal(broken[0][:full], correct[0][:full])
    assert bool((broken[0][full:] == 0).all()) and bool((correct[0][full:] > 0).all())
    assert torch.equal(broken[1][:full], correct[1][:full])
    assert bool((broken[1][full:] == 0).all())
    tail = correct[0][full:].sum()
    total = run(broken_linear.drops_chunk_tail, arguments, reduction="sum")[0]
    torch.testing.assert_close(
        total + tail, run(chunked_linear_cross_entropy, arguments, reduction="sum")[0]
    )


def test_mean_of_chunk_means_weights_a_sparse_chunk_too_much() -> None:
    """Chunk one counts 1 row, chunk two counts 7: the broken mean is (l_0 + mean_2)/2."""
    arguments = batch(2 * CHUNK_ROWS, ignored=tuple(range(1, CHUNK_ROWS)))
    losses = run(
        chunked_linear_cross_entropy, arguments, torch.ones(2 * CHUNK_ROWS), reduction="none"
    )[0]
    broken = run(broken_linear.mean_of_chunk_means, arguments)[0]
    correct = run(chunked_linear_cross_entropy, arguments)[0]
    torch.testing.assert_close(broken, (losses[0] + losses[CHUNK_ROWS:].mean()) / 2)
    torch.testing.assert_close(correct, losses.sum() / (CHUNK_ROWS + 1))
    assert not torch.isclose(broken, correct)
    for reduction in ("sum", "none"):
        upstream = torch.ones(2 * CHUNK_ROWS) if reduction == "none" else 1.0
        for a, b in zip(
            run(broken_linear.mean_of_chunk_means, arguments, upstream, reduction=reduction),
            run(chunked_linear_cross_entropy, arguments, upstream, reduction=reduction),
            strict=True,
        ):
            assert torch.equal(a, b), f"reduction={reduction!r} is not the bug's"


def test_weight_grad_in_bf16_stalls_over_many_chunks() -> None:
    """Over a thousand chunks of non-negative inputs; class 7 is nobody's target, so every row's
    contribution p_i7·x_i to its column of ∂L/∂W is positive. In bfloat16 the broken running sum
    is off by more than 2^-5 relatively (8 bfloat16 units); the correct float32 sum by less than
    2^-8 (its one final rounding to bfloat16, plus float32 noise). In float32 it agrees bit for
    bit with the correct kernel in chunks of its size."""
    rows, classes = 300 * CHUNK_ROWS, 8
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(rows, 4, generator=generator)
    w = torch.randn(classes, 4, generator=generator) * 0.1
    y = torch.randint(classes - 1, (rows,), generator=generator)

    def weight_gradient(kernel: Kernel, dtype: torch.dtype) -> torch.Tensor:
        xs, ws = (t.to(dtype).clone().requires_grad_() for t in (x, w))
        kernel(xs, ws, y, reduction="sum").backward()
        assert ws.grad is not None
        return ws.grad

    # The float64 kernel on the bfloat16-rounded inputs: the same sums, rounded at 2^-53.
    x = x.to(torch.bfloat16).double()
    w = w.to(torch.bfloat16).double()
    exact = weight_gradient(chunked_linear_cross_entropy, torch.float64)[classes - 1]

    def relative_error(kernel: Kernel) -> float:
        column = weight_gradient(kernel, torch.bfloat16)[classes - 1].double()
        return float(((column - exact).abs() / exact.abs()).max())

    assert relative_error(broken_linear.weight_grad_accumulated_in_bf16) > 2.0**-5
    assert relative_error(chunked_linear_cross_entropy) < 2.0**-8
    same_chunks = ChunkedLinearLoss()
    same_chunks.chunk_rows = broken_linear._WeightGradientInParameterDtype.chunk_rows
    assert torch.equal(
        weight_gradient(broken_linear.weight_grad_accumulated_in_bf16, torch.float32),
        weight_gradient(same_chunks.loss, torch.float32),
    )


def test_forgets_bias_gradient_returns_zero_for_the_bias_only() -> None:
    arguments = batch(2 * CHUNK_ROWS + 1, ignored=(3,))
    broken = run(broken_linear.forgets_bias_gradient, arguments)
    correct = run(chunked_linear_cross_entropy, arguments)
    assert bool((broken[3] == 0).all()) and bool((correct[3] != 0).any())
    for a, b in zip(broken[:3], correct[:3], strict=True):
        assert torch.equal(a, b)


def test_ignored_rows_leak_their_softmax_into_weight_and_bias_gradients() -> None:
    """Loss and ∂L/∂input as the correct kernel's; ∂L/∂b exceeds it by Σ_{ignored i} softmax(z_i)
    and ∂L/∂W by Σ_{ignored i} softmax(z_i)ᵀ·x_i (reduction="sum", upstream 1)."""
    ignored = (0, CHUNK_ROWS - 1, CHUNK_ROWS)  # at chunk edges
    arguments = batch(2 * CHUNK_ROWS + 2, ignored=ignored)
    broken = run(broken_linear.ignored_rows_leak_into_weight_grad, arguments, reduction="sum")
    correct = run(chunked_linear_cross_entropy, arguments, reduction="sum")
    assert torch.equal(broken[0], correct[0]) and torch.equal(broken[1], correct[1])
    x, w, _, b = arguments
    rows = list(ignored)
    p = torch.softmax(F.linear(x[rows], w, b), dim=1)
    torch.testing.assert_close(broken[3] - correct[3], p.sum(dim=0))
    torch.testing.assert_close(broken[2] - correct[2], p.t() @ x[rows])


def test_softcap_grad_without_sech2_leaves_out_the_chain_factor() -> None:
    """One row: ∂L/∂b = ∂L/∂z, and the broken one times 1 − tanh²(z/s) is the correct one."""
    softcap = 2.0
    arguments = batch(1)
    kernel = broken_linear.softcap_grad_without_sech2.fn
    broken = run(kernel, arguments, softcap=softcap)
    correct = run(chunked_linear_cross_entropy, arguments, softcap=softcap)
    assert torch.equal(broken[0], correct[0])
    x, w, _, b = arguments
    chain = 1 - torch.tanh(F.linear(x, w, b)[0] / softcap) ** 2
    torch.testing.assert_close(broken[3] * chain, correct[3])
    assert not torch.allclose(broken[3], correct[3])


def test_smoothing_over_chunk_classes_spreads_epsilon_per_block() -> None:
    """Pure smoothing (ε = 1): the correct loss is the mean of lse − z_c over all C classes, the
    broken one the sum over blocks of 5 classes of each block's mean; with C ≤ 5 they agree."""
    classes = 12  # blocks of 5, 5 and 2
    arguments = batch(3, classes, dtype=torch.float64)
    x, w, _, b = arguments
    distance = -torch.log_softmax(F.linear(x, w, b), dim=1)
    blocks = distance.split(broken_linear.VOCABULARY_BLOCK, dim=1)
    upstream = torch.ones(3, dtype=torch.float64)
    keywords: dict[str, Any] = {"reduction": "none", "label_smoothing": 1.0}
    broken = run(broken_linear.smoothing_over_chunk_classes, arguments, upstream, **keywords)[0]
    correct = run(chunked_linear_cross_entropy, arguments, upstream, **keywords)[0]
    torch.testing.assert_close(correct, distance.mean(dim=1))
    torch.testing.assert_close(broken, sum(block.mean(dim=1) for block in blocks))
    small = batch(3, broken_linear.VOCABULARY_BLOCK, dtype=torch.float64)
    assert torch.equal(
        run(broken_linear.smoothing_over_chunk_classes, small, upstream, **keywords)[0],
        run(chunked_linear_cross_entropy, small, upstream, **keywords)[0],
    )


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_ignores_upstream_gradient_takes_it_as_one(reduction: str) -> None:
    """Under an upstream gradient of 3 (per row for none), the broken gradients are those of an
    upstream gradient of 1."""
    rows = 2 * CHUNK_ROWS + 1
    arguments = batch(rows, ignored=(2,))
    shape = (rows,) if reduction == "none" else ()
    broken = run(
        broken_linear.ignores_upstream_gradient,
        arguments,
        torch.full(shape, 3.0),
        reduction=reduction,
    )
    at_one = run(chunked_linear_cross_entropy, arguments, torch.ones(shape), reduction=reduction)
    at_three = run(
        chunked_linear_cross_entropy, arguments, torch.full(shape, 3.0), reduction=reduction
    )
    for a, b, c in zip(broken[1:], at_one[1:], at_three[1:], strict=True):
        assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"label_smoothing": 0.1},
        {"weight": True, "ignore_index": 0},
        {"weight": True, "label_smoothing": 0.3},
    ],
    ids=["plain", "smoothing", "weight+ignore_index=0", "weight+smoothing"],
)
def test_correct_chunked_kernel_matches_torch_linear_cross_entropy(
    reduction: str, options: dict[str, Any]
) -> None:
    """In float64: chunked_linear_cross_entropy = F.linear_cross_entropy (its reference path, which
    is F.cross_entropy(F.linear(...))), loss and all three gradients, every third row ignored.

    Both sides sum at most N = 17 rows and C = 11 classes in float64, so each is within about
    (N + C + 8)·2^-53 relatively of the exact values; 2^-40 relative to the largest magnitude
    leaves a factor of about 100 over twice that and is 2^13 times finer than float32 rounding.
    """
    options = dict(options)
    rows, classes = 2 * CHUNK_ROWS + 3, 11
    x, w, y, b = batch(rows, classes, dtype=torch.float64)
    ignore_index = options.get("ignore_index", DEFAULT_IGNORE_INDEX)
    y[::3] = ignore_index
    if ignore_index in range(classes):
        y[1::3] = torch.where(y[1::3] == ignore_index, (ignore_index + 1) % classes, y[1::3])
        y[2::3] = torch.where(y[2::3] == ignore_index, (ignore_index + 1) % classes, y[2::3])
    if options.pop("weight", False):
        options["weight"] = torch.linspace(0.5, 2.0, classes, dtype=torch.float64)
    upstream = torch.linspace(-2.0, 3.0, rows, dtype=torch.float64) if reduction == "none" else 1.5
    ours = run(chunked_linear_cross_entropy, (x, w, y, b), upstream, reduction=reduction, **options)
    torch_side = run(F.linear_cross_entropy, (x, w, y, b), upstream, reduction=reduction, **options)
    for name, a, e in zip(("loss", "∂/∂input", "∂/∂W", "∂/∂b"), ours, torch_side, strict=True):
        error, bound = float((a - e).abs().max()), 2.0**-40 * float(e.abs().max())
        assert error <= bound, f"{name}: differs from torch's by {error:.3g} > {bound:.3g}"


def test_chunks_by_count_is_right_but_holds_half_the_logits() -> None:
    """Its values and gradients are the correct kernel's, bit for bit where the chunks agree
    (2·CHUNK_ROWS rows: two chunks of CHUNK_ROWS either way); on a batch of many chunks its
    chunks are N/2 rows, so its peak memory grows with N where the correct kernel's does not."""
    small = batch(2 * CHUNK_ROWS)
    for broken, correct in zip(
        run(broken_linear.chunks_by_count.fn, small),
        run(chunked_linear_cross_entropy, small),
        strict=True,
    ):
        assert torch.equal(broken, correct)
    from properties.lce.memory import peak_extra_bytes

    def peak(kernel: Kernel, rows: int) -> int:
        x, w, y, b = batch(rows, classes=512)
        x.requires_grad_(True)
        return peak_extra_bytes(lambda: kernel(x, w, y, linear_bias=b).backward(), "cpu")

    logits_bytes = 1024 * 512 * 4
    assert peak(broken_linear.chunks_by_count.fn, 1024) > logits_bytes // 2
    assert peak(chunked_linear_cross_entropy, 1024) < logits_bytes // 8
