"""Drawing the inputs of a fused projection + loss (contract 3): hidden states, the output
projection, its bias, targets, class weights and options, each tensor with the Python that
rebuilds it (:class:`properties.strategies.Drawn`).

The hard places of a fused kernel are its chunks, so the shapes reach them: N from 1 to a few
thousand rows (not a multiple of any chunk size, and often a prime), D from 1 to 256, C from 1
to 2,048, with ignored rows at the start, the end, or in a block that may straddle a chunk
edge. Values come in the families hidden states take: centred (after a norm), non-negative
(after an activation: then the contributions to a column of ∂L/∂W share their sign, where an
accumulation in bfloat16 shows), and with duplicated rows (identical hidden states, whose
losses and gradients must agree).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from hypothesis import strategies as st

from properties.engine.dtypes import torch_dtype
from properties.engine.kernel import KernelUnderTest
from properties.strategies import (
    DEFAULT_IGNORE_INDEX,
    REDUCTIONS,
    Drawn,
    _build,
    _generator,
    batch_sizes,
    class_weights,
    loss_options,
    seeds,
    targets,
    vocab_sizes,
)

#: Largest N·C: the logits a call builds (the same budget as contract 2's batches).
MOST_LOGITS = 8192
#: Largest N·D·C: the multiply-adds of the oracle's exact GEMM, in Python integers.
MOST_PRODUCTS = 1 << 18
#: The budgets of a call whose gradients the oracle certifies: each entry of ∂L/∂x, ∂L/∂W and
#: ∂L/∂b is a certified sum, about 0.2 s per 10^5 products on this project's CPU.
GRADIENT_LOGITS = 4096
GRADIENT_PRODUCTS = 1 << 16
MOST_DEPTH = 256
MOST_CLASSES = 2048
MOST_ROWS = 4096
#: Hidden-state families: centred, non-negative (after an activation), and centred with
#: repeated rows.
FAMILIES = ("centred", "non-negative", "repeated rows")


@dataclass(frozen=True)
class LinearBatch:
    """One input to a fused projection + loss kernel, and its keyword options."""

    input: Drawn  # (N, D)
    linear_weight: Drawn  # (C, D)
    target: Drawn  # (N,)
    linear_bias: Drawn | None = None  # (C,)
    weight: Drawn | None = None  # (C,) class weights
    #: Keywords besides the tensors, under the suite's names; absent ones take their defaults.
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def dtype(self) -> str:
        return str(self.input.value.dtype).removeprefix("torch.")

    @property
    def rows(self) -> int:
        return int(self.input.value.shape[0])

    @property
    def reduction(self) -> str:
        return str(self.options.get("reduction", "mean"))

    @property
    def ignore_index(self) -> int:
        return int(self.options.get("ignore_index", DEFAULT_IGNORE_INDEX))

    @property
    def counted(self) -> torch.Tensor:
        return self.target.value != self.ignore_index

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The positional arguments: input, linear_weight, target."""
        return self.input.value, self.linear_weight.value, self.target.value

    def keywords(self) -> dict[str, Any]:
        """The keywords to pass to the kernel (linear_bias and weight as tensors)."""
        keywords = dict(self.options)
        if self.linear_bias is not None:
            keywords["linear_bias"] = self.linear_bias.value
        if self.weight is not None:
            keywords["weight"] = self.weight.value
        return keywords

    def with_options(self, **changes: Any) -> LinearBatch:
        return replace(self, options={**self.options, **changes})

    def drawn(self) -> list[Drawn]:
        tensors = [self.target, self.input, self.linear_weight]
        return tensors + [d for d in (self.linear_bias, self.weight) if d is not None]

    def source(self) -> str:
        """Python statements that rebuild this batch's tensors."""
        return "\n".join(d.source() for d in self.drawn())

    def tensor_names(self) -> list[str]:
        return [d.name for d in self.drawn()]

    def describe(self) -> str:
        n, d = self.input.value.shape
        c = self.linear_weight.value.shape[0]
        parts = [f"input ({n}, {d}) {self.dtype}", f"linear_weight ({c}, {d})"]
        if self.linear_bias is not None:
            parts.append("linear_bias")
        parts += [f"{k}={v!r}" for k, v in self.options.items()]
        if self.weight is not None:
            parts.append("weight")
        return ", ".join(parts)


def _accepts(kernel: KernelUnderTest | None, option: str) -> bool:
    return kernel is None or option in kernel.accepts


