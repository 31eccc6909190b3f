"""Record matching: crmlab vs Splink (DuckDB) and recordlinkage, side by side in one run.

    python benchmarks/identity_bench.py --linkage-python .bench/linkage/bin/python [--dedup-records 1000000]

1. Jaro-Winkler on candidate pairs: crmlab's kernel vs rapidfuzz ``cpdist`` (pairs per second, and
   the largest difference between the two).
2. FEBRL 4 end to end (5,000 x 5,000, no soc_sec_id, unsupervised, default threshold): crmlab, and in
   their own environment (they need pandas < 3) Splink 4 on DuckDB and recordlinkage (ECM):
   wall and CPU seconds (best of ``--repeats`` runs each), precision, recall, F1.
3. Dedup of a synthetic world with about ``--dedup-records`` source records: wall time, peak memory,
   pairwise and B-cubed F1 against the planted truth.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def jaro_winkler_speed(n_pairs: int = 5_000_000) -> dict:
    from crmlab import sources
    from crmlab.kernels import strings as S

    names = sources.load(ROOT / "data" / "sample").customers["last_name_std"].dropna().to_numpy(dtype=object)
    rng = np.random.default_rng(0)
    left, right = rng.integers(0, len(names), n_pairs), rng.integers(0, len(names), n_pairs)
    arena = S.to_arena(names.tolist())
    S.jaro_winkler(arena, arena, left[:1000], right[:1000])                   # load the compiled kernel
    t = time.perf_counter()
    ours = S.jaro_winkler(arena, arena, left, right)
    t_ours = time.perf_counter() - t
    out = {"pairs": n_pairs, "crmlab_pairs_per_s": n_pairs / t_ours}
    try:
        from rapidfuzz.distance import JaroWinkler
        from rapidfuzz.process import cpdist

        a, b = names[left].tolist(), names[right].tolist()
        t = time.perf_counter()
        ref = cpdist(a, b, scorer=JaroWinkler.normalized_similarity, workers=-1)
        t_ref = time.perf_counter() - t
        out.update(rapidfuzz_pairs_per_s=n_pairs / t_ref, ratio=t_ref / t_ours,
                   max_abs_diff=float(np.max(np.abs(ours - ref))))
    except ImportError:
        out["rapidfuzz"] = "not installed (pip install rapidfuzz)"
    return out


def febrl_crmlab(reps: int) -> dict:
    from crmlab import datasets, matching_report

    records, truth = datasets.read_febrl4(ROOT / "data" / "febrl")
    datasets.febrl_matcher().fit_predict(records.iloc[::10])                 # load compiled kernels
    runs = []
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        km = datasets.febrl_matcher().fit_predict(records)
        wall, cpu = time.perf_counter() - w, time.process_time() - c
        runs.append({"tool": "crmlab", "wall_s": wall, "cpu_s": cpu,
                     **matching_report.pairwise_scores(km["customer_key"].to_numpy(), truth)})
    return min(runs, key=lambda r: r["cpu_s"])


def dedup(n_records: int) -> dict:
    from affinity_bench import PeakRSS

    from crmlab import identity, matching_report, sources, synth

    with tempfile.TemporaryDirectory() as tmp:
        synth.generate(synth.WorldSpec(customers=max(1000, n_records * 100 // 207), seed=11), tmp, fmt="parquet")
        rec = sources.load(tmp).customers
        rt = pd.read_parquet(Path(tmp) / "truth" / "record_truth.parquet")
        truth = rec.merge(rt, on=["source_system", "source_id"], how="left")["customer_id"].to_numpy()
    with PeakRSS() as mem:
        w, c = time.perf_counter(), time.process_time()
        m = identity.RecordMatcher()
        km = m.fit_predict(rec)
        wall, cpu = time.perf_counter() - w, time.process_time() - c
    return {"records": len(rec), "wall_s": wall, "cpu_s": cpu, "peak_gb_above_input": mem.above / 1024,
            "candidate_pairs": len(m.pairs_.left),
            "pairwise_f1": matching_report.pairwise_scores(km["customer_key"].to_numpy(), truth)["f1"],
            "bcubed_f1": matching_report.bcubed_scores(km["customer_key"].to_numpy(), truth)["f1"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--linkage-python", default=os.environ.get("CRMLAB_LINKAGE_PYTHON"),
                    help="python of an environment with splink and recordlinkage (omit to skip them)")
    ap.add_argument("--dedup-records", type=int, default=1_000_000)
    ap.add_argument("--jw-pairs", type=int, default=5_000_000)
    ap.add_argument("--repeats", type=int, default=3, help="FEBRL runs per tool; the best (least CPU) is reported")
    a = ap.parse_args()
    jw = jaro_winkler_speed(a.jw_pairs)
    print("Jaro-Winkler on candidate pairs:", json.dumps({k: round(v, 6) if isinstance(v, float) else v
                                                          for k, v in jw.items()}), flush=True)
    rows = [febrl_crmlab(a.repeats)]
    if a.linkage_python:
        for tool in ("splink", "recordlinkage"):
            proc = subprocess.run([a.linkage_python, str(Path(__file__).with_name("_linkage_worker.py")), tool,
                                   str(ROOT / "data" / "febrl"), str(a.repeats)], capture_output=True, text=True)
            if proc.returncode:
                rows.append({"tool": tool, "error": proc.stderr[-800:]})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    table = pd.DataFrame(rows).set_index("tool")
    if "cpu_s" in table:
        table["cpu_vs_crmlab"] = table["cpu_s"] / table.loc["crmlab", "cpu_s"]
    with pd.option_context("display.float_format", "{:,.4f}".format, "display.width", 160):
        print("\nFEBRL 4 (no soc_sec_id, unsupervised)\n" + table.to_string(), flush=True)
    if a.dedup_records:
        print("\nDedup of synthetic source records:", json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                                                 for k, v in dedup(a.dedup_records).items()}))


if __name__ == "__main__":
    main()
