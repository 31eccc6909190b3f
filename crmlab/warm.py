"""``crmlab warm``: compile every kernel once, into the user's Numba cache (:mod:`crmlab.compile_cache`).

A stamp next to the cache records the code digest and the checkout it warmed, so warming runs once
per code version and checkout (Numba keys its cache on each kernel's source path).
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from . import compile_cache, pipeline, synth
from .errors import CrmlabError
from .kernels import rules as RK
from .propensity import PropensityModel
from .reuse import code_digest


def _root() -> Path:
    return Path(__file__).resolve().parent.parent


def _stamp() -> Path:
    return compile_cache.cache_dir() / "warm.json"


def is_warm() -> bool:
    """Whether :func:`warm` ran for this exact code (crmlab and kernel sources, library versions) in this checkout."""
    try:
        stamp = json.loads(_stamp().read_text())
    except (OSError, ValueError):
        return False
    # Numba keys its cache on each kernel's source path: another checkout of the same code compiles anew
    return stamp.get("code") == code_digest() and stamp.get("root") == str(_root())


def _frame_scoring() -> None:
    """The DataFrame scoring paths a chain run does not take: pyarrow strings, categories, float32."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 600
    X = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "s": rng.choice(["x", "y", "z"], n)})
    y = (X["a"] + (X["s"] == "x") > 0.5).astype(int)
    frames = [X, X.astype({"s": "category"}), X.astype({"s": object}), X.astype({"a": np.float32, "b": np.float32})]
    for kind in ("logistic", "hgb"):
        cm = PropensityModel(kind=kind, calibration="none", max_iter=5).fit(X, y).compile()
        for F in frames:
            cm.predict_proba(F)


def _parallel_rules() -> None:
    """The parallel rule-measure kernel (a chain on small data takes the serial one)."""
    import numpy as np

    t = RK.ItemsetTable(np.array([0, 1, 0, 1], np.int32), np.array([1, 1, 2]), np.array([3, 2, 2]), 2, 4)
    s, mk, ja, jc = next(t.enumerate(RK.CONFIDENCE, 0.0))
    RK._measures_parallel(s, ja, jc, t.counts, t.flat, t.starts, t.lens, t.single, t.n, RK.log_factorials(t.n))


def warm(customers: int = 800, force: bool = False, say=print) -> float | None:
    """Compile every kernel a default run uses by running the chain once on a small generated world
    (into a temporary folder: nothing is published anywhere else); returns the seconds it took,
    or None when the cache was already warm for this code."""
    if not force and is_warm():
        say(f"Numba cache already warm for this code: {compile_cache.cache_dir()}")
        return None
    root = _root()
    params = root / "params" / "ci.yaml"
    if not params.is_file() or not (root / "notebooks").is_dir():
        raise CrmlabError(f"crmlab warm needs the source checkout (params/ci.yaml and notebooks/ under {root})")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="crmlab-warm-") as tmp:
        data = Path(tmp) / "data"
        synth.generate(synth.WorldSpec(customers=customers, seed=11), data, fmt="parquet")
        say(f"compiling the kernels into {compile_cache.cache_dir()} (a default chain on {customers:,} generated customers)")
        pipeline.run(params, [f"data.dir={data}", f"runs_dir={Path(tmp) / 'runs'}", "run_name=warm",
                              "report.html=false", "engine.reuse=false"], quiet=True)
        _frame_scoring()
        _parallel_rules()
    seconds = time.perf_counter() - t0
    try:
        _stamp().parent.mkdir(parents=True, exist_ok=True)
        _stamp().write_text(json.dumps({"code": code_digest(), "root": str(root), "seconds": round(seconds, 1),
                                        "at": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    except OSError as exc:                         # the kernels are compiled all the same
        say(f"could not record the warm cache in {_stamp()}: {exc}")
    say(f"warm in {seconds:.0f} s")
    return seconds
