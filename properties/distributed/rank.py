"""One rank process of a :class:`properties.distributed.group.RankGroup`: ``python -m properties.distributed.rank``.

It joins the process group, says it is ready, then serves calls until told to stop or until its
coordinator goes away. Each call names its kernel by SPEC: loaded on its first call, when the
KernelSpec's ``setup`` runs too. Each call: the shard and keywords in, the kernel called with the process group under the
KernelSpec's keyword, backward when asked, and the answer out (see RankAnswer). An exception
goes back with its traceback; faulthandler dumps the stacks shortly before the per-call limit,
so a hung rank is reported where it hung.
"""

from __future__ import annotations

import argparse
import ctypes
import faulthandler
import os
import signal
import sys
import traceback
from datetime import timedelta
from multiprocessing.connection import Connection
from typing import Any

#: prctl option: the signal this process gets when its parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1


def main() -> None:
    from properties.distributed.group import receive, send

    options = _parser().parse_args()
    _die_with_parent()
    connection = Connection(options.socket)
    try:
        group = _join(options)
    except BaseException as exc:  # noqa: BLE001 - any failure to start is the report
        send(connection, ("error", (f"could not start: {_one_line(exc)}", _trace(exc))))
        return
    send(connection, ("ready", None))
    kernels: dict[str, Any] = {}
    stacks = open(options.stacks, "w")  # noqa: SIM115 - faulthandler writes to it until exit
    while True:
        try:
            kind, payload, seconds = receive(connection)
        except (EOFError, OSError):
            return  # the coordinator is gone
        if kind == "stop":
            break
        stacks.seek(0)
        stacks.truncate()
        # Dump every thread's stack shortly before the coordinator's limit: a hung rank is
        # reported where it hung.
        faulthandler.dump_traceback_later(max(0.8 * seconds, seconds - 2.0), file=stacks)
        try:
            spec, call = payload
            if spec not in kernels:
                kernels[spec] = _load(spec, options)
            answer = _run(kernels[spec], group, options, call)
        except Exception as exc:
            message = ("error", (f"raised {_one_line(exc)}", _trace(exc)))
        else:
            message = ("answer", answer)
        faulthandler.cancel_dump_traceback_later()
        try:
            send(connection, message)
        except (EOFError, OSError):
            return
    import torch.distributed as dist

    dist.destroy_process_group()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m properties.distributed.rank")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--socket", type=int, required=True)
    parser.add_argument("--stacks", required=True)
    return parser


def _die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies: no rank outlives its coordinator,
    even one killed with SIGKILL. Elsewhere the closed socket ends an idle rank."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before prctl: nobody is waiting for us
            sys.exit(1)


def _join(options: argparse.Namespace) -> Any:
    import torch
    import torch.distributed as dist

    # Ranks share the machine's cores: one intra-op thread each keeps P ranks from waiting on
    # each other's threads.
    torch.set_num_threads(1)
    if options.device == "cuda":
        torch.cuda.set_device(options.rank % torch.cuda.device_count())
    dist.init_process_group(
        options.backend,
        init_method=f"file://{options.store}",
        rank=options.rank,
        world_size=options.world_size,
        # A collective waits at most this long; the coordinator's own limit is what reports.
        timeout=timedelta(hours=1),
    )
    return dist.group.WORLD


def _load(spec: str, options: argparse.Namespace) -> Any:
    """The kernel at ``spec``, its KernelSpec's setup run in this rank."""
    from properties.engine.check import load_kernel

    kernel = load_kernel(spec)
    if kernel.spec.setup is not None:
        kernel.spec.setup(options.rank, options.world_size)
    return kernel


def _run(kernel: Any, group: Any, options: argparse.Namespace, call: Any) -> Any:
    import torch

    from properties.distributed.group import RankAnswer

    device = torch.device(
        f"cuda:{torch.cuda.current_device()}" if options.device == "cuda" else "cpu"
    )
    arguments = [_on(device, value) for value in call.arguments]
    keywords = {key: _on(device, value) for key, value in call.keywords.items()}
    differentiate = call.grad_output is not None
    if differentiate:
        arguments[0].requires_grad_(True)
    named = {
        **{name: value for name, value in zip(kernel.contract.arguments, arguments, strict=False)},
        **keywords,
    }
    before = {name: value.detach().clone() for name, value in named.items() if _tensor(value)}
    placement = dict(call.placement)
    if kernel.spec.process_group is not None:
        placement[kernel.spec.process_group] = group
    result = kernel.spec.fn(*arguments, **placement, **kernel.translate(keywords))
    gradient = None
    not_differentiable = None
    upstream = None
    if differentiate and isinstance(result, torch.Tensor):
        if result.grad_fn is None:
            not_differentiable = "the loss does not require grad: the kernel is not differentiable"
        else:
            upstream = call.grad_output.to(device=result.device, dtype=result.dtype)
            upstream = upstream.reshape(result.shape)
            before["grad_output"] = upstream.clone()
            result.backward(upstream)
            if arguments[0].grad is None:
                not_differentiable = "backward() left no gradient on the local logits"
            else:
                gradient = arguments[0].grad.detach().cpu()
    current = {**named, "grad_output": upstream}
    modified = tuple(
        name for name, kept in before.items() if not _same_bits(kept, current[name].detach())
    )
    return RankAnswer(
        rank=options.rank,
        result=result.detach().cpu() if isinstance(result, torch.Tensor) else repr(result),
        gradient=gradient,
        modified=modified,
        not_differentiable=not_differentiable,
    )


def _on(device: Any, value: Any) -> Any:
    return value.detach().clone().to(device) if _tensor(value) else value


def _tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def _same_bits(a: Any, b: Any) -> bool:
    """Bit for bit (a NaN equals itself; -0.0 differs from 0.0)."""
    import torch

    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    flat_a, flat_b = a.reshape(-1).contiguous(), b.reshape(-1).contiguous()
    if a.is_floating_point():
        return torch.equal(flat_a.view(torch.uint8), flat_b.view(torch.uint8))
    return torch.equal(flat_a, flat_b)


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0] if text else type(exc).__name__


def _trace(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).rstrip()


if __name__ == "__main__":
    main()
