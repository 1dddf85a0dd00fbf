"""The runner turns what happens inside a clause into the verdict `lmloss check` prints.

Small clauses written here (not the specification's) drive :func:`run_clause` through each
outcome: holds, fails (a violation, a kernel that raises, a result of the wrong shape), not
applicable, and an error in the check itself. They run in-process and take a second or two.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from hypothesis import assume  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from properties.engine.clause import Clause, ClauseViolation, Trial  # noqa: E402
from properties.engine.kernel import resolve  # noqa: E402
from properties.engine.runner import run_clause  # noqa: E402
from properties.engine.snippet import call_snippet, tensor_expression  # noqa: E402
from properties.kernels import broken  # noqa: E402

F = torch.nn.functional
REPOSITORY = Path(__file__).resolve().parents[2]


def replay(snippet: str) -> subprocess.CompletedProcess[str]:
    """Run a reproducer as a person would paste it, from the repository."""
    return subprocess.run(
        [sys.executable, "-c", snippet], capture_output=True, text=True, cwd=REPOSITORY
    )


def clause_of(test: Any, *, tolerance: str | None = "loss", applies: Any = None) -> Clause:
    return Clause(
        id="CE-META",
        title=test.__name__,
        equation="a test of the runner",
        tolerance=tolerance,
        contract="cross_entropy",
        test=test,
        applies=applies or (lambda kernel: None),
    )


def run(test: Any, kernel: Any = F.cross_entropy, **clause_options: Any) -> Any:
    clause = clause_of(test, **clause_options)
    return run_clause(clause, resolve(kernel), dtype="float32", device="cpu", profile="ci")


def small_batch(trial: Trial) -> tuple[Any, Any]:
    rows = trial.data.draw(st.integers(1, 4), label="rows")
    classes = trial.data.draw(st.integers(2, 5), label="classes")
    return torch.zeros(rows, classes), torch.zeros(rows, dtype=torch.long)


def test_a_clause_that_holds_reports_its_examples_and_worst_ratio() -> None:
    def records_a_quarter(trial: Trial) -> None:
        logits, target = small_batch(trial)
        trial.kernel(logits, target)
        trial.record(0.25)

    result = run(records_a_quarter)
    assert result.status == "holds"
    assert result.examples > 1
    assert result.worst_ratio == 0.25


def test_rejected_examples_are_neither_counted_nor_failures() -> None:
    valid = 0

    def rejects_odd_draws(trial: Trial) -> None:
        nonlocal valid
        assume(trial.data.draw(st.integers(0, 10**6), label="number") % 2 == 0)
        valid += 1

    result = run(rejects_odd_draws)
    assert result.status == "holds"
    assert result.examples == valid > 1
    assert result.shrinking_cut_at is None


def test_a_violation_fails_with_the_shrunk_example() -> None:
    def fails_from_three_rows(trial: Trial) -> None:
        logits, target = small_batch(trial)
        if logits.shape[0] >= 3:
            raise ClauseViolation(
                "CE-META", message=f"rows={logits.shape[0]}", reproducer="", error=2.0, bound=1.0
            )

    result = run(fails_from_three_rows)
    assert result.status == "fails"
    assert result.violation is not None
    assert result.violation.message == "rows=3", "Hypothesis shrinks to the smallest failure"
    assert result.worst_ratio == 2.0


def test_a_failure_says_when_its_shrinking_was_cut_short() -> None:
    def fails_from_three_rows(trial: Trial) -> None:
        logits, target = small_batch(trial)
        if logits.shape[0] >= 3:
            raise ClauseViolation("CE-META", message="three rows or more", reproducer="")

    shrunk = run(fails_from_three_rows)
    assert shrunk.status == "fails" and shrunk.shrinking_cut_at is None
    clause = clause_of(fails_from_three_rows)
    kernel = resolve(F.cross_entropy)
    cut = run_clause(clause, kernel, dtype="float32", device="cpu", shrinking_seconds=0)
    assert cut.status == "fails" and cut.shrinking_cut_at == 0


def test_a_kernel_that_raises_fails_with_a_call_that_raises_again() -> None:
    def calls_with_a_transposed_input(trial: Trial) -> None:
        logits, target = small_batch(trial)
        trial.kernel(logits.t().contiguous().t(), target)

    result = run(calls_with_a_transposed_input, broken.flattens_with_view)
    assert result.status == "fails"
    assert result.violation is not None
    assert result.violation.message.startswith("the kernel raised RuntimeError")
    assert "RuntimeError" in replay(result.violation.reproducer).stderr


def test_a_kernel_whose_backward_raises_fails() -> None:
    class ExplodingBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, logits: Any) -> Any:
            return logits.sum()

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            raise ValueError("no gradient today")

    def exploding(logits: Any, target: Any) -> Any:
        return ExplodingBackward.apply(logits)

    def differentiates(trial: Trial) -> None:
        logits, target = small_batch(trial)
        trial.kernel(logits.requires_grad_(), target).backward()

    result = run(differentiates, exploding)
    assert result.status == "fails"
    assert result.violation is not None
    assert "no gradient today" in result.violation.message


def forward_only(logits: Any, target: Any, **options: Any) -> Any:
    return F.cross_entropy(logits, target, **options).detach()


def test_a_loss_that_does_not_require_grad_fails_with_a_reproducer() -> None:
    from properties.catalogue import BY_ID

    kernel = resolve(forward_only)
    result = run_clause(BY_ID["CE-GRAD"], kernel, dtype="float32", device="cpu", profile="ci")
    assert result.status == "fails"
    assert result.violation is not None
    assert "the loss does not require grad" in result.violation.message
    # The snippet repeats the call and its backward pass, which raises the same way.
    assert "does not require grad" in replay(result.violation.reproducer).stderr


@pytest.mark.parametrize(
    ("returned", "problem"),
    [
        (lambda loss: (loss,), "a tuple, not a Tensor"),
        (lambda loss: loss.reshape(1), "shape (1,)"),
    ],
)
def test_a_result_of_the_wrong_type_or_shape_fails(returned: Any, problem: str) -> None:
    def kernel(logits: Any, target: Any) -> Any:
        return returned(F.cross_entropy(logits, target))

    def calls(trial: Trial) -> None:
        trial.kernel(*small_batch(trial))

    result = run(calls, kernel)
    assert result.status == "fails"
    assert result.violation is not None
    assert problem in result.violation.message


def test_an_exception_in_the_check_itself_is_an_error_not_a_verdict() -> None:
    def buggy(trial: Trial) -> None:
        small_batch(trial)
        raise KeyError("a bug in the suite")

    result = run(buggy)
    assert result.status == "error"
    assert result.reason == "KeyError: 'a bug in the suite'"
    assert result.detail is not None and "Traceback" in result.detail


def test_a_clause_that_does_not_apply_is_not_run() -> None:
    def never(trial: Trial) -> None:
        raise AssertionError("must not run")

    result = run(never, applies=lambda kernel: "the kernel does not accept z_loss")
    assert result.status == "not applicable"
    assert result.reason == "the kernel does not accept z_loss"
    assert result.examples == 0


def test_a_violation_without_a_finite_bound_counts_as_infinitely_far() -> None:
    def nan_bound(trial: Trial) -> None:
        small_batch(trial)
        raise ClauseViolation("CE-META", message="", reproducer="", error=1.0, bound=math.nan)

    assert run(nan_bound).worst_ratio == math.inf


@pytest.mark.parametrize(
    "view",
    [
        lambda x: x,
        lambda x: x.t(),
        lambda x: x[1:, 2:],
        lambda x: x[:, ::2],
        lambda x: x[:1].expand(4, 6),
        lambda x: x.bfloat16(),
        lambda x: torch.zeros(3, 40).index_fill(1, torch.tensor([7]), -math.inf),
    ],
)
def test_a_tensor_expression_rebuilds_values_dtype_and_layout(view: Any) -> None:
    tensor = view(torch.randn(4, 6))
    rebuilt = eval(tensor_expression(tensor), {"torch": torch, "inf": math.inf, "nan": math.nan})
    assert rebuilt.dtype == tensor.dtype
    assert rebuilt.shape == tensor.shape and rebuilt.stride() == tensor.stride()
    assert torch.equal(rebuilt, tensor)


def test_a_call_snippet_runs_and_gives_the_same_loss() -> None:
    logits, target = torch.randn(3, 5), torch.tensor([1, -100, 4])
    kernel = resolve(
        broken.mean_counts_ignored_tokens, source=f"{broken.__name__}:mean_counts_ignored_tokens"
    )
    snippet = (
        call_snippet(kernel, (logits, target), {"reduction": "mean"}) + "\nprint(repr(loss.item()))"
    )
    replayed = replay(snippet)
    expected = broken.mean_counts_ignored_tokens(logits, target, reduction="mean").item()
    assert replayed.stdout.strip() == repr(expected), replayed.stderr
