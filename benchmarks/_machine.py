"""Where the kernel benchmarks run and what ran them: the device, the card, the versions, the commit.

Every kernel benchmark's extra_info carries :func:`provenance`, so a kept JSON says on its own
which card and which code its figures belong to.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]


def bench_device(requested: str | None) -> str:
    """The device asked for, or CUDA when torch sees one, else the CPU."""
    if requested:
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def card_name(device: str) -> str:
    """The CUDA card's name, or the CPU's model name."""
    if device == "cuda":
        import torch

        return str(torch.cuda.get_device_name())
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        cpuinfo = ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, flags=re.MULTILINE)
    if model:
        return model.group(1).strip()
    import platform

    return platform.processor() or "unknown CPU"


def commit() -> str:
    """The short hash of HEAD, with "-dirty" when tracked files differ from it."""
    try:
        head = _git("rev-parse", "--short", "HEAD").stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    dirty = _git("diff", "--quiet", "HEAD", check=False).returncode != 0
    return f"{head}-dirty" if dirty else head


def _git(*arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *arguments], cwd=REPOSITORY, capture_output=True, text=True, check=check
    )


def card_slug(device: str) -> str:
    """The card's name for a file name: "NVIDIA H200" → "NVIDIA-H200"."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", card_name(device)).strip("-")


def result_stem(device: str) -> str:
    """``<card>-<date>-<commit>``: the name of a kept run's JSON (and of its plot)."""
    return f"{card_slug(device)}-{time.strftime('%Y%m%d-%H%M')}-{commit()}"


def provenance(device: str) -> dict[str, Any]:
    """The device, card, torch and triton versions and the commit, for a benchmark's extra_info."""
    import torch

    try:
        import triton

        triton_version = str(triton.__version__)
    except ImportError:
        triton_version = "not installed"
    return {
        "device": device,
        "card": card_name(device),
        "torch": str(torch.__version__),
        "triton": triton_version,
        "commit": commit(),
    }
