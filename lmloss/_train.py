"""The essay's training loop, for real: a byte-level GPT trained with next-token cross-entropy.

One step (:func:`forward_backward`) is the essay's code::

    x, y = dataset_loader.get_batch()
    with torch.autocast(device_type=..., dtype=torch.bfloat16, enabled=use_amp):
        pred = model(x)                    # (B, T, C)
        B, T, C = pred.shape
        loss = criterion(pred.reshape(B * T, C), y.reshape(B * T))

with two corrections. Autocast is asked for bfloat16 and switched by ``enabled``: the essay's
``dtype=torch.float32`` is not an autocast dtype on the CPU (PyTorch warns and disables it).
And the criterion is called with ``reduction="sum"`` and divided by the number of counted
targets of the whole batch, so that gradient accumulation over micro-batches gives exactly the
full batch's gradient even when micro-batches hold different numbers of ignored (padding)
targets: averaging per-micro-batch means (the bug transformers fixed in 2024) is not possible.

As in the essay, the criterion is called inside the autocast region, on the model's bfloat16
logits when autocast is on, so the loss is only as exact as the criterion is under autocast.
The default criterion, :func:`lmloss.cross_entropy`, switches autocast off and computes in
float32, returning a float32 loss that is float32-accurate on those bfloat16 logits (clause
CE-AUTOCAST). On CUDA ``torch.nn.functional.cross_entropy`` is not: there it rounds every
log-probability to bfloat16 before a float32 ``nll_loss``.

With a *linear criterion* (``lmloss train --loss linear``: :func:`lmloss.linear_cross_entropy`,
kernel contract 3) the head's projection and the loss are one call, from the final hidden states
and the head's weight (and bias), and the (B·T, C) logits are never built::

        hidden = model.hidden_states(x)    # (B, T, E)
        loss = linear_criterion(hidden.reshape(B * T, E), model.head.weight, y.reshape(B * T),
                                linear_bias=model.head.bias, reduction="sum")

Everything else is the same step: the same sum, divided by the same count, under the same
autocast (where the projection takes bfloat16 operands, as the model's head would).

Around it: AdamW, gradient clipping, warmup + cosine learning rate, held-out loss / perplexity /
bits per byte, atomic checkpoints and an exact resume.

Data-parallel (``lmloss train --nproc P``, :func:`train_data_parallel`): P processes on gloo,
each with a replica of the model wrapped in DistributedDataParallel, draw the same global batch
and take their share of its rows (ragged: B need not divide by P, and the ranks count different
numbers of targets). Each rank's step (:func:`data_parallel_forward_backward`) divides its summed
loss by the count of the *global* batch, so that the ranks' gradients add up to the full
batch's; DDP averages them instead of adding, and each rank's term is multiplied by P to undo
that. Clause TRAIN-DDP (properties/training/test_ddp.py) checks it against the one-process step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from lmloss._data import ByteDataset, Corpus, python_docs_corpus, unigram_bits_per_byte
from lmloss._loss import cross_entropy
from lmloss._model import GPT, GPTConfig
from reference import DEFAULT_IGNORE_INDEX

#: Targets equal to this are padding: not counted, no gradient (the kernel contract's default,
#: defined once, by the oracle).
IGNORE_INDEX = DEFAULT_IGNORE_INDEX

#: Any callable shaped like ``torch.nn.functional.cross_entropy`` (kernel contract 2).
Criterion = Callable[..., Tensor]
#: Any callable shaped like ``torch.nn.functional.linear_cross_entropy`` (kernel contract 3):
#: the head's projection and the loss in one, from hidden states (N, E) and a weight (C, E).
LinearCriterion = Callable[..., Tensor]
Batch = tuple[Tensor, Tensor]  # x, y: (B, T) each


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 500  # about a minute on a two-core CPU with the default model
    batch_size: int = 32  # B: sequences per micro-batch
    micro_batches: int = 1  # gradient accumulation: micro-batches per optimizer step
    learning_rate: float = 3e-3  # peak; a small model on bytes tolerates a high rate
    min_learning_rate: float = 3e-4  # the cosine schedule ends here, a tenth of the peak
    warmup_steps: int = 20  # linear warmup: Adam's early updates are noisy
    weight_decay: float = 0.1  # AdamW's decoupled decay on matrices (not on norms and biases)
    beta2: float = 0.99  # Adam's second-moment decay; 0.99 adapts faster in short runs
    grad_clip: float = 1.0  # clip the global gradient norm; guards against early spikes
    seed: int = 1337  # model initialisation and batch order
    log_interval: int = 25  # steps between progress lines
    eval_windows: int = 256  # held-out windows of T bytes to evaluate on (16 k bytes by default)
    checkpoint_interval: int = 100  # steps between checkpoints (and one at the end)

    #: Fields that do not change the sequence of losses; a resume may change them.
    PRESENTATION = ("log_interval", "checkpoint_interval")


@dataclass
class TrainResult:
    initial_loss: float  # held-out mean NLL (nats per byte) before the first step
    final_loss: float  # held-out mean NLL after the last step
    bits_per_byte: float  # final_loss / ln 2: the held-out loss in bits
    initial_bits_per_byte: float
    perplexity: float  # exp(final_loss)
    unigram_bits_per_byte: float  # entropy of the held-out text's own byte frequencies
    corpus_unigram_bits_per_byte: float  # the same over the whole corpus
    tokens_per_second: float  # training tokens per second of training steps (no evaluation)
    steps: int
    seconds: float  # wall time of this invocation
    parameters: int
    corpus: str
    device: str
    amp: bool
    train_losses: list[float] = field(default_factory=list)  # one per step, from step 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def forward_backward(
    model: torch.nn.Module,
    criterion: Criterion,
    micro_batches: Sequence[Batch],
    *,
    use_amp: bool = False,
    linear_criterion: LinearCriterion | None = None,
) -> Tensor:
    """Accumulate ∂L/∂θ of L = (1/N) Σ_i −log p(y_i | x_<i) over all N counted targets of the batch.

    The batch is given as micro-batches (of any sizes, with any padding); the gradient and the
    returned loss (detached) are those of the whole batch. Targets equal to ``IGNORE_INDEX``
    are not counted. With ``use_amp`` the model runs under bfloat16 autocast and the criterion
    is called inside it, as the essay does (see the module docstring for what that asks of the
    criterion). With ``linear_criterion`` the head and the loss are computed by it instead of
    by the model's head and ``criterion`` (the module docstring shows the call).
    """
    counted = sum(int((y != IGNORE_INDEX).sum()) for _, y in micro_batches)
    if counted == 0:
        raise ValueError("every target of the batch is ignored: the mean loss is undefined")
    device_type = next(model.parameters()).device.type
    sums = []
    for x, y in micro_batches:
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=use_amp):
            loss = _summed_loss(model, criterion, linear_criterion, x, y)
        (loss / counted).backward()
        sums.append(loss.detach())
    return torch.stack(sums).sum() / counted


def data_parallel_forward_backward(
    model: DistributedDataParallel,
    criterion: Criterion,
    micro_batches: Sequence[Batch],
    *,
    use_amp: bool = False,
) -> Tensor:
    """:func:`forward_backward` for one rank of a data-parallel group: this rank's rows of the
    global batch in, the full batch's ∂L/∂θ on every rank out (after DDP's all-reduce).

    L = (1/N) Σ_i ℓ_i over the N counted targets of *every* rank's rows: N is all-reduced before
    any backward pass, and each rank back-propagates P·(Σ_{its i} ℓ_i)/N. DDP all-reduces the
    gradients and divides by P (it averages replicas), which leaves Σ_ranks Σ_{its i} ∇ℓ_i / N,
    the full batch's gradient. Returns the full batch's loss (detached), the same on every rank.
    A rank may hold no row and no counted target; the global batch must count one.
    """
    group = model.process_group
    device = next(model.parameters()).device
    local_counted = sum(int((y != IGNORE_INDEX).sum()) for _, y in micro_batches)
    counted_tensor = torch.tensor(local_counted, dtype=torch.int64, device=device)
    dist.all_reduce(counted_tensor, group=group)
    counted = int(counted_tensor)
    if counted == 0:
        raise ValueError("every target of the batch is ignored: the mean loss is undefined")
    world_size = dist.get_world_size(group)
    sums = []
    for index, (x, y) in enumerate(micro_batches):
        last = index == len(micro_batches) - 1
        # DDP all-reduces in the backward pass of the last micro-batch only: before it,
        # gradients accumulate locally (no_sync).
        with model.no_sync() if not last else contextlib.nullcontext():
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = _summed_loss(model, criterion, None, x, y)
            (loss * world_size / counted).backward()
        sums.append(loss.detach())
    total = torch.stack(sums).sum()
    dist.all_reduce(total, group=group)
    return total / counted


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: Sequence[Batch],
    *,
    criterion: Criterion = cross_entropy,
    use_amp: bool = False,
    linear_criterion: LinearCriterion | None = None,
) -> float:
    """Mean NLL in nats over every counted target of ``batches`` (the held-out loss)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, counted = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            total += float(_summed_loss(model, criterion, linear_criterion, x, y))
        counted += int((y != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / counted


def _summed_loss(
    model: torch.nn.Module,
    criterion: Criterion,
    linear_criterion: LinearCriterion | None,
    x: Tensor,
    y: Tensor,
) -> Tensor:
    """Σ −log p(y_i | x_<i) over the counted targets of one micro-batch x, y (B, T)."""
    if linear_criterion is None:
        pred = model(x)  # (B, T, C)
        B, T, C = pred.shape
        return criterion(pred.reshape(B * T, C), y.reshape(B * T), reduction="sum")
    if not isinstance(model, GPT):
        raise TypeError(
            f"a linear criterion needs the model's hidden states and head (lmloss.GPT), "
            f"not a {type(model).__name__}"
        )
    hidden = model.hidden_states(x)  # (B, T, E)
    B, T, E = hidden.shape
    return linear_criterion(
        hidden.reshape(B * T, E),
        model.head.weight,
        y.reshape(B * T),
        linear_bias=model.head.bias,
        reduction="sum",
    )


def learning_rate_at(step: int, config: TrainConfig) -> float:
    """Linear warmup to the peak over ``warmup_steps``, then cosine decay to the minimum."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.min_learning_rate + cosine * (config.learning_rate - config.min_learning_rate)


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only (as nanoGPT)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, config.beta2))


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically: a crash leaves the old file or the new one, never half.

    The state goes to a temporary file in the same directory, is flushed and fsynced, then
    renamed over ``path`` (``os.replace`` is atomic on POSIX and Windows); the directory is
    fsynced so that the rename itself survives a power loss.
    """
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(descriptor, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The state saved by :func:`save_checkpoint`; ValueError if the file is not one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:
        raise ValueError(f"{path} is not a readable lmloss checkpoint ({error})") from error
    if not isinstance(state, dict) or state.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an lmloss checkpoint")
    return state


def train(
    config: TrainConfig | None = None,
    model_config: GPTConfig | None = None,
    *,
    corpus: Corpus | None = None,
    criterion: Criterion = cross_entropy,
    linear_criterion: LinearCriterion | None = None,
    device: str = "cpu",
    use_amp: bool = False,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a GPT on a byte corpus (Python's documentation by default) and evaluate it.

    With ``checkpoint``, the full state (model, optimizer, data loader position, RNG states,
    losses so far) is written every ``checkpoint_interval`` steps and at the end; with
    ``resume``, training continues from it and produces exactly the losses of an uninterrupted
    run (bit for bit on the CPU). With ``linear_criterion`` (e.g. lmloss.linear_cross_entropy)
    every step and evaluation computes the head and the loss with it (see the module docstring);
    a resume must then pass it again for bit-identical losses.
    """
    started = time.perf_counter()
    config = config or TrainConfig()
    model_config = model_config or GPTConfig()
    corpus = corpus or python_docs_corpus()
    dataset = ByteDataset(
        corpus, batch_size=config.batch_size, block_size=model_config.block_size, seed=config.seed
    )
    torch.manual_seed(config.seed)
    model = GPT(model_config).to(device)
    optimizer = build_optimizer(model, config)
    held_out = dataset.held_out_batches(config.eval_windows)
    fingerprint = _fingerprint(config, model_config, corpus)

    if resume:
        if checkpoint is None:
            raise ValueError("resume needs a checkpoint path")
        state = load_checkpoint(checkpoint)
        _check_resumable(state, fingerprint, checkpoint)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        dataset.load_state_dict(state["data"])
        _set_rng_states(state["rng"])
        first_step, initial_loss = state["step"], state["initial_loss"]
        train_losses: list[float] = list(state["train_losses"])
        _log(log, f"resumed from {checkpoint} at step {first_step}")
    else:
        first_step, train_losses = 0, []
        initial_loss = evaluate(
            model, held_out, criterion=criterion, use_amp=use_amp, linear_criterion=linear_criterion
        )

    model.train()
    tokens_per_step = config.micro_batches * config.batch_size * model_config.block_size
    training_seconds = 0.0
    interval_start, interval_steps = time.perf_counter(), 0
    for step in range(first_step, config.steps):
        step_start = time.perf_counter()
        learning_rate = learning_rate_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        micro_batches = []
        for _ in range(config.micro_batches):
            x, y = dataset.get_batch()  # (B, T) each
            micro_batches.append((x.to(device), y.to(device)))
        loss = forward_backward(
            model, criterion, micro_batches, use_amp=use_amp, linear_criterion=linear_criterion
        )
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        train_losses.append(float(loss))
        training_seconds += time.perf_counter() - step_start
        interval_steps += 1

        done = step + 1
        if done % config.log_interval == 0 or done == config.steps:
            elapsed = time.perf_counter() - interval_start
            rate = interval_steps * tokens_per_step / elapsed
            _log(
                log,
                f"step {done:>5}/{config.steps}  loss {train_losses[-1]:.4f}  "
                f"lr {learning_rate:.2e}  {rate:,.0f} tokens/s",
            )
            interval_start, interval_steps = time.perf_counter(), 0
        if checkpoint is not None and (
            done % config.checkpoint_interval == 0 or done == config.steps
        ):
            save_checkpoint(
                _training_state(
                    model, optimizer, dataset, fingerprint, done, initial_loss, train_losses
                ),
                checkpoint,
            )

    final_loss = evaluate(
        model, held_out, criterion=criterion, use_amp=use_amp, linear_criterion=linear_criterion
    )
    steps_run = config.steps - first_step
    held_out_text = bytes(dataset.held_out_tokens.tolist())
    return TrainResult(
        initial_loss=initial_loss,
        final_loss=final_loss,
        bits_per_byte=final_loss / math.log(2),
        initial_bits_per_byte=initial_loss / math.log(2),
        perplexity=math.exp(final_loss),
        unigram_bits_per_byte=unigram_bits_per_byte(held_out_text),
        corpus_unigram_bits_per_byte=unigram_bits_per_byte(corpus.data),
        tokens_per_second=steps_run * tokens_per_step / training_seconds if steps_run else 0.0,
        steps=config.steps,
        seconds=time.perf_counter() - started,
        parameters=model.parameter_count(),
        corpus=corpus.name,
        device=device,
        amp=use_amp,
        train_losses=train_losses,
    )


def train_data_parallel(
    config: TrainConfig | None = None,
    model_config: GPTConfig | None = None,
    *,
    nproc: int,
    corpus: Corpus | None = None,
    use_amp: bool = False,
    threads: int = 1,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """:func:`train` on ``nproc`` CPU processes: DistributedDataParallel over gloo.

    Each global batch of ``config.batch_size`` sequences (per micro-batch) is the one the
    single-process loop draws; rank r takes its share of the rows (``torch.tensor_split``: the
    shares differ by one row when P does not divide B), and the step is
    :func:`data_parallel_forward_backward`. Rank 0 evaluates, logs and returns the result; every
    rank runs ``threads`` torch threads. No checkpoints, and the default criterion only
    (``lmloss.cross_entropy``; the fused linear criterion calls the model's parts around DDP's
    forward, which DDP would not synchronise).
    """
    config = config or TrainConfig()
    model_config = model_config or GPTConfig()
    corpus = corpus or python_docs_corpus()
    if nproc < 1:
        raise ValueError(f"nproc must be at least 1, got {nproc}")
    with tempfile.TemporaryDirectory() as directory:
        mp.spawn(
            _train_rank,
            args=(nproc, directory, config, model_config, corpus, use_amp, threads, log),
            nprocs=nproc,
        )
        summary = json.loads(Path(directory, _RESULT_FILE).read_text())
    return TrainResult(**summary)


#: Where rank 0 leaves the TrainResult for the parent (a pipe could fill and block it while the
#: parent waits to join it).
_RESULT_FILE = "result.json"


def _train_rank(
    rank: int,
    nproc: int,
    directory: str,
    config: TrainConfig,
    model_config: GPTConfig,
    corpus: Corpus,
    use_amp: bool,
    threads: int,
    log: Callable[[str], None] | None,
) -> None:
    """One rank of :func:`train_data_parallel`; rank 0 writes the TrainResult to ``directory``."""
    started = time.perf_counter()
    torch.set_num_threads(threads)
    store = dist.FileStore(os.path.join(directory, "store"), nproc)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=nproc)
    try:
        log = log if rank == 0 else None
        dataset = ByteDataset(
            corpus,
            batch_size=config.batch_size,
            block_size=model_config.block_size,
            seed=config.seed,
        )
        torch.manual_seed(config.seed)
        model = GPT(model_config)
        replicas = DistributedDataParallel(model)
        optimizer = build_optimizer(model, config)
        held_out = dataset.held_out_batches(config.eval_windows)
        initial_loss = evaluate(model, held_out, use_amp=use_amp) if rank == 0 else math.nan

        model.train()
        tokens_per_step = config.micro_batches * config.batch_size * model_config.block_size
        train_losses: list[float] = []
        training_seconds = 0.0
        interval_start, interval_steps = time.perf_counter(), 0
        for step in range(config.steps):
            step_start = time.perf_counter()
            learning_rate = learning_rate_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate
            micro_batches = []
            for _ in range(config.micro_batches):
                x, y = dataset.get_batch()  # (B, T): the global batch, the same on every rank
                micro_batches.append((x.tensor_split(nproc)[rank], y.tensor_split(nproc)[rank]))
            loss = data_parallel_forward_backward(
                replicas, cross_entropy, micro_batches, use_amp=use_amp
            )
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            train_losses.append(float(loss))
            training_seconds += time.perf_counter() - step_start
            interval_steps += 1
            done = step + 1
            if done % config.log_interval == 0 or done == config.steps:
                rate = interval_steps * tokens_per_step / (time.perf_counter() - interval_start)
                _log(
                    log,
                    f"step {done:>5}/{config.steps}  loss {train_losses[-1]:.4f}  "
                    f"lr {learning_rate:.2e}  {rate:,.0f} tokens/s",
                )
                interval_start, interval_steps = time.perf_counter(), 0
        if rank == 0:
            final_loss = evaluate(model, held_out, use_amp=use_amp)
            held_out_text = bytes(dataset.held_out_tokens.tolist())
            result = TrainResult(
                initial_loss=initial_loss,
                final_loss=final_loss,
                bits_per_byte=final_loss / math.log(2),
                initial_bits_per_byte=initial_loss / math.log(2),
                perplexity=math.exp(final_loss),
                unigram_bits_per_byte=unigram_bits_per_byte(held_out_text),
                corpus_unigram_bits_per_byte=unigram_bits_per_byte(corpus.data),
                tokens_per_second=config.steps * tokens_per_step / training_seconds,
                steps=config.steps,
                seconds=time.perf_counter() - started,
                parameters=model.parameter_count(),
                corpus=corpus.name,
                device="cpu",
                amp=use_amp,
                train_losses=train_losses,
            )
            Path(directory, _RESULT_FILE).write_text(json.dumps(result.to_json()))
    finally:
        dist.destroy_process_group()


_CHECKPOINT_FORMAT = "lmloss-train-1"


def _training_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    dataset: ByteDataset,
    fingerprint: dict[str, Any],
    step: int,
    initial_loss: float,
    train_losses: list[float],
) -> dict[str, Any]:
    return {
        "format": _CHECKPOINT_FORMAT,
        "fingerprint": fingerprint,
        "step": step,
        "initial_loss": initial_loss,
        "train_losses": list(train_losses),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "data": dataset.state_dict(),
        "rng": _rng_states(),
    }


def _fingerprint(config: TrainConfig, model_config: GPTConfig, corpus: Corpus) -> dict[str, Any]:
    """What must be equal for a resume to continue the same run."""
    trajectory = {f.name: getattr(config, f.name) for f in fields(config)}
    for name in TrainConfig.PRESENTATION:
        del trajectory[name]
    return {
        "train": trajectory,
        "model": asdict(model_config),
        "corpus_sha256": hashlib.sha256(corpus.data).hexdigest(),
    }


def _check_resumable(state: dict[str, Any], fingerprint: dict[str, Any], path: str | Path) -> None:
    saved = state["fingerprint"]
    if saved["corpus_sha256"] != fingerprint["corpus_sha256"]:
        raise ValueError(f"checkpoint {path} was written for a different corpus")
    for part in ("train", "model"):
        for name, value in fingerprint[part].items():
            if saved[part].get(name) != value:
                raise ValueError(
                    f"checkpoint {path} was written with {name}={saved[part].get(name)!r}, "
                    f"this run has {name}={value!r}: a resume must continue the same run"
                )


def _rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _fsync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows cannot open a directory; its rename is durable without it
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _log(log: Callable[[str], None] | None, line: str) -> None:
    if log is not None:
        log(line)
