"""Real kernels, wrapped so that `lmloss check` can load them by name.

- ``compiled_cross_entropy``: ``torch.nn.functional.cross_entropy`` under ``torch.compile``
  (inductor; shapes and float options symbolic), compiled at the first call.
- ``liger_cross_entropy``: Liger-Kernel's Triton cross-entropy (``pip install liger-kernel``),
  imported at the first call. It writes its gradient into the logits during the forward pass,
  so its KernelSpec declares ``writes_input``; it takes the z-loss as ``lse_square_scale``.
  Without CUDA it runs under the Triton interpreter (TRITON_INTERPRET=1, set here when unset).
- ``liger_cross_entropy_interpreted``: the same without the ``weight`` and ``softcap`` keywords.
  Under the interpreter (triton 3.9.0, liger-kernel 0.8.5) every call that passes either raises
  ``InterpreterError: AttributeError("'float' object has no attribute 'to'")``, and the clauses
  that draw them would report only that; leaving them out lets the rest be checked on a CPU.

Contract 3 (fused projection + loss; ``torch.nn.functional:linear_cross_entropy`` needs no
wrapper):

- ``torch_chunked_linear_cross_entropy`` and ``..._small_chunks``: torch 2.13's chunked path,
  ``F.linear_cross_entropy(..., options=LinearCrossEntropyOptions(...))``, with its automatic
  chunk size and with chunks of 7 rows; without label smoothing, which leaves the chunked path.
- ``liger_fused_linear_cross_entropy`` (and ``..._interpreted``, without weight and softcap):
  Liger-Kernel's fused linear cross-entropy; on the CPU under the Triton interpreter.
- ``cut_cross_entropy``: Cut Cross-Entropy's fused Triton kernel, CUDA only. It has no
  CPU-capable implementation of its algorithm: without a GPU Triton finds no driver, and under
  the Triton interpreter (triton 3.9.0, cut-cross-entropy 25.1.1) its forward kernel fails with
  ``InterpreterError: AttributeError("'NoneType' object has no attribute 'dtype'")`` at
  ``lse = tl_logaddexp(lse, this_lse)`` in cce_lse_forward.py. ``cut_cross_entropy_torch_compile``
  wraps the library's other implementation, impl="torch_compile", which runs on the CPU but
  builds the full logits (the library's baseline, not its fused kernel).

Importing this module imports neither Liger, Cut Cross-Entropy nor the compiler, so it loads
after a plain ``pip install .``.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from properties.engine.kernel import KernelSpec
from reference import DEFAULT_IGNORE_INDEX

#: Hypothesis draws a new shape, dtype or option value for almost every example, and each one
#: may recompile. Past its recompile limit torch.compile silently falls back to eager, which
#: would check PyTorch's eager kernel under the compiled kernel's name.
RECOMPILE_LIMIT = 1_000_000


def compiled_cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    weight: Tensor | None = None,
) -> Tensor:
    """``F.cross_entropy`` compiled by ``torch.compile`` (dynamic shapes, inductor backend)."""
    result: Tensor = _compiled_cross_entropy()(
        logits,
        target,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        weight=weight,
    )
    return result


@functools.cache
def _compiled_cross_entropy() -> Callable[..., Any]:
    import torch

    _configure_dynamo_for_checking()
    return torch.compile(F.cross_entropy, dynamic=True)


def _configure_dynamo_for_checking() -> None:
    import torch._dynamo

    config: Any = torch._dynamo.config
    for limit in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(config, limit):
            setattr(config, limit, RECOMPILE_LIMIT)
    # Hypothesis draws a new label_smoothing for most examples; specialized, each value costs a
    # fresh inductor compile (5-6 s on 2 CPU cores, measured with a 5-call probe), which would
    # make a quick check take hours. As a symbolic input it compiles once. The generated code then
    # takes ε as an argument instead of a folded constant: what is checked is that kernel.
    if hasattr(config, "specialize_float"):
        config.specialize_float = False


def _liger_cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    weight: Tensor | None = None,
    lse_square_scale: float = 0.0,
    softcap: float | None = None,
) -> Tensor:
    if logits.device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from liger_kernel.transformers.functional import liger_cross_entropy as liger

    result: Tensor = liger(
        logits,
        target,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        lse_square_scale=lse_square_scale,
        softcap=softcap,
    )
    return result


liger_cross_entropy = KernelSpec(
    fn=_liger_cross_entropy,
    name="liger_kernel.transformers.functional.liger_cross_entropy",
    writes_input=True,
    # Liger 0.8.5 sums the per-row losses of counted rows only: no counted row gives 0. Its
    # z-loss is not weighted, and its mean is over the counted rows (its source says so).
    empty_mean="zero",
    z_loss_weighting="unweighted",
    options={"z_loss": "lse_square_scale", "softcap": "softcap"},
)


def _liger_without_weight_or_softcap(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    lse_square_scale: float = 0.0,
) -> Tensor:
    return _liger_cross_entropy(
        logits,
        target,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        lse_square_scale=lse_square_scale,
    )


liger_cross_entropy_interpreted = KernelSpec(
    fn=_liger_without_weight_or_softcap,
    name="liger_kernel.transformers.functional.liger_cross_entropy",
    writes_input=True,
    empty_mean="zero",
    options={"z_loss": "lse_square_scale"},
)


# --- Contract 3: fused projection + loss ------------------------------------------------------
# torch.nn.functional.linear_cross_entropy itself needs no wrapper: a bare callable whose first
# parameters are input, linear_weight, target is recognised as contract 3 (its reference path,
# cross_entropy(linear(...)), options=None).


def _torch_chunked_linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    batch_chunk_size: int | None = None,
) -> Tensor:
    import torch

    options = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=batch_chunk_size)
    result: Tensor = F.linear_cross_entropy(
        input,
        linear_weight,
        target,
        linear_bias=linear_bias,
        weight=weight,
        reduction=reduction,
        ignore_index=ignore_index,
        options=options,
    )
    return result


def _torch_chunked_in_small_chunks(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int = DEFAULT_IGNORE_INDEX,
) -> Tensor:
    return _torch_chunked_linear_cross_entropy(
        input,
        linear_weight,
        target,
        linear_bias=linear_bias,
        weight=weight,
        reduction=reduction,
        ignore_index=ignore_index,
        batch_chunk_size=TORCH_SMALL_CHUNK_ROWS,
    )


#: torch 2.13's chunked path: ``F.linear_cross_entropy(..., options=LinearCrossEntropyOptions())``.
#: Any options object selects it (None is the reference path) when label_smoothing == 0, the
#: target is int64 and the weight is (C, D); label_smoothing ≠ 0 falls back to the reference
#: path with a warning, so this wrapper does not take label_smoothing. With the default "auto"
#: options the chunk size comes from the shapes (on the CPU: acc_policy "compact" for float32
#: and "accurate", float32 accumulation, for bfloat16 and float16; chunks of
#: next_pow2(⌈N/⌈C/D⌉⌉)/2 rows for float32, twice that for the half types, at most N).
#: Measured on the CPU (torch 2.13.0+cpu): it leaves its inputs unchanged; a mean over no counted
#: row is NaN as it should be, but its gradients are NaN too (input, weight and bias), where the
#: reference path gives 0.
torch_chunked_linear_cross_entropy = KernelSpec(
    fn=_torch_chunked_linear_cross_entropy,
    name="torch.nn.functional.linear_cross_entropy(options=LinearCrossEntropyOptions())",
    contract="linear",
    builds_logits=False,
)
#: Rows per chunk of torch_chunked_linear_cross_entropy_small_chunks: small and odd, so that
#: every batch of more than seven rows crosses chunk edges and leaves a ragged last chunk.
TORCH_SMALL_CHUNK_ROWS = 7
#: The same with LinearCrossEntropyOptions(batch_chunk_size=7): an explicit size turns the
#: "auto" chunking off.
torch_chunked_linear_cross_entropy_small_chunks = KernelSpec(
    fn=_torch_chunked_in_small_chunks,
    name="torch.nn.functional.linear_cross_entropy(options=LinearCrossEntropyOptions(batch_chunk_size=7))",
    contract="linear",
    builds_logits=False,
)


def _liger_fused_linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    label_smoothing: float = 0.0,
    lse_square_scale: float = 0.0,
    softcap: float | None = None,
) -> Tensor:
    if input.device.type == "cpu":
        _triton_interpreter_on()
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    result: Tensor = liger_fused_linear_cross_entropy(
        input,
        linear_weight,
        target,
        bias=linear_bias,
        ce_weight=weight,
        ignore_index=ignore_index,
        lse_square_scale=lse_square_scale,
        label_smoothing=label_smoothing,
        reduction=reduction,
        softcap=softcap,
    )
    return result


def _triton_interpreter_on() -> None:
    """TRITON_INTERPRET=1, for Triton kernels on the CPU, or a RuntimeError saying why it is too
    late. Triton's own library functions (tl.sum, tl.max, ...) are compiled or interpreted
    according to the variable when triton is first imported; a kernel launched under the
    interpreter after that fails with "Cannot call @triton.jit'd outside of the scope of a
    kernel". torch imports triton for torch.compile and for the chunked linear_cross_entropy."""
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "Liger-Kernel on the CPU runs under the Triton interpreter, which must be on before "
            "triton is first imported, and triton was imported already (torch.compile and "
            "torch's chunked linear_cross_entropy import it): set TRITON_INTERPRET=1 in the "
            "environment, or check this kernel in a process of its own"
        )
    os.environ.setdefault("TRITON_INTERPRET", "1")


