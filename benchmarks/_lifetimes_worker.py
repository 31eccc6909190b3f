"""Runs lifetimes on a saved (x, t_x, T, m) sample and prints timings as JSON (used by value_bench.py).

Runs in its own environment: lifetimes 0.11.3 needs numpy < 2, which numba 0.68 cannot share.
"""
import json
import sys
import time

import numpy as np
import pandas as pd
from lifetimes import BetaGeoFitter, GammaGammaFitter


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main(path, weights_only):
    d = np.load(path)
    df = pd.DataFrame({"frequency": d["x"], "recency": d["tx"], "T": d["T"], "monetary_value": d["m"]})
    res = {}
    if not weights_only:
        bgf, res["fit_wall"], res["fit_cpu"] = timed(lambda: BetaGeoFitter().fit(df["frequency"], df["recency"], df["T"]))
        res["params"] = {k: float(v) for k, v in bgf.params_.items()}
    pat = df.groupby(["frequency", "recency", "T"]).size().rename("w").reset_index()
    bgw, res["fit_weights_wall"], res["fit_weights_cpu"] = timed(
        lambda: BetaGeoFitter().fit(pat["frequency"], pat["recency"], pat["T"], weights=pat["w"]))
    res["params_weights"] = {k: float(v) for k, v in bgw.params_.items()}
    rep = df[df["frequency"] > 0]
    ggf, res["gg_wall"], res["gg_cpu"] = timed(lambda: GammaGammaFitter().fit(rep["frequency"], rep["monetary_value"]))
    res["gg_params"] = {k: float(v) for k, v in ggf.params_.items()}
    clv, res["clv_wall"], res["clv_cpu"] = timed(lambda: ggf.customer_lifetime_value(
        bgw, df["frequency"], df["recency"], df["T"], df["monetary_value"], time=12, discount_rate=0.01, freq="W"))
    np.save(path.replace(".npz", "_lifetimes_clv.npy"), np.asarray(clv, dtype=np.float64))
    print(json.dumps(res))


if __name__ == "__main__":
    main(sys.argv[1], len(sys.argv) > 2 and sys.argv[2] == "weights-only")
