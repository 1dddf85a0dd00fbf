"""The training step's clauses: the essay's step, checked against the oracle (issue 4).

The step is ``lmloss.forward_backward``: ``pred = model(x)``, ``B, T, C = pred.shape``,
``criterion(pred.reshape(B*T, C), y.reshape(B*T), reduction="sum")`` divided by the batch's
counted targets. A recording criterion passes each call through to the kernel and keeps the
logits it was given, so the clauses compare the loop with the oracle on the model's own logits.

The criterion is pluggable, so the step's clauses run against the kernel under test (the
``kernel`` fixture of properties/conftest.py: ``--kernel`` / ``LMLOSS_KERNEL``, by default this
project's loss and PyTorch's). The clauses about the loop itself (accumulation of parameter
gradients, padding) use this project's loss.

Models are tiny (the loop does not care about size). The gradient clauses use a 13-token
vocabulary: the oracle's gradient costs about 100 µs per logit. Values are compared as the
clauses compare them (properties.engine.checks.discrepancy: equal infinities and two NaNs
agree, a non-finite value against a finite one is an infinite error).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import lmloss
from lmloss import GPT, ByteDataset, GPTConfig, cross_entropy, forward_backward
from properties.ce.oracle import oracle_gradient, oracle_loss
from properties.ce.problem import Problem
from properties.engine.checks import assert_within
from properties.engine.kernel import KernelUnderTest
from properties.strategies import seeds, splits
from properties.tolerances import (
    TOLERANCES,
    reordered_float64_bound,
    reordered_float64_loss_bound,
)
from reference import DEFAULT_IGNORE_INDEX

#: Two blocks (so attention feeds attention) over a 13-token vocabulary: the oracle's gradient
#: of every row stays cheap.
SMALL_VOCAB_MODEL = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16)
#: Where the step runs: (device, bfloat16 autocast). CPU autocast is checked too: asked for
#: bfloat16 it works (the essay's float32 would warn, and pytest turns warnings into errors).
STEP_MODES = [
    pytest.param(("cpu", False), id="cpu-float32"),
    pytest.param(("cpu", True), id="cpu-bf16-autocast"),
    pytest.param(
        ("cuda", True),
        id="cuda-bf16-autocast",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        ],
    ),
]
#: Each example trains a model step: fewer examples than the kernel clauses.
EXAMPLES = min(settings().max_examples, 20)
MAX_ROWS = 3  # sequences per micro-batch
MAX_MICRO_BATCHES = 3
ONE = torch.tensor(1.0, dtype=torch.float64)  # the upstream gradient of the loss

training_settings = settings(max_examples=EXAMPLES, deadline=None)


# --- Helpers ----------------------------------------------------------------------------------


class RecordingCriterion:
    """Calls the kernel and keeps every (logits, target) it was given, the logits' gradient too.

    The logits are copied before the call: a kernel may write into its input (Liger does).
    """

    def __init__(self, kernel: Callable[..., torch.Tensor] = cross_entropy) -> None:
        self.kernel = kernel
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, **keywords: Any) -> torch.Tensor:
        if logits.requires_grad:
            logits.retain_grad()
        self.calls.append((logits.detach().clone(), logits, target))
        return self.kernel(logits, target, **keywords)

    def logits(self) -> torch.Tensor:
        """Every row the kernel was given, in call order: (N, C)."""
        return torch.cat([given for given, _, _ in self.calls])

    def targets(self) -> torch.Tensor:
        return torch.cat([target for _, _, target in self.calls])

    def gradients(self) -> torch.Tensor:
        """∂L/∂logits of every row, as backward() left it."""
        missing = [i for i, (_, logits, _) in enumerate(self.calls) if logits.grad is None]
        assert not missing, f"backward() left no gradient on the logits of calls {missing}"
        return torch.cat([logits.grad for _, logits, _ in self.calls if logits.grad is not None])


def require_step_contract(kernel: KernelUnderTest, device: str, *, gradient: bool = False) -> None:
    """Skip unless the kernel can be the step's criterion: reduction="sum" on this device."""
    if "reduction" not in kernel.accepts or "sum" not in kernel.spec.reductions:
        pytest.skip(f"{kernel.name} takes no reduction='sum', which the step divides by N")
    if device not in kernel.spec.devices:
        pytest.skip(f"{kernel.name} declares devices {', '.join(kernel.spec.devices)}")
    if gradient and not kernel.spec.differentiable:
        pytest.skip(f"{kernel.name} declares itself forward-only")


