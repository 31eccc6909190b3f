"""Customer value at scale: crmlab vs lifetimes, side by side in one run.

    python benchmarks/value_bench.py --sizes 1000000 10000000 --lifetimes-python .bench/lifetimes/bin/python

For each size, simulated BG/NBD + Gamma-Gamma customers (CDNOW parameters, tenure up to 78 weeks at
day resolution) are fitted and scored (12-month CLV, 1% monthly discount) by crmlab; lifetimes is
run on the same data in its own environment (it needs numpy < 2; see benchmarks/README.md). Above
``--lifetimes-max`` customers lifetimes is run with pattern weights only (its plain fit takes
~15 minutes at 10M). Reports wall and CPU seconds, ratios, and the agreement of parameters and CLV.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd

from crmlab import value

TRUE = dict(r=0.243, alpha=4.414, a=0.793, b=2.426, p=6.25, q=3.74, gamma=15.44)


def simulate(n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    T = rng.integers(1, 78 * 7 + 1, n) / 7
    x, tx, T = value.simulate_bgnbd(n, TRUE["r"], TRUE["alpha"], TRUE["a"], TRUE["b"], T, seed=seed + 1)
    nu = rng.gamma(TRUE["q"], 1 / TRUE["gamma"], n)
    k = np.maximum(x, 1)
    m = np.where(x > 0, rng.gamma(TRUE["p"] * k, 1 / (nu * k)), 0.0)
    return x, tx, T, m


def run_crmlab(rfm: pd.DataFrame) -> dict:
    out = {}
    w, c = time.perf_counter(), time.process_time()
    bg = value.BetaGeo().fit(rfm)
    out["fit_wall"], out["fit_cpu"] = time.perf_counter() - w, time.process_time() - c
    w2, c2 = time.perf_counter(), time.process_time()
    gg = value.GammaGamma().fit(rfm)
    clv = value.clv(bg, gg, rfm, months=12, discount_rate=0.01, month=4.345)      # lifetimes' month
    out["score_wall"], out["score_cpu"] = time.perf_counter() - w2, time.process_time() - c2
    out["total_wall"], out["total_cpu"] = time.perf_counter() - w, time.process_time() - c
    out["params"], out["gg_params"], out["patterns"] = bg.params_, gg.params_, bg.n_patterns_
    out["clv"] = clv
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--lifetimes-python", default=os.environ.get("CRMLAB_LIFETIMES_PYTHON"),
                    help="python of an environment with lifetimes 0.11.3 (omit to skip the comparison)")
    ap.add_argument("--lifetimes-max", type=int, default=1_000_000,
                    help="largest size for lifetimes' unweighted fit")
    a = ap.parse_args()
    # warm the JIT cache so compile time is not counted (a scheduled run has a warm cache)
    warm = simulate(2000, seed=99)
    run_crmlab(pd.DataFrame(dict(zip(("frequency", "recency", "T", "monetary_value"), warm))))
    rows = []
    for n in a.sizes:
        x, tx, T, m = simulate(n)
        rfm = pd.DataFrame({"frequency": x, "recency": tx, "T": T, "monetary_value": m})
        ours = run_crmlab(rfm)
        row = {"customers": n, "patterns": ours["patterns"], "crmlab fit s": ours["fit_wall"],
               "crmlab fit+score s": ours["total_wall"], "crmlab cpu s": ours["total_cpu"]}
        row.update({f"crmlab {k}": round(v, 4) for k, v in ours["params"].items()})
        if a.lifetimes_python:
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "sample.npz")
                np.savez(path, x=x, tx=tx, T=T, m=m)
                args = [a.lifetimes_python, os.path.join(os.path.dirname(__file__), "_lifetimes_worker.py"), path]
                if n > a.lifetimes_max:
                    args.append("weights-only")
                t0 = time.perf_counter()
                proc = subprocess.run(args, capture_output=True, text=True)
                if proc.returncode:
                    sys.exit(f"lifetimes worker failed:\n{proc.stderr[-3000:]}")
                lt = json.loads(proc.stdout.strip().splitlines()[-1])
                lt_clv = np.load(path.replace(".npz", "_lifetimes_clv.npy"))
            lt_total = (lt.get("fit_wall", np.nan) + lt["gg_wall"] + lt["clv_wall"])
            lt_total_w = lt["fit_weights_wall"] + lt["gg_wall"] + lt["clv_wall"]
            row.update({
                "lifetimes fit s": lt.get("fit_wall", np.nan), "lifetimes fit (weights) s": lt["fit_weights_wall"],
                "lifetimes CLV s": lt["clv_wall"], "lifetimes fit+score s": lt_total,
                "lifetimes (weights) fit+score s": lt_total_w,
                "speed-up vs lifetimes": lt_total / ours["total_wall"],
                "speed-up vs lifetimes (weights)": lt_total_w / ours["total_wall"],
                "max |param rel diff|": max(abs(ours["params"][k] / lt["params_weights"][k] - 1)
                                            for k in ("r", "alpha", "a", "b")),
                "CLV max rel diff": float(np.max(np.abs(ours["clv"] - lt_clv) / np.maximum(np.abs(lt_clv), 1e-9))),
                "lifetimes wall incl. start s": time.perf_counter() - t0})
        rows.append(row)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    table = pd.DataFrame(rows).set_index("customers").T
    with pd.option_context("display.float_format", "{:,.4g}".format, "display.width", 160):
        print("\n" + table.to_string())


if __name__ == "__main__":
    main()
