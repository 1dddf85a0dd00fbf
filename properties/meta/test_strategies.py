"""Tests of the test machinery: the strategies reach the hard places, reproducers rebuild
their inputs exactly, the tolerances grow as their derivation says and tell known-good from
known-bad arithmetic, and every clause is well formed."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

torch = pytest.importorskip("torch")

from hypothesis import HealthCheck, Phase, find, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from properties import strategies  # noqa: E402
from properties.catalogue import CLAUSES, CROSS_ENTROPY_SECTIONS  # noqa: E402
from properties.ce import scale  # noqa: E402
from properties.ce.oracle import oracle_gradient, oracle_loss  # noqa: E402
from properties.ce.problem import Problem  # noqa: E402
from properties.engine.clause import Trial, clause  # noqa: E402
from properties.engine.dtypes import largest_finite, smallest_normal, torch_dtype  # noqa: E402
from properties.engine.runner import hypothesis_settings  # noqa: E402
from properties.engine.snippet import with_math_names  # noqa: E402
from properties.strategies import (  # noqa: E402
    Batch,
    batches,
    logit_layouts,
    long_sequences,
    shifted_logits,
    splits,
    target_layouts,
)
from properties.tolerances import (  # noqa: E402
    FLOAT64_UNDERFLOW_NLL,
    UNIT_ROUNDOFF,
    accumulation_error,
    gamma,
    gradient_bound,
    loss_bound,
)

#: Up to 3000 draws to find an example, and no shrinking: reaching the region is the point.
SEARCH = settings(
    max_examples=3000,
    deadline=None,
    database=None,
    phases=(Phase.generate,),
    suppress_health_check=list(HealthCheck),
)


def finds(strategy: st.SearchStrategy[Batch], condition: Callable[[Batch], bool]) -> Batch:
    """An example of ``strategy`` meeting ``condition`` (Hypothesis fails the test if none)."""
    return find(strategy, condition, settings=SEARCH)


FLOAT32 = batches(dtype="float32")
BFLOAT16 = batches(dtype="bfloat16")


def row_stats(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    x = batch.x.double()
    finite = torch.where(torch.isfinite(x), x, math.nan)
    return finite.nan_to_num(-math.inf).amax(1), finite.nan_to_num(math.inf).amin(1)


def test_reaches_an_ignored_target_inside_the_vocabulary() -> None:
    def inside(b: Batch) -> bool:
        ignore = b.ignore_index
        return 0 <= ignore < b.vocab_size and bool((~b.counted).any()) and bool(b.counted.any())

    finds(FLOAT32, inside)


def test_reaches_a_negative_ignore_index_other_than_the_default() -> None:
    explicit = batches(dtype="float32", require=("ignore_index",))
    finds(explicit, lambda b: b.ignore_index < 0 and b.ignore_index != -100 and not b.counted.all())


def test_reaches_every_target_ignored() -> None:
    finds(FLOAT32, lambda b: b.x.shape[0] > 1 and not bool(b.counted.any()))


def test_reaches_a_masked_logit() -> None:
    finds(FLOAT32, lambda b: bool((b.x == -math.inf).any()))


def test_reaches_vocabularies_that_are_not_powers_of_two() -> None:
    finds(FLOAT32, lambda b: b.vocab_size > 1000 and b.vocab_size & (b.vocab_size - 1) != 0)


def test_reaches_a_vocabulary_next_to_a_power_of_two() -> None:
    finds(FLOAT32, lambda b: b.vocab_size in (1023, 1025, 2047, 2049, 4095))


def test_reaches_thousands_of_rows() -> None:
    finds(
        strategies.reduction_batches(dtype="float32", kernel=None, reduction="mean"),
        lambda b: b.x.shape[0] >= 2000,
    )


def test_long_batches_expose_a_running_bfloat16_sum() -> None:
    """The long branch of CE-SUM and CE-MEAN exists for this: most of its draws put a running
    bfloat16 sum past the bound (the mixed-scale batches of the general branch rarely do)."""
    outcomes: list[bool] = []

    @settings(SEARCH, max_examples=8, phases=[Phase.generate])
    @given(strategies.long_batches(dtype="bfloat16", kernel=None, reduction="sum"))
    def running_sum_fails(b: Batch) -> None:
        problem = Problem.of(b.x, b.y, **b.keywords())
        keywords = {**b.keywords(), "reduction": "none"}
        running = torch.zeros((), dtype=torch.bfloat16)
        for loss in torch.nn.functional.cross_entropy(b.x, b.y, **keywords):
            running = running + loss
        outcomes.append(ratio(running, oracle_loss(problem), loss_bound(problem)) > 1)

    running_sum_fails()
    assert sum(outcomes) >= 6, outcomes


def test_reaches_a_vocabulary_of_one() -> None:
    finds(FLOAT32, lambda b: b.vocab_size == 1)


def test_reaches_p_target_below_the_smallest_normal() -> None:
    threshold = -math.log(smallest_normal("float32"))

    def underflows(b: Batch) -> bool:
        losses = torch.nn.functional.cross_entropy(
            b.x.double(), b.y.clamp(0, b.vocab_size - 1), reduction="none"
        )
        return bool((losses[b.counted] > threshold).any() & losses[b.counted].isfinite().all())

    finds(FLOAT32, underflows)


def test_reaches_rows_of_very_different_scales() -> None:
    def spread_ratio(b: Batch) -> bool:
        top, bottom = row_stats(b)
        spread = (top - bottom)[(top - bottom) > 0]
        return spread.numel() > 1 and float(spread.max() / spread.min()) > 1e6

    finds(FLOAT32, spread_ratio)


def test_reaches_exact_ties_after_rounding_to_bfloat16() -> None:
    def tied_near_large_offset(b: Batch) -> bool:
        x = b.x.double()
        return b.vocab_size > 2 and bool(((x == x[:, :1]).all(1) & (x[:, 0].abs() > 100)).any())

    finds(BFLOAT16, tied_near_large_offset)


def test_reaches_one_dominant_logit() -> None:
    def dominant(b: Batch) -> bool:
        x = b.x.double()
        if b.vocab_size < 3:
            return False
        top2 = x.topk(2, dim=1).values
        return bool(((top2[:, 0] - top2[:, 1]) > 1000).all())

    finds(FLOAT32, dominant)


def test_reaches_logits_near_the_dtype_limit() -> None:
    largest = largest_finite("bfloat16")
    finds(BFLOAT16, lambda b: bool((b.x.double().abs() > largest / 1e3).any()))


def test_reaches_tiny_logit_scales() -> None:
    finds(FLOAT32, lambda b: b.vocab_size > 3 and bool((b.x.double().abs().amax(1) < 1e-2).any()))


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_reproducer_rebuilds_the_batch_bit_for_bit(data: st.DataObject) -> None:
    dtype = data.draw(st.sampled_from(list(strategies.DTYPES)), label="dtype")
    batch = data.draw(batches(dtype=dtype), label="batch")
    namespace: dict[str, object] = {}
    exec(with_math_names("import torch\n" + batch.source()), namespace)
    for name, tensor in (("logits", batch.x), ("target", batch.y)):
        rebuilt = namespace[name]
        assert isinstance(rebuilt, torch.Tensor)
        assert rebuilt.dtype == tensor.dtype and rebuilt.shape == tensor.shape
        assert torch.equal(rebuilt, tensor)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_shifted_logits_differ_by_exactly_the_shift(data: st.DataObject) -> None:
    dtype = data.draw(st.sampled_from(list(strategies.DTYPES)), label="dtype")
    rows, vocab = data.draw(strategies.batch_shapes(max_logits=2048), label="shape")
    target = data.draw(strategies.targets(rows=rows, vocab_size=vocab), label="target")
    original, shifted, shift = data.draw(
        shifted_logits(rows=rows, vocab_size=vocab, dtype=dtype, target=target), label="shifted"
    )
    finite = torch.isfinite(original.value)
    difference = shifted.value.double() - original.value.double()
    assert bool((difference[finite] == shift).all())
    assert bool((shifted.value[~finite] == -math.inf).all())


def test_long_sequences_underflow_float64() -> None:
    sequence = find(long_sequences(dtype="float32"), lambda b: True, settings=SEARCH)
    negative_logprob = float(oracle_loss(Problem.of(sequence.x, sequence.y, reduction="sum")))
    assert negative_logprob > FLOAT64_UNDERFLOW_NLL  # Π p < float64's smallest subnormal


@settings(max_examples=100, deadline=None, database=None)
@given(st.data())
def test_splits_cut_the_rows_in_order_into_nonempty_parts(data: st.DataObject) -> None:
    rows = data.draw(st.integers(1, 40), label="rows")
    min_parts = data.draw(st.integers(1, rows), label="min_parts")
    max_parts = data.draw(st.none() | st.integers(min_parts, 2 * rows), label="max_parts")
    parts = data.draw(splits(rows=rows, min_parts=min_parts, max_parts=max_parts), label="parts")
    starts = [start for start, _ in parts]
    stops = [stop for _, stop in parts]
    assert starts == [0, *stops[:-1]] and stops[-1] == rows, parts
    assert all(start < stop for start, stop in parts), parts
    assert min_parts <= len(parts) <= min(rows, max_parts or rows), parts


def test_splits_reach_ragged_parts() -> None:
    """A one-row part next to a long one: where a mean of part means goes wrong most."""

    def ragged(parts: list[tuple[int, int]]) -> bool:
        sizes = [stop - start for start, stop in parts]
        return min(sizes) == 1 and max(sizes) > 8

    find(splits(rows=32, min_parts=2, max_parts=4), ragged, settings=SEARCH)


def test_splits_refuse_an_impossible_number_of_parts() -> None:
    with pytest.raises(ValueError, match="cannot cut"):
        splits(rows=3, min_parts=4)
    with pytest.raises(ValueError, match="cannot cut"):
        splits(rows=3, min_parts=2, max_parts=1)


# --- Tolerances ---------------------------------------------------------------------------------


def problem_of(x: torch.Tensor, target: list[int], **keywords: object) -> Problem:
    return Problem.of(x, torch.tensor(target), **keywords)


def test_bounds_are_positive_and_finite() -> None:
    x = torch.randn(6, 9, generator=torch.Generator().manual_seed(0))
    for dtype in UNIT_ROUNDOFF:
        for reduction in ("mean", "sum", "none"):
            problem = problem_of(x.to(torch_dtype(dtype)), [1] * 6, reduction=reduction)
            bound = loss_bound(problem)
            assert bool((bound > 0).all() & bound.isfinite().all())
            gradient = gradient_bound(problem, torch.tensor(1.0))
            assert bool((gradient > 0).all() & gradient.isfinite().all())


def test_bounds_grow_with_vocabulary_spread_and_magnitude() -> None:
    def bound(c: int, scale: float = 1.0, offset: float = 0.0) -> float:
        x = torch.linspace(-1, 1, c, dtype=torch.float64)[None] * scale + offset
        return float(loss_bound(problem_of(x.float(), [0], reduction="sum")))

    assert bound(10) < bound(100) < bound(1000)  # the (C − 1)·u of the sum of exponentials
    assert bound(10) < bound(10, scale=100.0) < bound(10, scale=1e4)  # the spread R
    assert bound(10) < bound(10, offset=1e3) < bound(10, offset=1e6)  # |lse|


def test_bfloat16_bounds_exceed_float32_bounds() -> None:
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(1))
    narrow = loss_bound(problem_of(x.bfloat16(), [0] * 5, reduction="none"))
    wide = loss_bound(problem_of(x.bfloat16().float(), [0] * 5, reduction="none"))
    assert bool((narrow > 100 * wide).all())


def test_accumulation_error_grows_with_the_number_of_terms() -> None:
    for dtype in UNIT_ROUNDOFF:
        errors = [accumulation_error(n, dtype) for n in (1, 2, 16, 17, 256, 4096, 65536)]
        assert errors[0] == 0.0
        assert errors == sorted(errors)
    # A 16-way cascade in bfloat16: one level for 16 terms, two for 17 to 256.
    assert accumulation_error(16, "bfloat16") == gamma(15, 2.0**-8)
    assert accumulation_error(17, "bfloat16") == gamma(16, 2.0**-8)
    assert accumulation_error(256, "bfloat16") == gamma(30, 2.0**-8)
    assert gamma(300, 2.0**-8) == math.inf


def _test_stating(docstring: str | None) -> Callable[[Trial], None]:
    """A clause test that does nothing, with the given docstring."""

    def stated(trial: Trial) -> None:
        pass

    stated.__doc__ = docstring
    return stated


def test_the_clause_decorator_reads_equation_id_and_tolerance() -> None:
    declared = clause()(_test_stating("L(x + c·1, y)\n    = L(x, y).  [CE-META] tol: loss"))
    assert (declared.id, declared.equation, declared.tolerance) == (
        "CE-META",
        "L(x + c·1, y) = L(x, y).",
        "loss",
    )
    assert clause()(_test_stating("∇L = 0.  [CE-META] tol: exact")).tolerance is None


@pytest.mark.parametrize(
    ("docstring", "complaint"),
    [
        (None, "docstring must open with"),
        ("L(x + c·1, y) = L(x, y), but no clause ID.", "docstring must open with"),
        ("L(x + c·1, y) = L(x, y).  [CE-META]", "docstring must open with"),
        ("[CE-META] tol: loss", "docstring must open with"),
        ("L(x + c·1, y) = L(x, y).  [CE-META] tol: no_such_bound", "unknown tolerance key"),
    ],
    ids=["none", "no ID", "no tolerance", "no equation", "unknown tolerance"],
)
def test_the_clause_decorator_rejects_a_malformed_docstring(
    docstring: str | None, complaint: str
) -> None:
    """Every clause of the catalogue was accepted at import; this shows the decorator would have
    refused one without an equation, an ID or a known tolerance key."""
    with pytest.raises(ValueError, match=complaint):
        clause()(_test_stating(docstring))


def test_clause_ids_are_unique_and_every_section_lists_its_clauses() -> None:
    ids = [clause.id for clause in CLAUSES]
    assert len(ids) == len(set(ids))
    for section in CROSS_ENTROPY_SECTIONS:
        declared = {v for v in vars(section).values() if type(v).__name__ == "Clause"}
        assert declared == set(section.CLAUSES), section.__name__


# --- The tolerances tell correct arithmetic from the known bugs -------------------------------


def ratio(actual: torch.Tensor, expected: torch.Tensor, bound: torch.Tensor) -> float:
    return float(((actual.double() - expected).abs() / bound).max())


def test_float32_logits_rounded_to_bfloat16_exceed_the_bound() -> None:
    x = torch.randn(16, 11, generator=torch.Generator().manual_seed(2)) * 3
    target = torch.randint(0, 11, (16,), generator=torch.Generator().manual_seed(3))
    problem = Problem.of(x, target, reduction="none")
    exact, bound = oracle_loss(problem), loss_bound(problem)
    correct = torch.nn.functional.cross_entropy(x, target, reduction="none")
    rounded = torch.nn.functional.cross_entropy(x.bfloat16().float(), target, reduction="none")
    assert ratio(correct, exact, bound) < 0.5
    assert ratio(rounded, exact, bound) > 10


def test_a_softmax_kept_in_bfloat16_exceeds_the_gradient_bound() -> None:
    x = torch.randn(8, 13, generator=torch.Generator().manual_seed(4)) * 2
    target = torch.randint(0, 13, (8,), generator=torch.Generator().manual_seed(5))
    problem = Problem.of(x, target, reduction="sum")
    one = torch.tensor(1.0)
    exact, bound = oracle_gradient(problem, one), gradient_bound(problem, one)
    leaf = x.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(leaf, target, reduction="sum").backward()
    one_hot = torch.nn.functional.one_hot(target, 13)
    kept_in_bf16 = x.softmax(1).bfloat16().float() - one_hot
    assert leaf.grad is not None
    assert ratio(leaf.grad, exact, bound) < 0.5
    assert ratio(kept_in_bf16, exact, bound) > 10


def test_a_running_bfloat16_sum_exceeds_the_mean_bound_where_pytorch_does_not() -> None:
    rows = 4096
    x = torch.randn(rows, 3, generator=torch.Generator().manual_seed(6)).bfloat16()
    target = torch.randint(0, 3, (rows,), generator=torch.Generator().manual_seed(7))
    problem = Problem.of(x, target, reduction="sum")
    exact, bound = oracle_loss(problem), loss_bound(problem)
    per_token = torch.nn.functional.cross_entropy(x, target, reduction="none")
    running = torch.zeros((), dtype=torch.bfloat16)
    for loss in per_token:  # one bfloat16 rounding per token: stalls once the sum is large
        running = running + loss
    pytorch = torch.nn.functional.cross_entropy(x, target, reduction="sum")
    assert ratio(pytorch, exact, bound) < 0.5
    assert ratio(running, exact, bound) > 1


# --- Layouts --------------------------------------------------------------------------------------


def test_every_layout_shows_the_values_through_a_non_contiguous_view() -> None:
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(8))
    target = torch.tensor([3, 1, 4, 1, 5])
    for layout in logit_layouts(rows=5).values():
        shown = layout.view(layout.store(logits))
        values = logits[:1].expand(5, -1) if layout.shared_rows else logits
        assert torch.equal(shown, values) and not shown.is_contiguous(), layout.name
    for layout in target_layouts(rows=5, vocab_size=7).values():
        shown = layout.view(layout.store(target))
        values = target[:1].expand(5) if layout.shared_rows else target
        assert torch.equal(shown, values) and not shown.is_contiguous(), layout.name


# --- Scale: LLM vocabularies and batches past the grid limit ------------------------------------


def test_the_ci_profile_draws_every_llm_vocabulary_and_a_batch_past_65536_rows() -> None:
    """What CE-LARGE-VOCAB and CE-TALL-BATCH draw in a ci run (their own cap on examples): every
    size of the list and an odd one just past each block in every example, and N > 2^16 rows."""
    drawn: list[tuple[tuple[int, ...], int]] = []

    @hypothesis_settings("ci", max_examples=scale.LARGE_VOCAB_EXAMPLES)
    @given(scale.llm_vocabulary_sizes(), scale.tall_batches(dtype="float32"))
    def record(sizes: tuple[int, ...], tall: Batch) -> None:
        drawn.append((sizes, tall.x.shape[0]))

    record()
    assert len(drawn) == min(scale.LARGE_VOCAB_EXAMPLES, scale.TALL_BATCH_EXAMPLES)
    for sizes, rows in drawn:
        assert set(scale.LLM_VOCABULARIES) <= set(sizes) and list(sizes) == sorted(sizes)
        for block in scale.VOCAB_BLOCKS:
            (past,) = [c for c in sizes if block < c < block + 2048]
            assert past % 2 == 1
        assert rows > 2**16


@settings(max_examples=6, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_large_vocab_batches_put_the_largest_logit_in_a_late_block(data: st.DataObject) -> None:
    dtype = data.draw(st.sampled_from(["float32", "bfloat16"]), label="dtype")
    sizes = data.draw(scale.llm_vocabulary_sizes(), label="sizes")
    size = data.draw(st.sampled_from(sizes[1:]), label="size")
    batch = data.draw(scale.large_vocab_batches(vocab_size=size, dtype=dtype), label="batch")
    first_block = max(block for block in (2**14, *scale.VOCAB_BLOCKS) if block < size)
    x = batch.x.double()
    # Strictly larger after rounding to the dtype: an online max grows in a later block.
    assert bool((x[:, first_block:].amax(1) > x[:, :first_block].amax(1)).all())
    assert batch.x.shape[1] == size and batch.x.shape[0] in (1, 2)


@settings(max_examples=4, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_tall_batches_put_most_of_the_loss_where_a_capped_grid_never_reaches(
    data: st.DataObject,
) -> None:
    """A kernel that leaves rows 65,535 and later at zero misses each of their losses, the mean
    and their gradient by more than the bound: by far more in float32 (and each loss in bfloat16,
    by about 50 times: a bfloat16 loss of 2^20 may be off by 2^20·5·2^-8); in bfloat16 the bound
    of a mean over 70,000 rows is itself 41% (the 16-way cascade), so the mean and its gradient
    are over it, not far over. The oracle's row cache sees few distinct rows. float64 stands in
    for the exact values (its error is far below any bound)."""
    dtype = data.draw(st.sampled_from(["float32", "bfloat16"]), label="dtype")
    batch = data.draw(scale.tall_batches(dtype=dtype), label="batch")
    x, y = batch.x, batch.y
    distinct = torch.unique(torch.cat([x.double(), y[:, None].double()], 1), dim=0).shape[0]
    assert distinct <= scale.MOST_POOLED_ROWS + scale.MOST_LATE_ROWS + 2
    dropped = torch.arange(x.shape[0]) >= scale.GRID_LIMIT
    losses = torch.nn.functional.cross_entropy(x.double(), y, reduction="none")
    none = Problem.of(x, y, reduction="none")
    assert ratio(torch.where(dropped, 0.0, losses), losses, loss_bound(none)) > 10
    mean = Problem.of(x, y, reduction="mean")
    far = 10 if dtype == "float32" else 1
    assert ratio(losses[~dropped].sum() / x.shape[0], losses.mean(), loss_bound(mean)) > far
    leaf = x.double().requires_grad_(True)
    torch.nn.functional.cross_entropy(leaf, y).backward()
    assert leaf.grad is not None
    kept = torch.where(dropped[:, None], 0.0, leaf.grad)
    assert ratio(kept, leaf.grad, gradient_bound(mean, torch.tensor(1.0))) > far


@settings(max_examples=6, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_scale_reproducers_rebuild_their_batches_bit_for_bit(data: st.DataObject) -> None:
    dtype = data.draw(st.sampled_from(list(strategies.DTYPES)), label="dtype")
    if data.draw(st.booleans(), label="tall"):
        batch = data.draw(scale.tall_batches(dtype=dtype), label="batch")
    else:
        size = data.draw(st.sampled_from(scale.LLM_VOCABULARIES[:2]), label="size")
        batch = data.draw(scale.large_vocab_batches(vocab_size=size, dtype=dtype), label="batch")
    namespace: dict[str, object] = {}
    exec(with_math_names("import torch\n" + batch.source()), namespace)
    for name, tensor in (("logits", batch.x), ("target", batch.y)):
        rebuilt = namespace[name]
        assert isinstance(rebuilt, torch.Tensor) and rebuilt.dtype == tensor.dtype
        assert torch.equal(rebuilt, tensor)
