"""Dask mode against local mode, side by side in one run (#18, #19): stage 30 (customer value), the
features of stages 40/50 and frequent itemsets, each checked equal bit for bit.

The same transactions (simulated: skewed order counts, same-day repeats, three channels) go through
the local stage (``rfm_at`` -> BG/NBD -> Gamma-Gamma -> ``customer_value``) and through
:func:`crmlab.value_dask.fit_value` on a LocalCluster of ``--workers`` processes; the run checks the two
tables and the parameters are equal bit for bit and reports wall times and their ratio. With
``--world N``, a generated world of N customers: its features at the scoring cut-off computed locally
and by customer parts on the cluster (:mod:`crmlab.events_dask`), the split timed apart. With
``--baskets N``: N skewed baskets over 20,000 items (benchmarks/affinity_bench.py's), itemsets to
length 3 at ``--support``, locally and by parts (:mod:`crmlab.affinity_dask`); with ``--local-baskets K``
(past local mode's memory) the baskets are made 5M at a time, local mode and the equality check run on
the first K, the cluster mines all N. With ``--records N``:
a generated world of about N customer source records deduplicated by :class:`RecordMatcher` and by
:class:`crmlab.identity_dask.DaskRecordMatcher` (candidate pairs by parts on the workers): time per
step, candidate pairs per second, peak memory (this process; the workers), pairwise and B-cubed F1
against the planted truth, key maps equal. With ``--sources N``: a generated world of N customers as
folders of Parquet parts, loaded and validated locally (:func:`crmlab.sources.load`) and by the workers
part by part (:mod:`crmlab.sources_dask`, written as the run's sources artifact): time, peak memory of
this process and of the workers, tables equal.

    python benchmarks/dask_bench.py --customers 200000 1000000 --world 200000 --baskets 5000000 \
        --out benchmarks/results/dask_bench.txt
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

import tempfile

from affinity_bench import PeakRSS, make_large
from crmlab import (affinity, affinity_dask, config, engine, events_dask, identity, identity_dask, matching_report,
                    sources, sources_dask, synth, targets, threads, value, value_dask)
from crmlab.events import CustomerEvents
from crmlab.features import FeatureBuilder
from crmlab.stages.value import rfm_at

ROOT = Path(__file__).resolve().parents[1]


def transactions(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` customers' orders over two years: Zipf-like order counts (1 to hundreds), values lognormal."""
    rng = np.random.default_rng(seed)
    orders = np.minimum(rng.geometric(0.25, n) * rng.choice([1, 1, 1, 2, 5], n), 400)
    cust = np.repeat(np.arange(n), orders)
    start = rng.integers(0, 600, n)[cust]
    day = np.minimum(start + rng.exponential(60, len(cust)).astype(np.int64), 729)
    return pd.DataFrame({
        "customer_key": pd.Series(np.char.add("K", cust.astype("U9")), dtype="str"),
        "order_date": pd.Timestamp("2024-12-01") + pd.to_timedelta(day, unit="D"),
        "value": np.round(rng.lognormal(3.5, 0.8, len(cust)), 2),
        "channel": pd.Series(np.array(["store", "web", "phone"])[rng.integers(0, 3, len(cust))], dtype="str"),
    })


def local(tx: pd.DataFrame, P: dict):
    end = tx["order_date"].max()
    rfm = rfm_at(tx, P, end)
    model = value.make_model(P["model"], P["covariates"]).fit(rfm)
    spend = value.GammaGamma().fit(rfm)
    return model, value.customer_value(model, spend, rfm, P["clv_months"], P["discount_rate"], P["margin"],
                                       P["time_unit_days"])


