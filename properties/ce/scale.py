"""Scale: the sizes at which real kernels switch code paths.

Below some vocabulary size a fused kernel keeps a whole row on chip; above it, it loops over the
vocabulary in blocks (32,768 or 65,536 classes in Liger-Kernel's, flash-attention's and unsloth's
cross-entropy), keeps an online softmax across the blocks (a running maximum m and a running sum
s, rescaled by exp(m_old − m_new) whenever m grows) and pads the last block. It launches one
program per row in a grid whose y and z dimensions stop at 65,535 blocks on CUDA. The general
clauses draw at most 4,096 classes and 8,192 logits per example, where all of that is dead code:

- CE-LARGE-VOCAB: every example sweeps the vocabularies of released language models and one size
  just past each block size, a few rows each, every row's largest logit in a late block;
- CE-TALL-BATCH: more than 65,536 rows of a few classes, the rows from 65,535 on (the ones such a
  grid never reaches) carrying most of the loss, so a kernel that never computes them is off by
  far more than the bound.

Their examples are expensive by design (720,000 to 900,000 logits per sweep; up to 70,000 rows),
so each clause caps its examples per run whatever the profile (``@clause(max_examples=...)``):
Hypothesis runs the simplest example first, then random ones. A tall batch repeats a few
distinct rows, which the oracle's row cache prepares once each.

The two strategies here belong with the others in properties/strategies.py; they use its
recipe machinery (``Drawn``), so a reproducer rebuilds the exact tensors.
"""

from __future__ import annotations

from hypothesis import strategies as st

from properties.ce.calls import draw_upstream, expect_oracle_gradient, expect_oracle_loss
from properties.engine.clause import Trial, clause, supports
from properties.engine.dtypes import torch_dtype
from properties.engine.kernel import KernelUnderTest
from properties.strategies import (
    Batch,
    _build,
    _generator,
    allowed_reductions,
    loss_options,
    seeds,
    targets,
)

# --- Sizes --------------------------------------------------------------------------------------

#: Vocabularies of released models: Llama 2 (32,000), GPT-2 (50,257), Llama 3 (128,256),
#: Qwen2 (151,936) and 2^18 = 262,144 (the 256k vocabularies), each past one or more blocks.
LLM_VOCABULARIES = (32_000, 50_257, 128_256, 151_936, 262_144)
#: Blocks in which kernels loop over the vocabulary (Liger-Kernel, flash-attention, unsloth).
VOCAB_BLOCKS = (32_768, 65_536)
#: A size just past a block is the block plus an odd number of classes up to this: odd, so no
#: power of two divides it, and the last block holds 1 to 2,047 real classes, the rest padding.
MOST_CLASSES_PAST_A_BLOCK = 2_047
#: Up to two rows below this size (a second row catches state carried from row to row), one
#: above: the oracle's cost grows with the logits.
TWO_ROWS_UP_TO = 70_000
#: Values a row draws from before its scale and offset: standard normals rounded to steps of
#: 1/VALUE_STEPS, so a row of 262,144 classes holds at most 1,025 distinct values. The oracle
#: computes exp(x_j − m) once per distinct value: two float32 sweeps against torch took 8.4 s
#: of CPU with every value distinct, 3.8 s on the grid (run_clause in one process). Repeats
#: spare a kernel nothing: its blocks, padding, offsets and online rescaling work on every
#: class whatever the values, and scale and offset still give each value a full significand.
VALUE_STEPS = 64
#: CUDA's limit on the y and z dimensions of a launch grid: a kernel that puts rows there
#: computes rows 0 to 65,534 and never the rest.
GRID_LIMIT = 65_535
#: Rows of a tall batch: past the grid limit and past 2^16 (a 16-bit row index).
TALL_ROWS = (65_537, 70_000)
#: Classes of a tall batch: few, so that the rows, not the vocabulary, are what is large (the
#: oracle's gradient costs per element, repeated rows or not).
TALL_CLASSES = (2, 8)
#: Distinct rows a tall batch repeats (the oracle's row cache computes each once).
MOST_POOLED_ROWS = 16
#: Distinct large-loss rows past the grid limit, besides the first and the last row there.
MOST_LATE_ROWS = 30


