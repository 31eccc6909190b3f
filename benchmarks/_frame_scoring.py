"""End-to-end DataFrame scoring with string categories, shared by scoring_bench.py's frame cases.

Each case: a feature frame of ``n`` rows (a real table replicated), a logistic and a 200-tree HGB
model (sigmoid-calibrated, as the chain fits them) trained on the original rows; crmlab's compiled
``predict_proba(DataFrame)`` with its steps timed apart (encoding, kernel), against scikit-learn's
``predict_proba`` on the same frame; string columns as pandas reads them (``str``: pyarrow), as
``category`` and as Python objects. "encode" is what ``predict_proba`` does before the kernel, on
its threads: category codes per chunk, and for trees the numeric columns copied per chunk (a
logistic model reads them in place).
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd

from crmlab.kernels import scoring
from crmlab.propensity import PropensityModel


def best(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def replicate(df: pd.DataFrame, n: int) -> pd.DataFrame:
    return df.iloc[np.resize(np.arange(len(df)), n)].reset_index(drop=True)


def convert(df: pd.DataFrame, dtype) -> pd.DataFrame:
    """The string columns as ``dtype``: 'str' (pyarrow strings, what pandas reads), object or category."""
    return df.assign(**{c: df[c].astype(dtype) for c in df.columns if pd.api.types.is_string_dtype(df[c].dtype)})


def run_case(name: str, X: pd.DataFrame, y: np.ndarray, n: int, repeats: int, sklearn_rows: int,
             max_iter: int = 200) -> dict:
    """Print and return the timings of one case (seconds for ``n`` rows; scikit-learn measured on
    ``sklearn_rows`` rows and scaled)."""
    big = replicate(X, n)
    frames = {t: convert(big, t) for t in ("str", "category", "object")}
    del big
    cats = [c for c in X.columns if pd.api.types.is_string_dtype(X[c].dtype)]
    print(f"\n{name}: {len(X):,} rows replicated to {n:,}; {X.shape[1]} columns, {len(cats)} of them strings "
          f"({', '.join(cats)})")
    res = {}
    for kind in ("logistic", "hgb"):
        m = PropensityModel(kind=kind, calibration="sigmoid", cv=5, max_iter=max_iter).fit(X, y)
        cm = m.compile(name)
        a, calib = cm.arrays, cm._calib()
        if kind == "hgb":
            n_nodes = len(a["kind"])
            n_cat = int((a["kind"] == scoring.CATEGORICAL).sum())
            print(f"  hgb: {len(a['roots'])} trees, {n_nodes:,} nodes, {n_cat:,} of them categorical splits")
        for ftype, F in frames.items():
            enc = cm.encoder(chunk_rows=n)
            (_, _, M, codes), = list(enc.chunks(F))                      # the arrays a kernel-only user has
            M, codes = M.copy(order="F"), codes.copy(order="F")
            if kind == "logistic":
                kern = lambda: scoring.linear_proba(M, a["w"], a["bias"][0], a["fill"], codes, a["table"], calib)  # noqa: E731
            else:
                trees = {**a, "baseline": a["baseline"][0]}
                kern = lambda: scoring.tree_proba(M, trees, codes, calib)  # noqa: E731
            t_kernel, p_kernel = best(kern, repeats)
            encoder = cm.encoder()                # as predict_proba runs it: threads on whole chunks; a
            noop = lambda lo, hi, M, codes: None  # noqa: E731   logistic model makes only the codes
            t_encode, _ = best(lambda: encoder.map(F, noop, numeric="columns" if kind == "logistic" else "matrix"), repeats)
            t_total, p = best(lambda: cm.predict_proba(F), repeats)
            sk = F.iloc[:sklearn_rows]
            t_sk, p_sk = best(lambda: m.predict_proba(sk)[:, 1], 1)
            t_sk *= n / len(sk)
            diff = float(np.max(np.abs(p[:len(sk)] - p_sk)))
            print(f"  {kind:8s} {ftype:8s} crmlab {t_total:7.3f} s {n / t_total / 1e6:6.2f} M rows/s "
                  f"(encode {t_encode:.3f} s, kernel {t_kernel:.3f} s = {n / t_kernel / 1e6:.1f} M rows/s; "
                  f"end to end {t_kernel / t_total:.0%} of the kernel's rate)  scikit-learn {t_sk:7.2f} s "
                  f"-> {t_sk / t_total:5.1f}x  max|diff| {diff:.1e}", flush=True)
            res[(kind, ftype)] = dict(total=t_total, encode=t_encode, kernel=t_kernel, sklearn=t_sk, diff=diff)
            assert np.array_equal(p, p_kernel)
    return res


def calibration_cost(name: str, X: pd.DataFrame, y: np.ndarray, seeds=(0, 1, 2)) -> None:
    """Cross-fitted calibration (cv=5: six fits) against a 20% calibration holdout (one fit), on
    stratified 70/30 splits: fit time, ROC AUC and Brier score on the 30%."""
    from sklearn.metrics import brier_score_loss, roc_auc_score
    from sklearn.model_selection import train_test_split

    print(f"\ncalibration on {name} ({len(X):,} rows; mean over {len(seeds)} 70/30 splits):")
    for kind in ("logistic", "hgb"):
        rows = {}
        for label, kw in (("cv=5 (6 fits)", dict(cv=5)), ("holdout 20% (1 fit)", dict(calibration_holdout=0.2))):
            t_fit, auc, brier = [], [], []
            for s in seeds:
                tr, te = train_test_split(np.arange(len(X)), test_size=0.3, stratify=y, random_state=s)
                t = time.perf_counter()
                m = PropensityModel(kind=kind, calibration="sigmoid", random_state=s, **kw).fit(X.iloc[tr], y[tr])
                t_fit.append(time.perf_counter() - t)
                p = m.compile().predict_proba(X.iloc[te])
                auc.append(roc_auc_score(y[te], p))
                brier.append(brier_score_loss(y[te], p))
            rows[label] = (np.mean(t_fit), np.mean(auc), np.mean(brier))
        (t0, a0, b0), (t1, a1, b1) = rows.values()
        for label, (t, a, b) in rows.items():
            print(f"  {kind:8s} {label:22s} fit {t:6.2f} s  AUC {a:.4f}  Brier {b:.4f}")
        print(f"  {kind:8s} holdout: {t0 / t1:.1f}x faster to fit, AUC {a1 - a0:+.4f}, Brier {b1 - b0:+.4f}")
