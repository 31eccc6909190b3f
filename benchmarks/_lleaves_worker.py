"""Runs in the lleaves environment: train LightGBM (200 trees, 31 leaves) on the same rows, compile
with lleaves, time prediction; prints one JSON line."""
import json
import os
import sys
import time

import lightgbm
import lleaves
import numpy as np

tmp, repeats = sys.argv[1], int(sys.argv[2])
X, Xfit, y = np.load(f"{tmp}/X.npy"), np.load(f"{tmp}/Xfit.npy"), np.load(f"{tmp}/y.npy")
booster = lightgbm.train({"objective": "binary", "num_leaves": 31, "learning_rate": 0.1, "verbose": -1},
                         lightgbm.Dataset(Xfit, y), num_boost_round=200)
booster.save_model(f"{tmp}/model.txt")
out = {}


def best(fn):
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


X64 = X.astype(np.float64)
model = lleaves.Model(model_file=f"{tmp}/model.txt")
t = time.perf_counter()
model.compile(cache=f"{tmp}/lleaves.o")
out["lleaves compile"] = f"{time.perf_counter() - t:.1f} s"
out["lleaves (fp64, all cores)_s"] = best(lambda: model.predict(X64, n_jobs=os.cpu_count()))
out["LightGBM predict_s"] = best(lambda: booster.predict(X))
print(json.dumps(out))
