"""A kernel under test: the user's callable, what it declares, and how to call it.

A kernel is any callable of one of the contracts (properties/contract/): by default one shaped
like ``torch.nn.functional.cross_entropy``. The checker reads which of the contract's keywords
it accepts; a :class:`KernelSpec` at the same ``module:attr`` declares more.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from properties.contract import Contract, contract_named, recognise


@dataclass(frozen=True)
class KernelSpec:
    """What a kernel declares about itself, beyond the keywords its signature shows.

    Put one at ``module:attr`` instead of the bare callable::

        spec = KernelSpec(fn=my_cross_entropy, dtypes=("float32",), options={"z_loss": "lse_square_scale"})
    """

    fn: Callable[..., Any]
    #: Shown in the report header; defaults to the callable's qualified name.
    name: str | None = None
    #: The contract the kernel follows, by name (properties/contract/); None: recognised from
    #: the callable's signature, contract 2 ("cross_entropy") when nothing else matches.
    contract: str | None = None
    #: dtypes the kernel supports, by torch name ("float32", "bfloat16", "float16").
    #: None: the checker's defaults for the device.
    dtypes: tuple[str, ...] | None = None
    devices: tuple[str, ...] = ("cpu", "cuda")
    reductions: tuple[str, ...] = ("mean", "sum", "none")
    #: Extra options (the contract's ``options``) -> the kernel's keyword for each,
    #: e.g. {"z_loss": "lse_square_scale"}.
    options: Mapping[str, str] = field(default_factory=dict)
    #: True when the kernel writes into its logits argument (Liger writes the gradient there).
    writes_input: bool = False
    #: What reduction="mean" returns when no target is counted: "nan" (PyTorch) or "zero".
    empty_mean: Literal["nan", "zero"] = "nan"
    #: Whether the z-loss term z·lse² is weighted by the target's class weight like the NLL
    #: term ("weighted": the oracle's), or added unweighted, its mean over the counted rows
    #: ("unweighted": Liger-Kernel's).
    z_loss_weighting: Literal["weighted", "unweighted"] = "weighted"
    #: False for a forward-only kernel: gradient clauses are then not applicable.
    differentiable: bool = True

    #: Contract 3: False when the kernel claims O(chunk) extra memory, never holding the (N, C)
    #: logits at once; LCE-MEMORY then measures its peak against N·C·itemsize.
    builds_logits: bool = True
    #: Distributed contracts (properties/contract/vocab_parallel.py, data_parallel.py): the
    #: keyword under which the kernel takes its process group; None: the kernel finds it in a
    #: framework's global state, which ``setup`` initialises.
    process_group: str | None = "group"
    #: Distributed contracts: called once in each rank process with (rank, world_size), after
    #: ``torch.distributed.init_process_group`` (e.g. to initialise Megatron-core's parallel state).
    setup: Callable[[int, int], None] | None = None
    #: Vocab-parallel: "even" when the kernel needs C divisible by P with equal slices (as
    #: Megatron-core does; the checker then draws only such shardings), else "any".
    shards: Literal["any", "even"] = "any"

    def __call__(self, *arguments: Any, **keywords: Any) -> Any:
        """The kernel itself, called with its own keywords: a spec can stand where its function
        is used (``lmloss.triton_cross_entropy`` is both)."""
        return self.fn(*arguments, **keywords)


@dataclass(frozen=True)
class KernelUnderTest:
    """A resolved kernel: the callable, its spec, its contract, and the keywords it accepts."""

    spec: KernelSpec
    #: The contract's keywords and the declared extra options the kernel accepts.
    accepts: frozenset[str]
    contract: Contract
    #: "module:attr" it was loaded from, so a failure report can print a runnable reproducer,
    #: and a worker process can load it again.
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

    def __call__(self, *arguments: Any, **options: Any) -> Any:
        """Call the kernel with the suite's option names, translated to the kernel's own."""
        unknown = set(options) - self.accepts
        if unknown:
            raise TypeError(f"{self.name} does not accept {sorted(unknown)}")
        return self.spec.fn(*arguments, **self.translate(options))

    def translate(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options under the kernel's own keyword names (KernelSpec.options)."""
        return {self.spec.options.get(key, key): value for key, value in options.items()}


def accepted_keywords(fn: Callable[..., Any], contract: Contract) -> frozenset[str]:
    """The contract's keywords that ``fn``'s signature accepts (all of them for ``**kwargs``)."""
    signature = _signature(fn)
    if signature is None:  # builtins without a signature: assume the full contract
        return frozenset(contract.keywords)
    parameters = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return frozenset(contract.keywords)
    names = {p.name for p in parameters if p.kind is not inspect.Parameter.POSITIONAL_ONLY}
    return frozenset(k for k in contract.keywords if k in names)


def resolve(obj: Any, *, source: str | None = None) -> KernelUnderTest:
    """A KernelUnderTest from a bare callable or a KernelSpec (found at ``source``, if given)."""
    declared = isinstance(obj, KernelSpec)
    spec = obj if declared else KernelSpec(fn=obj)
    if not callable(spec.fn):
        raise TypeError(f"{spec.fn!r} is not callable")
    contract = (
        contract_named(spec.contract)
        if spec.contract is not None
        else recognise(_signature(spec.fn))
    )
    undeclarable = set(spec.options) - set(contract.options)
    if undeclarable:
        raise ValueError(
            f"options {', '.join(sorted(undeclarable))} are not options of contract "
            f"{contract.name!r} (its options: {', '.join(contract.options) or 'none'})"
        )
    accepts = accepted_keywords(spec.fn, contract) | frozenset(spec.options)
    return KernelUnderTest(
        spec=spec, accepts=accepts, contract=contract, source=source, declared=declared
    )


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None
