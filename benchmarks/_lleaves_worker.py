"""Runs in the lleaves environment (lleaves needs llvmlite 0.44, numba 0.68 needs 0.46); prints one JSON line.

    _lleaves_worker.py numeric TMP REPEATS
        LightGBM (200 trees, 31 leaves) trained on TMP/Xfit.npy, TMP/y.npy; lleaves and LightGBM
        prediction of TMP/X.npy timed.
    _lleaves_worker.py frame CSV N REPEATS TMP
        the Telco frame case: LightGBM (200 trees, 31 leaves, the string columns as pandas
        categories) trained on the CSV's rows, compiled with lleaves, then timed from the rows
        replicated to N (category columns; lleaves turns the frame into a float matrix itself).
"""
import json
import os
import sys
import time

import lightgbm
import lleaves
import numpy as np

PARAMS = {"objective": "binary", "num_leaves": 31, "learning_rate": 0.1, "verbose": -1}


def best(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def compiled(booster, tmp, out):
    booster.save_model(f"{tmp}/model.txt")
    model = lleaves.Model(model_file=f"{tmp}/model.txt")
    t = time.perf_counter()
    model.compile(cache=f"{tmp}/lleaves.o")
    out["lleaves compile"] = f"{time.perf_counter() - t:.1f} s"
    return model


def numeric(tmp, repeats):
    X, Xfit, y = np.load(f"{tmp}/X.npy"), np.load(f"{tmp}/Xfit.npy"), np.load(f"{tmp}/y.npy")
    booster = lightgbm.train(PARAMS, lightgbm.Dataset(Xfit, y), num_boost_round=200)
    out = {}
    model = compiled(booster, tmp, out)
    X64 = X.astype(np.float64)
    out["lleaves (fp64, all cores)_s"] = best(lambda: model.predict(X64, n_jobs=os.cpu_count()), repeats)
    out["LightGBM predict_s"] = best(lambda: booster.predict(X), repeats)
    return out


def frame(csv, n, repeats, tmp):
    import pandas as pd

    X = pd.read_csv(csv)
    y = (X.pop("churn") == "Yes").astype(int).to_numpy()
    cats = [c for c in X.columns if X[c].dtype == object or pd.api.types.is_string_dtype(X[c].dtype)]
    X = X.assign(**{c: X[c].astype("category") for c in cats})
    booster = lightgbm.train(PARAMS, lightgbm.Dataset(X, y, categorical_feature=cats), num_boost_round=200)
    big = X.iloc[np.resize(np.arange(len(X)), n)].reset_index(drop=True)
    out = {}
    model = compiled(booster, tmp, out)
    out["lleaves from the DataFrame_s"] = best(lambda: model.predict(big, n_jobs=os.cpu_count()), repeats)
    m = min(n, 200_000)
    out["LightGBM predict (scaled from 200k rows)_s"] = best(lambda: booster.predict(big.iloc[:m]), repeats) * n / m
    return out


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    res = numeric(args[0], int(args[1])) if mode == "numeric" else frame(args[0], int(args[1]), int(args[2]), args[3])
    print(json.dumps(res))
