"""lmloss: the production PyTorch side (loss API, kernels, training loop, checker, CLI).

The names below are imported on first use (PEP 562), not with the package: ``lmloss check``
starts its workers' forkserver, which imports torch, before this process imports torch itself,
and the two imports then run side by side (``python -m lmloss`` imports this package first).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmloss._data import ByteDataset, Corpus, file_corpus, python_docs_corpus
    from lmloss._distributed import (
        DATA_PARALLEL_SPEC,
        VOCAB_PARALLEL_SPEC,
        data_parallel_cross_entropy,
        vocab_parallel_cross_entropy,
    )
    from lmloss._linear import LINEAR_SPEC, linear_cross_entropy
    from lmloss._loss import LMLoss, cross_entropy, lm_loss, perplexity, sequence_logprob
    from lmloss._model import GPT, GPTConfig
    from lmloss._train import (
        TrainConfig,
        TrainResult,
        data_parallel_forward_backward,
        evaluate,
        forward_backward,
        load_checkpoint,
        save_checkpoint,
        train,
        train_data_parallel,
    )
    from lmloss._triton_ce import triton_cross_entropy
    from properties.engine.kernel import KernelSpec

#: Each public name and the module that defines it.
_HOMES: dict[str, str] = {
    "ByteDataset": "lmloss._data",
    "Corpus": "lmloss._data",
    "file_corpus": "lmloss._data",
    "python_docs_corpus": "lmloss._data",
    "DATA_PARALLEL_SPEC": "lmloss._distributed",
    "VOCAB_PARALLEL_SPEC": "lmloss._distributed",
    "data_parallel_cross_entropy": "lmloss._distributed",
    "vocab_parallel_cross_entropy": "lmloss._distributed",
    "LINEAR_SPEC": "lmloss._linear",
    "linear_cross_entropy": "lmloss._linear",
    "LMLoss": "lmloss._loss",
    "cross_entropy": "lmloss._loss",
    "lm_loss": "lmloss._loss",
    "perplexity": "lmloss._loss",
    "sequence_logprob": "lmloss._loss",
    "GPT": "lmloss._model",
    "GPTConfig": "lmloss._model",
    "TrainConfig": "lmloss._train",
    "TrainResult": "lmloss._train",
    "data_parallel_forward_backward": "lmloss._train",
    "evaluate": "lmloss._train",
    "forward_backward": "lmloss._train",
    "load_checkpoint": "lmloss._train",
    "save_checkpoint": "lmloss._train",
    "train": "lmloss._train",
    "train_data_parallel": "lmloss._train",
    "triton_cross_entropy": "lmloss._triton_ce",
    "KernelSpec": "properties.engine.kernel",
}

__all__: list[str] = [
    "ByteDataset",
    "Corpus",
    "DATA_PARALLEL_SPEC",
    "GPT",
    "GPTConfig",
    "KernelSpec",
    "LINEAR_SPEC",
    "LMLoss",
    "TrainConfig",
    "TrainResult",
    "VOCAB_PARALLEL_SPEC",
    "cross_entropy",
    "data_parallel_cross_entropy",
    "data_parallel_forward_backward",
    "evaluate",
    "file_corpus",
    "forward_backward",
    "linear_cross_entropy",
    "lm_loss",
    "load_checkpoint",
    "perplexity",
    "python_docs_corpus",
    "save_checkpoint",
    "sequence_logprob",
    "train",
    "train_data_parallel",
    "triton_cross_entropy",
    "vocab_parallel_cross_entropy",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'lmloss' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # found once; later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
