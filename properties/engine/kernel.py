"""A kernel under test (contract 2): the user's callable, what it declares, and how to call it.

A kernel is any callable shaped like ``torch.nn.functional.cross_entropy``. The checker reads
which keywords it accepts; a :class:`KernelSpec` at the same ``module:attr`` declares more.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

#: The keywords of contract 2, under the names the suite uses for them.
STANDARD_KEYWORDS = ("ignore_index", "reduction", "label_smoothing", "weight")
#: Extra options a KernelSpec may declare, each mapped to the kernel's own keyword name.
EXTRA_OPTIONS = ("z_loss", "softcap")


@dataclass(frozen=True)
class KernelSpec:
    """What a kernel declares about itself, beyond the keywords its signature shows.

    Put one at ``module:attr`` instead of the bare callable::

        spec = KernelSpec(fn=my_cross_entropy, dtypes=("float32",), options={"z_loss": "lse_square_scale"})
    """

    fn: Callable[..., Any]
    #: Shown in the report header; defaults to the callable's qualified name.
    name: str | None = None
    #: dtypes the kernel supports, by torch name ("float32", "bfloat16", "float16").
    #: None: the checker's defaults for the device.
    dtypes: tuple[str, ...] | None = None
    devices: tuple[str, ...] = ("cpu", "cuda")
    reductions: tuple[str, ...] = ("mean", "sum", "none")
    #: Extra options (see EXTRA_OPTIONS) -> the kernel's keyword for each, e.g. {"z_loss": "lse_square_scale"}.
    options: Mapping[str, str] = field(default_factory=dict)
    #: True when the kernel writes into its logits argument (Liger writes the gradient there).
    writes_input: bool = False
    #: What reduction="mean" returns when no target is counted: "nan" (PyTorch) or "zero".
    empty_mean: Literal["nan", "zero"] = "nan"
    #: False for a forward-only kernel: gradient clauses are then not applicable.
    differentiable: bool = True


@dataclass(frozen=True)
class KernelUnderTest:
    """A resolved kernel: the callable, its spec, and the keywords it accepts."""

    spec: KernelSpec
    #: Standard keywords (STANDARD_KEYWORDS) and declared extra options the kernel accepts.
    accepts: frozenset[str]
    #: "module:attr" it was loaded from, so a failure report can print a runnable reproducer.
    source: str | None = None
    #: True when ``source`` names a KernelSpec rather than the bare callable.
    declared: bool = False

    @property
    def name(self) -> str:
        fn = self.spec.fn
        return (
            self.spec.name
            or f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
        )

    def __call__(self, logits: Any, target: Any, **options: Any) -> Any:
        """Call the kernel with the suite's option names, translated to the kernel's own."""
        unknown = set(options) - self.accepts
        if unknown:
            raise TypeError(f"{self.name} does not accept {sorted(unknown)}")
        translated = {self.spec.options.get(key, key): value for key, value in options.items()}
        return self.spec.fn(logits, target, **translated)


def accepted_keywords(fn: Callable[..., Any]) -> frozenset[str]:
    """The standard keywords that ``fn``'s signature accepts (all of them for ``**kwargs``)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: assume the full contract
        return frozenset(STANDARD_KEYWORDS)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return frozenset(STANDARD_KEYWORDS)
    names = {p.name for p in parameters if p.kind is not inspect.Parameter.POSITIONAL_ONLY}
    return frozenset(k for k in STANDARD_KEYWORDS if k in names)


def resolve(obj: Any, *, source: str | None = None) -> KernelUnderTest:
    """A KernelUnderTest from a bare callable or a KernelSpec (found at ``source``, if given)."""
    declared = isinstance(obj, KernelSpec)
    spec = obj if declared else KernelSpec(fn=obj)
    if not callable(spec.fn):
        raise TypeError(f"{spec.fn!r} is not callable")
    accepts = accepted_keywords(spec.fn) | frozenset(spec.options)
    return KernelUnderTest(spec=spec, accepts=accepts, source=source, declared=declared)
