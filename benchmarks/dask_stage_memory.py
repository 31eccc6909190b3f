"""Peak memory and time per stage of the chain in Dask mode on a generated world, and of stages run again
on the same world (resumed from the first run's artifacts): what the stage's process and the busiest
worker hold as the world grows (#18: "what breaks first").

    python benchmarks/dask_stage_memory.py --customers 2000000 --again 60_publish --out benchmarks/results/dask_2m_publish.txt

``--again 60_publish``: after the chain, 60_publish runs twice more from the same artifacts (a fresh
cluster each time), so its figures are also those of a publication that reads a previous version.
The world and runs are kept in ``--keep`` when given, else in a temporary folder. ``--resume STAGE
--keep DIR``: no new world and no first chain; the chain runs once from STAGE on the world and the
latest runs kept in DIR (a change measured against the same world and earlier stages' artifacts).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

from crmlab import pipeline, synth

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["00_data_quality", "10_identity", "20_affinity", "30_value", "40_propensity", "50_segments", "60_publish",
          "70_measure"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--partition-rows", type=int, default=1_000_000)
    ap.add_argument("--memory-limit", help="engine.memory_limit per worker, e.g. 6GB (default: an equal share of RAM)")
    ap.add_argument("--to", default="60_publish", help="the last stage of the chain")
    ap.add_argument("--again", help="run the chain from this stage twice more on the same artifacts")
    ap.add_argument("--keep", help="folder for the world and the runs (kept)")
    ap.add_argument("--resume", help="with --keep: run the chain once from this stage on the kept world and runs")
    ap.add_argument("--out")
    a = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    lines = [f"# python benchmarks/dask_stage_memory.py --customers {a.customers} --workers {a.workers} "
             f"--partition-rows {a.partition_rows} --to {a.to}" + (f" --again {a.again}" if a.again else "")
             + (f" --memory-limit {a.memory_limit}" if a.memory_limit else "")
             + (f" --resume {a.resume}" if a.resume else ""),
             f"# {dt.date.today()}, commit {commit}, {platform.machine()}, {os.cpu_count()} CPUs; engine.kind: dask on a "
             "LocalCluster started for each run; SQLite publish target; MB: peak memory of the stage's process, "
             "of the busiest worker (since the cluster started)"]

    def say(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.keep or tmp)
        world = root / "world"
        if a.resume:
            if not (a.keep and (world / "truth").is_dir()):
                ap.error("--resume needs --keep with a world and runs made by an earlier run of this benchmark")
        else:
            t0 = time.perf_counter()
            synth.generate(synth.WorldSpec(customers=a.customers, seed=42), world, fmt="parquet", partitioned=True)
            say(f"# world of {a.customers:,} customers generated in {time.perf_counter() - t0:.0f} s")
        stages = STAGES[:STAGES.index(a.to) + 1]
        base = [f"data.dir={world}", f"runs_dir={root / 'runs'}", f"stages=[{', '.join(stages)}]", "report.html=false",
                "report.reviewer_html=false", "engine.kind=dask", f"engine.workers={a.workers}",
                f"engine.partition_rows={a.partition_rows}"] + ([f"engine.memory_limit={a.memory_limit}"] if a.memory_limit else [])
        starts = [a.resume] if a.resume else [None] + [a.again] * (2 if a.again else 0)
        for attempt, start in enumerate(starts):
            t0 = time.perf_counter()
            run = pipeline.run(ROOT / "params" / "default.yaml", base, quiet=True, from_stage=start)
            say(f"# run {attempt + 1}" + (f" (from {start})" if start else " (the chain)") + f": {time.perf_counter() - t0:.0f} s")
            say(f"{'stage':16s} {'s':>8s} {'MB':>8s} {'workers MB':>10s} {'spilled MB':>10s}")
            for s in json.loads((run / "manifest.json").read_text())["stages"]:
                if start and s["name"] not in stages[stages.index(start):]:
                    continue                                    # taken from the first run
                d = s.get("dask") or {}
                say(f"{s['name']:16s} {s.get('seconds', 0):8.1f} {s.get('peak_rss_mb', 0):8,.0f} "
                    f"{d.get('workers_peak_mb') or 0:10,.0f} {(d.get('spilled_bytes') or 0) / 2**20:10,.0f}")
    if a.out:
        Path(a.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
