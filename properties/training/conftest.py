"""Fixtures the training loop's three test modules share: one thread, the byte model, the corpus.

They are fixtures, not a helper module, because they import lmloss: properties/ stands on its
own, and only its test modules and conftest.py files may import the production side they test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import lmloss
from lmloss import GPTConfig


@pytest.fixture(autouse=True, scope="package")
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread: a second one only adds synchronisation, and on a
    busy CI machine spinning threads slow a step down twenty-fold. Restored afterwards, also
    after ``lmloss train --threads 1``, which sets the process's thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def byte_model() -> GPTConfig:
    """The byte vocabulary of the real loop, at a width that runs in milliseconds."""
    return GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=32)


@pytest.fixture(scope="session")
def docs_corpus() -> lmloss.Corpus:
    """The real loop's default corpus, Python's documentation, read once."""
    return lmloss.python_docs_corpus()
