"""Contract 4, vocab-parallel: a cross-entropy whose vocabulary is split across P processes.

    fn(local_logits: Tensor[N, C_r], target: LongTensor[N], *, vocab_start: int,
       group: ProcessGroup, ignore_index=-100, reduction="mean", label_smoothing=0.0) -> Tensor

Rank r of P holds columns [vocab_start, vocab_start + C_r) of the full (N, C) logits (the slices
contiguous, in rank order, each at least one column wide; C_r may differ between ranks) and the
full target. It returns the full loss (0-d for mean and sum, (N,) for none), identical on every
rank, and autograd gives ∂L/∂local_logits = its columns of the full-batch gradient. z_loss and
softcap are options a KernelSpec may declare; class weights are not part of the contract.

The process group reaches the kernel under the keyword KernelSpec.process_group ("group"), or
through a framework's global state that KernelSpec.setup initialises. Its clauses (prefix
``DIST``) are in properties/distributed/vocab.py; the checker runs them in a group of rank processes
(properties/distributed/group.py). A bare callable is recognised by its first two parameters,
``local_logits, target``, and a ``vocab_start`` keyword.
"""

from __future__ import annotations

import inspect

from properties.contract import Contract, register
from properties.contract.cross_entropy import result_problem

#: The positional parameters by which a bare callable is recognised, in order.
RECOGNISED_PARAMETERS = ("local_logits", "target")
#: The keyword that tells it from a data-parallel kernel.
OFFSET_KEYWORD = "vocab_start"


def recognises(signature: inspect.Signature) -> bool:
    """True when the first two parameters are ``local_logits, target`` and it takes
    ``vocab_start``."""
    parameters = signature.parameters
    positional = [
        p.name
        for p in parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    return tuple(positional[:2]) == RECOGNISED_PARAMETERS and OFFSET_KEYWORD in parameters


VOCAB_PARALLEL = register(
    Contract(
        name="vocab_parallel",
        prefix="DIST",
        shape=(
            "fn(local_logits (N, C_r), target (N,), *, vocab_start, group, ...) "
            "like a vocab-parallel torch.nn.functional.cross_entropy"
        ),
        arguments=("local_logits", "target"),
        keywords=("ignore_index", "reduction", "label_smoothing"),
        options=("z_loss", "softcap"),
        # The rule reads the shape from the local logits' rows: N, the full batch.
        result_rule=result_problem,
        recognises=recognises,
        distributed=True,
    )
)
