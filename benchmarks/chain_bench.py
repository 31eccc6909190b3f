"""The whole chain as a scheduled run sees it: wall time and peak memory per stage, compile separated.

    python benchmarks/chain_bench.py --customers 100000 1000000 [--out results/chain_bench.txt]

For each size: generate the synthetic world once (cached under ``.bench/worlds/``), then run the
default chain twice with ``NUMBA_CACHE_DIR`` pointing at a fresh folder: the first run compiles every
kernel (cold), the second reads the cache (warm). Per stage it reports both wall times, their
difference (compilation and first-import cost) and the stage kernel's peak resident memory, all
taken from the runs' manifests, then the slowest cells (papermill's timings) of the warm run.
``--warm-only`` runs once with the user's cache (``crmlab warm`` first), for sizes where a cold run
costs too much. ``--sample`` runs the bundled sample too (goal: under 60 s warm). The peer here is
the earlier run of the same chain: keep the previous results file to compare. Stage reuse is off.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def world(customers: int) -> Path:
    out = ROOT / ".bench" / "worlds" / f"c{customers}"
    if not (out / "orders.parquet").exists():
        subprocess.run([sys.executable, "-m", "crmlab", "generate", "--customers", str(customers), "--out", str(out)],
                       check=True)
    return out


def run_chain(data: Path, runs_dir: Path, cache: Path, extra: list[str]) -> dict:
    env = dict(os.environ, **({"NUMBA_CACHE_DIR": str(cache)} if cache else {}))
    cmd = [sys.executable, "-m", "crmlab", "run", "--params", str(ROOT / "params" / "default.yaml"),
           "--set", f"data.dir={data}", "--set", f"runs_dir={runs_dir}", "--set", "run_name=chainbench",
           "--set", "engine.reuse=false", *extra]
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, env=env).returncode
    wall = time.perf_counter() - t0
    (m,) = sorted(runs_dir.glob("*-chainbench-*/manifest.json"), key=os.path.getmtime)[-1:]
    manifest = json.loads(m.read_text())
    manifest["wall"], manifest["rc"] = wall, rc
    manifest["cells"] = slowest_cells(m.parent)
    return manifest


def slowest_cells(run_dir: Path, top: int = 8) -> list[tuple[float, str, int, str]]:
    """(seconds, stage, cell number, first code line that is not an import) of the slowest cells of a run."""
    cells = []
    for nb in sorted((run_dir / "notebooks").glob("*.ipynb")):
        code = [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
        for i, c in enumerate(code, start=1):
            sec = c.get("metadata", {}).get("papermill", {}).get("duration") or 0.0
            lines = [ln for ln in "".join(c["source"]).splitlines() if ln.strip() and not ln.startswith("#")]
            first = next((ln for ln in lines if "run_" in ln), None) or next(   # a stage function call first
                (ln for ln in lines if not ln.startswith(("import ", "from "))), lines[0] if lines else "")
            cells.append((sec, nb.stem, i, first[:70]))
    return sorted(cells, reverse=True)[:top]


def table(label: str, cold: dict | None, warm: dict) -> str:
    if cold is None:
        head = f"## {label}: warm {warm['wall']:.0f} s ({warm['status']}; user cache, warmed before)"
    else:
        head = f"## {label}: cold {cold['wall']:.0f} s ({cold['status']}), warm {warm['wall']:.0f} s ({warm['status']})"
    lines = [head, f"{'stage':<18}{'cold s':>9}{'warm s':>9}{'compile s':>11}{'peak MB':>10}"]
    c_by = {s["name"]: s for s in (cold or {}).get("stages", [])}
    for ws in warm["stages"]:
        s = c_by.get(ws["name"], {})
        c, h = s.get("seconds", float("nan")), ws.get("seconds", float("nan"))
        peak = max(s.get("peak_rss_mb") or 0, ws.get("peak_rss_mb") or 0)
        lines.append(f"{ws['name']:<18}{c:>9.1f}{h:>9.1f}{c - h:>11.1f}{peak:>10,.0f}")
    lines.append("slowest cells (warm): " + "; ".join(f"{st} cell {i} {sec:.0f} s `{code}`"
                                                      for sec, st, i, code in warm["cells"]))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, nargs="*", default=[100000])
    ap.add_argument("--sample", action="store_true", help="also the bundled 5,000-customer sample")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to crmlab run")
    ap.add_argument("--out", help="append the results to this file")
    ap.add_argument("--warm-only", action="store_true", help="one run with the user's (warm) Numba cache")
    a = ap.parse_args()
    extra = [x for kv in a.set for x in ("--set", kv)]
    report = [f"# chain_bench {dt.date.today()} on {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores; {' '.join(sys.argv[1:])}"]
    sizes = ([("sample (5,000)", ROOT / "data" / "sample")] if a.sample else []) + \
        [(f"{n:,} customers", None) for n in a.customers]
    for (label, data), n in zip(sizes, ([None] if a.sample else []) + a.customers):
        data = data or world(n)
        with tempfile.TemporaryDirectory(prefix="chainbench-") as tmp:
            tmp = Path(tmp)
            if a.warm_only:
                cold, warm = None, run_chain(data, tmp / "runs", None, extra)
            else:
                cold = run_chain(data, tmp / "runs", tmp / "numba-cache", extra)
                warm = run_chain(data, tmp / "runs", tmp / "numba-cache", extra)
        report.append(table(label, cold, warm))
        print(report[-1], flush=True)
    if a.out:
        with open(a.out, "a") as f:
            f.write("\n\n".join(report) + "\n\n")


if __name__ == "__main__":
    main()