def llm_vocabulary_sizes() -> st.SearchStrategy[tuple[int, ...]]:
    """Every size of LLM_VOCABULARIES and one just past each of VOCAB_BLOCKS (32,769 to 34,815
    and 65,537 to 67,583, odd), ascending; the sizes past a block shrink toward a single class
    in the padded block."""
    past_blocks = st.tuples(
        *(
            st.integers(0, MOST_CLASSES_PAST_A_BLOCK // 2).map(
                lambda k, block=block: block + 2 * k + 1
            )
            for block in VOCAB_BLOCKS
        )
    )
    return past_blocks.map(lambda sizes: tuple(sorted(LLM_VOCABULARIES + sizes)))


def late_columns(vocab_size: int) -> tuple[int, int]:
    """Where a row's largest logit goes: from the largest power of two below C to C − 1. Past
    the first 32,768 classes for every C above 32,768, past 65,536 for every C above 65,536; in
    the last, padded block of 32,768 classes for 50,257, 151,936 and the sizes just past a block."""
    return 1 << (vocab_size - 1).bit_length() - 1, vocab_size - 1


# --- Batches ------------------------------------------------------------------------------------


@st.composite
def large_vocab_batches(
    draw: st.DrawFn, *, vocab_size: int, dtype: str, kernel: KernelUnderTest | None = None
) -> Batch:
    """A few rows of ``vocab_size`` classes in ``dtype``: standard-normal values on a grid of
    1/VALUE_STEPS, of their own scale (1/8 to 8) and offset (±64), each row's largest logit 2 to
    16 above the rest in a late block (:func:`late_columns`), so an online softmax must rescale
    its running sum there; targets anywhere, and a reduction the kernel supports."""
    rows = draw(st.integers(1, 2)) if vocab_size <= TWO_ROWS_UP_TO else 1
    options = draw(loss_options(vocab_size=vocab_size, kernel=kernel, options=()))
    target = draw(targets(rows=rows, vocab_size=vocab_size, ignore_index=None))
    first, last = late_columns(vocab_size)
    tops = [draw(st.integers(first, last)) for _ in range(rows)]
    scales = [[2.0 ** draw(st.floats(-3.0, 3.0))] for _ in range(rows)]
    offsets = [[draw(st.floats(-64.0, 64.0))] for _ in range(rows)]
    # A gap of 2 survives rounding to bfloat16, whose spacing is 1 below 256.
    gaps = [draw(st.floats(2.0, 16.0)) for _ in range(rows)]
    lines = [
        f"g = {_generator(draw(seeds()))}",
        f"logits = torch.randn({rows}, {vocab_size}, generator=g, dtype=torch.float64)",
        f"logits = (logits.clamp(-8.0, 8.0) * {VALUE_STEPS}).round() / {VALUE_STEPS}"
        f"  # at most {16 * VALUE_STEPS + 1:,} distinct values a row",
        f"logits = logits * torch.tensor({scales!r}, dtype=torch.float64)"
        f" + torch.tensor({offsets!r}, dtype=torch.float64)",
        f"logits[torch.arange({rows}), torch.tensor({tops})] = logits.amax(1)"
        f" + torch.tensor({gaps!r}, dtype=torch.float64)  # each row's largest, in a late block",
        f"logits = logits.to({torch_dtype(dtype)})",
    ]
    return Batch(_build("logits", lines), target, None, options)


