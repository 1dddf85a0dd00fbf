"""CE-OFFSET has teeth: it fails a kernel that forms lse = m + log S before subtracting the target
logit, which the general loss bound lets pass, and holds for PyTorch's kernel.

The clause runs in-process through the engine's runner, as `lmloss check --clause CE-OFFSET`
does, under the ci profile (derandomized), in float32.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from properties.ce.offset import (  # noqa: E402
    losses_keep_their_precision_at_large_common_offsets,
    offset_exponents,
    offset_logits,
)
from properties.ce.oracle import oracle_loss  # noqa: E402
from properties.ce.problem import Problem  # noqa: E402
from properties.engine.check import load_kernel  # noqa: E402
from properties.engine.checks import discrepancy  # noqa: E402
from properties.engine.runner import ClauseResult, run_clause  # noqa: E402
from properties.kernels.broken import lse_then_subtract_target  # noqa: E402
from properties.strategies import targets  # noqa: E402
from properties.tolerances import loss_bound, offset_loss_bound  # noqa: E402

CLAUSE = losses_keep_their_precision_at_large_common_offsets
BROKEN = "properties.kernels.broken:lse_then_subtract_target"


def check(spec: str) -> ClauseResult:
    return run_clause(CLAUSE, load_kernel(spec), dtype="float32", device="cpu", profile="ci")


def test_the_clause_is_ce_offset() -> None:
    assert CLAUSE.id == "CE-OFFSET"
    assert CLAUSE.tolerance == "offset_loss"


def test_a_kernel_that_forms_lse_first_fails() -> None:
    result = check(BROKEN)

    assert result.status == "fails", (result.status, result.reason)
    violation = result.violation
    assert violation is not None and violation.clause == "CE-OFFSET"
    assert violation.error is not None and violation.bound is not None
    assert violation.error > violation.bound
    assert "lse_then_subtract_target" in violation.reproducer


def test_pytorch_holds() -> None:
    result = check("torch.nn.functional:cross_entropy")

    assert result.status == "holds", (result.status, result.reason, result.violation)
    assert result.examples > 0
    assert result.worst_ratio < 0.5


@pytest.mark.parametrize("name", ["float32", "bfloat16"])
def test_the_general_bound_lets_the_bug_pass_and_the_offset_bound_does_not(name: str) -> None:
    """Two tied logits at c = 2^20 + 3·2^13 and two more 2^13 and 2^14 below (exact in both
    dtypes): the loss is log 2. Forming c + log 2 in float32 rounds it to a multiple of 2^-3,
    0.057 off; PyTorch stays within half the offset bound. The general bound, with its u·|lse|,
    allows 0.13 in float32 and 4192 in bfloat16; the offset bound (2C + 2R + log C + …)·u_w plus
    the storage dtype's roundings allows 0.0020 (the row spans R = 2^14) and 0.026."""
    c = 2.0**20 + 3 * 2.0**13
    logits = torch.tensor([[c, c, c - 2**13, c - 2**14]], dtype=getattr(torch, name))
    target = torch.tensor([0])
    problem = Problem.of(logits, target, reduction="none")
    exact = oracle_loss(problem)
    wrong = discrepancy(lse_then_subtract_target(logits, target, reduction="none"), exact)
    pytorch = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    right = discrepancy(pytorch, exact)

    assert float(wrong[0]) > 0.05
    assert float(wrong[0]) <= float(loss_bound(problem)[0])
    assert float(wrong[0]) > 2 * float(offset_loss_bound(problem)[0])
    assert float(right[0]) <= 0.5 * float(offset_loss_bound(problem)[0])


@pytest.mark.parametrize("name", ["float32", "bfloat16", "float16"])
def test_offset_logits_are_exact_and_offset(name: str) -> None:
    """The strategy's premise (it asserts that no logit was rounded) and its reach: every row's
    maximum lies between 0.75·2^k and 1.5·2^k for the dtype's range of k."""
    low, high = offset_exponents(name)

    @settings(max_examples=20, deadline=None, database=None, derandomize=True)
    @given(st.data())
    def draw(data: st.DataObject) -> None:
        rows, vocab = data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40))
        target = data.draw(targets(rows=rows, vocab_size=vocab))
        logits = data.draw(offset_logits(rows=rows, vocab_size=vocab, dtype=name, target=target))
        assert logits.value.dtype == getattr(torch, name)
        peaks = logits.value.double().abs().amax(dim=1)
        assert bool((peaks >= 0.75 * 2.0**low).all()), peaks
        assert bool((peaks <= 1.5 * 2.0**high).all()), peaks

    draw()
