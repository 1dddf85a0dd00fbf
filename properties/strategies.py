"""Every strategy of the property suite: the inputs a correct loss must get right.

The strategies aim at the hard places, not at typical inputs: vocabularies of 1 to a few
thousand classes (odd sizes and sizes next to powers of two, where tiled kernels keep a tail),
batches of one row to thousands, logit scales from 1e-3 to the dtype's largest finite value,
rows of very different scales in one batch, near-ties, one dominant logit, masked (-inf)
logits, every target ignored, an ignore_index of any value, inputs handed over as views
(transposed, sliced, offset, expanded: :func:`layouts`), and batches cut into ragged parts
(:func:`splits`).

Every tensor is drawn as float64 values and rounded through torch to the dtype under test, so
the kernel and the oracle see identical inputs. Each drawn tensor carries the Python that
rebuilds it exactly (:class:`Drawn`): small tensors as literals, large ones as a seeded torch
construction, which is also how they are built here, so the reproducer and the test input can
never disagree.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from types import CodeType
from typing import Any, TypeVar, cast

import torch
from hypothesis import strategies as st

from properties.engine.defaults import DTYPES as DTYPE_NAMES
from properties.engine.dtypes import largest_finite, torch_dtype
from properties.engine.kernel import KernelUnderTest
from properties.engine.snippet import number

_Builder = TypeVar("_Builder", bound=Callable[..., Any])

#: The dtypes the suite knows, by the names the checker uses (properties/engine/defaults.py).
DTYPES: Mapping[str, torch.dtype] = {name: torch_dtype(name) for name in DTYPE_NAMES}
REDUCTIONS = ("mean", "sum", "none")
DEFAULT_IGNORE_INDEX = -100
#: Tensors with at most this many elements are drawn element by element (so Hypothesis can
#: shrink each value) and printed as literals in reproducers.
LITERAL_LIMIT = 64
#: What one example may cost the oracle, in logits: it spends a few microseconds per logit and
#: about as much per row as on ROW_COST logits (measured: ~4.5 µs per logit and ~100 µs per
#: row for the loss, 2-3 times that for the gradient), and the quick profile must finish in
#: about two minutes on two cores. N·(C + ROW_COST) stays within the budget.
LOGITS_PER_EXAMPLE = 8192
ROW_COST = 24
#: |z| of the standard-normal base values stays below this (for 4096 draws, P(|z| > 8) ≈ 5e-12;
#: literal values are drawn within ±4), so a row's spread is at most 2 · 8 · scale.
_BASE_SPREAD = 8.0


# --- Building each strategy once ---------------------------------------------------------------
# The clauses ask for their strategies inside every example (draw_batch calls batches(...), which
# draws batch_shapes(...), loss_options(...), targets(...)...). Hypothesis validates a strategy
# object and works out its properties (is_empty, has_reusable_values, its label) the first time
# it is drawn from: on fresh objects, every example, that was over a quarter of the time spent
# drawing (the CPU time of drawing the batches of eight clauses went from 17.4 s to 12.4 s). So the
# builders below remember the strategy they built for each set of arguments, and the fixed
# choices are module constants: the same strategies, drawing the same values, built once.

#: Strategies remembered per builder; beyond it the oldest is forgotten (shapes vary per example).
_STRATEGIES_KEPT = 2048


def _argument_key(value: Any) -> Hashable:
    """What identifies an argument of a builder: its type and value (1, 1.0 and True, or 0.0 and
    -0.0, build different strategies), a kernel by what it declares (a strategy never calls it).
    TypeError for an argument that is not hashable (a list, a drawn tensor)."""
    if isinstance(value, tuple):
        return (tuple, tuple(_argument_key(item) for item in value))
    if isinstance(value, float):
        return (float, value.hex())
    if isinstance(value, KernelUnderTest):
        return ("kernel", _kernel_declarations(value))
    hash(value)
    return (type(value), value)


def _kernel_declarations(kernel: KernelUnderTest) -> Hashable:
    """Everything a kernel declares, as a key; not its callable."""
    spec = kernel.spec
    declared = tuple(
        (f.name, tuple(sorted(value.items())) if isinstance(value, Mapping) else value)
        for f in dataclasses.fields(spec)
        if f.name not in ("fn", "name")
        for value in [getattr(spec, f.name)]
    )
    return (kernel.accepts, kernel.contract.name, kernel.declared, declared)


def _never_called(*arguments: Any, **options: Any) -> Any:
    raise AssertionError("a strategy does not call the kernel")


def _without_callable(value: Any) -> Any:
    """A kernel as a remembered strategy holds it: its declarations without its callable (a
    clause's kernel wraps a recorder that holds the inputs of its latest call); other values as
    they are."""
    if not isinstance(value, KernelUnderTest):
        return value
    return replace(value, spec=replace(value.spec, fn=_never_called, name=value.name))


def _built_once(builder: _Builder) -> _Builder:
    """``builder``, remembering the strategy it returns for each set of arguments. Arguments that
    are not hashable (a list, a drawn tensor) build a fresh strategy, as before."""
    kept: dict[Hashable, Any] = {}

    @functools.wraps(builder)
    def build(*arguments: Any, **options: Any) -> Any:
        try:
            key = (
                tuple(_argument_key(a) for a in arguments),
                tuple((name, _argument_key(value)) for name, value in options.items()),
            )
            strategy = kept.get(key)
        except TypeError:
            return builder(*arguments, **options)
        if strategy is None:
            arguments = tuple(_without_callable(a) for a in arguments)
            options = {name: _without_callable(value) for name, value in options.items()}
            strategy = builder(*arguments, **options)
            if len(kept) >= _STRATEGIES_KEPT:
                del kept[next(iter(kept))]
            kept[key] = strategy
        return strategy

    return cast("_Builder", build)


@_built_once
def _sampled_from(values: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    """``st.sampled_from(list(values))``, built once per tuple of values."""
    return st.sampled_from(list(values))


@_built_once
def _just(value: Any) -> st.SearchStrategy[Any]:
    """``st.just(value)``, built once per value."""
    return st.just(value)


_SIGNS = st.sampled_from([1.0, -1.0])
_COIN = st.booleans()


# --- Tensors that carry their own reproducer ---------------------------------------------------


@dataclass(frozen=True)
class Drawn:
    """A drawn tensor and the Python statements that rebuild it exactly.

    ``recipe`` assigns ``name`` using ``torch`` and names drawn before it (e.g. ``target``).
    """

    name: str
    value: torch.Tensor
    recipe: str
    #: The tensors the recipe uses besides torch (e.g. ``target``), by name.
    scope: Mapping[str, Any] = field(default_factory=dict)

    def source(self) -> str:
        """The statements to put in a reproducer: a literal when small, else the recipe."""
        if self.value.numel() <= LITERAL_LIMIT:
            return f"{self.name} = {tensor_literal(self.value)}"
        return self.recipe

    def then(self, *lines: str, scope: Mapping[str, Any] | None = None) -> Drawn:
        """This tensor, changed by more statements (which may use the names in ``scope``)."""
        return _build(self.name, [self.recipe, *lines], {**self.scope, **(scope or {})})


def tensor_literal(tensor: torch.Tensor) -> str:
    """A ``torch.tensor(...)`` expression that rebuilds ``tensor`` bit for bit."""
    if tensor.is_floating_point():
        values = _float_literals(tensor.detach().cpu().double().tolist())
        return f"torch.tensor({values}, dtype={tensor.dtype})"
    return f"torch.tensor({tensor.tolist()})"


def _float_literals(values: Any) -> str:
    # Written as every reproducer writes numbers (engine.snippet.number: inf, not float("inf")).
    if isinstance(values, list):
        return "[" + ", ".join(_float_literals(v) for v in values) + "]"
    return number(values)


def _build(name: str, lines: Sequence[str], scope: Mapping[str, Any] | None = None) -> Drawn:
    """Run the recipe: the tensor under test is whatever the reproducer would build."""
    recipe = "\n".join(lines)
    namespace: dict[str, Any] = {"torch": torch, **(scope or {})}
    for code in _compiled(recipe, f"<recipe of {name}>"):
        exec(code, namespace)
    return Drawn(name=name, value=namespace[name], recipe=recipe, scope=dict(scope or {}))


#: Compiled recipe lines by text and file name: most lines recur from example to example
#: (``logits = logits.to(torch.bfloat16)``), and Drawn.then runs its recipe again.
_COMPILED_LINES: dict[tuple[str, str], CodeType] = {}
_COMPILED_LINES_KEPT = 4096


def _compiled(recipe: str, filename: str) -> list[CodeType]:
    """The recipe compiled, one code object per line, each numbered as its line in the recipe.
    Run in order in one namespace they do what the whole recipe does: each line compiles on its
    own, so none continues onto the next. A recipe with a statement over several lines is
    compiled whole."""
    codes = []
    for position, line in enumerate(recipe.split("\n"), start=1):
        code = _COMPILED_LINES.get((line, filename))
        if code is None:
            try:
                code = compile(line, filename, "exec")
            except SyntaxError:
                return [compile(recipe, filename, "exec")]
            if len(_COMPILED_LINES) >= _COMPILED_LINES_KEPT:
                del _COMPILED_LINES[next(iter(_COMPILED_LINES))]
            _COMPILED_LINES[line, filename] = code
        codes.append(code if position == 1 else code.replace(co_firstlineno=position))
    return codes


def _generator(seed: int) -> str:
    return f"torch.Generator().manual_seed({seed})"


@_built_once
def seeds() -> st.SearchStrategy[int]:
    """Seeds of torch.Generator: any 32-bit unsigned integer."""
    return st.integers(min_value=0, max_value=2**32 - 1)


#: Class weights lie in [1/16, 16]; logits leave room for losses scaled by the largest.
LARGEST_CLASS_WEIGHT = 16.0


# --- Sizes ------------------------------------------------------------------------------------


def _near_powers_of_two(low: int, high: int) -> list[int]:
    sizes = {v for k in range(1, 17) for v in (2**k - 1, 2**k, 2**k + 1)}
    return sorted(v for v in sizes if low <= v <= high)


@_built_once
def vocab_sizes(*, min_size: int = 1, max_size: int = 4096) -> st.SearchStrategy[int]:
    """Vocabulary sizes C: small ones (they shrink well), sizes next to powers of two (a tile
    and a tail of one), and anything in between (odd sizes break vector-width assumptions)."""
    return _sizes(min_size, max_size)


@_built_once
def batch_sizes(*, min_size: int = 1, max_size: int = 1024) -> st.SearchStrategy[int]:
    """Numbers of rows N: small ones, sizes next to powers of two, anything, and the most allowed."""
    return _sizes(min_size, max_size) | st.just(max_size)


@_built_once
def _sizes(low: int, high: int) -> st.SearchStrategy[int]:
    if low > high:
        raise ValueError(f"empty size range [{low}, {high}]")
    options = [st.integers(low, min(high, low + 15)), st.integers(low, high)]
    near_powers = _near_powers_of_two(low, high)
    if near_powers:
        options.insert(1, st.sampled_from(near_powers))
    return st.one_of(options)


# --- Values -----------------------------------------------------------------------------------


_SCALE_PLACES = st.sampled_from(["between", "smallest", "largest"])


@_built_once
@st.composite
def logit_scales(
    draw: st.DrawFn, *, dtype: str, min_scale: float = 1e-3, max_scale: float | None = None
) -> float:
    """Positive scales, log-uniform from ``min_scale`` to ``max_scale`` (the dtype's largest
    finite value by default), and both ends themselves; shrinks toward 1."""
    top = largest_finite(dtype) if max_scale is None else max_scale
    top = max(min(top, largest_finite(dtype)), min_scale)
    where = draw(_SCALE_PLACES)
    if where == "smallest":
        return min_scale
    if where == "largest":
        return top
    return min(2.0 ** draw(st.floats(math.log2(min_scale), math.log2(top))), top)


_OFFSET_SIZES = st.sampled_from(["none", "moderate", "far"])


@_built_once
@st.composite
def logit_offsets(draw: st.DrawFn, *, max_magnitude: float, far: bool = False) -> float:
    """A shift added to a row: none, moderate, or up to ``max_magnitude`` (near the dtype's
    limit a row's logits become exact ties after rounding: the near-tie regime). ``far``:
    always within 2^20 of ``max_magnitude``."""
    if far:
        sign = draw(_SIGNS)
        top = math.log2(max_magnitude)
        return sign * 2.0 ** draw(st.floats(top - 20.0, top))
    moderate = min(64.0, max_magnitude)
    size = draw(_OFFSET_SIZES)
    if size == "none":
        return 0.0
    if size == "moderate" or max_magnitude <= 64.0:
        return draw(st.floats(-moderate, moderate))
    sign = draw(_SIGNS)
    return sign * 2.0 ** draw(st.floats(6.0, math.log2(max_magnitude)))


@_built_once
@st.composite
def dominance_gaps(draw: st.DrawFn, *, min_gap: float = 2.0, max_gap: float) -> float:
    """How far one logit stands from the rest: from a clear winner to one whose rivals'
    probabilities underflow (a gap above ~88 puts p below float32's smallest normal)."""
    top = max(max_gap, min_gap)
    return min(2.0 ** draw(st.floats(math.log2(min_gap), math.log2(top))), top)


@_built_once
def ignore_indices(*, vocab_size: int) -> st.SearchStrategy[int]:
    """Any ignore_index: the default -100, other negatives, 0, inside the vocabulary, beyond it."""
    return st.one_of(
        st.just(DEFAULT_IGNORE_INDEX),
        st.integers(min_value=-(2**31), max_value=-1),
        st.just(0),
        st.integers(min_value=0, max_value=max(vocab_size - 1, 0)),
        st.integers(min_value=vocab_size, max_value=2**31),
    )


@_built_once
def label_smoothings() -> st.SearchStrategy[float]:
    return st.one_of(st.just(0.1), st.floats(min_value=0.0, max_value=1.0))


@_built_once
def z_loss_scales() -> st.SearchStrategy[float]:
    return st.one_of(st.just(1e-4), st.floats(min_value=0.0, max_value=1.0))


@_built_once
def softcaps() -> st.SearchStrategy[float]:
    return st.one_of(st.just(30.0), st.floats(min_value=0.5, max_value=100.0))


@_built_once
def ignored_fractions() -> st.SearchStrategy[float]:
    """The share of ignored targets: none, some, most, or (one draw in eight) every one: the
    empty mean, which has a clause of its own."""
    return st.sampled_from([0.0, 0.25, 0.5, 0.75, 0.0, 0.25, 0.5, 1.0])


# --- Tensors ----------------------------------------------------------------------------------


@_built_once
@st.composite
def targets(
    draw: st.DrawFn,
    *,
    rows: int,
    vocab_size: int,
    ignore_index: int | None = DEFAULT_IGNORE_INDEX,
    ignored: st.SearchStrategy[float] | None = None,
    name: str = "target",
) -> Drawn:
    """Targets in [0, C); a drawn share of them set to ``ignore_index`` (None: none ignored)."""
    fraction = (
        0.0 if ignore_index is None else draw(ignored_fractions() if ignored is None else ignored)
    )
    if rows <= LITERAL_LIMIT:
        # Hypothesis picks which targets are ignored; unless all are, one stays counted.
        ignored_rows = [fraction == 1.0 or (fraction > 0.0 and draw(_COIN)) for _ in range(rows)]
        if fraction < 1.0:
            ignored_rows[draw(st.integers(0, rows - 1))] = False
        target_class = st.integers(0, vocab_size - 1)
        values = [ignore_index if ignored else draw(target_class) for ignored in ignored_rows]
        return _build(name, [f"{name} = torch.tensor({values}, dtype=torch.long)"])
    g = _generator(draw(seeds()))
    lines = [f"g = {g}", f"{name} = torch.randint(0, {vocab_size}, ({rows},), generator=g)"]
    if fraction > 0.0:
        lines.append(f"{name}[torch.rand({rows}, generator=g) < {fraction}] = {ignore_index}")
    return _build(name, lines)


@dataclass(frozen=True)
class _RowFamily:
    """Rows that share a scale and an offset; a batch holds one to three families."""

    scale: float
    offset: float


@_built_once
def masked_fractions(*, always: bool = False) -> st.SearchStrategy[float]:
    """The share of -inf logits (masked vocabulary): none (one draw in two), half, most, or
    (one draw in eight) all but the target: such a row has loss 0 and gradient 0, which hide
    every scale bug, so it must not crowd out the rest. ``always``: never none; half, most or
    all but the target in equal shares (for the clauses about masking itself)."""
    if always:
        return st.sampled_from([0.5, 0.9, 1.0])
    return st.sampled_from([0.0, 0.5, 0.0, 0.9, 0.0, 0.5, 0.0, 1.0])


#: Where a dominant logit may stand: nowhere, on one column for every row, on each row's
#: target (a loss near 0), or the target far *below* the row (p(target) may underflow).
DOMINANCE = ("nowhere", "column", "target", "below")


@st.composite
def logits(
    draw: st.DrawFn,
    *,
    rows: int,
    vocab_size: int,
    dtype: str,
    target: Drawn | None = None,
    min_scale: float = 1e-3,
    max_scale: float | None = None,
    far: bool = False,
    mixed_scales: bool = True,
    dominance: Sequence[str] = DOMINANCE,
    min_gap: float = 2.0,
    ties: bool = True,
    masked: st.SearchStrategy[float] | None = None,
    headroom: float | None = None,
    max_offset: float | None = None,
    name: str = "logits",
) -> Drawn:
    """Logits (rows, C) in ``dtype``: scaled standard-normal values in one to three row
    families of their own scale and offset (``far``: every offset near the dtype's limit),
    optionally a dominant logit (see DOMINANCE) ``min_gap`` or more away, exact ties, and a
    share of -inf entries drawn from ``masked`` (never on a row's target column). Row offsets
    reach half the dtype's largest value unless ``max_offset`` says less.

    Scales and gaps stay below largest/headroom (64·rows by default) so that no loss, sum or
    gradient can overflow: a correct kernel must then return finite values, and an overflow is
    a finding.
    """
    largest = largest_finite(dtype)
    cap = largest / (headroom or 64.0 * rows)
    top = cap if max_scale is None else min(max_scale, cap)
    family_count = draw(st.integers(1, 3)) if mixed_scales and rows > 1 else 1
    families = [
        _RowFamily(
            scale=draw(logit_scales(dtype=dtype, min_scale=min(min_scale, top), max_scale=top)),
            offset=draw(logit_offsets(max_magnitude=max_offset or largest / 2, far=far)),
        )
        for _ in range(family_count)
    ]
    # Every structural choice is drawn before the values, so that when Hypothesis shrinks the
    # shape the choices after it keep their meaning.
    patterns: list[str] = []
    if ties and vocab_size > 1 and draw(_COIN):
        tied = draw(st.integers(2, vocab_size))
        patterns.append(f"{name}[:, 1:{tied}] = {name}[:, :1]  # exact ties")
    where = draw(_sampled_from(tuple(dominance)))
    if where != "nowhere":
        gap = draw(dominance_gaps(min_gap=min_gap, max_gap=cap))
        every_row = f"torch.arange({rows})"
        if where == "column":
            column = draw(st.integers(0, vocab_size - 1))
            patterns.append(f"{name}[:, {column}] += {gap!r}  # one dominant class")
        elif where == "target" and target is not None:
            patterns.append(f"{name}[{every_row}, {_kept_column(target, vocab_size)}] += {gap!r}")
        elif where == "below" and target is not None:
            kept = _kept_column(target, vocab_size)
            patterns.append(f"{name}[{every_row}, {kept}] = {name}.amin(1) - {gap!r}")
    fraction = 0.0 if masked is None or target is None or vocab_size == 1 else draw(masked)
    if fraction > 0.0:
        assert target is not None
        patterns += [
            f"masked = torch.rand({rows}, {vocab_size}, generator=g) < {fraction}",
            f"masked[torch.arange({rows}), {_kept_column(target, vocab_size)}] = False",
            f'{name}[masked] = float("-inf")',
        ]
    lines = _base_values(draw, rows, vocab_size, name)
    lines += _row_families(draw, families, rows, name)
    lines += patterns
    lines.append(f"{name} = {name}.to({torch_dtype(dtype)})")
    scope = {} if target is None else {target.name: target.value}
    return _build(name, lines, scope)


def _kept_column(target: Drawn, vocab_size: int) -> str:
    """Each row's target column (any column for ignored rows, whose value may lie outside [0, C))."""
    return f"{target.name}.reshape(-1).clamp(0, {vocab_size - 1})"


#: Base values of logits drawn element by element (a standard normal stays within ±4 all but
#: 0.006 % of the time).
_LITERAL_VALUES = st.floats(-4.0, 4.0, allow_subnormal=False)


def _base_values(draw: st.DrawFn, rows: int, vocab_size: int, name: str) -> list[str]:
    seed = draw(seeds())
    lines = [f"g = {_generator(seed)}"]
    if rows * vocab_size <= LITERAL_LIMIT:
        # Element by element, so Hypothesis can shrink each value toward a simple one.
        values = [[draw(_LITERAL_VALUES) for _ in range(vocab_size)] for _ in range(rows)]
        lines.append(f"{name} = torch.tensor({values!r}, dtype=torch.float64)")
    else:
        lines.append(
            f"{name} = torch.randn({rows}, {vocab_size}, generator=g, dtype=torch.float64)"
        )
        lines.append(f"{name} = {name}.clamp({-_BASE_SPREAD}, {_BASE_SPREAD})")
    return lines


def _row_families(
    draw: st.DrawFn, families: Sequence[_RowFamily], rows: int, name: str
) -> list[str]:
    if len(families) == 1:
        family = families[0]
        return [f"{name} = {name} * {family.scale!r} + {family.offset!r}"]
    scales = [f.scale for f in families]
    offsets = [f.offset for f in families]
    if rows <= LITERAL_LIMIT:
        family_index = st.integers(0, len(families) - 1)
        assignment = [draw(family_index) for _ in range(rows)]
        family_of_row = f"torch.tensor({assignment})"
    else:
        family_of_row = f"torch.randint(0, {len(families)}, ({rows},), generator=g)"
    return [
        f"family = {family_of_row}  # rows of very different scales",
        f"{name} = {name} * torch.tensor({scales!r}, dtype=torch.float64)[family, None]"
        f" + torch.tensor({offsets!r}, dtype=torch.float64)[family, None]",
    ]


_EQUAL_WEIGHTS = st.sampled_from([0.5, 3.0, 1.0])


@_built_once
@st.composite
def class_weights(draw: st.DrawFn, *, vocab_size: int, dtype: str, name: str = "weight") -> Drawn:
    """Positive class weights in ``dtype`` (torch requires the logits' dtype): all equal, or
    log-uniform in [1/16, LARGEST_CLASS_WEIGHT = 16]. Equal weights of 1 come last: they hide a
    weighted mean divided by the number of rows, so a failure should not shrink to them."""
    if draw(_COIN):
        constant = draw(_EQUAL_WEIGHTS)
        lines = [f"{name} = torch.full(({vocab_size},), {constant!r}, dtype={torch_dtype(dtype)})"]
        return _build(name, lines)
    exponent = math.log2(LARGEST_CLASS_WEIGHT)
    if vocab_size <= LITERAL_LIMIT:
        exponents = st.floats(-exponent, exponent)
        values = [2.0 ** draw(exponents) for _ in range(vocab_size)]
        lines = [f"{name} = torch.tensor({values!r}, dtype=torch.float64)"]
    else:
        lines = [
            f"g = {_generator(draw(seeds()))}",
            f"{name} = torch.exp2(torch.rand({vocab_size}, generator=g, dtype=torch.float64)"
            f" * {2 * exponent!r} - {exponent!r})",
        ]
    lines.append(f"{name} = {name}.to({torch_dtype(dtype)})")
    return _build(name, lines)


@_built_once
@st.composite
def upstream_gradients(
    draw: st.DrawFn, *, rows: int | None, dtype: str, name: str = "grad_output"
) -> Drawn:
    """The gradient flowing into the loss, in ``dtype``: a scalar (rows=None, for mean and sum)
    or one value per token (reduction="none"): 1, or non-uniform values of either sign."""
    shape = () if rows is None else (rows,)
    size = 1 if rows is None else rows
    if size <= LITERAL_LIMIT:
        values = [draw(_upstream_values()) for _ in range(size)]
        literal = values[0] if rows is None else values
        lines = [f"{name} = torch.tensor({literal!r}, dtype=torch.float64)"]
    else:
        lines = [
            f"g = {_generator(draw(seeds()))}",
            f"{name} = (torch.rand({rows}, generator=g, dtype=torch.float64) - 0.5) * 8",
        ]
    lines.append(f"{name} = {name}.reshape({shape}).to({torch_dtype(dtype)})")
    return _build(name, lines)


@_built_once
@st.composite
def _upstream_values(draw: st.DrawFn) -> float:
    if draw(_COIN):
        return 1.0
    return draw(_SIGNS) * draw(st.floats(2.0**-8, 4.0))


@_built_once
@st.composite
def row_permutations(draw: st.DrawFn, *, rows: int, name: str = "order") -> Drawn:
    """A permutation of ``rows`` row indices (a LongTensor)."""
    if rows <= LITERAL_LIMIT:
        order = draw(st.permutations(range(rows)))
        return _build(name, [f"{name} = torch.tensor({order}, dtype=torch.long)"])
    return _build(name, [f"{name} = torch.randperm({rows}, generator={_generator(draw(seeds()))})"])


@_built_once
@st.composite
def row_masks(draw: st.DrawFn, *, rows: int, name: str = "rows") -> Drawn:
    """A boolean mask over ``rows`` rows, with at least one row set."""
    if rows <= LITERAL_LIMIT:
        mask = [draw(_COIN) for _ in range(rows)]
        mask[draw(st.integers(0, rows - 1))] = True
        return _build(name, [f"{name} = torch.tensor({mask})"])
    g = _generator(draw(seeds()))
    first = draw(st.integers(0, rows - 1))
    return _build(
        name, [f"{name} = torch.rand({rows}, generator={g}) < 0.5", f"{name}[{first}] = True"]
    )


@_built_once
def splits(
    *, rows: int, min_parts: int = 1, max_parts: int | None = None
) -> st.SearchStrategy[list[tuple[int, int]]]:
    """Ways to cut ``rows`` consecutive rows into non-empty parts, as (start, stop) pairs in
    order: from ``min_parts`` to ``max_parts`` parts (to ``rows`` by default, and never more than
    ``rows``). Ragged on purpose: a part may hold one row or all but one. The cuts are drawn as a
    set of row indices, so a failure shrinks toward fewer cuts, each at a smaller index."""
    most = rows if max_parts is None else max_parts
    if not 1 <= min_parts <= min(most, rows):
        raise ValueError(f"cannot cut {rows} rows into {min_parts} to {most} parts")
    if rows == 1 or most == 1:
        return st.just([(0, rows)])
    cuts = st.sets(st.integers(1, rows - 1), min_size=min_parts - 1, max_size=most - 1)
    return cuts.map(lambda chosen: list(pairwise([0, *sorted(chosen), rows])))


# --- Layouts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """How a tensor sits in memory, as Python: ``store_source`` makes ``{var}_storage`` from
    the values in ``{var}``, ``view_source`` makes ``{var}`` a view of it. The same statements
    build the test's tensors and the reproducer's."""

    name: str
    store_source: str
    view_source: str
    #: True when every row reads the same stored row (stride 0).
    shared_rows: bool = False

    def store(self, values: torch.Tensor) -> torch.Tensor:
        return _run_layout(self.store_source, {"x": values})["x_storage"]

    def view(self, storage: torch.Tensor) -> torch.Tensor:
        return _run_layout(self.view_source, {"x_storage": storage})["x"]


def _run_layout(source: str, names: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    namespace: dict[str, Any] = {"torch": torch, **names}
    exec(source.format(var="x"), namespace)
    return namespace


_NAN = "float('nan')"
CONTIGUOUS = Layout("contiguous", "{var}_storage = {var}", "{var} = {var}_storage")


def logit_layouts(*, rows: int) -> dict[str, Layout]:
    """Every way the suite lays out logits (rows, C) besides contiguously; the entries a view
    skips hold NaN, so a kernel that assumes contiguous rows reads them and fails loudly."""
    return {
        "transposed": Layout(
            "transposed", "{var}_storage = {var}.t().contiguous()", "{var} = {var}_storage.t()"
        ),
        "sliced": Layout(
            "sliced (every other column)",
            f"{{var}}_storage = torch.full(({{var}}.shape[0], 2 * {{var}}.shape[1]), {_NAN}, "
            "dtype={var}.dtype)\n{var}_storage[:, ::2] = {var}",
            "{var} = {var}_storage[:, ::2]",
        ),
        "offset": Layout(
            "offset (a window of a larger tensor)",
            f"{{var}}_storage = torch.full(({{var}}.shape[0] + 1, {{var}}.shape[1] + 3), {_NAN}, "
            "dtype={var}.dtype)\n{var}_storage[1:, 2:-1] = {var}",
            "{var} = {var}_storage[1:, 2:-1]",
        ),
        "strided rows": Layout(
            "strided rows (every other row)",
            f"{{var}}_storage = torch.full((2 * {{var}}.shape[0], {{var}}.shape[1]), {_NAN}, "
            "dtype={var}.dtype)\n{var}_storage[::2] = {var}",
            "{var} = {var}_storage[::2]",
        ),
        "expanded": _expanded(rows),
    }


def target_layouts(*, rows: int, vocab_size: int) -> dict[str, Layout]:
    """Every way the suite lays out targets (rows,) besides contiguously; skipped entries hold a
    class that does not exist, so reading one is an error, not a quiet mistake."""
    missing_class = vocab_size + 7
    return {
        "sliced": Layout(
            "sliced (every other entry)",
            f"{{var}}_storage = torch.full((2 * {{var}}.shape[0],), {missing_class})\n"
            "{var}_storage[::2] = {var}",
            "{var} = {var}_storage[::2]",
        ),
        "expanded": _expanded(rows),
    }


def _expanded(rows: int) -> Layout:
    """One stored row (or target) read by every row: stride 0."""
    return Layout(
        "expanded (stride 0)",
        "{var}_storage = {var}[:1].clone()",
        f"{{var}} = {{var}}_storage.expand({rows}, *{{var}}_storage.shape[1:])",
        shared_rows=True,
    )


@_built_once
@st.composite
def layouts(draw: st.DrawFn, *, rows: int, vocab_size: int) -> tuple[Layout, Layout]:
    """A layout for the logits (rows, C) and one for the targets, at least one not contiguous."""
    for_logits = logit_layouts(rows=rows)
    for_targets = target_layouts(rows=rows, vocab_size=vocab_size)
    logits_name = draw(_sampled_from(("contiguous", *for_logits)))
    target_choices = (
        ["contiguous", *for_targets] if logits_name != "contiguous" else list(for_targets)
    )
    target_name = draw(_sampled_from(tuple(target_choices)))
    return for_logits.get(logits_name, CONTIGUOUS), for_targets.get(target_name, CONTIGUOUS)


# --- Batches ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """One input to a loss kernel: logits (..., C), targets (...), and the keyword options.

    The suite's one batch of tensors: every clause draws its input as one, and each tensor in
    it carries the Python that rebuilds it (:class:`Drawn`). Two other batches are kept apart
    on purpose: ``properties.ce.problem.Problem`` is what the oracle and the bounds see of a
    call (float64 values of whatever tensors the kernel was handed: a view, a slice, shifted
    logits), and ``properties.oracle._batches.Batch`` is plain Python, for the oracle's own
    tests, which run where torch is not installed.
    """

    logits: Drawn
    target: Drawn
    weight: Drawn | None = None
    #: Keywords besides weight, under the suite's names (reduction, ignore_index, label_smoothing,
    #: z_loss, softcap); an absent keyword takes contract 2's default.
    options: Mapping[str, Any] = field(default_factory=dict)
    #: Other drawn tensors the logits' recipe uses (rebuilt before the logits in a reproducer).
    needs: tuple[Drawn, ...] = ()

    @property
    def x(self) -> torch.Tensor:
        return self.logits.value

    @property
    def y(self) -> torch.Tensor:
        return self.target.value

    @property
    def dtype(self) -> str:
        return str(self.x.dtype).removeprefix("torch.")

    @property
    def vocab_size(self) -> int:
        return self.x.shape[-1]

    @property
    def reduction(self) -> str:
        return str(self.options.get("reduction", "mean"))

    @property
    def ignore_index(self) -> int:
        return int(self.options.get("ignore_index", DEFAULT_IGNORE_INDEX))

    @property
    def counted(self) -> torch.Tensor:
        """Which targets count (the others equal ignore_index)."""
        return self.y != self.ignore_index

    def keywords(self) -> dict[str, Any]:
        """The keywords to pass to the kernel (weight as a tensor)."""
        keywords = dict(self.options)
        if self.weight is not None:
            keywords["weight"] = self.weight.value
        return keywords

    def with_options(self, **changes: Any) -> Batch:
        return replace(self, options={**self.options, **changes})

    def without(self, *options: str) -> Batch:
        return replace(self, options={k: v for k, v in self.options.items() if k not in options})

    def source(self) -> str:
        """Python statements that rebuild this batch's tensors."""
        drawn = [self.target, *self.needs, self.logits]
        drawn += [self.weight] if self.weight is not None else []
        return "\n".join(d.source() for d in drawn)

    def describe(self) -> str:
        parts = [f"logits {tuple(self.x.shape)} {self.dtype}", f"target {tuple(self.y.shape)}"]
        parts += [f"{k}={v!r}" for k, v in self.options.items()]
        if self.weight is not None:
            parts.append("weight")
        return ", ".join(parts)


def _accepts(kernel: KernelUnderTest | None, option: str) -> bool:
    return kernel is None or option in kernel.accepts


def allowed_reductions(
    kernel: KernelUnderTest | None, wanted: Sequence[str] = REDUCTIONS
) -> tuple[str, ...]:
    """The reductions the clause wants that the kernel can be asked for."""
    if not _accepts(kernel, "reduction"):
        return tuple(r for r in wanted if r == "mean")
    declared = REDUCTIONS if kernel is None else kernel.spec.reductions
    return tuple(r for r in wanted if r in declared)


@_built_once
@st.composite
def loss_options(
    draw: st.DrawFn,
    *,
    vocab_size: int,
    kernel: KernelUnderTest | None = None,
    reductions: Sequence[str] = REDUCTIONS,
    options: Sequence[str] = ("ignore_index", "label_smoothing", "z_loss", "softcap"),
    require: Sequence[str] = (),
) -> dict[str, Any]:
    """Keyword options for one call: each allowed option the kernel accepts is either left at
    its default (omitted) or drawn; those in ``require`` are always drawn. Weights are drawn by
    :func:`batches` (they are a tensor)."""
    chosen: dict[str, Any] = {}
    possible = allowed_reductions(kernel, reductions)
    if not possible:
        raise ValueError(f"the kernel supports none of the reductions {list(reductions)}")
    reduction = draw(_sampled_from(possible))
    if reduction != "mean" or (_accepts(kernel, "reduction") and draw(_COIN)):
        chosen["reduction"] = reduction
    values = {
        "ignore_index": ignore_indices(vocab_size=vocab_size),
        "label_smoothing": label_smoothings(),
        "z_loss": z_loss_scales(),
        "softcap": softcaps(),
    }
    for option, strategy in values.items():
        wanted = option in require or (option in options and draw(_COIN))
        if wanted and _accepts(kernel, option):
            chosen[option] = draw(strategy)
    return chosen


@_built_once
@st.composite
def batch_shapes(
    draw: st.DrawFn,
    *,
    min_rows: int = 1,
    max_rows: int = 4096,
    min_vocab: int = 1,
    max_vocab: int = 4096,
    max_logits: int = LOGITS_PER_EXAMPLE,
) -> tuple[int, int]:
    """(N, C) within the oracle's budget (N·(C + ROW_COST) ≤ max_logits): wide batches (few
    rows, thousands of classes) and narrow ones (hundreds of rows); see :func:`long_batches`
    for thousands of rows."""
    vocab_limit = min(max_vocab, max_logits // min_rows - ROW_COST)
    vocab = draw(vocab_sizes(min_size=min_vocab, max_size=vocab_limit))
    rows = draw(
        batch_sizes(min_size=min_rows, max_size=min(max_rows, max_logits // (vocab + ROW_COST)))
    )
    return rows, vocab


@_built_once
@st.composite
def reduction_batches(
    draw: st.DrawFn, *, dtype: str, kernel: KernelUnderTest | None, reduction: str
) -> Batch:
    """Batches for one reduction with any ignore_index; one draw in eight a long batch (see
    :func:`long_batches`). Rarely, because the oracle spends about a second on one. The long
    branch is the draw 7, not 0: Hypothesis shrinks integers toward 0, so a failure shrinks out
    of it."""
    if draw(st.integers(0, 7)) == 7:
        return draw(long_batches(dtype=dtype, kernel=kernel, reduction=reduction))
    return draw(
        batches(dtype=dtype, kernel=kernel, reductions=(reduction,), options=("ignore_index",))
    )


@_built_once
def long_batches(
    *, dtype: str, kernel: KernelUnderTest | None, reduction: str
) -> st.SearchStrategy[Batch]:
    """1024 to 4096 rows of two to four classes, logits of one moderate scale and offset, most
    targets counted, no masked class, and either no dominant logit or every target far below
    its row: thousands of similar per-token losses, where a reduction's accumulation shows. A
    running sum in bfloat16 stalls once the total is 2^8 times a term; a few huge losses among
    many small ones, losses near 0 (or infinite), huge offsets (whose bound is u·|x|), or C = 1
    (every loss 0) would hide that."""
    return batches(
        dtype=dtype,
        kernel=kernel,
        reductions=(reduction,),
        options=("ignore_index",),
        shapes=st.tuples(st.integers(1024, 4096), st.integers(2, 4)),
        ignored=st.sampled_from([0.0, 0.25]),
        masked=st.just(0.0),
        mixed_scales=False,
        max_scale=4.0,
        max_offset=64.0,
        dominance=("nowhere", "below"),
    )


@_built_once
@st.composite
def batches(
    draw: st.DrawFn,
    *,
    dtype: str,
    kernel: KernelUnderTest | None = None,
    reductions: Sequence[str] = REDUCTIONS,
    options: Sequence[str] = ("ignore_index", "label_smoothing", "weight"),
    require: Sequence[str] = (),
    shapes: st.SearchStrategy[tuple[int, int]] | None = None,
    ignored: st.SearchStrategy[float] | None = None,
    masked: st.SearchStrategy[float] | None = None,
    **logit_options: Any,
) -> Batch:
    """A whole input: shape, options the kernel accepts, targets, logits and class weights.

    ``options`` limits which keywords may be drawn (the kernel's signature limits them too),
    ``require`` names those always drawn; the other keywords go to :func:`logits`. Masked logits are not combined with label
    smoothing, whose every class term would then be infinite.
    """
    rows, vocab = draw(batch_shapes() if shapes is None else shapes)
    chosen = draw(
        loss_options(
            vocab_size=vocab, kernel=kernel, reductions=reductions, options=options, require=require
        )
    )
    # Targets may equal the default ignore_index even when the keyword is not passed; a kernel
    # that takes no ignore_index keyword is never handed an ignored target.
    ignore = chosen.get("ignore_index", DEFAULT_IGNORE_INDEX)
    if not _accepts(kernel, "ignore_index"):
        ignore = None
    target = draw(targets(rows=rows, vocab_size=vocab, ignore_index=ignore, ignored=ignored))
    smoothing = chosen.get("label_smoothing", 0.0) > 0.0
    wants_weight = "weight" in require or ("weight" in options and draw(_COIN))
    weighted = wants_weight and _accepts(kernel, "weight")
    # Room for the largest sum of losses (rows × C smoothing terms), each scaled by a weight.
    terms = rows * (vocab if smoothing else 1)
    headroom = 64.0 * terms * (LARGEST_CLASS_WEIGHT if weighted else 1.0)
    drawn_logits = draw(
        logits(
            rows=rows,
            vocab_size=vocab,
            dtype=dtype,
            target=target,
            masked=None if smoothing else (masked_fractions() if masked is None else masked),
            headroom=headroom,
            **logit_options,
        )
    )
    weight = draw(class_weights(vocab_size=vocab, dtype=dtype)) if weighted else None
    return Batch(drawn_logits, target, weight, chosen)


@_built_once
@st.composite
def sequences(
    draw: st.DrawFn,
    *,
    dtype: str,
    kernel: KernelUnderTest | None = None,
    max_logits: int = LOGITS_PER_EXAMPLE,
) -> Batch:
    """A language-model batch: logits (B, T, C) and targets (B, T) for B sequences of ragged
    lengths, each padded to T with ignore_index (when the kernel takes one)."""
    vocab = draw(vocab_sizes(max_size=max_logits // ROW_COST))
    positions = draw(batch_sizes(max_size=max(1, max_logits // (vocab + ROW_COST))))
    count = draw(_sampled_from(tuple(d for d in range(1, positions + 1) if positions % d == 0)))
    length = positions // count
    batch = draw(
        batches(
            dtype=dtype,
            kernel=kernel,
            reductions=("mean",),
            options=("ignore_index",),
            shapes=_just((positions, vocab)),
            ignored=_just(0.0),
        )
    )
    padding = [f"target = target.reshape({count}, {length})"]
    if _accepts(kernel, "ignore_index"):
        tokens = st.integers(0, length)
        lengths = [draw(tokens) for _ in range(count)]
        padding += [
            f"target[{b}, {n}:] = {batch.ignore_index}  # sequence {b} holds {n} tokens"
            for b, n in enumerate(lengths)
            if n < length
        ]
    target = batch.target.then(*padding)
    # Rebuilt from the padded targets, as the reproducer will (a masked or dominant logit sits
    # on each row's target column).
    shaped = batch.logits.then(
        f"logits = logits.reshape({count}, {length}, {vocab})", scope={"target": target.value}
    )
    return replace(batch, logits=shaped, target=target)


@st.composite
def shifted_logits(
    draw: st.DrawFn,
    *,
    rows: int,
    vocab_size: int,
    dtype: str,
    target: Drawn,
    masked: bool = True,
    headroom: float | None = None,
) -> tuple[Drawn, Drawn, float]:
    """Logits x on a grid and x + c·1 for a scalar c, both exact in ``dtype``.

    Values are k·2^e with |k| ≤ K and the shift s·2^e with |k + s| < 2^p (p significand bits),
    so every shifted value is exact; with a small spread K the shift can be 2^p times the
    spread (e.g. c = 16384 in float32: exp(c) overflows a kernel that does not subtract the max).
    ``masked``: half the logits may be -inf (never a row's target). Values stay below
    largest/headroom (64·rows by default), as in :func:`logits`.
    """
    bits = round(-math.log2(torch.finfo(torch_dtype(dtype)).eps)) + 1  # with the implicit bit
    largest = largest_finite(dtype)
    spread = draw(_sampled_from((2 ** (bits - 2) - 1, 1, 3, 15)))
    top_exponent = max(-12, math.floor(math.log2(largest / ((headroom or 64 * rows) * 2**bits))))
    exponent = draw(st.integers(-12, top_exponent))
    room = 2**bits - 1 - spread
    steps = draw(st.integers(-room, room))
    shift = steps * 2.0**exponent
    g = _generator(draw(seeds()))
    grid = [
        f"g = {g}",
        f"logits = torch.randint({-spread}, {spread + 1}, ({rows}, {vocab_size}), generator=g)",
        f"logits = logits.double() * {2.0**exponent!r}",
    ]
    if masked and vocab_size > 1 and draw(_COIN):
        grid += [
            f"masked = torch.rand({rows}, {vocab_size}, generator=g) < 0.5",
            f"masked[torch.arange({rows}), {_kept_column(target, vocab_size)}] = False",
            'logits[masked] = float("-inf")',
        ]
    scope = {target.name: target.value}
    base = _build("logits", grid, scope)
    original = base.then(f"logits = logits.to({torch_dtype(dtype)})", scope=scope)
    shifted = base.then(
        f"logits = (logits + {shift!r}).to({torch_dtype(dtype)})  # every logit + c", scope=scope
    )
    return original, shifted, shift


@_built_once
@st.composite
def long_sequences(
    draw: st.DrawFn,
    *,
    dtype: str,
    min_tokens: int = 1100,
    max_tokens: int = 1400,
) -> Batch:
    """One long sequence whose probability Π_t p(y_t) underflows even float64: every target
    sits at least 1 below its row's smallest other logit, so p(y_t) < 1/2 and, over 1100 or more
    tokens, Π_t p < 2^-1100, below float64's smallest subnormal (2^-1074)."""
    tokens = draw(st.integers(min_tokens, max_tokens))
    vocab = draw(st.integers(2, 4))
    target = draw(targets(rows=tokens, vocab_size=vocab, ignore_index=None))
    drawn = draw(
        logits(
            rows=tokens,
            vocab_size=vocab,
            dtype=dtype,
            target=target,
            max_scale=64.0,
            dominance=("below",),
            min_gap=1.0,
            ties=False,
        )
    )
    return Batch(drawn, target, None, {"reduction": "sum"})
