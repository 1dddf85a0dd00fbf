"""lmloss: the production PyTorch side (loss API, kernels, training loop, checker, CLI)."""

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
