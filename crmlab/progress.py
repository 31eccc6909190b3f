"""Progress bars inside long stage work (tqdm, text mode).

Shown where someone can watch: in a notebook kernel (JupyterLab, or a scheduled run, whose heartbeat
line repeats the latest bar) and on a terminal; silent elsewhere (tests, pipes). Text mode keeps
the HTML reports readable: the renderer folds each bar to its final line.
"""
from __future__ import annotations

import sys


def _watched() -> bool:
    in_kernel = type(sys.stderr).__module__.startswith("ipykernel")     # a notebook kernel's OutStream
    return in_kernel or bool(getattr(sys.stderr, "isatty", lambda: False)())


def bar(iterable=None, desc: str = "", total: int | None = None, unit: str = "step"):
    """``tqdm(iterable)`` with crmlab's settings (updates at most every 2 s; disabled when nobody watches)."""
    from tqdm.std import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, file=sys.stderr, mininterval=2.0, ascii=True,
                ncols=90, disable=not _watched())
