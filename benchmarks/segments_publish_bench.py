"""Segment assignment and publishing at scale, side by side with the peer in one run.

    python benchmarks/segments_publish_bench.py --rows 10000000 --publish-rows 1000000

* assignment: crmlab's compiled nearest-centre kernel (impute + log + standardise + nearest of k
  centres, one pass) vs scikit-learn ``KMeans.predict`` on the same standardised features (which
  excludes the preparation crmlab does inside the kernel) for ``rows`` x 10 customers, k = 6;
* publishing: ``publish.publish`` of ``publish-rows`` customer_scores + 2x key-map rows to SQLite
  (one transaction, with indexes and the contract check) vs a plain ``DataFrame.to_sql`` of the same
  tables (no transaction guarantees, no indexes); and one-at-a-time lookups by source id.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import pandas as pd


def best(fn, repeats):
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


def bench_assign(n, repeats):
    from sklearn.cluster import KMeans

    from crmlab.segments import Segmenter

    rng = np.random.default_rng(0)
    centers = rng.normal(scale=3, size=(6, 10))
    X = pd.DataFrame(centers[rng.integers(6, size=n)] + rng.normal(size=(n, 10)),
                     columns=[f"f{i}" for i in range(10)])
    X["f9"] = np.exp(X["f9"])
    X.iloc[::50, 2] = np.nan
    seg = Segmenter(k=6, bootstraps=0, random_state=0).fit(X.iloc[:200_000])
    km = KMeans(6, n_init=1, init=seg.centers_, max_iter=1).fit(seg.transform(X.iloc[:1000]))
    km.cluster_centers_ = seg.centers_.copy()
    seg.predict(X.iloc[:1000])                                     # compile
    from crmlab.kernels.segments import nearest_center

    Z = seg.transform(X)
    d = Z.shape[1]
    ident = (np.zeros(d), np.zeros(d, bool), np.zeros(d), np.ones(d), seg.centers_)
    t_k = best(lambda: seg.predict(X), repeats)
    t_s = best(lambda: km.predict(seg.transform(X)), repeats)
    t_k0 = best(lambda: nearest_center(Z, *ident), repeats)
    t_s0 = best(lambda: km.predict(Z), repeats)
    agree = float(np.mean(seg.predict(X) == km.predict(Z)))
    print(f"assignment of {n:,} x 10, k=6, from the DataFrame (impute, log, standardise, nearest centre):")
    print(f"  crmlab Segmenter.predict (kernel)        {t_k:6.3f} s  {n / t_k / 1e6:5.1f} M rows/s")
    print(f"  NumPy preparation + KMeans.predict       {t_s:6.3f} s  -> kernel {t_s / t_k:.1f}x faster")
    print(f"  nearest centre only, standardised input: kernel {t_k0:.3f} s, KMeans.predict {t_s0:.3f} s "
          f"-> {t_s0 / t_k0:.1f}x; labels agree {agree:.6f}")


def bench_publish(n, repeats, lookups=10000):
    from crmlab import publish

    keys = np.char.add("K", np.arange(n).astype(str)).astype(object)
    scores = pd.DataFrame({
        "customer_key": keys, "segment_id": np.int64(1), "segment": "Active web shoppers", "value_band": "high",
        "risk_band": "low", "value_risk_cell": "high value / low risk", "value": np.random.rand(n),
        "p_alive": 0.8, "expected_purchases_365d": 2.0, "attrition_risk": np.random.rand(n),
        "propensity_food": np.random.rand(n), "response_propensity": 0.1, "next_best_offer": "P0001",
        "next_best_offer_name": "Bananas", "preferred_channel": "web", "preferred_medium": "email",
        "treatment": "offer", "rule": "r", "contact": True, "contact_reason": None, "control": False,
        "model_version": "m1", "decision_version": "d1"})
    km = pd.DataFrame({"source_system": np.repeat(["web", "store"], n),
                       "source_id": np.concatenate([np.char.add("W", np.arange(n).astype(str)),
                                                    np.char.add("S", np.arange(n).astype(str))]).astype(object),
                       "customer_key": np.concatenate([keys, keys]), "match_confidence": 1.0})
    with tempfile.TemporaryDirectory() as d:
        url = publish.default_url(d)
        t_pub = best(lambda: publish.publish({"customer_scores": scores, "customer_key_map": km}, url, keep=2), repeats)
        import sqlalchemy as sa
        eng = sa.create_engine(f"sqlite:///{d}/plain.sqlite")
        t_plain = best(lambda: (scores.to_sql("s", eng, if_exists="replace", index=False, chunksize=50_000),
                                km.to_sql("k", eng, if_exists="replace", index=False, chunksize=50_000)), repeats)
        eng.dispose()
        ids = np.random.default_rng(1).integers(n, size=lookups)
        with publish.Lookup(url) as lk:
            lk.get("web", "W0")
            t0 = time.perf_counter()
            for i in ids:
                lk.get("web", f"W{i}")
            per = (time.perf_counter() - t0) / lookups
    print(f"publish {n:,} scores + {2 * n:,} key-map rows to SQLite: {t_pub:.1f} s "
          f"(plain to_sql without transaction or indexes {t_plain:.1f} s -> ratio {t_pub / t_plain:.2f}); "
          f"lookup {per * 1e3:.3f} ms each ({lookups:,} random ids)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--publish-rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    bench_assign(a.rows, a.repeats)
    bench_publish(a.publish_rows, max(1, a.repeats - 2))
