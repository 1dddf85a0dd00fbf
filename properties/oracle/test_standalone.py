"""The oracle stands alone: importing it loads neither torch nor numpy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import reference

HEAVY_MODULES = ("torch", "numpy")


def test_import_loads_neither_torch_nor_numpy() -> None:
    """{torch, numpy} ∩ sys.modules = ∅ after `import reference` in a fresh interpreter.
    [ORACLE-STANDALONE]"""
    probe = (
        f"import sys, reference; print(','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))"
    )
    package_root = Path(reference.__file__).resolve().parent.parent
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=package_root, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "", f"`import reference` loaded {loaded}"
