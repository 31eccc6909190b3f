"""Frequent itemsets and association rules: crmlab vs mlxtend vs pyfim, side by side in one run.

    pip install -e '.[bench]'          # adds pyfim
    python benchmarks/affinity_bench.py [--large-baskets 5000000] [--pyfim-large] [--no-rules]

1. Groceries (9,835 baskets, 169 items), all frequent itemsets at support 0.001 (13,492).
2. Synthetic: N baskets (default 5M, Zipf item popularity over 20k items, ~8 items a basket),
   frequent pairs at support 0.0005: crmlab's pair kernel vs scipy X'X with pruning (and pyfim with
   --pyfim-large: ~80 s and ~3 GB).
3. Large rules: Groceries at support 0.0003 (3 baskets; 166,682 itemsets, longest 10), confidence
   0.3: 446,746 single-consequent rules (crmlab vs pyfim's fpgrowth target 'r', mode 'o') and
   1,049,834 any-consequent rules (crmlab vs mlxtend's association_rules), from baskets to rules.
   crmlab's columnar :class:`Rules` and its mlxtend-shaped frame of frozensets are timed apart.
   Every method's rule set is reduced to one digest (outside the timing) and checked equal.

Each method runs in its own process; peak memory is the process's maximum resident set size above
what it held after loading the data. CPU seconds count every thread.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


class PeakRSS:
    """Peak resident memory (MB) above the level at entry, sampled every 5 ms from /proc."""

    def __enter__(self):
        import threading

        self._page = os.sysconf("SC_PAGE_SIZE") / 2**20
        self.base = self.peak = self._now()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    def _now(self) -> float:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self._page

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._now())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._now())
        self.above = self.peak - self.base


def _best(fn, reps):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times), out


def groceries(reps: int) -> list[dict]:
    from crmlab import affinity, datasets
    from crmlab.kernels import baskets as K

    b = datasets.read_groceries(ROOT / "data" / "groceries" / "groceries.csv")
    mc = affinity._min_count(0.001, b.n_baskets)
    K.frequent_itemsets(b.indptr, b.indices, b.n_items, mc)               # compile / load the cache
    rows = []
    best, med, out = _best(lambda: K.frequent_itemsets(b.indptr, b.indices, b.n_items, mc), reps)
    rows.append({"method": "crmlab kernel", "seconds": best, "median": med, "itemsets": len(out[1])})
    best, med, out = _best(lambda: affinity.frequent_itemsets(b, 0.001, use_colnames=True), reps)
    rows.append({"method": "crmlab frequent_itemsets (DataFrame of frozensets)", "seconds": best, "median": med,
                 "itemsets": len(out)})
    try:
        import fim

        lists = [b.items[b.indices[b.indptr[i]:b.indptr[i + 1]]].tolist() for i in range(b.n_baskets)]
        best, med, out = _best(lambda: fim.fpgrowth(lists, target="s", supp=0.1, zmin=1, report="a"), reps)
        rows.append({"method": "pyfim fpgrowth", "seconds": best, "median": med, "itemsets": len(out)})
        best, med, out = _best(lambda: fim.eclat(lists, target="s", supp=0.1, zmin=1, report="a"), reps)
        rows.append({"method": "pyfim eclat", "seconds": best, "median": med, "itemsets": len(out)})
    except ImportError:
        rows.append({"method": "pyfim (not installed: pip install pyfim)"})
    from mlxtend.frequent_patterns import fpgrowth

    onehot = b.to_onehot()
    best, med, out = _best(lambda: fpgrowth(onehot, min_support=0.001), max(1, reps // 5))
    rows.append({"method": "mlxtend fpgrowth", "seconds": best, "median": med, "itemsets": len(out)})
    return rows


def make_large(n: int, m: int = 20000, mean_size: float = 8.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    sizes = 1 + rng.poisson(mean_size - 1, n)
    w = 1.0 / (np.arange(m) + 10.0) ** 0.9
    cdf = np.cumsum(w) / w.sum()
    items = np.searchsorted(cdf, rng.random(int(sizes.sum()))).astype(np.int64)
    b = np.repeat(np.arange(n, dtype=np.int64), sizes)
    key = np.unique(b * m + items)                                        # one entry per (basket, item)
    b, items = key // m, (key % m).astype(np.int32)
    indptr = np.r_[0, np.cumsum(np.bincount(b, minlength=n))].astype(np.int64)
    return indptr, items, m


def _worker(method: str, path: str, support: float) -> None:
    d = np.load(path)
    indptr, indices, m = d["indptr"], d["indices"], int(d["m"])
    n = len(indptr) - 1
    mc = int(np.ceil(support * n))
    if method == "crmlab":
        from crmlab.kernels import baskets as K

        K.pair_counts(indptr[:1001], indices[:indptr[1000]], m, 1)            # load the compiled kernel
        with PeakRSS() as mem:
            t = time.perf_counter()
            a, c, cnt = K.pair_counts(indptr, indices, m, mc)
            pairs = len(cnt)
    elif method == "scipy":
        import scipy.sparse as sp

        with PeakRSS() as mem:
            t = time.perf_counter()
            X = sp.csr_matrix((np.ones(len(indices), np.int32), indices, indptr), shape=(n, m))
            counts = np.asarray(X.sum(axis=0)).ravel()
            keep = np.flatnonzero(counts >= mc)
            Xf = X[:, keep]
            C = sp.triu((Xf.T @ Xf).tocsr(), k=1)
            pairs = int((C.data >= mc).sum())
    elif method == "pyfim":
        import fim

        lists = [indices[indptr[i]:indptr[i + 1]].tolist() for i in range(n)]
        with PeakRSS() as mem:
            t = time.perf_counter()
            pairs = sum(1 for s in fim.fpgrowth(lists, target="s", supp=support * 100, zmin=2, zmax=2, report="a"))
    else:
        raise SystemExit(f"unknown method {method}")
    print(json.dumps({"method": method, "seconds": time.perf_counter() - t, "pairs": pairs,
                      "peak_mb_above_data": mem.above}))


def large(n: int, support: float, with_pyfim: bool) -> list[dict]:
    indptr, indices, m = make_large(n)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "baskets.npz")
        np.savez(path, indptr=indptr, indices=indices, m=m)
        for method in ["crmlab", "scipy"] + (["pyfim"] if with_pyfim else []):
            proc = subprocess.run([sys.executable, __file__, "--worker", method, path, str(support)],
                                  capture_output=True, text=True)
            if proc.returncode:
                rows.append({"method": method, "error": proc.stderr[-500:]})
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return rows


RULES_SUPPORT, RULES_MIN_COUNT, RULES_CONFIDENCE = 0.0003, 3, 0.3


def _digest(pairs) -> str:
    """One hash of a rule set: each rule as (sorted antecedent, sorted consequent) labels, sorted."""
    import hashlib

    keys = sorted((tuple(sorted(map(str, a))), tuple(sorted(map(str, c)))) for a, c in pairs)
    return hashlib.sha256(repr(keys).encode()).hexdigest()[:16]


def _rules_worker(method: str) -> None:
    """One large-rules run in this process: baskets -> itemsets -> rules, timed and measured."""
    from crmlab import datasets

    b = datasets.read_groceries(ROOT / "data" / "groceries" / "groceries.csv")
    single = method.endswith("single")
    if method.startswith("crmlab"):
        from crmlab import affinity

        tiny = affinity.frequent_itemsets(b, 0.01, columnar=True)                 # load the compiled kernels
        affinity.association_rules(tiny, min_threshold=0.5)
        from crmlab.warm import _parallel_rules

        _parallel_rules()
    elif method.startswith("mlxtend"):
        from mlxtend.frequent_patterns import association_rules, fpgrowth

        onehot = b.to_onehot()
    else:
        import fim

        lists = [b.items[b.indices[b.indptr[i]:b.indptr[i + 1]]].tolist() for i in range(b.n_baskets)]
    with PeakRSS() as mem:
        c0, t0 = time.process_time(), time.perf_counter()
        if method.startswith("crmlab"):
            its = affinity.frequent_itemsets(b, RULES_SUPPORT, columnar=True)
            t1 = time.perf_counter()
            rules = affinity.association_rules(its, metric="confidence", min_threshold=RULES_CONFIDENCE,
                                               max_consequent_len=1 if single else None)
            if "frame" in method:
                rules = rules.to_frame()
        elif method.startswith("mlxtend"):
            fi = fpgrowth(onehot, min_support=RULES_SUPPORT, use_colnames=True)
            t1 = time.perf_counter()
            rules = association_rules(fi, num_itemsets=len(onehot), metric="confidence",
                                      min_threshold=RULES_CONFIDENCE)
        else:
            t1 = t0
            rules = fim.fpgrowth(lists, target="r", supp=-RULES_MIN_COUNT, conf=RULES_CONFIDENCE * 100, zmin=2,
                                 report="scl", mode="o")
        t2, c2 = time.perf_counter(), time.process_time()
    if method.startswith("pyfim"):
        pairs = ((body, (head,)) for head, body, *_ in rules)
    elif method.startswith("crmlab") and "frame" not in method:
        pairs = zip(rules.antecedents(), rules.consequents())
    else:
        pairs = zip(rules["antecedents"], rules["consequents"])
    print(json.dumps({"method": method, "rules": len(rules), "mine_s": t1 - t0, "rules_s": t2 - t1,
                      "total_s": t2 - t0, "cpu_s": c2 - c0, "peak_mb_above_data": mem.above,
                      "digest": _digest(pairs)}))


def large_rules(with_mlxtend: bool) -> list[dict]:
    methods = ["crmlab single", "crmlab frame single", "pyfim single", "crmlab any", "crmlab frame any"]
    methods += ["mlxtend any"] if with_mlxtend else []
    rows = []
    for method in methods:
        proc = subprocess.run([sys.executable, __file__, "--rules-worker", method.replace(" ", "-")],
                              capture_output=True, text=True)
        if proc.returncode:
            rows.append({"method": method, "error": proc.stderr[-800:]})
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]) | {"method": method})
    return rows


def print_large_rules(rows: list[dict]) -> None:
    print(f"\nLarge rules: Groceries at support {RULES_SUPPORT} ({RULES_MIN_COUNT} baskets), confidence "
          f"{RULES_CONFIDENCE}; baskets -> rules (ratio = method total / crmlab total, same consequents)")
    ref = {kind: next((r for r in rows if r["method"] == f"crmlab {kind}" and "total_s" in r), None)
           for kind in ("single", "any")}
    for r in rows:
        if "error" in r:
            print(f"  {r['method']:<22} failed: {r['error']}")
            continue
        base = ref["single" if r["method"].endswith("single") else "any"]
        same = "same rules" if base and r["digest"] == base["digest"] else "DIFFERENT RULES"
        print(f"  {r['method']:<22} rules {r['rules']:>9,}  mine {r['mine_s']:6.2f} s  rules {r['rules_s']:6.2f} s  "
              f"total {r['total_s']:6.2f} s ({r['cpu_s']:6.2f} CPU-s)  peak +{r['peak_mb_above_data']:6,.0f} MB  "
              f"ratio {r['total_s'] / base['total_s']:6.1f}  {same}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], sys.argv[3], float(sys.argv[4]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--rules-worker":
        _rules_worker(sys.argv[2].replace("-", " "))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--large-baskets", type=int, default=5_000_000)
    ap.add_argument("--support", type=float, default=0.0005)
    ap.add_argument("--pyfim-large", action="store_true")
    ap.add_argument("--no-rules", action="store_true", help="skip the large-rules case")
    ap.add_argument("--no-mlxtend-rules", action="store_true", help="large rules without mlxtend (~90 s, ~1.5 GB)")
    a = ap.parse_args()
    g = groceries(a.reps)
    ours = next(r["seconds"] for r in g if r["method"] == "crmlab frequent_itemsets (DataFrame of frozensets)")
    print("Groceries, support 0.001 (best of repeats; ratio = method time / crmlab frequent_itemsets time)")
    for r in g:
        if "seconds" in r:
            print(f"  {r['method']:<52} {r['seconds']:8.4f} s  itemsets {r['itemsets']:>6,}  "
                  f"ratio {r['seconds'] / ours:7.2f}")
        else:
            print(f"  {r['method']}")
    if a.large_baskets:
        rows = large(a.large_baskets, a.support, a.pyfim_large)
        ref = next((r["seconds"] for r in rows if r.get("method") == "crmlab" and "seconds" in r), None)
        print(f"\n{a.large_baskets:,} baskets over 20,000 items, frequent pairs at support {a.support}")
        for r in rows:
            if "error" in r:
                print(f"  {r['method']:<10} failed: {r['error']}")
            else:
                print(f"  {r['method']:<10} {r['seconds']:8.2f} s  pairs {r['pairs']:>9,}  peak +{r['peak_mb_above_data']:,.0f} MB"
                      + (f"  ratio {r['seconds'] / ref:6.1f}" if ref else ""))
    if not a.no_rules:
        print_large_rules(large_rules(not a.no_mlxtend_rules))


if __name__ == "__main__":
    main()