#: Liger-Kernel's fused linear cross-entropy (``LigerFusedLinearCrossEntropyFunction`` through
#: ``liger_kernel.transformers.functional.liger_fused_linear_cross_entropy``), as users call
#: it. It takes a bias, class weights (``ce_weight``), every reduction, ignore_index, label
#: smoothing, the z-loss as ``lse_square_scale`` (unweighted, like its cross-entropy: the same
#: Triton kernel) and a softcap. It writes the gradient into its own chunk of logits, not into
#: its inputs (measured: inputs unchanged after forward and backward, float32 and bfloat16).
#: Its mean over no counted row is 0. Its loss is float32 whatever the input dtype. Its chunks
#: hold about N·D logits (⌈N/⌈C/D⌉⌉ rows, rounded up to a power of two), so chunking happens
#: only when C > D; ∂L/∂W is then summed over the chunks in the parameters' dtype
#: (accum_dtype=None, its default: bfloat16 for bfloat16 weights).
#: On the CPU it runs under the Triton interpreter (TRITON_INTERPRET=1, set here when unset):
#: measured with liger-kernel 0.8.5, triton 3.9.0, one thread, float32, a call of 37 rows,
#: 8 features and 11 classes takes 0.1-0.4 s, 256 × 64 × 512 about 2 s, 1,024 × 64 × 4,096
#: about 7.6 s (forward; the backward of mean and sum only rescales).
liger_fused_linear_cross_entropy = KernelSpec(
    fn=_liger_fused_linear_cross_entropy,
    name="liger_kernel.transformers.functional.liger_fused_linear_cross_entropy",
    contract="linear",
    builds_logits=False,
    empty_mean="zero",
    z_loss_weighting="unweighted",
    options={"z_loss": "lse_square_scale", "softcap": "softcap"},
)


