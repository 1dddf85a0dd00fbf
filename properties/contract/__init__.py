"""Contracts: the shapes of kernel the engine can check, each one object.

A :class:`Contract` says what a kernel under it is called with (its positional arguments and
keywords, under the suite's names), which extra options a KernelSpec may declare, and the rule a
result must meet before its values are compared (its type and shape). Its clauses carry its
prefix in their IDs (``CE-SHIFT`` belongs to the contract whose prefix is ``CE``), so a clause
says by its name which contract it states; the engine checks a kernel only against its own
contract's clauses. How a drawn problem becomes a call, and the oracle the values are compared
with, live with the contract's clauses (properties/ce/ for contract 2).

A new contract is declared with :func:`register`, outside the engine: nothing in
properties/engine names a contract but the default a bare callable gets.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: The rule a result must meet: (result, positional arguments, keywords) -> what is wrong, or None.
ResultRule = Callable[[Any, Sequence[Any], Mapping[str, Any]], "str | None"]


@dataclass(frozen=True)
class Contract:
    """One shape of kernel: how it is called and what its result must look like."""

    #: The name a KernelSpec declares (``KernelSpec(contract="cross_entropy")``).
    name: str
    #: Clause IDs of this contract start with ``prefix + "-"`` (the longest such prefix, when
    #: two contracts' prefixes open an ID: ``DIST-DP-`` before ``DIST-``).
    prefix: str
    #: One line for the report header, e.g. "fn(logits (N, C), target (N,), ...) like F.cross_entropy".
    shape: str
    #: The positional arguments, by the names reproducers give them.
    arguments: tuple[str, ...]
    #: The keywords of the contract, under the suite's names; the checker tests those a kernel accepts.
    keywords: tuple[str, ...]
    #: Extra options a KernelSpec may declare, each mapped to the kernel's own keyword name.
    options: tuple[str, ...]
    #: What is wrong with a result before its values are compared (not a tensor, wrong shape).
    result_rule: ResultRule
    #: True when a bare callable's signature has this contract's shape; None: the contract is
    #: only declared (KernelSpec.contract) or taken as the default.
    recognises: Callable[[inspect.Signature], bool] | None = None
    #: True when the kernel runs split across processes (torch.distributed): the checker calls
    #: it in a group of rank processes (properties/distributed/), with a world size.
    distributed: bool = False


_CONTRACTS: dict[str, Contract] = {}


def register(contract: Contract) -> Contract:
    """Make ``contract`` known to the engine (by name and by clause prefix); returns it."""
    for known in _CONTRACTS.values():
        if known.name != contract.name and known.prefix == contract.prefix:
            raise ValueError(
                f"contract {contract.name!r}: prefix {contract.prefix!r} is {known.name!r}'s"
            )
    _CONTRACTS[contract.name] = contract
    return contract


def contract_named(name: str) -> Contract:
    _load_builtin()
    try:
        return _CONTRACTS[name]
    except KeyError:
        raise ValueError(
            f"unknown contract {name!r}; the contracts are {', '.join(_CONTRACTS)}"
        ) from None


def contract_of_clause(clause_id: str) -> Contract:
    """The contract whose prefix opens ``clause_id`` (ValueError when none does)."""
    _load_builtin()
    # The longest prefix wins: DIST-DP-MEAN is the data-parallel contract's (prefix DIST-DP),
    # DIST-VALUE the vocab-parallel one's (prefix DIST).
    opening = [c for c in _CONTRACTS.values() if clause_id.startswith(c.prefix + "-")]
    if opening:
        return max(opening, key=lambda contract: len(contract.prefix))
    known = ", ".join(f"{c.prefix}- ({c.name})" for c in _CONTRACTS.values())
    raise ValueError(f"clause {clause_id}: no contract's prefix opens it; known: {known}")


def recognise(signature: inspect.Signature | None) -> Contract:
    """The contract a bare callable's signature shows; contract 2 when nothing else matches."""
    _load_builtin()
    if signature is not None:
        for contract in _CONTRACTS.values():
            if contract.recognises is not None and contract.recognises(signature):
                return contract
    return _CONTRACTS[DEFAULT_CONTRACT]


#: What a bare callable is taken for when its signature says nothing more.
DEFAULT_CONTRACT = "cross_entropy"


def _load_builtin() -> None:
    # The built-in contracts register themselves on import; importing here, not at the top,
    # keeps this module free of torch for whoever only names a contract.
    from properties.contract import (  # noqa: F401
        cross_entropy,
        data_parallel,
        linear,
        vocab_parallel,
    )
