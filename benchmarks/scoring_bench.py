"""Bulk scoring: crmlab's compiled kernels vs scikit-learn (and lleaves), side by side in one run.

    python benchmarks/scoring_bench.py --rows 10000000 --tree-rows 1000000 --lleaves-python .bench/lleaves/bin/python

Data: ``rows`` x 30 float32 features (5% missing in three columns), a binary label from a known
logistic model. Models are fitted on 200k rows: a logistic pipeline (impute, scale, logistic) and a
200-tree / 31-leaf HistGradientBoostingClassifier, both exported with ``PropensityModel.compile``.

* logistic: the kernel on the float32 matrix vs the memory-bandwidth floor (``numpy`` sum of the
  same matrix: the least any pass over it costs) and vs scikit-learn's ``predict_proba``;
* trees: the kernel vs scikit-learn HGB ``predict_proba`` on ``tree-rows`` rows, and vs lleaves
  (LightGBM compiled with LLVM, same size of ensemble trained on the same rows) in its own
  environment (lleaves needs llvmlite 0.44, numba 0.68 needs 0.46; see benchmarks/README.md).

From the DataFrame (``--frame-rows``): the Telco churn table (bundled, 10 string columns) and the
synthetic sample's customer features (attrition target), each replicated, scored by
``CompiledModel.predict_proba(DataFrame)`` with string columns as pandas reads them (``str``) and as
``category``; encoding and kernel timed apart; against scikit-learn and, for Telco's trees, lleaves
from the same DataFrame. Then the cost of calibration: cross-fitted (cv=5) vs a 20% holdout.

Timings are the best of ``--repeats`` after a warm-up (compilation excluded); the agreement of
compiled and scikit-learn probabilities is printed too.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile

import numpy as np
import pandas as pd

import _frame_scoring as fs
from _frame_scoring import best
from crmlab.kernels import scoring
from crmlab.propensity import PropensityModel

P = 30


def make_data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, P), dtype=np.float32)
    w = rng.normal(size=P) / np.sqrt(P) * 2
    z = X @ w.astype(np.float32) + 0.5 * np.sin(3 * X[:, 0]) * X[:, 1]
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.int8)
    for j in (2, 7, 11):
        X[rng.random(n) < 0.05, j] = np.nan
    return X, y


def frame(X):
    return pd.DataFrame(X, columns=[f"f{j:02d}" for j in range(X.shape[1])], copy=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--tree-rows", type=int, default=1_000_000)
    ap.add_argument("--sklearn-rows", type=int, default=1_000_000, help="rows for scikit-learn's logistic scoring")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lleaves-python", help="python of an environment with lleaves and lightgbm")
    ap.add_argument("--frame-rows", type=int, default=2_000_000, help="rows of the DataFrame cases (0: skip them)")
    ap.add_argument("--only-frames", action="store_true", help="skip the numeric-matrix cases")
    a = ap.parse_args()
    import numba

    print(f"machine: {os.cpu_count()} CPUs; numba threads {numba.get_num_threads()}", flush=True)
    if a.frame_rows:
        frame_cases(a)
    if a.only_frames:
        return
    X, y = make_data(a.rows)
    fit_n = 200_000
    Xf = frame(X[:fit_n])
    print(f"data: {a.rows:,} x {P} float32 ({X.nbytes / 2**30:.2f} GiB); models fitted on {fit_n:,} rows")

    # ---------------------------------------------------------------- logistic
    lr = PropensityModel(kind="logistic", calibration="none").fit(Xf, y[:fit_n])
    cm = lr.compile("bench").arrays
    t_floor, _ = best(lambda: X.sum(dtype=np.float32), a.repeats)
    t_lin, p_lin = best(lambda: scoring.linear_proba(X, cm["w"], cm["bias"][0], cm["fill"]), a.repeats)
    m = min(a.sklearn_rows, a.rows)
    t_sk, p_sk = best(lambda: lr.model_.predict_proba(frame(X[:m]))[:, 1], max(1, a.repeats - 1))
    diff = float(np.max(np.abs(p_sk - p_lin[:m])))
    gbps = X.nbytes / 1e9
    print("\nlogistic (impute + scale + logistic), rows/s and GB/s of input read:")
    print(f"  numpy sum (bandwidth floor)  {t_floor:7.3f} s  {a.rows / t_floor / 1e6:7.1f} M rows/s  {gbps / t_floor:5.1f} GB/s")
    print(f"  crmlab kernel                {t_lin:7.3f} s  {a.rows / t_lin / 1e6:7.1f} M rows/s  {gbps / t_lin:5.1f} GB/s"
          f"  = {t_floor / t_lin:.0%} of the floor's speed")
    print(f"  scikit-learn predict_proba   {t_sk * a.rows / m:7.3f} s  {m / t_sk / 1e6:7.1f} M rows/s"
          f"  (measured on {m:,} rows)  kernel is {(t_sk / m) / (t_lin / a.rows):.1f}x faster")
    print(f"  max |kernel - scikit-learn| = {diff:.2e}")

    # ---------------------------------------------------------------- trees
    hgb = PropensityModel(kind="hgb", calibration="none", max_iter=200, max_leaf_nodes=31).fit(Xf, y[:fit_n])
    trees = hgb.compile("bench").arrays
    n_nodes = len(trees["kind"])
    n = min(a.tree_rows, a.rows)
    Xt = X[:n]
    t_tree, p_tree = best(lambda: scoring.tree_proba(Xt, {**trees, "baseline": trees["baseline"][0]}), a.repeats)
    t_hgb, p_hgb = best(lambda: hgb.model_.predict_proba(frame(Xt))[:, 1], max(1, a.repeats - 1))
    t_tree_all, _ = best(lambda: scoring.tree_proba(X, {**trees, "baseline": trees["baseline"][0]}), 1)
    print(f"\ntrees: 200 x 31 leaves ({n_nodes:,} nodes), {n:,} rows:")
    print(f"  crmlab kernel                {t_tree:7.3f} s  {n / t_tree / 1e3:8.0f} k rows/s")
    print(f"  scikit-learn HGB             {t_hgb:7.3f} s  {n / t_hgb / 1e3:8.0f} k rows/s  -> kernel {t_hgb / t_tree:.1f}x faster")
    print(f"  crmlab kernel at {a.rows:,} rows: {t_tree_all:.2f} s ({a.rows / t_tree_all / 1e3:.0f} k rows/s)")
    print(f"  max |kernel - scikit-learn| = {float(np.max(np.abs(p_tree - p_hgb))):.2e}")
    if a.lleaves_python:
        with tempfile.TemporaryDirectory() as tmp:
            np.save(f"{tmp}/X.npy", Xt)
            np.save(f"{tmp}/Xfit.npy", X[:fit_n])
            np.save(f"{tmp}/y.npy", y[:fit_n])
            worker = os.path.join(os.path.dirname(__file__), "_lleaves_worker.py")
            r = subprocess.run([a.lleaves_python, worker, "numeric", tmp, str(a.repeats)], capture_output=True, text=True)
            if r.returncode:
                print(r.stderr[-2000:])
                raise SystemExit("lleaves worker failed")
            ll = json.loads(r.stdout.strip().splitlines()[-1])
        for k, v in ll.items():
            if k.endswith("_s"):
                print(f"  {k[:-2]:<28} {v:7.3f} s  {n / v / 1e3:8.0f} k rows/s  -> kernel {v / t_tree:.2f}x faster")
            else:
                print(f"  {k}: {v}")


def frame_cases(a):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    telco_csv = root / "data" / "telco" / "wa_churn.csv.gz"
    X = pd.read_csv(telco_csv)
    y = (X.pop("churn") == "Yes").astype(int).to_numpy()
    fs.run_case("Telco churn", X, y, a.frame_rows, a.repeats, min(a.frame_rows, 200_000))
    if a.lleaves_python:
        with tempfile.TemporaryDirectory() as tmp:
            worker = os.path.join(os.path.dirname(__file__), "_lleaves_worker.py")
            r = subprocess.run([a.lleaves_python, worker, "frame", str(telco_csv), str(a.frame_rows), str(a.repeats), tmp],
                               capture_output=True, text=True)
            if r.returncode:
                print(r.stderr[-2000:])
                raise SystemExit("lleaves frame worker failed")
        for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items():
            print(f"  {k[:-2]:<42} {v:7.3f} s" if k.endswith("_s") else f"  {k}: {v}")
    Xw, yw = world_features(root / "data" / "sample")
    fs.run_case("synthetic sample, customer features (attrition)", Xw, yw, a.frame_rows, a.repeats,
                min(a.frame_rows, 200_000))
    fs.calibration_cost("Telco churn", X, y)
    fs.calibration_cost("synthetic sample (attrition)", Xw, yw)


def world_features(folder):
    """The attrition target's training table of the bundled sample (features at the training cut-off)."""
    from crmlab import targets
    from crmlab.events import CustomerEvents
    from crmlab.features import FeatureBuilder, labels
    from crmlab.sources import load

    ev = CustomerEvents.from_sources(load(folder))
    cut = targets.cutoffs(ev.last_date, 90)
    X = FeatureBuilder().fit(ev, cut["train"]).transform(ev, cut["train"])
    y = labels(ev, X.index, cut["train"], 90)["attrition"].to_numpy().astype(int)
    return X.reset_index(drop=True), y


if __name__ == "__main__":
    main()