def _liger_fused_without_weight_or_softcap(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    label_smoothing: float = 0.0,
    lse_square_scale: float = 0.0,
) -> Tensor:
    return _liger_fused_linear_cross_entropy(
        input,
        linear_weight,
        target,
        linear_bias=linear_bias,
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        lse_square_scale=lse_square_scale,
    )


#: The same without class weights and softcap: under the Triton interpreter (triton 3.9.0,
#: liger-kernel 0.8.5) a call with either raises ``InterpreterError: AttributeError("'float'
#: object has no attribute 'to'")``, as liger_cross_entropy's does (the same kernel).
liger_fused_linear_cross_entropy_interpreted = KernelSpec(
    fn=_liger_fused_without_weight_or_softcap,
    name="liger_kernel.transformers.functional.liger_fused_linear_cross_entropy",
    contract="linear",
    builds_logits=False,
    empty_mean="zero",
    options={"z_loss": "lse_square_scale"},
)


def _cut_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    reduction: str = "mean",
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    softcap: float | None = None,
    impl: str = "cce",
) -> Tensor:
    try:
        # By name: the package is optional and ships no type information.
        library: Any = importlib.import_module("cut_cross_entropy")
    except ImportError as error:
        raise ImportError(
            "Cut Cross-Entropy is not installed: pip install cut-cross-entropy"
        ) from error
    if impl == "torch_compile":
        _configure_dynamo_for_checking()
    result: Tensor = library.linear_cross_entropy(
        input,
        linear_weight,
        target,
        ignore_index=ignore_index,
        softcap=softcap,
        reduction=reduction,
        impl=impl,
    )
    return result


