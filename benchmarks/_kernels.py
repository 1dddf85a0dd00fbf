"""The kernels the speed benchmarks time, by family, each loaded only when its test runs.

Contract 2 (logits → loss): PyTorch eager, ``torch.compile`` of it, ``lmloss.cross_entropy``,
``lmloss.triton_cross_entropy`` (once it exists), Liger-Kernel's (when installed).
Contract 3 (hidden states and head weight → loss): the eager matmul + ``F.cross_entropy``,
``F.linear_cross_entropy`` (torch ≥ 2.13: its reference path and its chunked path),
``lmloss.linear_cross_entropy``, Liger-Kernel's fused linear cross-entropy (when installed), Cut
Cross-Entropy's fused kernel (when installed; CUDA only). Any ``--kernel module:attr`` joins the
family of its contract. A kernel that cannot run here raises :class:`Unavailable`, which the
benchmark turns into a skip that says why.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

    from properties.engine.kernel import KernelUnderTest

FAMILIES = ("cross_entropy", "linear")
#: torch.compile's recompile limit: every shape, dtype and grad mode is a compilation of its own
#: (dynamic=False); past the default limit Dynamo would silently run the eager kernel instead.
RECOMPILE_LIMIT = 1_000


class Unavailable(Exception):
    """The kernel cannot run in this environment; the message says why."""


@dataclass(frozen=True)
class BenchKernel:
    """A kernel as the benchmarks name it: a short label (the test ID), its family, its loader."""

    label: str
    family: str
    load: Callable[[], KernelUnderTest]


def _spec(spec: str) -> Callable[[], KernelUnderTest]:
    def load() -> KernelUnderTest:
        from properties.engine.check import load_kernel

        return load_kernel(spec)

    return load


def _installed(module: str, spec: str, install: str) -> Callable[[], KernelUnderTest]:
    def load() -> KernelUnderTest:
        if importlib.util.find_spec(module) is None:
            raise Unavailable(f"{module} is not installed ({install})")
        return _spec(spec)()

    return load


def _callable(make: Callable[[], Callable[..., Any]]) -> Callable[[], KernelUnderTest]:
    def load() -> KernelUnderTest:
        from properties.engine.kernel import resolve

        return resolve(make())

    return load


def _torch_eager() -> Callable[..., Any]:
    import torch.nn.functional as F

    return F.cross_entropy


def _torch_compiled() -> Callable[..., Any]:
    """``torch.compile(F.cross_entropy)`` as a training script compiles it: shapes static."""
    import torch
    import torch.nn.functional as F

    config: Any = torch._dynamo.config
    for limit in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(config, limit):  # the names changed across torch releases
            setattr(config, limit, RECOMPILE_LIMIT)
    if hasattr(config, "fail_on_recompile_limit_hit"):
        config.fail_on_recompile_limit_hit = True
    return torch.compile(F.cross_entropy, dynamic=False)


def _lmloss_triton() -> KernelUnderTest:
    import lmloss

    if not hasattr(lmloss, "triton_cross_entropy"):
        raise Unavailable("lmloss.triton_cross_entropy does not exist yet (issue 12, part 2)")
    return _spec("lmloss:triton_cross_entropy")()


def eager_linear_cross_entropy(
    input: Tensor, linear_weight: Tensor, target: Tensor, *, reduction: str = "mean"
) -> Tensor:
    """The unfused baseline: the whole (N, C) logits by one matmul, then ``F.cross_entropy``."""
    import torch.nn.functional as F

    return F.cross_entropy(input @ linear_weight.T, target, reduction=reduction)


def _torch_linear() -> KernelUnderTest:
    import torch
    import torch.nn.functional as F

    if not hasattr(F, "linear_cross_entropy"):
        raise Unavailable(f"torch {torch.__version__} has no F.linear_cross_entropy (2.13 has)")
    return _callable(lambda: F.linear_cross_entropy)()


def _torch_linear_chunked() -> KernelUnderTest:
    import torch

    if not hasattr(torch.nn, "LinearCrossEntropyOptions"):
        raise Unavailable(f"torch {torch.__version__} has no chunked F.linear_cross_entropy")
    return _spec("properties.kernels.real:torch_chunked_linear_cross_entropy")()


def _liger(spec: str) -> Callable[[], KernelUnderTest]:
    return _installed("liger_kernel", spec, "pip install liger-kernel")


BUILTIN: tuple[BenchKernel, ...] = (
    BenchKernel("torch-eager", "cross_entropy", _callable(_torch_eager)),
    BenchKernel("torch-compile", "cross_entropy", _callable(_torch_compiled)),
    BenchKernel("lmloss", "cross_entropy", _spec("lmloss:cross_entropy")),
    BenchKernel("lmloss-triton", "cross_entropy", _lmloss_triton),
    BenchKernel("liger", "cross_entropy", _liger("properties.kernels.real:liger_cross_entropy")),
    BenchKernel("eager-matmul-ce", "linear", _callable(lambda: eager_linear_cross_entropy)),
    BenchKernel("torch-linear-ce", "linear", _torch_linear),
    BenchKernel("torch-linear-ce-chunked", "linear", _torch_linear_chunked),
    BenchKernel("lmloss-linear", "linear", _spec("lmloss:linear_cross_entropy")),
    BenchKernel(
        "liger-fused-linear",
        "linear",
        _liger("properties.kernels.real:liger_fused_linear_cross_entropy"),
    ),
    BenchKernel(
        "cut-cross-entropy",
        "linear",
        _installed(
            "cut_cross_entropy",
            "properties.kernels.real:cut_cross_entropy",
            "pip install cut-cross-entropy",
        ),
    ),
)


def named(spec: str) -> BenchKernel:
    """A ``--kernel module:attr``, in the family of the contract it follows (loaded now, so that
    a bad SPEC stops the run at collection, not at its first benchmark)."""
    from properties.engine.check import load_kernel

    kernel = load_kernel(spec)
    if kernel.contract.name not in FAMILIES:
        raise ValueError(
            f"{spec} follows contract {kernel.contract.name!r}; the speed benchmarks time "
            f"{' and '.join(FAMILIES)} kernels"
        )
    return BenchKernel(spec, kernel.contract.name, lambda: kernel)


def usable(kernel: BenchKernel, device: str) -> KernelUnderTest:
    """The kernel, loaded; :class:`Unavailable` when it cannot run on ``device`` here."""
    loaded = kernel.load()
    if device not in loaded.spec.devices:
        raise Unavailable(f"{loaded.name} declares devices {', '.join(loaded.spec.devices)}")
    return loaded