@st.composite
def linear_shapes(
    draw: st.DrawFn,
    *,
    most_rows: int = MOST_ROWS,
    most_logits: int = MOST_LOGITS,
    most_products: int = MOST_PRODUCTS,
) -> tuple[int, int, int]:
    """(N, D, C) within ``most_logits`` (N·C) and ``most_products`` (N·D·C): C first (1 to
    2,048), then D, then N with what the budgets leave (thousands of rows when C is small)."""
    classes = draw(vocab_sizes(max_size=min(MOST_CLASSES, most_logits)))
    depth = draw(vocab_sizes(max_size=min(MOST_DEPTH, max(1, most_products // classes))))
    room = min(most_rows, most_logits // classes, most_products // (classes * depth))
    rows = draw(batch_sizes(max_size=max(1, room)))
    return rows, depth, classes


@st.composite
def linear_batches(
    draw: st.DrawFn,
    *,
    dtype: str,
    kernel: KernelUnderTest | None = None,
    reductions: Sequence[str] = REDUCTIONS,
    options: Sequence[str] = ("ignore_index", "label_smoothing", "weight", "linear_bias"),
    require: Sequence[str] = (),
    shapes: st.SearchStrategy[tuple[int, int, int]] | None = None,
    ignored: st.SearchStrategy[float] | None = None,
    families: Sequence[str] = FAMILIES,
    rare_classes: st.SearchStrategy[bool] | None = None,
) -> LinearBatch:
    """A whole input of contract 3: shapes, options the kernel accepts, targets (with a block of
    ignored rows, sometimes; only the first half of the classes, sometimes: the rest are rare
    tokens, whose columns of ∂L/∂W then gather contributions of one sign from non-negative
    hidden states), hidden states of one of ``families``, the projection and its bias, class
    weights."""
    rows, depth, classes = draw(linear_shapes() if shapes is None else shapes)
    loss_keywords = [o for o in options if o not in ("weight", "linear_bias")]
    chosen = draw(
        loss_options(
            vocab_size=classes,
            kernel=kernel,
            reductions=reductions,
            options=loss_keywords,
            require=[o for o in require if o in loss_keywords],
        )
    )
    ignore = chosen.get("ignore_index", DEFAULT_IGNORE_INDEX)
    if not _accepts(kernel, "ignore_index"):
        ignore = None
    target = draw(targets(rows=rows, vocab_size=classes, ignore_index=ignore, ignored=ignored))
    if ignore is not None and rows > 2 and draw(st.booleans()):
        # A block of ignored rows: at the start, at the end, or anywhere (across a chunk edge).
        start = draw(st.sampled_from([0, rows // 2, draw(st.integers(0, rows - 1))]))
        stop = draw(st.integers(start + 1, rows))
        if stop - start < rows:  # one row stays counted, as targets() keeps one
            target = target.then(f"target[{start}:{stop}] = {ignore}  # a block of ignored rows")
    if classes > 1 and draw(st.booleans() if rare_classes is None else rare_classes):
        targeted = (classes + 1) // 2
        remapped = f"target % {targeted}"
        if ignore is not None:
            remapped = f"torch.where(target == {ignore}, target, {remapped})"
        target = target.then(f"target = {remapped}  # classes {targeted} and up are never a target")
    hidden = draw(hidden_states(rows=rows, depth=depth, dtype=dtype, families=families))
    projection = draw(projections(classes=classes, depth=depth, dtype=dtype))
    wants = {
        o: o in require or (o in options and draw(st.booleans())) for o in ("linear_bias", "weight")
    }
    bias = None
    if wants["linear_bias"] and _accepts(kernel, "linear_bias"):
        bias = draw(biases(classes=classes, dtype=dtype))
    weight = None
    if wants["weight"] and _accepts(kernel, "weight"):
        weight = draw(class_weights(vocab_size=classes, dtype=dtype))
    return LinearBatch(hidden, projection, target, bias, weight, chosen)


@st.composite
def hidden_states(
    draw: st.DrawFn, *, rows: int, depth: int, dtype: str, families: Sequence[str] = FAMILIES
) -> Drawn:
    """(N, D) hidden states in ``dtype``: standard normal times a scale (1/8 to 8), centred,
    non-negative (|·|), or with repeated rows; sometimes one column of zeros."""
    family = draw(st.sampled_from(list(families)))
    scale = 2.0 ** draw(st.integers(-3, 3))
    lines = [
        f"g = {_generator(draw(seeds()))}",
        f"input = torch.randn({rows}, {depth}, generator=g, dtype=torch.float64) * {scale!r}",
    ]
    if family == "non-negative":
        lines.append("input = input.abs()  # after an activation")
    if family == "repeated rows" and rows > 1:
        distinct = draw(st.integers(1, max(1, rows // 2)))
        lines.append(
            f"input = input[torch.arange({rows}) % {distinct}]  # {distinct} distinct rows"
        )
    if depth > 1 and draw(st.booleans()):
        column = draw(st.integers(0, depth - 1))
        lines.append(f"input[:, {column}] = 0.0  # a dead feature")
    lines.append(f"input = input.to({torch_dtype(dtype)})")
    return _build("input", lines)


@st.composite
def projections(draw: st.DrawFn, *, classes: int, depth: int, dtype: str) -> Drawn:
    """(C, D) output projection in ``dtype``: normal with standard deviation scale/√D (logits of
    about the hidden states' scale times ``scale``, 1/4 to 16), sometimes with two tied rows."""
    scale = 2.0 ** draw(st.integers(-2, 4))
    lines = [
        f"g = {_generator(draw(seeds()))}",
        f"linear_weight = torch.randn({classes}, {depth}, generator=g, dtype=torch.float64)"
        f" * {scale / math.sqrt(depth)!r}",
    ]
    if classes > 1 and draw(st.booleans()):
        first, second = draw(st.integers(0, classes - 1)), draw(st.integers(0, classes - 1))
        lines.append(f"linear_weight[{second}] = linear_weight[{first}]  # tied classes")
    lines.append(f"linear_weight = linear_weight.to({torch_dtype(dtype)})")
    return _build("linear_weight", lines)


@st.composite
def biases(draw: st.DrawFn, *, classes: int, dtype: str) -> Drawn:
    """(C,) bias in ``dtype``: zeros, or normal times 1/4 to 4."""
    if draw(st.booleans()):
        return _build(
            "linear_bias", [f"linear_bias = torch.zeros({classes}, dtype={torch_dtype(dtype)})"]
        )
    scale = 2.0 ** draw(st.integers(-2, 2))
    lines = [
        f"g = {_generator(draw(seeds()))}",
        f"linear_bias = (torch.randn({classes}, generator=g, dtype=torch.float64) * {scale!r})"
        f".to({torch_dtype(dtype)})",
    ]
    return _build("linear_bias", lines)
