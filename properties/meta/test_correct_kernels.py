"""The correct contract-2 kernels of properties/kernels/correct.py, which the meta tests pass
through the checker, on the input where a float32 reduction overflows: 300 rows whose z-loss
z·lse² is about 8.5e37 each. Their sum (2.6e40) is past float32's range, their mean is not."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import reference  # noqa: E402
from properties.ce.problem import Problem  # noqa: E402
from properties.kernels.correct import chunked_cross_entropy, logsumexp_cross_entropy  # noqa: E402
from properties.tolerances import loss_bound  # noqa: E402

ROWS = 300


@pytest.mark.parametrize("correct_kernel", [logsumexp_cross_entropy, chunked_cross_entropy])
def test_a_mean_of_huge_z_losses_is_the_oracles(correct_kernel: Callable[..., Any]) -> None:
    """mean_i(z·lse_i²) with lse_i = 2^63 (logits [2^63, 0], exact in float32) is within the
    loss bound of the oracle's; the sum is inf, as the exact sum rounds to in float32."""
    logits = torch.tensor([[2.0**63, 0.0]] * ROWS)
    target = torch.zeros(ROWS, dtype=torch.long)
    mean = correct_kernel(logits, target, z_loss=1.0)
    exact = float(reference.cross_entropy(logits.tolist(), target.tolist(), z_loss=1.0))
    bound = float(loss_bound(Problem.of(logits, target, z_loss=1.0)))
    assert abs(float(mean) - exact) <= bound, (float(mean), exact, bound)
    assert float(correct_kernel(logits, target, z_loss=1.0, reduction="sum")) == float("inf")
