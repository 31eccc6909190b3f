"""The chain in local mode and with ``engine.kind: dask`` on a generated world: the tables of the stages
that compute on the cluster must be equal bit for bit (#18: "on a 200k-customer world"); wall time per
stage of both runs, side by side.

    python benchmarks/dask_equality.py --customers 200000 --out benchmarks/results/dask_equality.txt
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd

from crmlab import pipeline, synth

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["10_identity", "30_value", "40_propensity", "50_segments"]
TABLES = ["customer_value", "customer_propensity", "customer_segments", "segment_profiles"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--partition-rows", type=int, default=1_000_000)
    ap.add_argument("--out")
    a = ap.parse_args()
    lines = [f"# python benchmarks/dask_equality.py --customers {a.customers} --workers {a.workers} "
             f"--partition-rows {a.partition_rows}",
             f"# {dt.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs; stages {', '.join(STAGES)} of "
             "params/default.yaml; local mode, then engine.kind: dask on a LocalCluster started for the run"]
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world"
        t0 = time.perf_counter()
        synth.generate(synth.WorldSpec(customers=a.customers, seed=42), world, fmt="parquet")
        lines.append(f"# world of {a.customers:,} customers generated in {time.perf_counter() - t0:.0f} s")
        print(lines[-1], flush=True)
        base = [f"data.dir={world}", f"runs_dir={Path(tmp) / 'runs'}", f"stages=[{', '.join(STAGES)}]",
                "report.html=false", "report.reviewer_html=false"]
        runs = {}
        for mode, extra in (("local", []), ("dask", ["engine.kind=dask", f"engine.workers={a.workers}",
                                                      f"engine.partition_rows={a.partition_rows}"])):
            t0 = time.perf_counter()
            runs[mode] = pipeline.run(ROOT / "params" / "default.yaml", base + extra, quiet=True)
            lines.append(f"# {mode}: {time.perf_counter() - t0:.0f} s")
            print(lines[-1], flush=True)
        secs = {m: {s["name"]: s.get("seconds") for s in json.loads((r / "manifest.json").read_text())["stages"]}
                for m, r in runs.items()}
        lines.append(f"{'stage':16s} {'local s':>8s} {'dask s':>8s}")
        lines += [f"{s:16s} {secs['local'].get(s, 0):8.1f} {secs['dask'].get(s, 0):8.1f}" for s in STAGES]
        for name in TABLES:
            want = pd.read_parquet(runs["local"] / "artifacts" / f"{name}.parquet")
            got = pd.read_parquet(runs["dask"] / "artifacts" / f"{name}.parquet")
            lines.append(f"{name}: {len(got):,} rows, equal bit for bit: {got.equals(want)}")
    print("\n".join(lines[-(len(STAGES) + 1 + len(TABLES)):]), flush=True)
    if a.out:
        Path(a.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
