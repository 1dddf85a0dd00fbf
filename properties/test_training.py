"""The training loop's clauses: the essay's step, checked against the oracle (issue 4).

The step is ``lmloss.forward_backward``: ``pred = model(x)``, ``B, T, C = pred.shape``,
``criterion(pred.reshape(B*T, C), y.reshape(B*T), reduction="sum")`` divided by the batch's
counted targets. A recording criterion passes each call through to the kernel and keeps the
logits it was given, so the clauses compare the loop with the oracle on the model's own logits.

The criterion is pluggable, so the step's clauses run against the kernel under test (the
``kernel`` fixture of conftest.py: ``--kernel`` / ``LMLOSS_KERNEL``, by default this project's
loss and PyTorch's). The clauses about the loop itself (accumulation of parameter gradients,
padding, determinism, resume) use this project's loss.

Models are tiny (the loop does not care about size). The gradient clauses use a 13-token
vocabulary: the oracle's gradient costs about 100 µs per logit.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lmloss
from lmloss import GPT, ByteDataset, GPTConfig, TrainConfig, cross_entropy, forward_backward
from lmloss.__main__ import main as lmloss_main
from lmloss._train import IGNORE_INDEX
from properties.ce.oracle import oracle_gradient, oracle_loss
from properties.ce.problem import Problem
from properties.engine.kernel import KernelUnderTest
from properties.strategies import seeds
from properties.tolerances import TOLERANCES, reordered_float64_bound

#: The byte vocabulary of the real loop, at a width that runs in milliseconds.
BYTE_MODEL = GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=32)
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


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread: a second one only adds synchronisation, and on a
    busy CI machine spinning threads slow a step down twenty-fold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@functools.cache
def docs_corpus() -> lmloss.Corpus:
    return lmloss.python_docs_corpus()


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
    """x, y of shape (b, t), drawn unless given, over the small vocabulary; each target ignored
    (-100) or not, as drawn (never, for a kernel that takes no ignore_index)."""
    if rows is None:
        rows = data.draw(st.integers(1, MAX_ROWS), label=f"{label}: rows")
    if length is None:
        length = data.draw(st.integers(1, SMALL_VOCAB_MODEL.block_size), label=f"{label}: length")
    generator = torch.Generator().manual_seed(data.draw(seeds, label=f"{label}: seed"))
    tokens = torch.randint(SMALL_VOCAB_MODEL.vocab_size, (rows, length + 1), generator=generator)
    x, y = tokens[:, :-1], tokens[:, 1:].clone()
    if kernel is None or "ignore_index" in kernel.accepts:
        ignored = data.draw(
            st.lists(st.booleans(), min_size=rows * length, max_size=rows * length),
            label=f"{label}: ignored targets",
        )
        y[torch.tensor(ignored).reshape(rows, length)] = IGNORE_INDEX
    return x, y


def counted(micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> int:
    return sum(int((y != IGNORE_INDEX).sum()) for _, y in micro_batches)


def assert_within(
    quantity: str, actual: torch.Tensor, expected: torch.Tensor, bound: torch.Tensor, context: str
) -> None:
    """|actual − expected| ≤ bound everywhere; the message names the worst entry and the call."""
    actual = actual.detach().cpu().double()
    assert actual.shape == expected.shape, (
        f"{quantity}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    )
    error = (actual - expected).abs()
    ratio = (error / bound).reshape(-1)
    worst = int(torch.argmax(torch.where(ratio.isnan(), math.inf, ratio)))
    where = f"[{worst}]" if actual.dim() else ""
    assert bool((error <= bound).all()), (
        f"{quantity}{where} = {actual.reshape(-1)[worst].item()!r}, but the oracle says "
        f"{expected.reshape(-1)[worst].item()!r}: error {error.reshape(-1)[worst].item():.3g} "
        f"> bound {bound.reshape(-1)[worst].item():.3g}  [{context}]"
    )


def parameter_gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same_gradients(
    quantity: str, actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], context: str
) -> None:
    """Two float64 evaluations of ∂L/∂θ agree within the reordering bound."""
    assert actual.keys() == expected.keys(), (
        f"{quantity}: gradients of {sorted(actual)} vs {sorted(expected)}"
    )
    bound = float(reordered_float64_bound(expected.values()))
    for name, gradient in expected.items():
        error = float((actual[name] - gradient).abs().max())
        assert error <= bound, (
            f"{quantity}: ∂L/∂{name} is off by {error:.3g} > bound {bound:.3g}  [{context}]"
        )


# --- TRAIN-LOSS -------------------------------------------------------------------------------


@pytest.mark.parametrize("step_mode", STEP_MODES)
@training_settings
@given(data=st.data())
def test_step_reports_the_oracle_mean_nll_of_its_own_logits(
    kernel: KernelUnderTest, step_mode: tuple[str, bool], data: st.DataObject
) -> None:
    """L = −(1/N) Σ_{b,t} log softmax(z_{b,t})[y_{b,t}] of the model's logits z on the batch.  [TRAIN-LOSS] tol: loss

    A real batch of Python's documentation. The recorded logits are model(x) in the essay's
    row order (b, t) -> b·T + t, with y flattened the same way. Under bfloat16 autocast the
    head's output is bfloat16 and the loss is computed in float32 from it: the oracle sees
    those rounded logits, and the bound is that of the dtype the loss comes back in.
    """
    device, use_amp = step_mode
    require_step_contract(kernel, device)
    seed = data.draw(seeds, label="seed")
    rows = data.draw(st.integers(1, 4), label="B")
    dataset = ByteDataset(
        docs_corpus(), batch_size=rows, block_size=BYTE_MODEL.block_size, seed=seed
    )
    x, y = (t.to(device) for t in dataset.get_batch())
    model = tiny_model(BYTE_MODEL, seed=seed, logit_scale=draw_logit_scale(data)).to(device)
    criterion = RecordingCriterion(kernel)

    loss = forward_backward(model, criterion, [(x, y)], use_amp=use_amp)

    logits = criterion.logits()
    assert logits.dtype == (torch.bfloat16 if use_amp else torch.float32), logits.dtype
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=use_amp):
        assert torch.equal(logits, model(x).reshape(-1, BYTE_MODEL.vocab_size))
    assert torch.equal(criterion.targets(), y.reshape(-1))
    loss_dtype = str(loss.dtype).removeprefix("torch.")
    problem = Problem.of(logits, criterion.targets(), reduction="mean").but(dtype=loss_dtype)
    assert_within(
        "the step's loss",
        loss,
        oracle_loss(problem),
        TOLERANCES["loss"](problem),
        f"forward_backward(use_amp={use_amp}) on {device}, B={rows}, "
        f"T={BYTE_MODEL.block_size}, {kernel.name}",
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
        seed=data.draw(seeds, label="model seed"),
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
    """∂L/∂z_i = (softmax(z_i) − onehot(y_i)) / N for the N counted rows; exactly 0 for ignored rows.  [TRAIN-GRAD] tol: gradient"""
    require_step_contract(kernel, "cpu", gradient=True)
    batch = draw_micro_batch(data, kernel, label="batch")
    if counted([batch]) == 0:
        with pytest.raises(ValueError, match="every target of the batch is ignored"):
            forward_backward(tiny_model(SMALL_VOCAB_MODEL, seed=0), kernel, [batch])
        return
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
    if counted(micro_batches) == 0:
        return  # the all-ignored batch is TRAIN-GRAD's case
    check_logit_gradients(kernel, micro_batches, data, f"{count} ragged micro-batches")


def accumulated_gradients(
    model: torch.nn.Module, micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = forward_backward(model, cross_entropy, micro_batches)
    return loss, parameter_gradients(model)


def draw_split(data: st.DataObject, rows: int) -> list[int]:
    """Sizes of consecutive micro-batches that add up to ``rows``."""
    cuts = data.draw(st.sets(st.integers(1, rows - 1), max_size=rows - 1), label="split after rows")
    bounds = [0, *sorted(cuts), rows]
    return [b - a for a, b in zip(bounds, bounds[1:], strict=False)]


@training_settings
@given(data=st.data())
def test_accumulated_parameter_gradient_equals_the_full_batch_gradient(data: st.DataObject) -> None:
    """Σ_k ∂/∂θ (Σ_{i∈k} l_i)/N = ∂/∂θ (1/N) Σ_i l_i for any split of the batch and any padding.  [TRAIN-ACCUM] tol: reordered_float64

    float64, so that only the order of roundings differs between the two.
    """
    rows = data.draw(st.integers(2, 6), label="B")
    x, y = draw_micro_batch(
        data, None, label="batch", rows=rows, length=SMALL_VOCAB_MODEL.block_size
    )
    if counted([(x, y)]) == 0:
        return
    sizes = draw_split(data, rows)
    model = tiny_model(
        SMALL_VOCAB_MODEL, seed=data.draw(seeds, label="model seed"), dtype=torch.float64
    )

    full_loss, full = accumulated_gradients(model, [(x, y)])
    split_loss, split = accumulated_gradients(
        model, list(zip(x.split(sizes), y.split(sizes), strict=True))
    )

    context = f"B={rows} split {sizes}, float64"
    assert abs(float(split_loss - full_loss)) <= float(reordered_float64_bound([full_loss])), (
        context
    )
    assert_same_gradients("accumulated ∂L/∂θ", split, full, context)


def test_mean_of_micro_batch_means_is_caught() -> None:
    """The bug TRAIN-ACCUM rules out: averaging per-micro-batch means breaks the bound.  [TRAIN-ACCUM] meta

    One micro-batch counts 1 target, the other 16: the mean of means weights the lone token 8.5
    times too much.
    """
    torch.manual_seed(0)
    x = torch.randint(SMALL_VOCAB_MODEL.vocab_size, (3, SMALL_VOCAB_MODEL.block_size))
    y = torch.randint(SMALL_VOCAB_MODEL.vocab_size, (3, SMALL_VOCAB_MODEL.block_size))
    y[0, 1:] = IGNORE_INDEX  # micro-batch one: 1 counted target
    model = tiny_model(SMALL_VOCAB_MODEL, seed=0, dtype=torch.float64)
    _, full = accumulated_gradients(model, [(x, y)])

    model.zero_grad(set_to_none=True)
    halves = [(x[:1], y[:1]), (x[1:], y[1:])]
    for xs, ys in halves:
        pred = model(xs)
        B, T, C = pred.shape
        (cross_entropy(pred.reshape(B * T, C), ys.reshape(B * T)) / len(halves)).backward()

    with pytest.raises(AssertionError, match="is off by"):
        assert_same_gradients("mean of means", parameter_gradients(model), full, "the bug")


# --- TRAIN-PAD --------------------------------------------------------------------------------


@training_settings
@given(data=st.data())
def test_padding_changes_neither_the_loss_nor_the_gradient(data: st.DataObject) -> None:
    """L and ∂L/∂θ of sequences padded to T (any tokens, targets ignored) = those of the unpadded sequences.  [TRAIN-PAD] tol: reordered_float64

    Padding sits after each sequence's end; whatever tokens it holds, the causal mask keeps them
    out of the real positions and ignored targets keep them out of the sum.
    """
    rows = data.draw(st.integers(1, 4), label="B")
    T = SMALL_VOCAB_MODEL.block_size
    lengths = data.draw(st.lists(st.integers(1, T), min_size=rows, max_size=rows), label="lengths")
    generator = torch.Generator().manual_seed(data.draw(seeds, label="tokens seed"))
    tokens = torch.randint(SMALL_VOCAB_MODEL.vocab_size, (rows, T + 1), generator=generator)
    sequences = [
        (tokens[b : b + 1, :n], tokens[b : b + 1, 1 : n + 1]) for b, n in enumerate(lengths)
    ]
    garbage = torch.randint(SMALL_VOCAB_MODEL.vocab_size, (rows, T), generator=generator)
    x, y = garbage.clone(), torch.full((rows, T), IGNORE_INDEX)
    for b, (xs, ys) in enumerate(sequences):
        x[b, : lengths[b]], y[b, : lengths[b]] = xs[0], ys[0]
    model = tiny_model(
        SMALL_VOCAB_MODEL, seed=data.draw(seeds, label="model seed"), dtype=torch.float64
    )

    unpadded_loss, unpadded = accumulated_gradients(model, sequences)
    padded_loss, padded = accumulated_gradients(model, [(x, y)])

    context = f"lengths {lengths} padded to T={T}, float64"
    assert abs(float(padded_loss - unpadded_loss)) <= float(
        reordered_float64_bound([unpadded_loss])
    ), context
    assert_same_gradients("padded ∂L/∂θ", padded, unpadded, context)


# --- TRAIN-DETERMINISM, TRAIN-RESUME ----------------------------------------------------------

#: A run of the real loop (byte corpus, AdamW, clipping, schedule) that takes about a second.
SHORT_RUN = TrainConfig(
    steps=6, batch_size=2, micro_batches=2, warmup_steps=2, eval_windows=4, checkpoint_interval=2
)


def short_run(**keywords: Any) -> lmloss.TrainResult:
    return lmloss.train(SHORT_RUN, BYTE_MODEL, corpus=docs_corpus(), **keywords)


def test_same_seed_gives_the_same_losses_bit_for_bit() -> None:
    """train(seed) = train(seed): every step's loss and the held-out losses, bit for bit, on CPU.  [TRAIN-DETERMINISM] exact"""
    first, second = short_run(), short_run()
    assert first.train_losses == second.train_losses
    assert (first.initial_loss, first.final_loss) == (second.initial_loss, second.final_loss)
    assert len(first.train_losses) == SHORT_RUN.steps


