"""Runs in the lleaves environment: the Telco frame case. LightGBM (200 trees, 31 leaves, the string
columns as pandas categories) trained on the 7,043 rows, compiled with lleaves, then timed from the
replicated DataFrame (category columns; lleaves turns the frame into a float matrix itself) to
probabilities. Prints one JSON line."""
import json
import os
import sys
import time

import lightgbm
import lleaves
import numpy as np
import pandas as pd

csv, n, repeats, tmp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
X = pd.read_csv(csv)
y = (X.pop("churn") == "Yes").astype(int).to_numpy()
cats = [c for c in X.columns if X[c].dtype == object or pd.api.types.is_string_dtype(X[c].dtype)]
X = X.assign(**{c: X[c].astype("category") for c in cats})
booster = lightgbm.train({"objective": "binary", "num_leaves": 31, "learning_rate": 0.1, "verbose": -1},
                         lightgbm.Dataset(X, y, categorical_feature=cats), num_boost_round=200)
booster.save_model(f"{tmp}/model.txt")
big = X.iloc[np.resize(np.arange(len(X)), n)].reset_index(drop=True)
out = {}


def best(fn):
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


model = lleaves.Model(model_file=f"{tmp}/model.txt")
t = time.perf_counter()
model.compile(cache=f"{tmp}/lleaves.o")
out["lleaves compile"] = f"{time.perf_counter() - t:.1f} s"
out["lleaves from the DataFrame_s"] = best(lambda: model.predict(big, n_jobs=os.cpu_count()))
m = min(n, 200_000)
out["LightGBM predict (scaled from 200k rows)_s"] = best(lambda: booster.predict(big.iloc[:m])) * n / m
print(json.dumps(out))
