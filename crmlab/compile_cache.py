"""Where the compiled Numba kernels are kept, and warming them (``crmlab warm``).

A cold cache costs about 52 CPU-seconds of compilation in a default run (against ~5 s of kernel
work on the sample). The cache lives in the user's cache folder (``$XDG_CACHE_HOME/crmlab/numba``,
else ``~/.cache/crmlab/numba``), so it survives reinstalls and a fresh virtual environment, and is
shared by every stage kernel; ``NUMBA_CACHE_DIR`` set by the user wins. Numba keys each entry on
the kernel's source file and signature, so a changed kernel recompiles by itself.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
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


def _root() -> Path:
    return Path(__file__).resolve().parent.parent


def _stamp() -> Path:
    return cache_dir() / "warm.json"


def is_warm() -> bool:
    """Whether :func:`warm` ran for this exact code (crmlab and kernel sources, library versions) in this checkout."""
    from .reuse import code_digest

    try:
        stamp = json.loads(_stamp().read_text())
    except (OSError, ValueError):
        return False
    # Numba keys its cache on each kernel's source path: another checkout of the same code compiles anew
    return stamp.get("code") == code_digest() and stamp.get("root") == str(_root())


def warm(customers: int = 800, force: bool = False, say=print) -> float | None:
    """Compile every kernel a default run uses by running the chain once on a small generated world
    (into a temporary folder: nothing is published anywhere else); returns the seconds it took,
    or None when the cache was already warm for this code."""
    from . import pipeline, synth
    from .errors import CrmlabError
    from .reuse import code_digest

    if not force and is_warm():
        say(f"Numba cache already warm for this code: {cache_dir()}")
        return None
    root = _root()
    params = root / "params" / "ci.yaml"
    if not params.is_file() or not (root / "notebooks").is_dir():
        raise CrmlabError(f"crmlab warm needs the source checkout (params/ci.yaml and notebooks/ under {root})")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="crmlab-warm-") as tmp:
        data = Path(tmp) / "data"
        synth.generate(synth.WorldSpec(customers=customers, seed=11), data, fmt="parquet")
        say(f"compiling the kernels into {cache_dir()} (a default chain on {customers:,} generated customers)")
        pipeline.run(params, [f"data.dir={data}", f"runs_dir={Path(tmp) / 'runs'}", "run_name=warm",
                              "report.html=false", "engine.reuse=false"], quiet=True)
    seconds = time.perf_counter() - t0
    try:
        _stamp().parent.mkdir(parents=True, exist_ok=True)
        _stamp().write_text(json.dumps({"code": code_digest(), "root": str(root), "seconds": round(seconds, 1),
                                        "at": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    except OSError as exc:                         # the kernels are compiled all the same
        say(f"could not record the warm cache in {_stamp()}: {exc}")
    say(f"warm in {seconds:.0f} s")
    return seconds