def _cut_cross_entropy_torch_compile(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    reduction: str = "mean",
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    softcap: float | None = None,
) -> Tensor:
    return _cut_cross_entropy(
        input,
        linear_weight,
        target,
        reduction=reduction,
        ignore_index=ignore_index,
        softcap=softcap,
        impl="torch_compile",
    )


#: Cut Cross-Entropy (Apple's ``cut_cross_entropy.linear_cross_entropy(e, c, targets, ...)``,
#: ``pip install cut-cross-entropy``; measured with 25.1.1): its own Triton kernels (impl
#: "cce"). It takes no bias, no class weights and no label smoothing; it has a softcap; by its
#: source its mean is nll.mean() over the counted rows (over none: the mean of no element,
#: NaN). By default
#: (filter_eps="high") its backward skips the vocabulary blocks whose softmax stays below
#: eps(dtype)/32, an approximation of the gradient by design, checked here as shipped.
#: CUDA only: without a GPU, Triton finds no driver ("0 active drivers"), and under the Triton
#: interpreter (TRITON_INTERPRET=1, triton 3.9.0) its forward kernel fails in
#: cce_lse_forward.py (``lse = tl_logaddexp(lse, this_lse)``: InterpreterError, AttributeError
#: "'NoneType' object has no attribute 'dtype'", the value loaded under its spin lock); its
#: autotuner also reads CUDA device properties. So there is no CPU-capable fused kernel to check.
cut_cross_entropy = KernelSpec(
    fn=_cut_cross_entropy,
    name="cut_cross_entropy.linear_cross_entropy (impl='cce')",
    contract="linear",
    builds_logits=False,
    devices=("cuda",),
    options={"softcap": "softcap"},
)
#: Cut Cross-Entropy's other implementation, impl="torch_compile", which does run on the CPU:
#: ``e @ c.T`` then ``F.cross_entropy(logits.float())`` under torch.compile, on the counted
#: rows only. It builds the whole (N, C) logits: the library's baseline, not its fused
#: algorithm, but its semantics (counted-rows mean, softcap, reduction="none" scattered back)
#: are the library's. The first call compiles (10-13 s measured on 2 CPU cores). Where warnings
#: are errors (pytest's filterwarnings = error) the compilation fails: Dynamo, tracing it, reads
#: .grad of a non-leaf tensor and warns (InternalTorchDynamoError); ``lmloss check`` records
#: warnings instead.
cut_cross_entropy_torch_compile = KernelSpec(
    fn=_cut_cross_entropy_torch_compile,
    name="cut_cross_entropy.linear_cross_entropy (impl='torch_compile')",
    contract="linear",
    options={"softcap": "softcap"},
)