class SimulatedCrash(Exception):
    pass


class CrashAtStep:
    """A criterion that crashes (as a killed process would stop) on a given training step."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.training_calls = 0

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, **keywords: Any) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.training_calls += 1
            if self.training_calls > (self.step - 1) * SHORT_RUN.micro_batches:
                raise SimulatedCrash(f"crash in step {self.step}")
        return cross_entropy(logits, target, **keywords)


def test_resume_after_a_crash_continues_with_the_uninterrupted_losses(tmp_path: Path) -> None:
    """losses(run to 6) = losses(run to 5, crash, resume from the step-4 checkpoint), bit for bit.  [TRAIN-RESUME] exact"""
    uninterrupted = short_run(checkpoint=tmp_path / "straight.pt")
    checkpoint = tmp_path / "crashed.pt"
    with pytest.raises(SimulatedCrash):
        short_run(checkpoint=checkpoint, criterion=CrashAtStep(5))
    assert lmloss.load_checkpoint(checkpoint)["step"] == 4

    resumed = short_run(checkpoint=checkpoint, resume=True)

    assert resumed.train_losses == uninterrupted.train_losses
    assert (resumed.initial_loss, resumed.final_loss) == (
        uninterrupted.initial_loss,
        uninterrupted.final_loss,
    )


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path: Path) -> None:
    checkpoint = tmp_path / "run.pt"
    short_run(checkpoint=checkpoint)
    other = dataclasses.replace(SHORT_RUN, seed=SHORT_RUN.seed + 1)
    with pytest.raises(ValueError, match="seed="):
        lmloss.train(other, BYTE_MODEL, corpus=docs_corpus(), checkpoint=checkpoint, resume=True)


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that dies half-way leaves the previous checkpoint whole and no temporary file."""
    path = tmp_path / "state.pt"
    lmloss.save_checkpoint({"format": "lmloss-train-1", "step": 1}, path)

    def die_half_way(state: Any, file: Any) -> None:
        file.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", die_half_way)
    with pytest.raises(OSError, match="disk full"):
        lmloss.save_checkpoint({"format": "lmloss-train-1", "step": 2}, path)

    assert lmloss.load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["state.pt"]


