"""Short runnable Python that reproduces a kernel call: what a failure report prints.

A counterexample is only useful if a person can paste it into a shell. Values are written
exactly (``repr`` of a float is the shortest string that round-trips, and every float32,
bfloat16 and float16 value is a float64), the layout is kept (a transposed or sliced input is
rebuilt with ``as_strided`` over its storage), and a tensor that is mostly one value is written
as ``torch.full`` plus the entries that differ, so a shrunk example stays a few lines long.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from properties.engine.kernel import KernelUnderTest


def number(value: float) -> str:
    """A Python literal for one number; ``inf`` and ``nan`` come from ``math``."""
    if isinstance(value, int):  # also bool
        return repr(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def tensor_expression(tensor: torch.Tensor) -> str:
    """An expression that rebuilds ``tensor``: values, dtype, shape, strides and offset."""
    if _is_dense_row_major(tensor):
        return _values_expression(tensor.detach().reshape(-1), tuple(tensor.shape))
    # Rebuild the storage the view reads from, then the view itself.
    storage_length = tensor.untyped_storage().nbytes() // tensor.element_size()
    base = tensor.detach().new_empty(0).set_(tensor.untyped_storage(), 0, (storage_length,), (1,))
    storage = _values_expression(base, (storage_length,))
    return (
        f"{storage}.as_strided({tuple(tensor.shape)}, {tuple(tensor.stride())}, "
        f"{tensor.storage_offset()})"
    )


def call_snippet(
    kernel: KernelUnderTest,
    arguments: Sequence[Any],
    options: Mapping[str, Any],
    *,
    device: str = "cpu",
) -> str:
    """Python that calls the kernel's own callable on these inputs, with these keywords.

    ``arguments`` are the positional arguments, named as the kernel's contract names them;
    ``options`` the keywords as the callable receives them (already translated from the
    suite's names by the KernelSpec). Tensors are rebuilt on the CPU, each moved to ``device``;
    they must be captured before the call if the kernel may write into them. When an input
    requires grad, the snippet runs the backward pass too.
    """
    names = kernel.contract.arguments
    positional = [
        (names[i] if i < len(names) else f"argument_{i}", value)
        for i, value in enumerate(arguments)
    ]
    lines: list[str] = []
    call = []
    requires_grad = False
    for name, value in [*positional, *options.items()]:
        if _is_tensor(value):
            lines.append(f"{name} = {_tensor_on(value, device)}")
            requires_grad = requires_grad or bool(value.requires_grad)
            value_text = name
        else:
            value_text = repr(value)
        call.append(value_text if name not in options else f"{name}={value_text}")
    calls = [f"loss = kernel({', '.join(call)})"]
    if requires_grad:
        calls.append("loss.sum().backward()")
    return program(kernel, lines, calls)


def program(
    kernel: KernelUnderTest,
    setup: Sequence[str],
    calls: Sequence[str],
    *,
    device: str = "cpu",
    tensors: Sequence[str] = (),
) -> str:
    """The one shape of every reproducer: imports, the kernel, the tensors (built on the CPU),
    their move to ``device``, then the calls; ``inf`` and ``nan`` imported where used."""
    lines = ["import torch", *kernel_import(kernel), *setup]
    if device != "cpu" and tensors:
        moved = ", ".join(f'{name}.to("{device}")' for name in tensors)
        lines.append(f"{', '.join(tensors)}{',' if len(tensors) == 1 else ''} = {moved}")
    lines.extend(calls)
    return with_math_names("\n".join(lines))


def with_math_names(text: str) -> str:
    """``text`` with ``from math import inf, nan`` added when its literals use them."""
    if any(word in text for word in ("inf", "nan")):
        text = text.replace("import torch", "from math import inf, nan\n\nimport torch", 1)
    return text


def _tensor_on(tensor: torch.Tensor, device: str) -> str:
    expression = tensor_expression(tensor)
    if device != "cpu":
        expression += f'.to("{device}")'
    if tensor.requires_grad:
        expression += ".requires_grad_()"
    return expression


def kernel_import(kernel: KernelUnderTest) -> list[str]:
    """Lines that bind ``kernel`` to the callable the KernelUnderTest wraps."""
    fn = kernel.spec.fn
    if kernel.source is not None:
        module, _, attribute = kernel.source.partition(":")
        head, _, rest = attribute.partition(".")
        lines = [f"from {module} import {head}"]
        path = f"{head}.{rest}" if rest else head
        lines.append(f"kernel = {path}.fn" if kernel.declared else f"kernel = {path}")
        return lines
    fn_module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if fn_module and qualname and "<" not in qualname:
        head = qualname.partition(".")[0]
        return [f"from {fn_module} import {head}", f"kernel = {qualname}"]
    return [f"kernel = ...  # {kernel.name}"]


def _is_tensor(value: object) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "untyped_storage")


def _is_dense_row_major(tensor: torch.Tensor) -> bool:
    return tensor.is_contiguous() and tensor.storage_offset() == 0


def _values_expression(flat: torch.Tensor, shape: tuple[int, ...]) -> str:
    """``torch.tensor`` (or ``torch.full`` plus assignments) of a 1-D tensor, then reshaped."""
    dtype = str(flat.dtype)  # "torch.float32"
    values = (flat.float() if flat.is_floating_point() else flat).tolist()
    reshape = "" if len(shape) == 1 else f".reshape{shape}"
    common, count = Counter(values).most_common(1)[0] if values else (0, 0)
    if len(values) > 8 and count * 2 > len(values):
        # Mostly one value (typical after shrinking): write the exceptions, not every entry.
        exceptions = {
            i: v for i, v in enumerate(values) if v != common and not _both_nan(v, common)
        }
        fill = f"torch.full(({len(values)},), {number(common)}, dtype={dtype})"
        if not exceptions:
            return fill + reshape
        indices = ", ".join(str(i) for i in exceptions)
        replacements = ", ".join(number(v) for v in exceptions.values())
        return (
            f"{fill}.index_put((torch.tensor([{indices}]),), "
            f"torch.tensor([{replacements}], dtype={dtype})){reshape}"
        )
    literal = ", ".join(number(v) for v in values)
    return f"torch.tensor([{literal}], dtype={dtype}){reshape}"


def _both_nan(a: float, b: float) -> bool:
    return isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
