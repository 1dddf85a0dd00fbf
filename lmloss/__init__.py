"""lmloss: the production PyTorch side (loss API, kernels, training loop, checker, CLI)."""

from lmloss._data import ByteDataset, Corpus, file_corpus, python_docs_corpus
from lmloss._linear import LINEAR_SPEC, linear_cross_entropy
from lmloss._loss import LMLoss, cross_entropy, lm_loss, perplexity, sequence_logprob
from lmloss._model import GPT, GPTConfig
from lmloss._train import (
    TrainConfig,
    TrainResult,
    evaluate,
    forward_backward,
    load_checkpoint,
    save_checkpoint,
    train,
)
from properties.engine.kernel import KernelSpec

__all__: list[str] = [
    "ByteDataset",
    "Corpus",
    "GPT",
    "GPTConfig",
    "KernelSpec",
    "LINEAR_SPEC",
    "LMLoss",
    "TrainConfig",
    "TrainResult",
    "cross_entropy",
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
]