# --- Contract 4: Megatron-core's vocab-parallel cross-entropy -----------------------------------
# megatron.core.tensor_parallel.vocab_parallel_cross_entropy (pip install megatron-core; measured
# with 0.16.1) runs on the CPU over gloo once megatron.core.parallel_state has been initialised
# with a tensor-parallel size of P: nothing in it needs CUDA. It finds its group in that global
# state (KernelSpec.process_group=None, the state set up by ``setup``) and derives each rank's
# slice from its rank, [r·V/P, (r + 1)·V/P): equal slices only (shards="even"). It takes logits
# [s, b, V/P] and targets [s, b] and returns the per-token losses [s, b] in float32; it has no
# ignore_index. The wrappers below do what Megatron-LM's training loop does around it: a loss
# mask over the ignored targets (their loss, lse − 0, is computed, then multiplied out, which
# also zeroes their gradient), a mean over the counted tokens or a sum, and the result rounded to
# the logits' dtype as the contract's kernels return it. Two of its own conventions stay:
# - it writes into its float32 logits (it subtracts the row max in place, then exponentiates in
#   place, and keeps that tensor as the softmax for its backward pass): writes_input;
# - its label smoothing is NeMo's, α·K/(K − 1) spread over the K − 1 other classes, not
#   torch's ε/C over all C, and K and the mean log-probability are the rank's own slice's, not
#   the whole vocabulary's, so the loss differs between ranks (NVIDIA/Megatron-LM#737, #7464,
#   open); with a slice of one column it divides by K − 1 = 0 and raises ZeroDivisionError.
#   ``megatron_vocab_parallel_cross_entropy`` passes label_smoothing through and is checked as
#   shipped; ``..._unsmoothed`` leaves it out, so the rest can be checked.
# Measured (`lmloss check --world-size 2 properties.kernels.real:megatron_vocab_parallel_cross_
# entropy[_unsmoothed]`, quick profile, megatron-core 0.16.1, torch 2.13.0 CPU): as shipped, 2
# hold, 8 fail (DIST-VALUE, DIST-SMOOTHING, DIST-GRAD, DIST-SAME-LOSS in float32 and bfloat16,
# every failure an example with label smoothing), 2 not applicable; without label smoothing it
# conforms (8 hold, 4 not applicable).


def _megatron_setup(rank: int, world_size: int) -> None:
    """Megatron-core's parallel state with the whole group as one tensor-parallel group."""
    _import_megatron()
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel(tensor_model_parallel_size=world_size)


def _import_megatron() -> None:
    """Import megatron.core without its warnings that Transformer Engine and Apex, optional
    GPU extensions, are missing (it falls back to plain torch, which is what runs here)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
        importlib.import_module("megatron.core.tensor_parallel")


def _megatron_vocab_parallel_cross_entropy(
    local_logits: Tensor,
    target: Tensor,
    *,
    vocab_start: int,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Megatron-core's vocab_parallel_cross_entropy with a loss mask and a reduction."""
    _import_megatron()
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    width = local_logits.shape[1]
    megatron_start = parallel_state.get_tensor_model_parallel_rank() * width
    if vocab_start != megatron_start:
        raise ValueError(
            f"Megatron-core takes rank r's slice to start at r·C_r = {megatron_start}, "
            f"not at vocab_start = {vocab_start}: it needs equal slices"
        )
    losses = vocab_parallel_cross_entropy(local_logits[None], target[None], label_smoothing)[0]
    counted = target != ignore_index
    losses = losses.masked_fill(~counted, 0.0)  # Megatron-LM's loss mask
    if reduction == "none":
        return losses.to(local_logits.dtype)
    total = losses.sum()
    if reduction == "mean":
        total = total / counted.sum()
    return total.to(local_logits.dtype)


def _megatron_without_label_smoothing(
    local_logits: Tensor,
    target: Tensor,
    *,
    vocab_start: int,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    reduction: str = "mean",
) -> Tensor:
    return _megatron_vocab_parallel_cross_entropy(
        local_logits,
        target,
        vocab_start=vocab_start,
        ignore_index=ignore_index,
        reduction=reduction,
    )


megatron_vocab_parallel_cross_entropy = KernelSpec(
    fn=_megatron_vocab_parallel_cross_entropy,
    name="megatron.core.tensor_parallel.vocab_parallel_cross_entropy",
    contract="vocab_parallel",
    process_group=None,
    setup=_megatron_setup,
    shards="even",
    writes_input=True,
)
megatron_vocab_parallel_cross_entropy_unsmoothed = KernelSpec(
    fn=_megatron_without_label_smoothing,
    name="megatron.core.tensor_parallel.vocab_parallel_cross_entropy (without label_smoothing)",
    contract="vocab_parallel",
    process_group=None,
    setup=_megatron_setup,
    shards="even",
    writes_input=True,
)
