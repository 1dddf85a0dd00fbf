"""CE-AUTOCAST has teeth: it fails a kernel whose float32 loss has bfloat16's accuracy under
autocast, and holds for kernels that compute the loss in float32 there.

Each test runs the clause in-process through the engine's runner, as `lmloss check --clause
CE-AUTOCAST` does, under the ci profile (derandomized). The clause draws bfloat16 logits whatever
the run's dtype, so the run is asked for bfloat16. On the CPU, PyTorch's autocast computes
cross_entropy_loss in float32, so F.cross_entropy holds. On CUDA it does not (pytest -m gpu).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from properties.ce.autocast import autocast_result_meets_the_bound_of_its_dtype  # noqa: E402
from properties.engine.check import load_kernel  # noqa: E402
from properties.engine.runner import ClauseResult, run_clause  # noqa: E402

CLAUSE = autocast_result_meets_the_bound_of_its_dtype
BROKEN = "properties.kernels.broken:bf16_loss_returned_as_float32"
needs_cuda = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def check(spec: str, device: str) -> ClauseResult:
    return run_clause(CLAUSE, load_kernel(spec), dtype="bfloat16", device=device, profile="ci")


def test_the_clause_is_ce_autocast() -> None:
    assert CLAUSE.id == "CE-AUTOCAST"
    assert CLAUSE.tolerance == "loss"


def test_a_bfloat16_loss_returned_as_float32_fails() -> None:
    result = check(BROKEN, "cpu")

    assert result.status == "fails", (result.status, result.reason)
    violation = result.violation
    assert violation is not None and violation.clause == "CE-AUTOCAST"
    assert "the float32 loss under autocast" in violation.message
    assert violation.error is not None and violation.bound is not None
    assert violation.error > violation.bound
    assert "torch.autocast" in violation.reproducer


@pytest.mark.parametrize(
    ("spec", "device"),
    [
        ("lmloss:cross_entropy", "cpu"),
        ("torch.nn.functional:cross_entropy", "cpu"),
        pytest.param("lmloss:cross_entropy", "cuda", marks=needs_cuda),
    ],
)
def test_a_float32_loss_of_the_bfloat16_logits_holds(spec: str, device: str) -> None:
    result = check(spec, device)

    assert result.status == "holds", (result.status, result.reason, result.violation)
    assert result.examples > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pytorch_cross_entropy_fails_under_cuda_autocast() -> None:
    """The finding this clause was written for: float32 in dtype, bfloat16 in accuracy."""
    result = check("torch.nn.functional:cross_entropy", "cuda")

    assert result.status == "fails", (result.status, result.reason)
    assert result.violation is not None and result.violation.clause == "CE-AUTOCAST"