@st.composite
def tall_batches(draw: st.DrawFn, *, dtype: str) -> Batch:
    """65,537 to 70,000 rows (TALL_ROWS) of 2 to 8 classes in ``dtype``: a pool of up to 16
    distinct rows (standard-normal values times 1/4 to 2, random targets: losses of a few nats)
    repeated in turn, and 2 to 32 distinct rows that a grid of GRID_LIMIT = 65,535 blocks never
    reaches (row 65,535, the last row, and up to 30 between) whose target sits 2^20 to 2^24
    below the rest of its row. Those few rows carry most of the total loss, so a kernel that
    leaves them out moves each of their losses, the mean and their gradient by more than the
    bound (by far more, but for the mean in bfloat16, whose bound over 70,000 rows is 41%)."""
    rows = draw(st.integers(*TALL_ROWS))
    vocab = draw(st.integers(*TALL_CLASSES))
    pooled = draw(st.integers(1, MOST_POOLED_ROWS))
    between = rows - GRID_LIMIT - 2
    late = draw(st.integers(0, min(MOST_LATE_ROWS, between)))
    repeats = -(-rows // pooled)
    target = _build(
        "target",
        [
            f"g = {_generator(draw(seeds()))}",
            f"target = torch.randint(0, {vocab}, ({pooled},), generator=g)"
            f".repeat({repeats})[:{rows}]  # a pool of {pooled}, repeated",
        ],
    )
    scale = draw(st.floats(0.25, 2.0))
    exponent = draw(st.integers(20, 24))
    lines = [
        f"g = {_generator(draw(seeds()))}",
        f"pool = torch.randn({pooled}, {vocab}, generator=g, dtype=torch.float64)",
        f"logits = (pool.clamp(-4.0, 4.0) * {scale!r}).repeat({repeats}, 1)[:{rows}]",
        f"late = torch.tensor([{GRID_LIMIT}, {rows - 1}])  # rows a grid of {GRID_LIMIT} misses",
        f"late = torch.cat([late, {GRID_LIMIT + 1}"
        f" + torch.randperm({between}, generator=g)[:{late}]])",
        f"logits[late] = torch.randn({late + 2}, {vocab}, generator=g, dtype=torch.float64)",
        f"logits[late, target[late]] = logits[late].amin(1) - {2.0**exponent!r}"
        f"  # losses above 2^{exponent}",
        f"logits = logits.to({torch_dtype(dtype)})",
    ]
    logits = _build("logits", lines, {"target": target.value})
    return Batch(logits, target)


# --- The clauses --------------------------------------------------------------------------------

#: Examples per run: the simplest, then random ones. One CE-LARGE-VOCAB example is a sweep of
#: seven sizes, 720,000 to 900,000 logits.
LARGE_VOCAB_EXAMPLES = 2
TALL_BATCH_EXAMPLES = 2


@clause(max_examples=LARGE_VOCAB_EXAMPLES)
def large_vocabularies_keep_loss_and_gradient(trial: Trial) -> None:
    """ℓ_i = lse(x_i) − x_{i,y_i} at C = 32,000, 50,257, 128,256, 151,936 and 262,144 classes and just past 32,768 and 65,536, and ∂L/∂x_i = a_i·(softmax(x_i) − onehot(y_i)) at one of them, every row's largest logit in a late block.  [CE-LARGE-VOCAB] tol: gradient"""
    sizes = trial.data.draw(llm_vocabulary_sizes(), label="vocabulary sizes")
    # The loss at every size, the gradient at one of them: the oracle's gradient costs about as
    # much again per logit as its loss, and a sweep is 720,000 to 900,000 logits.
    with_gradient = trial.data.draw(st.sampled_from(sizes), label="the size whose gradient")
    for size in sizes:
        batch = trial.data.draw(
            large_vocab_batches(vocab_size=size, dtype=trial.dtype, kernel=trial.kernel),
            label=f"batch (C = {size})",
        )
        if size == with_gradient and trial.kernel.spec.differentiable:
            expect_oracle_gradient(trial, batch, draw_upstream(trial, batch))
        else:
            expect_oracle_loss(trial, batch)


@clause(applies=supports("mean"), max_examples=TALL_BATCH_EXAMPLES)
def tall_batches_reach_every_row(trial: Trial) -> None:
    """L_none[i] = lse(x_i) − x_{i,y_i} for every row i < N, and L_mean and ∂L_mean/∂x over all N rows, for N = 65,537 to 70,000 rows (past CUDA's grid limit of 65,535).  [CE-TALL-BATCH] tol: loss"""
    batch = trial.data.draw(tall_batches(dtype=trial.dtype), label="batch")
    if "none" in allowed_reductions(trial.kernel, ("none",)):
        expect_oracle_loss(trial, batch.with_options(reduction="none"))
    mean = batch.with_options(reduction="mean") if "reduction" in trial.kernel.accepts else batch
    if trial.kernel.spec.differentiable:
        expect_oracle_gradient(trial, mean, draw_upstream(trial, mean))
    else:
        expect_oracle_loss(trial, mean)


CLAUSES = (large_vocabularies_keep_loss_and_gradient, tall_batches_reach_every_row)