def test_a_corrupt_checkpoint_is_reported_by_path(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pt"):
        lmloss.load_checkpoint(path)


# --- The command ------------------------------------------------------------------------------


def test_train_command_prints_progress_and_writes_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = tmp_path / "summary.json"
    corpus = tmp_path / "essay.txt"
    corpus.write_bytes(b"The cat sat on the mat. The dog sat on the log. " * 100)
    arguments = ["--corpus", str(corpus), "--steps", "2", "--block-size", "8", "--batch-size", "2"]
    arguments += ["--log-interval", "1", "--threads", "1"]

    assert lmloss_main(["train", *arguments, "--json", str(summary)]) == 0

    out = capsys.readouterr().out
    assert "step     1/2" in out and "tokens/s" in out and "unigram byte entropy" in out
    result = json.loads(summary.read_text())
    for key in (
        "initial_loss",
        "final_loss",
        "bits_per_byte",
        "unigram_bits_per_byte",
        "tokens_per_second",
        "steps",
    ):
        assert key in result, f"the JSON summary lacks {key!r}"
    assert result["steps"] == 2
    assert result["bits_per_byte"] == pytest.approx(result["final_loss"] / math.log(2), rel=1e-15)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--corpus", "/nonexistent/corpus.txt"], "corpus file not found"),
        (["--resume"], "--resume needs --checkpoint"),
        (["--steps", "0"], "--steps must be at least 1"),
    ],
)
def test_train_command_explains_bad_arguments(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert lmloss_main(["train", *arguments]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_train_command_refuses_a_sequence_longer_than_the_corpus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "short.txt"
    corpus.write_bytes(b"The cat sat on the mat. " * 20)
    assert lmloss_main(["train", "--corpus", str(corpus), "--block-size", "64"]) == 2
    assert "sequence length 64 is too long" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_train_command_refuses_cuda_without_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    assert lmloss_main(["train", "--device", "cuda"]) == 2
    assert "sees no CUDA device" in capsys.readouterr().err
