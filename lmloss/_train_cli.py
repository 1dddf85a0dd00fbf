"""`lmloss train`: train the essay's byte-level GPT and report held-out loss against the unigram baseline."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

DEVICES = ("cpu", "cuda")
#: --loss: the head's logits then lmloss.cross_entropy (the essay's step), or the head and the
#: loss fused in lmloss.linear_cross_entropy, which never builds the (B·T, C) logits.
LOSSES = ("cross_entropy", "linear")
#: One thread by default. The default model's matrices are 128 wide: on a busy two-core machine
#: a second thread keeps waiting for a core and the run takes three times longer (500
#: steps: 3 min 52 s with two threads, 1 min 14 s with one, at load average 5); on an idle one
#: two threads are faster (--threads 2). A fixed default keeps two runs of the same command
#: bit-identical.
DEFAULT_THREADS = 1


def add_parser(subparsers: Any) -> None:
    from lmloss._model import GPTConfig
    from lmloss._train import TrainConfig

    train_defaults, model_defaults = TrainConfig(), GPTConfig()
    parser = subparsers.add_parser(
        "train",
        help="train a small byte-level GPT with the essay's loop and report bits per byte",
        description=(
            "Train a small GPT on bytes of text (by default Python's own documentation, "
            "pydoc_data.topics, PSF licence) with the essay's training step, then report the "
            "held-out loss, perplexity and bits per byte beside the text's unigram byte entropy."
        ),
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=train_defaults.steps,
        help="optimizer steps (default %(default)s)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bfloat16 autocast for the forward pass, the essay's setting (default: on with "
        "--device cuda, off on the CPU, where it makes the default model about 9 times slower); "
        "the loss is computed in float32 either way",
    )
    parser.add_argument(
        "--loss",
        choices=LOSSES,
        default=LOSSES[0],
        help="cross_entropy: the model's logits, then lmloss.cross_entropy (the essay's step); "
        "linear: the head's projection and the loss fused in lmloss.linear_cross_entropy, "
        "from the final hidden states, without the (B*T, C) logits (default %(default)s; "
        "resume with the same value for bit-identical losses)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the summary as JSON to PATH")
    parser.add_argument(
        "--corpus", metavar="PATH", help="train on this file's bytes instead of the Python docs"
    )
    parser.add_argument("--checkpoint", metavar="PATH", help="write checkpoints here (atomically)")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.add_argument("--seed", type=int, default=train_defaults.seed, help="default %(default)s")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=train_defaults.batch_size,
        help="sequences per micro-batch (default %(default)s)",
    )
    parser.add_argument(
        "--micro-batches",
        type=int,
        default=train_defaults.micro_batches,
        help="micro-batches accumulated per step (default %(default)s)",
    )
    parser.add_argument(
        "--block-size",
        type=int,
        default=model_defaults.block_size,
        help="sequence length T (default %(default)s)",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=train_defaults.learning_rate,
        help="peak learning rate (default %(default)s)",
    )
    parser.add_argument(
        "--log-interval",
        type=int,
        default=train_defaults.log_interval,
        help="steps between progress lines (default %(default)s)",
    )
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="processes to train on, data-parallel: DistributedDataParallel over gloo on the "
        "CPU, each process taking its share of every batch's rows (default %(default)s: one "
        "process, no torch.distributed); not with --checkpoint, --resume or --loss linear",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help="CPU threads for torch (default %(default)s; the thread count changes the rounding, "
        "so resume with the same value for bit-identical losses)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    problem = _argument_problem(args)
    if problem:
        return _fail(problem)

    import torch

    from lmloss._data import file_corpus, python_docs_corpus
    from lmloss._linear import linear_cross_entropy
    from lmloss._model import GPTConfig
    from lmloss._train import TrainConfig, train, train_data_parallel

    torch.set_num_threads(args.threads)
    config = replace(
        TrainConfig(),
        steps=args.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        micro_batches=args.micro_batches,
        learning_rate=args.learning_rate,
        min_learning_rate=args.learning_rate / 10,
        log_interval=args.log_interval,
    )
    model_config = replace(GPTConfig(), block_size=args.block_size)
    use_amp = default_amp(args.device) if args.amp is None else args.amp
    try:
        corpus = file_corpus(args.corpus) if args.corpus else python_docs_corpus()
        print(
            f"corpus: {corpus.name}, {len(corpus.data):,} bytes; device {args.device}, "
            f"amp {use_amp}, loss {args.loss}"
            + (f"; {args.nproc} processes, data-parallel" if args.nproc > 1 else ""),
            flush=True,
        )
        if args.nproc > 1:
            result = train_data_parallel(
                config,
                model_config,
                nproc=args.nproc,
                corpus=corpus,
                use_amp=use_amp,
                threads=args.threads,
                log=functools.partial(print, flush=True),  # from rank 0's process
            )
        else:
            result = train(
                config,
                model_config,
                corpus=corpus,
                linear_criterion=linear_cross_entropy if args.loss == "linear" else None,
                device=args.device,
                use_amp=use_amp,
                checkpoint=args.checkpoint,
                resume=args.resume,
                log=print,
            )
    except (FileNotFoundError, ValueError) as error:
        return _fail(str(error))
    except KeyboardInterrupt:
        where = (
            f"; continue with --resume --checkpoint {args.checkpoint}" if args.checkpoint else ""
        )
        print(f"lmloss train: interrupted{where}", file=sys.stderr)
        return 130  # the shell's code for a process ended by Ctrl-C

    print(
        f"held-out loss {result.initial_loss:.4f} -> {result.final_loss:.4f} nats/byte "
        f"(perplexity {result.perplexity:.2f})\n"
        f"bits per byte {result.bits_per_byte:.3f}  (unigram byte entropy of the held-out text: "
        f"{result.unigram_bits_per_byte:.3f}; before training: {result.initial_bits_per_byte:.3f})\n"
        f"{result.steps} steps, {result.parameters:,} parameters, "
        f"{result.tokens_per_second:,.0f} tokens/s, {result.seconds:.1f} s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return 0


def default_amp(device: str) -> bool:
    """bfloat16 autocast unless asked otherwise: on CUDA (the essay's setting), not on the CPU.

    On the CPU, 40 steps of the default model ran at 5,758 and 5,969 tokens/s without autocast
    and 652 and 676 tokens/s with it (two runs each, one thread, ``lmloss train --steps 40
    --no-amp`` / ``--amp``).
    """
    return device == "cuda"


def _argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, in words, or None."""
    if args.device not in DEVICES:
        return f"unknown device {args.device!r}: choose one of {', '.join(DEVICES)}"
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return "--device cuda was asked for, but this PyTorch sees no CUDA device"
    for name in (
        "steps",
        "batch_size",
        "micro_batches",
        "block_size",
        "log_interval",
        "threads",
        "nproc",
    ):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}"
    if args.nproc > 1:
        if args.device != "cpu":
            return "--nproc runs data-parallel on gloo on the CPU: use --device cpu"
        for name, given in (
            ("--checkpoint", args.checkpoint),
            ("--resume", args.resume),
            ("--loss linear", args.loss == "linear"),
        ):
            if given:
                return f"{name} is not supported with --nproc {args.nproc}"
    if not args.learning_rate > 0:
        return f"--learning-rate must be positive, got {args.learning_rate}"
    if args.resume and not args.checkpoint:
        return "--resume needs --checkpoint PATH"
    if args.resume and not Path(args.checkpoint).is_file():
        return f"--resume: checkpoint not found: {args.checkpoint}"
    if args.corpus and not Path(args.corpus).is_file():
        return f"corpus file not found: {args.corpus}"
    return None


def _fail(message: str) -> int:
    print(f"lmloss train: error: {message}", file=sys.stderr)
    return 2
