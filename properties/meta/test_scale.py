"""The scale clauses have teeth: each catches the kernel that breaks past its threshold, and
PyTorch's kernel holds both, on the sizes the ci profile draws.

The broken kernels are exact below their thresholds (65,535 rows; a vocabulary of one block,
32,768 classes), which is why the general clauses, at most 4,096 classes and 8,192 logits per
example, pass them. Clauses run in this process under the ci profile, float32; the tests are
parametrized by clause ID, so ``-k "LARGE-VOCAB or TALL"`` selects them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from hypothesis import strategies as st  # noqa: E402

from properties.catalogue import BY_ID  # noqa: E402
from properties.ce.scale import (  # noqa: E402
    GRID_LIMIT,
    LLM_VOCABULARIES,
    VOCAB_BLOCKS,
)
from properties.engine.clause import Trial, Violation, clause  # noqa: E402
from properties.engine.kernel import resolve  # noqa: E402
from properties.engine.runner import ClauseResult, run_clause  # noqa: E402
from properties.kernels import broken  # noqa: E402

F = torch.nn.functional
Shapes = list[tuple[int, ...]]


def run_in_ci(clause_id: str, kernel: Any) -> ClauseResult:
    return run_clause(
        BY_ID[clause_id], resolve(kernel), dtype="float32", device="cpu", profile="ci"
    )


def recording_cross_entropy(shapes: Shapes) -> Any:
    """F.cross_entropy, noting the shape of the logits of every call in ``shapes``."""

    @functools.wraps(F.cross_entropy)
    def cross_entropy(logits: Any, target: Any, **options: Any) -> Any:
        shapes.append(tuple(logits.shape))
        return F.cross_entropy(logits, target, **options)

    return cross_entropy


def every_llm_vocabulary(shapes: Shapes) -> None:
    vocabularies = {classes for _, classes in shapes}
    assert set(LLM_VOCABULARIES) <= vocabularies
    for block in VOCAB_BLOCKS:
        past = [c for c in vocabularies if block < c < block + 2048]
        assert past and all(c % 2 == 1 for c in past), (block, sorted(vocabularies))


def rows_past_two_to_the_16(shapes: Shapes) -> None:
    assert shapes and all(rows > 2**16 for rows, _ in shapes), shapes


@pytest.mark.parametrize(
    ("clause_id", "reaches"),
    [("CE-LARGE-VOCAB", every_llm_vocabulary), ("CE-TALL-BATCH", rows_past_two_to_the_16)],
    ids=["CE-LARGE-VOCAB", "CE-TALL-BATCH"],
)
def test_pytorch_holds_the_scale_clause_on_the_sizes_it_names(
    clause_id: str, reaches: Callable[[Shapes], None]
) -> None:
    shapes: Shapes = []
    result = run_in_ci(clause_id, recording_cross_entropy(shapes))
    assert result.status == "holds", result.violation or result.detail
    reaches(shapes)


def at_a_row_the_grid_never_reaches(violation: Violation) -> None:
    row = re.search(r"loss\[(\d+)\] = 0\.0,", violation.message)
    assert row and int(row[1]) >= GRID_LIMIT, violation.message


def past_one_vocabulary_block(violation: Violation) -> None:
    shape = re.search(r"logits \((\d+), (\d+)\)", violation.message)
    assert shape and int(shape[2]) > VOCAB_BLOCKS[0], violation.message


@pytest.mark.parametrize(
    ("broken_kernel", "clause_id", "where"),
    [
        (broken.drops_rows_past_65535, "CE-TALL-BATCH", at_a_row_the_grid_never_reaches),
        (broken.no_rescale_between_vocab_blocks, "CE-LARGE-VOCAB", past_one_vocabulary_block),
    ],
    ids=["CE-TALL-BATCH", "CE-LARGE-VOCAB"],
)
def test_a_kernel_broken_past_a_threshold_fails_its_scale_clause_there(
    broken_kernel: Any, clause_id: str, where: Callable[[Violation], None]
) -> None:
    result = run_in_ci(clause_id, broken_kernel)
    assert result.status == "fails", result.reason
    violation = result.violation
    assert violation is not None and violation.error is not None and violation.bound is not None
    assert violation.error > 10 * violation.bound
    where(violation)


@pytest.mark.parametrize(
    ("broken_kernel", "rows", "classes"),
    [
        (broken.drops_rows_past_65535, GRID_LIMIT, 3),
        (broken.no_rescale_between_vocab_blocks, 5, VOCAB_BLOCKS[0]),
    ],
    ids=["CE-TALL-BATCH", "CE-LARGE-VOCAB"],
)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_the_broken_kernels_are_pytorchs_below_their_threshold(
    broken_kernel: Any, rows: int, classes: int, reduction: str
) -> None:
    """Why the general clauses pass them: up to the threshold, loss and gradient are PyTorch's
    (the largest logit in the last column, where a missing rescale would show past it)."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, classes, generator=generator) * 3
    logits[:, -1] += 8
    target = torch.randint(0, classes, (rows,), generator=generator)
    target[::4] = -100
    upstream = torch.rand(rows if reduction == "none" else (), generator=generator)
    values = []
    for fn in (broken_kernel, F.cross_entropy):
        leaf = logits.clone().requires_grad_(True)
        loss = fn(leaf, target, reduction=reduction)
        loss.backward(upstream)
        values.append((loss.detach(), leaf.grad))
    (loss, gradient), (expected_loss, expected_gradient) = values
    # A sum over 65,535 rows in another order than PyTorch's: within 2^-13 of it, far inside
    # the bound γ_65534 ≈ 2^-8 of a float32 sum.
    torch.testing.assert_close(loss, expected_loss, rtol=2**-13, atol=0.0)
    torch.testing.assert_close(gradient, expected_gradient)


def test_a_clause_runs_at_most_its_own_examples_whatever_the_profile() -> None:
    runs = 0

    def counts(trial: Trial) -> None:
        """Nothing to check.  [CE-META] tol: exact"""
        nonlocal runs
        runs += 1
        trial.data.draw(st.integers(0, 2**32), label="number")

    capped = clause(max_examples=3)(counts)
    for profile in ("quick", "ci"):
        runs = 0
        result = run_clause(
            capped, resolve(F.cross_entropy), dtype="float32", device="cpu", profile=profile
        )
        assert (result.status, result.examples, runs) == ("holds", 3, 3), profile
    with pytest.raises(ValueError, match="at least 1"):
        clause(max_examples=0)
