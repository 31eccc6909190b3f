"""Kernel start-up cost of the run chain (issue: lean kernel start, <= ~3 s per notebook).

    python benchmarks/kernel_start.py

Measures, each as the median of 3 fresh processes / kernels:
1. importing papermill in a new process, with and without crmlab's skip of rfc3987-syntax;
2. executing a one-cell notebook with papermill through crmlab's IPC kernel manager (kernel start,
   connect, one cell, shutdown), the cost every stage pays before its own work;
3. the same notebook importing what every stage imports (crmlab, pandas, matplotlib).
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.modules.setdefault("rfc3987_syntax", None)


def _proc(code: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t


def _notebook(source: str, folder: Path) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    nb.metadata["kernelspec"] = {"name": "crmlab", "display_name": "Python (crmlab)", "language": "python"}
    path = folder / f"nb{abs(hash(source))}.ipynb"
    nbformat.write(nb, path)
    return path


def main(reps: int = 3) -> None:
    import papermill as pm

    from crmlab.pipeline import KERNEL_NAME, _kernel_manager_class, ensure_kernelspec

    ensure_kernelspec()
    km = _kernel_manager_class()
    rows = []
    plain = statistics.median(_proc("import papermill") for _ in range(reps))
    lean = statistics.median(_proc("import sys; sys.modules['rfc3987_syntax'] = None; import papermill")
                             for _ in range(reps))
    rows += [("import papermill (new process)", plain), ("  ... with rfc3987-syntax skipped", lean)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for label, src in (("papermill: kernel start + 1 trivial cell", "x = 1"),
                           ("papermill: kernel start + stage imports",
                            "import crmlab.pipeline, crmlab.quality, pandas, matplotlib.pyplot")):
            nb = _notebook(src, tmp)
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                pm.execute_notebook(str(nb), str(tmp / "out.ipynb"), kernel_name=KERNEL_NAME,
                                    progress_bar=False, kernel_manager_class=km, cwd=str(tmp))
                times.append(time.perf_counter() - t)
            rows.append((label, statistics.median(times)))
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  seconds")
    for label, s in rows:
        print(f"{label:<{width}}  {s:7.2f}")
    print(f"\nskip of rfc3987-syntax saves {plain - lean:.2f} s per process ({plain / lean:.1f}x faster import)")


if __name__ == "__main__":
    main()
