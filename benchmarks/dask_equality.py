"""The chain in local mode and with ``engine.kind: dask`` on a generated world: the tables of the stages
that compute on the cluster and every published table must be equal bit for bit (#18: "on a
200k-customer world"); wall time per stage of both runs, side by side.

    python benchmarks/dask_equality.py --customers 200000 --out benchmarks/results/dask_equality.txt
    python benchmarks/dask_equality.py --customers 200000 --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test

``--postgres``: both runs publish to that server (each to a schema of its own, dropped afterwards),
with ``publish.writers`` connections; otherwise to SQLite files.
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

import numpy as np
import pandas as pd

from crmlab import pipeline, publish, synth
from crmlab.events import read_parts
from crmlab.sources import Sources

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["00_data_quality", "10_identity", "20_affinity", "30_value", "40_propensity", "50_segments", "60_publish", "70_measure"]
TABLES = ["customer_key_map", "affinity_rules", "customer_recommendations", "customer_value", "customer_propensity",
          "customer_segments", "segment_profiles", "campaign_lift", "contact_responses"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--partition-rows", type=int, default=1_000_000)
    ap.add_argument("--postgres", help="publish to this PostgreSQL server (a schema per run) instead of SQLite")
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--modes", default="local,dask",
                    help="the runs to make: local,dask (compared) or one of them (timings and memory only)")
    ap.add_argument("--out")
    a = ap.parse_args()
    lines = [f"# python benchmarks/dask_equality.py --customers {a.customers} --workers {a.workers} "
             f"--partition-rows {a.partition_rows} --modes {a.modes}" + (f" --postgres ... --writers {a.writers}" if a.postgres else ""),
             f"# {dt.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs; stages {', '.join(STAGES)} of "
             "params/default.yaml; local mode, then engine.kind: dask on a LocalCluster started for the run"]
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world"
        t0 = time.perf_counter()
        synth.generate(synth.WorldSpec(customers=a.customers, seed=42), world, fmt="parquet", partitioned=True)
        lines.append(f"# world of {a.customers:,} customers generated in {time.perf_counter() - t0:.0f} s (large tables "
                     "as folders of parts of 100,000 customers)")
        print(lines[-1], flush=True)
        base = [f"data.dir={world}", f"runs_dir={Path(tmp) / 'runs'}", f"stages=[{', '.join(STAGES)}]",
                "report.html=false", "report.reviewer_html=false"]
        runs, schemas = {}, {}
        try:
            for mode, extra in (("local", []), ("dask", ["engine.kind=dask", f"engine.workers={a.workers}",
                                                          f"engine.partition_rows={a.partition_rows}"])):
                if mode not in a.modes.split(","):
                    continue
                if a.postgres:
                    schemas[mode] = _schema(a.postgres, f"crmlab_eq_{mode}")
                    extra = extra + [f"publish.url={schemas[mode]}", f"publish.identity_schema=crmlab_eq_{mode}_identity",
                                     f"publish.writers={a.writers}"]
                t0 = time.perf_counter()
                runs[mode] = pipeline.run(ROOT / "params" / "default.yaml", base + extra, quiet=True)
                lines.append(f"# {mode}: {time.perf_counter() - t0:.0f} s")
                print(lines[-1], flush=True)
            published = _published(runs, schemas) if len(runs) == 2 else []
        finally:
            if a.postgres:
                _drop_schemas(a.postgres, [f"crmlab_eq_{m}{s}" for m in ("local", "dask") for s in ("", "_identity")])
        st = {m: {s["name"]: s for s in json.loads((r / "manifest.json").read_text())["stages"]} for m, r in runs.items()}

        def of(mode, stage, key, scale=1.0):
            got = st.get(mode, {}).get(stage, {})
            got = got.get("dask", {}).get(key) if key in ("workers_peak_mb", "spilled_bytes") else got.get(key)
            return float("nan") if got is None else got / scale

        lines.append(f"{'stage':16s} {'local s':>8s} {'dask s':>8s} {'local MB':>9s} {'dask MB':>8s} {'workers MB':>10s} "
                     f"{'spilled MB':>10s}   (MB: peak memory of the stage's process, of the busiest worker)")
        lines += [f"{s:16s} {of('local', s, 'seconds'):8.1f} {of('dask', s, 'seconds'):8.1f} "
                  f"{of('local', s, 'peak_rss_mb'):9,.0f} {of('dask', s, 'peak_rss_mb'):8,.0f} "
                  f"{of('dask', s, 'workers_peak_mb'):10,.0f} {of('dask', s, 'spilled_bytes', 2**20):10,.0f}"
                  for s in ["load_sources", *STAGES]]
        if len(runs) < 2:
            runs = {}                                          # one mode: nothing to compare
        src = {m: Sources.read_artifacts(r / "artifacts" / "sources") for m, r in runs.items()}
        lines += [f"sources {n}: {len(src['dask'][n]):,} rows, equal bit for bit: {src['dask'][n].equals(src['local'][n])}"
                  for n in (src["local"].tables if src else [])]
        for name in TABLES if runs else []:
            want = pd.read_parquet(runs["local"] / "artifacts" / f"{name}.parquet")
            parts = runs["dask"] / "artifacts" / name          # written by the workers as parts, or one file
            got = read_parts(parts) if parts.is_dir() else pd.read_parquet(parts.with_suffix(".parquet"))
            lines.append(f"{name}: {len(got):,} rows, {_same(got, want)}")
        lines += published
    print("\n".join(lines[3:]), flush=True)
    if a.out:
        Path(a.out).write_text("\n".join(lines) + "\n")


def _same(got: pd.DataFrame, want: pd.DataFrame) -> str:
    """'equal bit for bit', else how close (the largest relative difference of the float columns, the
    rest bit for bit), else 'NOT EQUAL'. Means made from per-part sums (segment profiles, the lift
    table's revenue figures) may differ in the last bits: their additions come in another order."""
    if got.equals(want):
        return "equal bit for bit"
    try:
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-9, atol=0)
    except AssertionError:
        return "NOT EQUAL"
    rel = 0.0
    for c in want.columns:
        if pd.api.types.is_float_dtype(want[c]):
            a, b = got[c].to_numpy(np.float64), want[c].to_numpy(np.float64)
            ok = ~np.isnan(b) & (b != 0)
            rel = max(rel, float(np.max(np.abs(a[ok] - b[ok]) / np.abs(b[ok]), initial=0.0)))
    return f"equal to {rel:.1e} relative (float columns; the rest bit for bit)"


