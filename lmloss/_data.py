"""Byte-level text data for the training loop: a corpus, its splits, and the essay's `get_batch()`.

The default corpus is the English text of Python's own documentation that ships with CPython:
``pydoc_data.topics`` (the help texts behind ``help("with")``, ``help("assert")``, ...), about
466 kB on CPython 3.11. It needs no download. Licence: Python Software Foundation License
(the CPython documentation is distributed under the PSF licence). Any other text file can be
used instead (``lmloss train --corpus PATH``).

Tokens are bytes (C = 256): no tokenizer to ship, and bits per byte are the loss in bits.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

VOCAB_SIZE = 256  # one token per byte value
#: Fraction of the corpus, taken from its end, held out for evaluation.
HELD_OUT_FRACTION = 0.1


@dataclass(frozen=True)
class Corpus:
    name: str  # where the text came from, shown in the summary
    data: bytes


def python_docs_corpus() -> Corpus:
    """The pydoc topics of this Python, joined in sorted order (PSF licence)."""
    try:
        from pydoc_data.topics import topics
    except ImportError as error:  # some distributions package pydoc_data separately
        raise FileNotFoundError(
            "this Python has no pydoc_data.topics; give a text file with --corpus PATH"
        ) from error
    text = "\n\n".join(topics[key] for key in sorted(topics))
    return Corpus(name="pydoc_data.topics (Python documentation, PSF licence)", data=text.encode())


def file_corpus(path: str | Path) -> Corpus:
    """The bytes of a file; FileNotFoundError names the path when it does not exist."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    return Corpus(name=str(path), data=path.read_bytes())


def unigram_bits_per_byte(data: bytes) -> float:
    """−Σ p(b) log2 p(b) over the text's own byte frequencies.

    What the best context-free model could score on this text even knowing its frequencies:
    a model that beats it has learnt from context.
    """
    counts = Counter(data)
    total = len(data)
    return -sum(n / total * math.log2(n / total) for n in counts.values())


class ByteDataset:
    """A corpus split into training bytes (the start) and held-out bytes (the end).

    ``get_batch()`` draws B windows of T + 1 consecutive training bytes from a seeded generator:
    x is the first T, y the last T (x shifted by one token). ``held_out_batches()`` walks fixed,
    non-overlapping windows of the held-out bytes, the same ones on every call.
    """

    def __init__(self, corpus: Corpus, *, batch_size: int, block_size: int, seed: int) -> None:
        if batch_size < 1 or block_size < 1:
            raise ValueError(
                f"batch_size and block_size must be ≥ 1, got {batch_size}, {block_size}"
            )
        tokens = torch.tensor(list(corpus.data), dtype=torch.long)
        split = len(tokens) - math.ceil(len(tokens) * HELD_OUT_FRACTION)
        self.train_tokens = tokens[:split]
        self.held_out_tokens = tokens[split:]
        shortest = min(len(self.train_tokens), len(self.held_out_tokens))
        if shortest < block_size + 1:
            raise ValueError(
                f"sequence length {block_size} is too long for corpus {corpus.name!r} "
                f"({len(tokens)} bytes): each split needs at least {block_size + 1} bytes "
                f"and the smaller has {shortest}"
            )
        self.corpus = corpus
        self.batch_size = batch_size
        self.block_size = block_size
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.batches_drawn = 0

    def get_batch(self) -> tuple[Tensor, Tensor]:
        """x, y of shape (B, T), int64 on the CPU; y[:, t] is the byte after x[:, t]."""
        B, T = self.batch_size, self.block_size
        starts = torch.randint(
            len(self.train_tokens) - T, (B, 1), generator=self.generator
        )  # (B, 1)
        positions = starts + torch.arange(T + 1)  # (B, T + 1)
        window = self.train_tokens[positions]
        self.batches_drawn += 1
        return window[:, :-1], window[:, 1:]

    def held_out_batches(self, max_windows: int | None = None) -> list[tuple[Tensor, Tensor]]:
        """Non-overlapping held-out windows (at most ``max_windows``, evenly spaced) in batches of B."""
        T = self.block_size
        count = (len(self.held_out_tokens) - 1) // T
        chosen = range(count)
        if max_windows is not None and max_windows < count:
            chosen = range(0, count, math.ceil(count / max_windows))
        starts = torch.tensor(list(chosen)).mul(T).unsqueeze(1)  # (W, 1)
        window = self.held_out_tokens[starts + torch.arange(T + 1)]  # (W, T + 1)
        xs, ys = window[:, :-1], window[:, 1:]
        return list(zip(xs.split(self.batch_size), ys.split(self.batch_size), strict=True))

    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands: enough to draw exactly the batches an uninterrupted run would."""
        return {
            "generator": self.generator.get_state(),
            "batches_drawn": self.batches_drawn,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.batches_drawn = state["batches_drawn"]
        self.seed = state["seed"]