def baskets_in_chunks(n: int, chunk: int = 5_000_000):
    """affinity_bench's skewed baskets, made 5M at a time (one seed per chunk) so that memory stays
    near the result's (make_large sorts every (basket, item) key at once: 16 GB at 50M)."""
    parts = [make_large(min(chunk, n - lo), seed=lo // chunk) for lo in range(0, n, chunk)]
    m = parts[0][2]
    indptr = np.concatenate([[0]] + [p[0][1:] + sum(q[0][-1] for q in parts[:i]) for i, p in enumerate(parts)])
    return indptr.astype(np.int64), np.concatenate([p[1] for p in parts]), m


def _matched(m, rec):
    t = {}
    t0 = time.perf_counter()
    m.fit(rec)
    t["fit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    km = m.predict(rec)                  # scores, components, keys (Dask: the links stay on the workers)
    t["predict"] = time.perf_counter() - t0
    return km, t


def dedup(cluster, n_records: int, partition_rows: int, local: bool = True) -> list[str]:
    """Local and Dask record matching of one generated world, side by side (``local=False``: Dask only)."""
    import subprocess
    import sys

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        # generated in a child process (its memory goes back when it ends); only the customer tables are read
        args = ["generate", "--customers", str(max(1000, n_records * 100 // 207)), "--seed", "11", "--out", tmp,
                "--quiet"] + (["--partitions", str(max(2, n_records // 1_000_000))] if n_records > 2_000_000 else [])
        subprocess.run([sys.executable, "-m", "crmlab", *args], check=True)
        rec = sources.load_customers(tmp)
        rt = pd.read_parquet(Path(tmp) / "truth" / "record_truth.parquet", columns=["source_system", "source_id",
                                                                                     "customer_id"])
        truth = rec[["source_system", "source_id"]].merge(rt.astype({"source_id": "string"}),
                                                          on=["source_system", "source_id"],
                                                          how="left")["customer_id"].to_numpy()
        del rt
    made = time.perf_counter() - t0
    runs = {}
    if local:
        with PeakRSS() as mem:
            km, t = _matched(identity.RecordMatcher(), rec)
        runs["local"] = (km, t, mem.above)
    dm = identity_dask.DaskRecordMatcher().on(cluster.client, partition_rows=partition_rows)
    with PeakRSS() as mem:
        km, t = _matched(dm, rec)
    runs["dask"] = (km, t, mem.above)
    pairs = int(dm.blocking_["pairs"].iloc[-1])
    use = cluster.usage()
    out = [f"# dedup of {len(rec):,} source records ({pairs:,} candidate pairs; world generated and loaded in "
           f"{made:.0f} s), default RecordMatcher"
           + (f"; key maps equal: {runs['local'][0].equals(runs['dask'][0])}" if local else "")]
    for k, (km, t, mb) in runs.items():
        total = sum(t.values())
        f1 = matching_report.pairwise_scores(km["customer_key"].to_numpy(), truth)["f1"]
        bc = matching_report.bcubed_scores(km["customer_key"].to_numpy(), truth)["f1"]
        out.append(f"#   {k:5s} fit {t['fit']:7.1f} s, predict (scores, components, keys) {t['predict']:6.1f} s = "
                   f"{total:7.1f} s ({pairs / total / 1e3:,.0f} k candidate pairs/s end to end); peak {mb:,.0f} MB above "
                   f"the records in this process; pairwise F1 {f1:.4f}, B-cubed F1 {bc:.4f}")
    out.append(f"#   dask workers: peak {use.get('workers_peak_mb', float('nan')):,.0f} MB (limit per worker), "
               f"spilled {use.get('spilled_bytes', 0):,} bytes"
               + (f"; dask/local time {sum(runs['dask'][1].values()) / sum(runs['local'][1].values()):.2f}"
                  if local else ""))
    return out


def load_sources(cluster, n: int, local: bool = True, world: str | None = None) -> list[str]:
    """The inputs of a generated world of ``n`` customers (folders of parts of 100,000 customers) loaded
    and validated locally and by the workers, side by side; ``world``: a folder generated so before."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if world is None:
            world = f"{tmp}/world"
            subprocess.run([sys.executable, "-m", "crmlab", "generate", "--customers", str(n), "--seed", "42",
                            "--out", world, "--partitions", str(max(2, n // 100_000)), "--quiet"], check=True)
        made = time.perf_counter() - t0
        out, want = [], None
        if local:
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                want = sources.load(world)
                t_local = time.perf_counter() - t0
            want.write(f"{tmp}/local")
            want = sources.Sources.read_artifacts(f"{tmp}/local")
            out.append(f"#   local  {t_local:7.1f} s, peak {mem.above:,.0f} MB in this process")
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            got = sources_dask.load(cluster.client, world, f"{tmp}/dask")
            t_dask = time.perf_counter() - t0
        rows = got.row_counts()
        use = cluster.usage()
        same = ("; tables equal: " + str(all(got[k].equals(want[k]) for k in want.tables))) if local else ""
        out.append(f"#   dask   {t_dask:7.1f} s, peak {mem.above:,.0f} MB in this process; workers peak "
                   f"{use.get('workers_peak_mb', float('nan')):,.0f} MB, spilled {use.get('spilled_bytes', 0):,} bytes"
                   + (f"; dask/local time {t_dask / t_local:.2f}" if local else "") + same)
    head = (f"# load and validate the inputs of {n:,} customers (" + (f"generated in {made:.0f} s " if made > 1 else "")
            + "as parts of 100,000 customers): " + ", ".join(f"{k} {v:,}" for k, v in rows.items()))
    return [head, *out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, nargs="*", default=[200_000, 1_000_000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--partition-rows", type=int, default=1_000_000)
    ap.add_argument("--world", type=int, default=0, help="also time features on a generated world of N customers")
    ap.add_argument("--baskets", type=int, default=0, help="also time itemsets of N generated baskets")
    ap.add_argument("--support", type=float, default=0.0005)
    ap.add_argument("--local-baskets", type=int, default=0,
                    help="--baskets: local mode (and equality) on the first N baskets only; all on the cluster")
    ap.add_argument("--records", type=int, default=0, help="also deduplicate a world of about N source records")
    ap.add_argument("--sources", type=int, default=0, help="also load the inputs of a world of N customers")
    ap.add_argument("--sources-world", help="--sources: a world generated before with crmlab generate --partitions")
    ap.add_argument("--memory-limit", default="6GB", help="per worker")
    ap.add_argument("--dask-only", action="store_true", help="--records: the Dask matcher only (local mode skipped)")
    ap.add_argument("--out")
    a = ap.parse_args()
    threads.limit(None)
    P = config.load(ROOT / "params" / "default.yaml")["value"]
    lines = [f"# python benchmarks/dask_bench.py --customers {' '.join(map(str, a.customers))} "
             f"--workers {a.workers} --partition-rows {a.partition_rows} --memory-limit {a.memory_limit}"
             + (f" --world {a.world}" if a.world else "") + (f" --baskets {a.baskets}" if a.baskets else "")
             + (f" --local-baskets {a.local_baskets}" if a.local_baskets else "")
             + (f" --records {a.records}" if a.records else "") + (f" --sources {a.sources}" if a.sources else "")
             + (" --dask-only" if a.dask_only else ""),
             f"# {dt.date.today()}, {platform.machine()}, {os.cpu_count()} CPUs; LocalCluster of {a.workers} worker "
             "processes (1 thread each) on the same machine; local mode with every core in this process",
             f"{'customers':>10s} {'orders':>11s} {'local s':>8s} {'dask s':>8s} {'dask/local':>10s} "
             f"{'patterns':>9s}  equal"]
    print("\n".join(lines), flush=True)
    cluster = engine.start({"kind": "dask", "workers": a.workers, "memory_limit": a.memory_limit})
    try:
        for n in a.customers:
            tx = transactions(n)
            t0 = time.perf_counter()
            model, want = local(tx, P)
            t_local = time.perf_counter() - t0
            t0 = time.perf_counter()
            _, m2, _, got, _ = value_dask.fit_value(cluster.client, tx, P, tx["order_date"].max(), a.partition_rows)
            t_dask = time.perf_counter() - t0
            same = model.params_ == m2.params_ and model.se_ == m2.se_ and got.equals(want)
            lines.append(f"{n:>10,} {len(tx):>11,} {t_local:>8.2f} {t_dask:>8.2f} {t_dask / t_local:>10.2f} "
                         f"{m2.n_patterns_:>9,}  {same}")
            print(lines[-1], flush=True)
        if a.world:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                synth.generate(synth.WorldSpec(customers=a.world, seed=42), Path(tmp), fmt="parquet")
                ev = CustomerEvents.from_sources(sources.load(Path(tmp)))
                made = time.perf_counter() - t0
            cut = targets.cutoffs(ev.last_date, 90)["score"]
            fb = FeatureBuilder().fit(ev, cut)
            t0 = time.perf_counter()
            want = fb.transform(ev, cut)
            t_local = time.perf_counter() - t0
            t0 = time.perf_counter()
            parts = events_dask.PartitionedEvents(cluster.client, ev, a.partition_rows)
            t_split = time.perf_counter() - t0
            t0 = time.perf_counter()
            got = parts.features(fb, cut)
            t_parts = time.perf_counter() - t0
            lines.append(f"# features at the scoring cut-off, world of {a.world:,} customers ({len(ev.orders):,} orders, "
                         f"{len(ev.lines):,} lines; generated and keyed in {made:.0f} s): local {t_local:.2f} s; "
                         f"Dask {parts.n} parts: split + scatter {t_split:.2f} s (once per stage), features "
                         f"{t_parts:.2f} s ({t_parts / t_local:.2f}x local's time); equal {got.equals(want)}")
            print(lines[-1], flush=True)
        if a.baskets:                 # --local-baskets K: local mode (and equality) on the first K only
            indptr, indices, m = baskets_in_chunks(a.baskets) if a.local_baskets else make_large(a.baskets)
            b = affinity.Baskets(indptr, indices, pd.Index(np.arange(m)))
            k = min(a.local_baskets or a.baskets, a.baskets)
            sub = b if k == a.baskets else affinity.Baskets(indptr[:k + 1], indices[:indptr[k]], b.items)
            t0 = time.perf_counter()
            want = affinity.frequent_itemsets(sub, min_support=a.support, max_len=3, columnar=True)
            t_local = time.perf_counter() - t0
            for part, n in ((sub, k), (b, a.baskets))[:1 if k == a.baskets else 2]:
                t0 = time.perf_counter()
                got = affinity_dask.frequent_itemsets(cluster.client, part, a.support, 3,
                                                      partition_baskets=a.partition_rows)
                t_parts = time.perf_counter() - t0
                use = cluster.usage()
                same = (f"local {t_local:.2f} s ({t_parts / t_local:.2f}x); equal "
                        f"{all(np.array_equal(getattr(got, f), getattr(want, f)) for f in ('flat', 'lens', 'counts'))}"
                        if n == k else "local mode not run")
                lines.append(f"# itemsets to length 3 of {n:,} baskets ({int(part.indptr[-1]):,} items in them) over "
                             f"{m:,} items at support {a.support:g}: {len(got):,} itemsets, Dask {t_parts:.2f} s; "
                             f"{same}; workers peak {use.get('workers_peak_mb', float('nan')):,.0f} MB, spilled "
                             f"{use.get('spilled_bytes', 0):,} bytes")
                print(lines[-1], flush=True)
        if a.records:
            lines += dedup(cluster, a.records, a.partition_rows, local=not a.dask_only)
            print("\n".join(lines[-4:]), flush=True)
        if a.sources:
            lines += load_sources(cluster, a.sources, local=not a.dask_only, world=a.sources_world)
            print("\n".join(lines[-3:]), flush=True)
    finally:
        cluster.close()
    if a.out:
        Path(a.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
