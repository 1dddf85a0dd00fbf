"""The ``lmloss train`` command line: its progress lines, its JSON summary, its error messages.

The command runs in this process (``lmloss.__main__.main``), as ``python -m lmloss train``
would, on a small corpus written by the test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from lmloss.__main__ import main as lmloss_main
from properties.tolerances import bits_per_byte_bound


def test_train_command_prints_progress_and_writes_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The summary's bits per byte is log2 of its perplexity, the held-out loss in bits.

    log2(exp(L)) reaches bits through exp and log2, not through the code's L / ln 2, so a wrong
    unit or constant in either quantity fails (nats reported as bits are off by 31 %).
    """
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
        "perplexity",
        "unigram_bits_per_byte",
        "tokens_per_second",
        "steps",
    ):
        assert key in result, f"the JSON summary lacks {key!r}"
    assert result["steps"] == 2
    bits, perplexity = result["bits_per_byte"], result["perplexity"]
    error = abs(math.log2(perplexity) - bits)
    assert error <= bits_per_byte_bound(bits), (
        f"bits per byte {bits!r}, but log2(perplexity {perplexity!r}) = "
        f"{math.log2(perplexity)!r}: error {error:.3g} > bound {bits_per_byte_bound(bits):.3g}"
    )
    assert f"bits per byte {bits:.3f}" in out, "the printed summary differs from the JSON"


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


def test_train_command_with_loss_linear_trains_through_the_fused_loss(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--loss linear``: every training step and evaluation calls lmloss.linear_cross_entropy
    (2 steps + the evaluations before and after), with the head's weight, never the logits."""
    import lmloss._linear

    calls: list[tuple[int, ...]] = []
    fused = lmloss._linear.linear_cross_entropy

    def counting(
        input: torch.Tensor, linear_weight: torch.Tensor, *rest: Any, **keywords: Any
    ) -> Any:
        calls.append(tuple(linear_weight.shape))
        return fused(input, linear_weight, *rest, **keywords)

    monkeypatch.setattr(lmloss._linear, "linear_cross_entropy", counting)
    corpus = tmp_path / "essay.txt"
    corpus.write_bytes(b"The cat sat on the mat. The dog sat on the log. " * 100)
    arguments = ["--corpus", str(corpus), "--steps", "2", "--block-size", "8", "--batch-size", "2"]

    assert lmloss_main(["train", *arguments, "--threads", "1", "--loss", "linear"]) == 0

    assert "loss linear" in capsys.readouterr().out
    training_calls = 2
    assert len(calls) > training_calls, f"linear_cross_entropy was called {len(calls)} times"
    assert set(calls) == {(256, 128)}, f"called with weights of shapes {set(calls)}"


def test_train_command_with_nproc_2_trains_data_parallel(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """``--nproc 2``: two gloo processes train with DDP, rank 0 prints the progress lines and the
    summary is written as in one process. A batch of 3 rows gives the ranks 2 and 1 rows. (The
    gradients themselves are TRAIN-DDP's, properties/training/test_ddp.py.)"""
    summary = tmp_path / "summary.json"
    corpus = tmp_path / "essay.txt"
    corpus.write_bytes(b"The cat sat on the mat. The dog sat on the log. " * 100)
    arguments = ["--corpus", str(corpus), "--steps", "2", "--block-size", "8", "--batch-size", "3"]
    arguments += ["--log-interval", "1", "--threads", "1", "--nproc", "2"]

    assert lmloss_main(["train", *arguments, "--json", str(summary)]) == 0

    out = capfd.readouterr().out
    assert "2 processes, data-parallel" in out
    assert out.count("step     1/2") == 1 and out.count("step     2/2") == 1, out
    result = json.loads(summary.read_text())
    assert result["steps"] == 2 and len(result["train_losses"]) == 2
    assert all(math.isfinite(loss) for loss in result["train_losses"])
    assert f"bits per byte {result['bits_per_byte']:.3f}" in out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--nproc", "0"], "--nproc must be at least 1"),
        (["--nproc", "2", "--loss", "linear"], "--loss linear is not supported with --nproc 2"),
        (["--nproc", "2", "--checkpoint", "c.pt"], "--checkpoint is not supported with --nproc"),
    ],
)
def test_train_command_explains_what_nproc_does_not_take(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert lmloss_main(["train", *arguments]) == 2
    assert message in capsys.readouterr().err
