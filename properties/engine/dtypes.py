"""The dtypes under test by name, and their limits, read from ``torch.finfo`` (never a table)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from properties.engine.defaults import DTYPES

if TYPE_CHECKING:
    import torch


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a name in DTYPES (ValueError for any other)."""
    import torch

    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {', '.join(DTYPES)}")
    dtype: torch.dtype = getattr(torch, name)
    return dtype


def unit_roundoff(name: str) -> float:
    """u = 2^-p for a p-bit significand: half of finfo.eps (the gap above 1)."""
    import torch

    return float(torch.finfo(torch_dtype(name)).eps) / 2


def largest_finite(name: str) -> float:
    import torch

    return float(torch.finfo(torch_dtype(name)).max)


def smallest_normal(name: str) -> float:
    import torch

    return float(torch.finfo(torch_dtype(name)).tiny)
