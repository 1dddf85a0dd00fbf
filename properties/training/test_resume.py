"""Determinism and resume: the real loop gives the same losses bit for bit, also across a crash.

``lmloss.train`` runs the whole loop (byte corpus, AdamW, clipping, schedule, checkpoints) with
this project's loss; a run here takes about a second. Checkpoints are written atomically and a
resume refuses a checkpoint of another run.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import lmloss
from lmloss import GPTConfig, TrainConfig, cross_entropy

#: A run of the real loop (byte corpus, AdamW, clipping, schedule) that takes about a second.
SHORT_RUN = TrainConfig(
    steps=6, batch_size=2, micro_batches=2, warmup_steps=2, eval_windows=4, checkpoint_interval=2
)

ShortRun = Callable[..., lmloss.TrainResult]


@pytest.fixture
def short_run(byte_model: GPTConfig, docs_corpus: lmloss.Corpus) -> ShortRun:
    """short_run(config=SHORT_RUN, **train_keywords): lmloss.train on the byte model and corpus."""

    def run(config: TrainConfig = SHORT_RUN, **keywords: Any) -> lmloss.TrainResult:
        return lmloss.train(config, byte_model, corpus=docs_corpus, **keywords)

    return run


def test_same_seed_gives_the_same_losses_bit_for_bit(short_run: ShortRun) -> None:
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


def test_resume_after_a_crash_continues_with_the_uninterrupted_losses(
    short_run: ShortRun, tmp_path: Path
) -> None:
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


def test_resume_refuses_a_checkpoint_of_another_run(short_run: ShortRun, tmp_path: Path) -> None:
    checkpoint = tmp_path / "run.pt"
    short_run(checkpoint=checkpoint)
    other = dataclasses.replace(SHORT_RUN, seed=SHORT_RUN.seed + 1)
    with pytest.raises(ValueError, match="seed="):
        short_run(other, checkpoint=checkpoint, resume=True)


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
