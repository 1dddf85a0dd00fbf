"""Deliberately broken fused projection + loss kernels (contract 3): one per bug class.

Each is :func:`properties.kernels.correct.chunked_linear_cross_entropy` with one step done
wrongly: a subclass of :class:`~properties.kernels.correct.ChunkedLinearLoss` that overrides
that step, the mistake marked ``# BUG:``. Everything else (chunks of CHUNK_ROWS = 7 rows, so
that every batch of more than a few rows crosses chunk edges; logits from the GEMM in the input
dtype; the loss, its gradient and every accumulation in float32) is the correct kernel's. Each
kernel's docstring names the bug class and, on a line ``Caught by: CLAUSE-ID``, the clause that
must catch it (with a dtype in parentheses where only that dtype shows the bug).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from properties.engine.kernel import KernelSpec
from properties.kernels.correct import ChunkedLinearLoss
from reference import DEFAULT_IGNORE_INDEX

#: Classes per vocabulary block of smoothing_over_chunk_classes: small and odd, so that any
#: vocabulary of more than five classes has several blocks, the last one partial.
VOCABULARY_BLOCK = 5


def _kernel(loss: type[ChunkedLinearLoss], name: str, doc: str) -> Callable[..., Tensor]:
    """A contract-3 kernel with F.linear_cross_entropy's keywords, computed by ``loss``: a plain
    function of this module, named ``name`` (reproducers import it by that name), whose
    docstring ``doc`` names its bug and the clause that catches it."""

    def kernel(
        input: Tensor,
        linear_weight: Tensor,
        target: Tensor,
        *,
        linear_bias: Tensor | None = None,
        weight: Tensor | None = None,
        reduction: str = "mean",
        ignore_index: int = DEFAULT_IGNORE_INDEX,
        label_smoothing: float = 0.0,
    ) -> Tensor:
        return loss().loss(
            input,
            linear_weight,
            target,
            linear_bias=linear_bias,
            weight=weight,
            reduction=reduction,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
        )

    kernel.__name__ = kernel.__qualname__ = name
    kernel.__doc__ = doc
    return kernel


class _DropsChunkTail(ChunkedLinearLoss):
    def row_chunks(self, rows: int) -> list[slice]:
        full = rows - rows % self.chunk_rows  # BUG: the ragged last chunk is never computed
        return [slice(start, start + self.chunk_rows) for start in range(0, full, self.chunk_rows)]


drops_chunk_tail = _kernel(
    _DropsChunkTail,
    "drops_chunk_tail",
    """A chunk loop that stops at the last full chunk: the rows of the ragged last chunk have no
    loss (missing from sum and mean, 0 under reduction="none") and no gradient.

    Caught by: LCE-VALUE
    """,
)


class _MeanOfChunkMeans(ChunkedLinearLoss):
    def mean_divisors(self, chunk_weights: list[Tensor]) -> list[Tensor]:
        # BUG: each chunk divided by its own Σ w_y and by the number of chunks, not by the batch's
        return [len(chunk_weights) * w.sum() for w in chunk_weights]


mean_of_chunk_means = _kernel(
    _MeanOfChunkMeans,
    "mean_of_chunk_means",
    """reduction="mean" as the mean of the chunks' means (Σ_k mean_k / K) instead of
    Σ_i l_i / Σ_i w_{y_i}: right only when every chunk counts the same total weight (and, with a
    chunk of only ignored rows, 0/0 = NaN). Its gradient is that of the same wrong mean.

    Caught by: LCE-MEAN-DIVISOR
    """,
)


class _WeightGradientInParameterDtype(ChunkedLinearLoss):
    #: Chunks of two rows: a few hundred rows make a hundred chunks and more, where the stall of
    #: a bfloat16 running sum shows (the chunk size is not the bug).
    chunk_rows = 2

    def add_weight_gradient(
        self, total: Tensor, chunk: Tensor, weight_dtype: torch.dtype
    ) -> Tensor:
        # BUG: the running sum lives in the parameters' dtype: every chunk rounded, then added,
        # in bfloat16 for bfloat16 weights
        return total.to(weight_dtype) + chunk.to(weight_dtype)


weight_grad_accumulated_in_bf16 = _kernel(
    _WeightGradientInParameterDtype,
    "weight_grad_accumulated_in_bf16",
    """∂L/∂W summed across chunks in the parameters' dtype: for bfloat16 weights each chunk's
    gᵀ·x is rounded to bfloat16 and added to a bfloat16 running sum (what Liger-Kernel's fused
    linear cross-entropy does with its default accum_dtype=None). Correct in float32; in
    bfloat16 the sum stalls once it is about 2^8 times a chunk's contribution, which takes
    dozens of chunks whose contributions share a sign (its chunks are of 2 rows, so a few
    hundred rows make over a hundred).

    Caught by: LCE-GRAD-ACCUMULATE (bfloat16)
    """,
)


class _ForgetsBiasGradient(ChunkedLinearLoss):
    def bias_gradient(self, total: Tensor) -> Tensor:
        return torch.zeros_like(total)  # BUG: should be total, the sum of every chunk's Σ g


forgets_bias_gradient = _kernel(
    _ForgetsBiasGradient,
    "forgets_bias_gradient",
    """A bias that is added to the logits but gets a zero gradient (∂L/∂b = Σ_i ∂L/∂z_i is never
    written back); the loss and the other gradients are right.

    Caught by: LCE-GRAD
    """,
)


class _IgnoredRowsLeak(ChunkedLinearLoss):
    def ignored_rows_gradient(self, p: Tensor) -> Tensor:
        return p  # BUG: p − 0 (no one-hot for an ignored row), where nothing should flow back


ignored_rows_leak_into_weight_grad = _kernel(
    _IgnoredRowsLeak,
    "ignored_rows_leak_into_weight_grad",
    """Ignored rows masked in the loss and in ∂L/∂input but not in the logit gradient that feeds
    ∂L/∂W and ∂L/∂b: each ignored row adds its softmax (p − 0, the one-hot of no class) times the
    upstream factor, as a kernel does that zeroes the target's one-hot but not the row.

    Caught by: LCE-IGNORED
    """,
)


class _SoftcapWithoutChain(ChunkedLinearLoss):
    def softcap_chain(self, tanh: Tensor) -> Tensor:
        return torch.ones_like(tanh)  # BUG: d(s·tanh(z/s))/dz is 1 − tanh², not 1


def _softcap_grad_without_sech2(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    label_smoothing: float = 0.0,
    softcap: float | None = None,
) -> Tensor:
    """A soft cap s·tanh(z/s) whose backward leaves out the chain factor 1 − tanh²(z/s): the
    loss is right, the gradient is that of uncapped logits at the capped values (too large by a
    factor 1/(1 − tanh²), which grows without bound once |z| passes s).

    Caught by: LCE-GRAD
    """
    return _SoftcapWithoutChain().loss(
        input,
        linear_weight,
        target,
        linear_bias=linear_bias,
        weight=weight,
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        softcap=softcap,
    )


#: The soft cap is an extra option, so this kernel declares it with a KernelSpec.
softcap_grad_without_sech2 = KernelSpec(
    fn=_softcap_grad_without_sech2,
    name="properties.kernels.broken_linear.softcap_grad_without_sech2",
    contract="linear",
    options={"softcap": "softcap"},
)


class _SmoothingOverVocabularyBlocks(ChunkedLinearLoss):
    def smoothing_shares(self, classes: int, epsilon: float, like: Tensor) -> Tensor:
        shares = torch.empty(classes, dtype=like.dtype, device=like.device)
        for start in range(0, classes, VOCABULARY_BLOCK):
            block = shares[start : start + VOCABULARY_BLOCK]
            block.fill_(epsilon / block.numel())  # BUG: ε/C_block; should be ε/C, C all classes
        return shares


smoothing_over_chunk_classes = _kernel(
    _SmoothingOverVocabularyBlocks,
    "smoothing_over_chunk_classes",
    """Label smoothing in a kernel that walks the vocabulary in blocks of VOCABULARY_BLOCK = 5
    classes (the last one partial) and spreads ε over each block's own classes, ε/C_block, instead
    of ε/C over all C: the smoothing term is K·ε times too large for K blocks (more where the last
    block is partial), in the loss and, consistently, in its gradient. Right for C ≤ 5.

    Caught by: LCE-VALUE
    """,
)


class _IgnoresUpstreamGradient(ChunkedLinearLoss):
    def upstream(self, grad_output: Tensor) -> Tensor:
        return torch.ones_like(grad_output)  # BUG: should be grad_output


ignores_upstream_gradient = _kernel(
    _IgnoresUpstreamGradient,
    "ignores_upstream_gradient",
    """A backward that takes grad_output = 1 (the loss as the last node of the graph, as fused
    kernels that compute the gradient in the forward pass assume): wrong for any other upstream
    gradient, such as a scaled loss or per-row weights under reduction="none".

    Caught by: LCE-GRAD-UPSTREAM
    """,
)


class _ChunksByCount(ChunkedLinearLoss):
    def row_chunks(self, rows: int) -> list[slice]:
        half = (rows + 1) // 2  # BUG: two chunks whatever N, so a chunk is N/2 rows, not O(1)
        return [slice(0, half), slice(half, rows)]


#: The claim of O(chunk) memory is declared, as a chunked kernel's KernelSpec would.
chunks_by_count = KernelSpec(
    fn=_kernel(
        _ChunksByCount,
        "_chunks_by_count",
        """A chunked kernel whose chunks are a fixed number of parts of the batch (two here)
        instead of a fixed number of rows: its values and gradients are right, but a chunk's
        logits and their gradient grow with N, so it holds about the (N, C) logits at once
        while it claims O(chunk) memory (KernelSpec(builds_logits=False)).

        Caught by: LCE-MEMORY
        """,
    ),
    name="properties.kernels.broken_linear.chunks_by_count",
    contract="linear",
    builds_logits=False,
)
