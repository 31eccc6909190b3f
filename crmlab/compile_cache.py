"""Where the compiled Numba kernels are kept (warming them: :mod:`crmlab.warm`).

A cold cache costs about 52 CPU-seconds of compilation in a default run (against ~5 s of kernel
work on the sample). The cache lives in the user's cache folder (``$XDG_CACHE_HOME/crmlab/numba``,
else ``~/.cache/crmlab/numba``), so it survives reinstalls and a fresh virtual environment, and is
shared by every stage kernel; ``NUMBA_CACHE_DIR`` set by the user wins. Numba keys each entry on
the kernel's source file and signature, so a changed kernel recompiles by itself.

Imported by ``crmlab/__init__`` before any kernel loads, so it imports nothing of crmlab.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def cache_dir() -> Path:
    """The Numba cache folder crmlab uses (``NUMBA_CACHE_DIR`` if set)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "crmlab" / "numba"


def configure() -> Path | None:
    """Point Numba at :func:`cache_dir` (before the kernels load; also when numba is already imported).

    A folder that cannot be written (a read-only home) is left alone: Numba then keeps its default
    (``__pycache__`` next to the kernel sources). Returns the folder in use, or None for Numba's default.
    """
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            return None
    except OSError:
        return None
    os.environ["NUMBA_CACHE_DIR"] = str(folder)
    if "numba" in sys.modules:
        from numba.core import config as numba_config

        if not numba_config.CACHE_DIR:
            numba_config.CACHE_DIR = str(folder)
    return folder