def tiny_model(
    config: GPTConfig, *, seed: int, logit_scale: float = 1.0, dtype: torch.dtype = torch.float32
) -> GPT:
    """A freshly initialised model whose logits are ``logit_scale`` times the usual (≈ 0.1)."""
    torch.manual_seed(seed)
    model = GPT(config).to(dtype)
    with torch.no_grad():
        model.final_norm.weight.mul_(logit_scale)  # the head is linear in the final norm
    return model


def draw_logit_scale(data: st.DataObject) -> float:
    """1 to 1000 times the initial logits (≈ 0.1 to ≈ 100): near-uniform to near-certain."""
    exponent = data.draw(st.floats(min_value=0.0, max_value=math.log2(1000.0)), label="log2 scale")
    return 2.0**exponent


def draw_micro_batch(
    data: st.DataObject,
    kernel: KernelUnderTest | None,
    *,
    label: str,
    rows: int | None = None,
    length: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y of shape (b, t), drawn unless given, over the small vocabulary; each target padding
    (the contract's default ignore index, which the loop does not count) or not, as drawn (never,
    for a kernel that takes no ignore_index)."""
    if rows is None:
        rows = data.draw(st.integers(1, MAX_ROWS), label=f"{label}: rows")
    if length is None:
        length = data.draw(st.integers(1, SMALL_VOCAB_MODEL.block_size), label=f"{label}: length")
    generator = torch.Generator().manual_seed(data.draw(seeds(), label=f"{label}: seed"))
    tokens = torch.randint(SMALL_VOCAB_MODEL.vocab_size, (rows, length + 1), generator=generator)
    x, y = tokens[:, :-1], tokens[:, 1:].clone()
    if kernel is None or "ignore_index" in kernel.accepts:
        ignored = data.draw(
            st.lists(st.booleans(), min_size=rows * length, max_size=rows * length),
            label=f"{label}: ignored targets",
        )
        y[torch.tensor(ignored).reshape(rows, length)] = DEFAULT_IGNORE_INDEX
    return x, y


def counted(micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> int:
    return sum(int((y != DEFAULT_IGNORE_INDEX).sum()) for _, y in micro_batches)


def parameter_gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same_gradients(
    quantity: str,
    actual: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    context: str,
    *,
    expected_by: str,
) -> None:
    """Two float64 evaluations of ∂L/∂θ agree within the reordering bound."""
    assert actual.keys() == expected.keys(), (
        f"{quantity}: gradients of {sorted(actual)} vs {sorted(expected)}"
    )
    bound = reordered_float64_bound(expected.values())
    for name, gradient in expected.items():
        assert_within(
            f"{quantity}: ∂L/∂{name}",
            actual[name],
            gradient,
            bound,
            context,
            expected_by=expected_by,
        )


# --- TRAIN-LOSS -------------------------------------------------------------------------------


@pytest.mark.parametrize("step_mode", STEP_MODES)
@training_settings
@given(data=st.data())
def test_step_reports_the_oracle_mean_nll_of_its_own_logits(
    kernel: KernelUnderTest,
    step_mode: tuple[str, bool],
    byte_model: GPTConfig,
    docs_corpus: lmloss.Corpus,
    data: st.DataObject,
) -> None:
    """L = −(1/N) Σ_{b,t} log softmax(z_{b,t})[y_{b,t}] of the model's logits z on the batch.  [TRAIN-LOSS] tol: loss

    A real batch of Python's documentation. The recorded logits are model(x) in the essay's
    row order (b, t) -> b·T + t, with y flattened the same way. Under bfloat16 autocast the
    head's output is bfloat16 and the loss is computed in float32 from it: the oracle sees
    those rounded logits, and the bound is that of the dtype the loss comes back in.
    """
    device, use_amp = step_mode
    require_step_contract(kernel, device)
    seed = data.draw(seeds(), label="seed")
    rows = data.draw(st.integers(1, 4), label="B")
    dataset = ByteDataset(docs_corpus, batch_size=rows, block_size=byte_model.block_size, seed=seed)
    x, y = (t.to(device) for t in dataset.get_batch())
    model = tiny_model(byte_model, seed=seed, logit_scale=draw_logit_scale(data)).to(device)
    criterion = RecordingCriterion(kernel)

    loss = forward_backward(model, criterion, [(x, y)], use_amp=use_amp)

    logits = criterion.logits()
    assert logits.dtype == (torch.bfloat16 if use_amp else torch.float32), logits.dtype
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=use_amp):
        assert torch.equal(logits, model(x).reshape(-1, byte_model.vocab_size))
    assert torch.equal(criterion.targets(), y.reshape(-1))
    loss_dtype = str(loss.dtype).removeprefix("torch.")
    problem = Problem.of(logits, criterion.targets(), reduction="mean").but(dtype=loss_dtype)
    assert_within(
        "the step's loss",
        loss,
        oracle_loss(problem),
        TOLERANCES["loss"](problem),
        f"forward_backward(use_amp={use_amp}) on {device}, B={rows}, "
        f"T={byte_model.block_size}, {kernel.name}",
    )


# --- TRAIN-GRAD, TRAIN-ACCUM ------------------------------------------------------------------


def check_logit_gradients(
    kernel: KernelUnderTest,
    micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    data: st.DataObject,
    context: str,
) -> None:
    """Run the step and compare its loss and every logit's gradient with the full batch's oracle."""
    model = tiny_model(
        SMALL_VOCAB_MODEL,
        seed=data.draw(seeds(), label="model seed"),
        logit_scale=draw_logit_scale(data),
    )
    criterion = RecordingCriterion(kernel)

    loss = forward_backward(model, criterion, micro_batches)

    problem = Problem.of(criterion.logits(), criterion.targets(), reduction="mean")
    context = (
        f"{context}, N={counted(micro_batches)} counted of {problem.target.numel()}, {kernel.name}"
    )
    assert_within(
        "the step's loss", loss, oracle_loss(problem), TOLERANCES["loss"](problem), context
    )
    gradients = criterion.gradients()
    assert_within(
        "∂L/∂logits",
        gradients,
        oracle_gradient(problem, ONE),
        TOLERANCES["gradient"](problem, ONE),
        context,
    )
    ignored = ~problem.counted
    assert bool((gradients[ignored] == 0).all()), (
        f"an ignored row has a non-zero gradient  [{context}]"
    )


@training_settings
@given(data=st.data())
def test_gradient_reaching_the_logits_is_softmax_minus_one_hot_over_n(
    kernel: KernelUnderTest, data: st.DataObject
) -> None:
    """∂L/∂z_i = (softmax(z_i) − onehot(y_i)) / N for the N counted rows; exactly 0 for ignored rows.  [TRAIN-GRAD] tol: gradient

    A batch with no counted target has no mean: the step must refuse it (that example checks
    the refusal, so it counts).
    """
    require_step_contract(kernel, "cpu", gradient=True)
    batch = draw_micro_batch(data, kernel, label="batch")
    if counted([batch]) == 0:
        with pytest.raises(ValueError, match="every target of the batch is ignored"):
            forward_backward(tiny_model(SMALL_VOCAB_MODEL, seed=0), kernel, [batch])
    else:
        check_logit_gradients(kernel, [batch], data, "one batch")


@training_settings
@given(data=st.data())
def test_accumulation_over_ragged_micro_batches_gives_the_full_batch_gradient(
    kernel: KernelUnderTest, data: st.DataObject
) -> None:
    """∂/∂z of (1/N) Σ_k Σ_{i∈k} l_i: every micro-batch's rows get (softmax − onehot)/N, N counted over all.  [TRAIN-ACCUM] tol: gradient

    Micro-batches of drawn shapes, each with its own drawn padding: the mean of per-micro-batch
    means would scale micro-batch k by N/(K·N_k) instead.
    """
    require_step_contract(kernel, "cpu", gradient=True)
    count = data.draw(st.integers(2, MAX_MICRO_BATCHES), label="micro-batches")
    micro_batches = [draw_micro_batch(data, kernel, label=f"micro-batch {k}") for k in range(count)]
    assume(counted(micro_batches) > 0)  # the all-ignored batch is TRAIN-GRAD's case
    check_logit_gradients(kernel, micro_batches, data, f"{count} ragged micro-batches")


def accumulated_gradients(
    model: torch.nn.Module, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = forward_backward(model, cross_entropy, micro_batches)
    return loss, parameter_gradients(model)


@training_settings
@given(data=st.data())
def test_accumulated_parameter_gradient_equals_the_full_batch_gradient(data: st.DataObject) -> None:
    """Σ_k ∂/∂θ (Σ_{i∈k} l_i)/N = ∂/∂θ (1/N) Σ_i l_i for any split of the batch and any padding.  [TRAIN-ACCUM] tol: reordered_float64

    float64, so that only the order of roundings differs between the two (the loss itself:
    reordered_float64_loss_bound).
    """
    rows = data.draw(st.integers(2, 6), label="B")
    x, y = draw_micro_batch(
        data, None, label="batch", rows=rows, length=SMALL_VOCAB_MODEL.block_size
    )
    assume(counted([(x, y)]) > 0)  # the step refuses a batch with no counted target
    parts = data.draw(splits(rows=rows), label="micro-batches (start, stop)")
    sizes = [stop - start for start, stop in parts]
    model = tiny_model(
        SMALL_VOCAB_MODEL, seed=data.draw(seeds(), label="model seed"), dtype=torch.float64
    )

    full_loss, full = accumulated_gradients(model, [(x, y)])
    split_loss, split = accumulated_gradients(
        model, list(zip(x.split(sizes), y.split(sizes), strict=True))
    )

    context = f"B={rows} split {sizes}, float64"
    assert_within(
        "the accumulated loss",
        split_loss,
        full_loss,
        reordered_float64_loss_bound(full_loss),
        context,
        expected_by="the full batch",
    )
    assert_same_gradients("accumulated", split, full, context, expected_by="the full batch")


def test_mean_of_micro_batch_means_is_caught() -> None:
    """The bug TRAIN-ACCUM rules out: averaging per-micro-batch means breaks the bound.  [TRAIN-ACCUM] meta

    One micro-batch counts 1 target, the other 16: the mean of means weights the lone token 8.5
    times too much.
    """
    torch.manual_seed(0)
    x = torch.randint(SMALL_VOCAB_MODEL.vocab_size, (3, SMALL_VOCAB_MODEL.block_size))
    y = torch.randint(SMALL_VOCAB_MODEL.vocab_size, (3, SMALL_VOCAB_MODEL.block_size))
    y[0, 1:] = DEFAULT_IGNORE_INDEX  # micro-batch one: 1 counted target
    model = tiny_model(SMALL_VOCAB_MODEL, seed=0, dtype=torch.float64)
    _, full = accumulated_gradients(model, [(x, y)])

    model.zero_grad(set_to_none=True)
    halves = [(x[:1], y[:1]), (x[1:], y[1:])]
    for xs, ys in halves:
        pred = model(xs)
        B, T, C = pred.shape
        (cross_entropy(pred.reshape(B * T, C), ys.reshape(B * T)) / len(halves)).backward()

    with pytest.raises(AssertionError, match=r"× bound"):
        assert_same_gradients(
            "mean of means",
            parameter_gradients(model),
            full,
            "the bug",
            expected_by="the full batch",
        )


# --- TRAIN-PAD --------------------------------------------------------------------------------


@training_settings
@given(data=st.data())
def test_padding_changes_neither_the_loss_nor_the_gradient(data: st.DataObject) -> None:
    """L and ∂L/∂θ of sequences padded to T (any tokens, targets ignored) = those of the unpadded sequences.  [TRAIN-PAD] tol: reordered_float64

    Padding sits after each sequence's end; whatever tokens it holds, the causal mask keeps them
    out of the real positions and ignored targets keep them out of the sum. The loss is
    compared under reordered_float64_loss_bound.
    """
    rows = data.draw(st.integers(1, 4), label="B")
    T = SMALL_VOCAB_MODEL.block_size
    lengths = data.draw(st.lists(st.integers(1, T), min_size=rows, max_size=rows), label="lengths")
    generator = torch.Generator().manual_seed(data.draw(seeds(), label="tokens seed"))
    tokens = torch.randint(SMALL_VOCAB_MODEL.vocab_size, (rows, T + 1), generator=generator)
    sequences = [
        (tokens[b : b + 1, :n], tokens[b : b + 1, 1 : n + 1]) for b, n in enumerate(lengths)
    ]
    garbage = torch.randint(SMALL_VOCAB_MODEL.vocab_size, (rows, T), generator=generator)
    x, y = garbage.clone(), torch.full((rows, T), DEFAULT_IGNORE_INDEX)
    for b, (xs, ys) in enumerate(sequences):
        x[b, : lengths[b]], y[b, : lengths[b]] = xs[0], ys[0]
    model = tiny_model(
        SMALL_VOCAB_MODEL, seed=data.draw(seeds(), label="model seed"), dtype=torch.float64
    )

    unpadded_loss, unpadded = accumulated_gradients(model, sequences)
    padded_loss, padded = accumulated_gradients(model, [(x, y)])

    context = f"lengths {lengths} padded to T={T}, float64"
    assert_within(
        "the padded loss",
        padded_loss,
        unpadded_loss,
        reordered_float64_loss_bound(unpadded_loss),
        context,
        expected_by="the unpadded sequences",
    )
    assert_same_gradients("padded", padded, unpadded, context, expected_by="the unpadded sequences")


# --- TRAIN-FUSED-HEAD -------------------------------------------------------------------------
#
# ``lmloss train --loss linear``: the step hands the final hidden states h and the head's weight
# to lmloss.linear_cross_entropy instead of building the logits (lmloss.forward_backward's
# ``linear_criterion``). Both steps run the same body on the same batch, so h is the same
# tensor bit for bit; they differ only in the head and the loss. A batch of 32 sequences of 8
# tokens is 256 rows: one default chunk of 255 and a tail of one.

FUSED_HEAD_ROWS = 32  # B; B·T = 256 rows, within the reordering analysis's 2^8 tokens


def one_step(
    model: GPT, micro_batch: tuple[torch.Tensor, torch.Tensor], *, fused: bool
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The step's loss, ∂L/∂h of the final hidden states h (B, T, E), and ∂L/∂θ."""
    model.zero_grad(set_to_none=True)
    kept: list[torch.Tensor] = []

    def keep(module: torch.nn.Module, arguments: Any, hidden: torch.Tensor) -> None:
        hidden.retain_grad()
        kept.append(hidden)

    handle = model.final_norm.register_forward_hook(keep)
    try:
        loss = forward_backward(
            model,
            cross_entropy,
            [micro_batch],
            linear_criterion=lmloss.linear_cross_entropy if fused else None,
        )
    finally:
        handle.remove()
    (hidden,) = kept
    assert hidden.grad is not None
    return loss, hidden.grad, parameter_gradients(model)


def fixed_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y (B, T) over the small vocabulary, every fourth target ignored."""
    generator = torch.Generator().manual_seed(seed)
    T = SMALL_VOCAB_MODEL.block_size
    tokens = torch.randint(
        SMALL_VOCAB_MODEL.vocab_size, (FUSED_HEAD_ROWS, T + 1), generator=generator
    )
    x, y = tokens[:, :-1], tokens[:, 1:].clone()
    y.view(-1)[::4] = DEFAULT_IGNORE_INDEX
    return x, y


def test_fused_head_step_equals_the_logits_step_in_float32() -> None:
    """L and ∂L/∂h of the step with lmloss.linear_cross_entropy = those of the logits step, h the final hidden states, float32 on CPU.  [TRAIN-FUSED-HEAD] tol: fused_head_float32

    Logits of the usual scale and 100 times it (a near-certain model); a quarter of the targets
    ignored. The gradients of the body's parameters follow from ∂L/∂h by the same float32 code in
    both steps; test_fused_head_step_gives_the_logits_steps_parameter_gradients compares them
    in float64.
    """
    for seed, logit_scale in ((0, 1.0), (1, 100.0)):
        x, y = fixed_batch(seed)
        model = tiny_model(SMALL_VOCAB_MODEL, seed=seed, logit_scale=logit_scale)
        loss, hidden_grad, _ = one_step(model, (x, y), fused=False)
        fused_loss, fused_hidden_grad, _ = one_step(model, (x, y), fused=True)
        with torch.no_grad():
            hidden = model.hidden_states(x).reshape(-1, model.config.n_embd)  # (B·T, E)
        target = y.reshape(-1)
        loss_bound, hidden_bound = TOLERANCES["fused_head_float32"](
            hidden, model.head.weight, target, target != DEFAULT_IGNORE_INDEX
        )
        hidden_bound = hidden_bound.reshape(hidden_grad.shape)
        context = f"B={FUSED_HEAD_ROWS}, T={x.shape[1]}, logit scale {logit_scale}, float32"
        by = "the logits step"
        assert_within(
            "the fused step's loss", fused_loss, loss, loss_bound, context, expected_by=by
        )
        assert_within(
            "∂L/∂h", fused_hidden_grad, hidden_grad, hidden_bound, context, expected_by=by
        )


def test_fused_head_step_gives_the_logits_steps_parameter_gradients() -> None:
    """∂L/∂θ (every parameter) and L of the step with lmloss.linear_cross_entropy = those of the logits step, float64.  [TRAIN-FUSED-HEAD] tol: reordered_float64

    In float64 the two steps compute the same exact ∂L/∂θ in different orders of rounding (the
    fused head's chunks, its own softmax), which is what reordered_float64_bound allows for.
    """
    x, y = fixed_batch(2)
    model = tiny_model(SMALL_VOCAB_MODEL, seed=2, dtype=torch.float64)
    loss, _, gradients = one_step(model, (x, y), fused=False)
    fused_loss, _, fused_gradients = one_step(model, (x, y), fused=True)
    context = f"B={FUSED_HEAD_ROWS}, T={x.shape[1]}, float64"
    assert_within(
        "the fused step's loss",
        fused_loss,
        loss,
        reordered_float64_loss_bound(loss),
        context,
        expected_by="the logits step",
    )
    assert_same_gradients(
        "fused head", fused_gradients, gradients, context, expected_by="the logits step"
    )
