"""Purity: a loss reads its inputs and leaves them as they were.

Unless the kernel declares ``KernelSpec(writes_input=True)`` (Liger-Kernel writes the gradient
into the logits' storage to save memory), the logits, the targets and the class weights are
bit-for-bit the same after the forward and the backward pass. Targets and weights must be left
alone even then, and so must the upstream gradient the backward pass receives: autograd may
hand that very tensor to other branches of the graph (and the caller may reuse it).
"""

from __future__ import annotations

import torch

from properties.ce.calls import batch_reproducer, context, draw_batch, draw_upstream
from properties.engine.checks import check_equal
from properties.engine.clause import Mismatch, Trial, clause


@clause()
def inputs_are_left_unchanged(trial: Trial) -> None:
    """After L = kernel(x, y, weight=w) and L.backward(g): x, y, w and g are unchanged (x may change only where KernelSpec.writes_input).  [CE-PURE] tol: exact"""
    # The mean half the time: a backward that scales its upstream gradient in place by the mean's
    # divisor (broken.scales_upstream_in_place) shows it only there, with two tokens or more.
    batch = draw_batch(
        trial,
        reductions=("mean", "sum", "mean", "none"),
        options=("ignore_index", "label_smoothing", "weight", "z_loss", "softcap"),
    )
    inputs = {"logits": batch.x, "target": batch.y}
    if batch.weight is not None:
        inputs["weight"] = batch.weight.value
    # The kernel gets these very tensors (no copies), on the device.
    handed = {name: value.clone().to(trial.device) for name, value in inputs.items()}
    keywords = {**batch.keywords(), **({"weight": handed["weight"]} if "weight" in handed else {})}
    differentiable = trial.kernel.spec.differentiable
    logits = handed["logits"].requires_grad_(differentiable)
    loss = trial.kernel(logits, handed["target"], **keywords)
    upstream = None
    if differentiable:
        upstream = draw_upstream(trial, batch)
        if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
            raise Mismatch(
                "the loss does not require grad: the kernel is not differentiable",
                reproducer=batch_reproducer(trial, batch, grad_output=upstream),
            )
        # A copy of its own, so that a backward writing into it changes nothing else here.
        handed["grad_output"] = (
            upstream.value.to(device=loss.device, dtype=loss.dtype).reshape(loss.shape).clone()
        )
        inputs["grad_output"] = upstream.value.to(loss.dtype).reshape(loss.shape)
        loss.backward(handed["grad_output"])
    checked = [n for n in handed if n != "logits" or not trial.kernel.spec.writes_input]
    for name in checked:
        check_equal(
            trial,
            quantity=f"{name} after the call",
            actual=handed[name].detach().cpu(),
            expected=inputs[name] if name == "target" else inputs[name].double(),
            context=context(batch, trial),
            reproducer=batch_reproducer(trial, batch, grad_output=upstream)
            + f"\n# compare {name} with its value before the call",
            expected_by="its value before the call",
        )


CLAUSES = (inputs_are_left_unchanged,)