def _schema(server: str, name: str) -> str:
    """A fresh schema on ``server``; the URL whose search_path points at it."""
    import sqlalchemy as sa

    _drop_schemas(server, [name])
    eng = sa.create_engine(server)
    with eng.begin() as c:
        c.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    eng.dispose()
    return f"{server}{'&' if '?' in server else '?'}options=-csearch_path%3D{name}"


def _drop_schemas(server: str, names) -> None:
    import sqlalchemy as sa

    eng = sa.create_engine(server)
    with eng.begin() as c:
        for n in names:
            c.execute(sa.text(f'DROP SCHEMA IF EXISTS "{n}" CASCADE'))
    eng.dispose()


def _published(runs: dict, schemas: dict) -> list[str]:
    """Every published table of both runs compared (``scored_at``, the publish time, left out): the
    Parquet copies row for row, and the database's tables (sorted by their key: SQL keeps no order)."""
    out = []
    where = {m: json.loads((r / "artifacts" / "published.json").read_text()) for m, r in runs.items()}
    for name, spec in publish.CONTRACT.items():
        got, want = (publish.read_parquet(where[m]["dir"], name).drop(columns="scored_at", errors="ignore")
                     for m in ("dask", "local"))
        line = f"published {name}: {len(got):,} rows, Parquet {_same(got, want)}"
        if schemas:
            key = list(spec["key"])
            got, want = (publish.read_table(schemas[m], name).drop(columns="scored_at", errors="ignore")
                         .sort_values(key, ignore_index=True) for m in ("dask", "local"))
            line += f", PostgreSQL {_same(got, want)}"
        out.append(line)
    return out


if __name__ == "__main__":
    main()
