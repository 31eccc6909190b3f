"""Bulk scoring of exported models: a linear (logistic) model and a tree ensemble.

Inputs are a numeric matrix ``X`` (n, p), float32 or float64, C-contiguous, and a categorical code
matrix ``codes`` (n, q) int32 (``-1``: unknown or missing). Output is one probability per row,
after the model's link and an optional calibration:

* link 0: logistic, ``1 / (1 + exp(-raw))``;
* calibration 1 (sigmoid, Platt): ``1 / (1 + exp(a * raw + b))``;
* calibration 2 (isotonic): piecewise-linear interpolation of ``raw`` through ``(xs, ys)``.

A row that holds a value the model cannot take (``inf``, or NaN where the model has no imputation)
scores NaN; the public wrappers in ``crmlab.propensity`` turn that into an error naming the column.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

NUMERIC, CATEGORICAL, LEAF = 0, 1, 2
BLOCK = 256


@njit(cache=True, inline="always")
def _link(raw, calib, a, b, xs, ys):
    if calib == 1:
        return 1.0 / (1.0 + np.exp(a * raw + b))
    if calib == 2:
        m = xs.shape[0]
        if raw <= xs[0]:
            return ys[0]
        if raw >= xs[m - 1]:
            return ys[m - 1]
        lo, hi = 0, m - 1
        while hi - lo > 1:
            mid = (lo + hi) >> 1
            if xs[mid] <= raw:
                lo = mid
            else:
                hi = mid
        if xs[hi] == xs[lo]:
            return ys[hi]
        return ys[lo] + (raw - xs[lo]) * (ys[hi] - ys[lo]) / (xs[hi] - xs[lo])
    return 1.0 / (1.0 + np.exp(-raw))


@njit(cache=True, parallel=True)
def _linear(X, fill, w, codes, table, bias, calib, a, b, xs, ys):
    """out[i] = link(bias + sum_j w_j * x_ij (NaN -> fill_j) + sum_c table[c, code_ic])."""
    n, p = X.shape
    q = codes.shape[1]
    out = np.empty(n)
    for i in prange(n):
        z = bias
        bad = False
        for j in range(p):
            v = np.float64(X[i, j])
            if v != v:
                v = fill[j]
                if v != v:
                    bad = True
            elif v - v != 0.0:             # +-inf
                bad = True
            z += w[j] * v
        for c in range(q):
            k = codes[i, c]
            if k >= 0:
                z += table[c, k]
        out[i] = np.nan if bad else _link(z, calib, a, b, xs, ys)
    return out


@njit(cache=True, inline="always")
def _in_bitset(bitsets, row, v):
    return (bitsets[row, v >> 5] >> np.uint32(v & 31)) & np.uint32(1)


@njit(cache=True, parallel=True)
def _trees(X, codes, kind, feat, thr, left, right, miss_left, bitset, cat_bitsets, known_bitsets, known_row,
           value, roots, baseline, calib, a, b, xs, ys):
    """Sum of tree outputs per row (trees added in order, from ``baseline``), then the link."""
    n = X.shape[0]
    n_trees = roots.shape[0]
    out = np.empty(n)
    n_blocks = (n + BLOCK - 1) // BLOCK
    for blk in prange(n_blocks):
        lo = blk * BLOCK
        hi = min(n, lo + BLOCK)
        acc = np.full(hi - lo, baseline)
        bad = np.zeros(hi - lo, np.bool_)
        for t in range(n_trees):
            root = roots[t]
            for i in range(lo, hi):
                node = root
                while kind[node] != LEAF:
                    f = feat[node]
                    if kind[node] == NUMERIC:
                        v = np.float64(X[i, f])
                        if v != v:
                            node = left[node] if miss_left[node] else right[node]
                        elif v <= thr[node]:
                            node = left[node]
                        else:
                            node = right[node]
                    else:
                        k = codes[i, f]
                        if k < 0:
                            node = left[node] if miss_left[node] else right[node]
                        elif _in_bitset(cat_bitsets, bitset[node], k):
                            node = left[node]
                        elif _in_bitset(known_bitsets, known_row[f], k):
                            node = right[node]
                        else:
                            node = left[node] if miss_left[node] else right[node]
                acc[i - lo] += value[node]
        for i in range(lo, hi):
            for j in range(X.shape[1]):
                v = X[i, j]
                if v - v != 0.0 and v == v:      # +-inf
                    bad[i - lo] = True
            out[i] = np.nan if bad[i - lo] else _link(acc[i - lo], calib, a, b, xs, ys)
    return out


def _matrices(X, codes):
    X = np.asarray(X)
    if X.ndim != 2 or X.dtype not in (np.float32, np.float64):
        raise TypeError(f"X must be a 2-d float32 or float64 array, got {X.dtype} with shape {X.shape}")
    X = np.ascontiguousarray(X)
    if codes is None:
        codes = np.zeros((X.shape[0], 0), np.int32)
    codes = np.ascontiguousarray(codes, dtype=np.int32)
    if codes.ndim != 2 or codes.shape[0] != X.shape[0]:
        raise ValueError(f"codes must have shape ({X.shape[0]}, q), got {codes.shape}")
    return X, codes


def _calibration(calib):
    """(kind, a, b, xs, ys) from None, ('sigmoid', a, b) or ('isotonic', xs, ys)."""
    empty = np.zeros(1)
    if calib is None:
        return 0, 0.0, 0.0, empty, empty
    if calib[0] == "sigmoid":
        return 1, float(calib[1]), float(calib[2]), empty, empty
    if calib[0] == "isotonic":
        xs = np.ascontiguousarray(calib[1], dtype=np.float64)
        ys = np.ascontiguousarray(calib[2], dtype=np.float64)
        if xs.shape != ys.shape or xs.size == 0:
            raise ValueError("isotonic calibration needs equally long, non-empty xs and ys")
        return 2, 0.0, 0.0, xs, ys
    raise ValueError(f"unknown calibration {calib[0]!r}")


def linear_proba(X, w, bias, fill=None, codes=None, table=None, calib=None):
    """Probabilities of a logistic model: ``link(bias + X w + table[codes])``.

    ``fill`` (p,) replaces NaN per column (NaN there: the column takes no missing values, and such
    rows score NaN); ``table`` (q, k) holds each category's contribution (codes < 0 add nothing).
    """
    X, codes = _matrices(X, codes)
    p, q = X.shape[1], codes.shape[1]
    w = np.ascontiguousarray(w, dtype=np.float64)
    fill = np.full(p, np.nan) if fill is None else np.ascontiguousarray(fill, dtype=np.float64)
    table = np.zeros((q, 1)) if table is None else np.ascontiguousarray(table, dtype=np.float64)
    if w.shape != (p,) or fill.shape != (p,) or table.shape[0] != q:
        raise ValueError(f"weights {w.shape}, fill {fill.shape} and table {table.shape} do not fit X {X.shape}, "
                         f"codes {codes.shape}")
    if q and codes.size and codes.max() >= table.shape[1]:
        raise ValueError("a category code exceeds the contribution table")
    return _linear(X, fill, w, codes, table, float(bias), *_calibration(calib))


def tree_proba(X, trees, codes=None, calib=None):
    """Probabilities of a binary tree ensemble (sum of leaf values from ``trees['baseline']``, logistic link).

    ``trees`` holds flat node arrays: ``kind`` (0 numeric, 1 categorical, 2 leaf), ``feat`` (column of X,
    or of ``codes`` for categorical nodes), ``thr``, ``left``, ``right``, ``miss_left``, ``bitset``
    (row of ``cat_bitsets`` going left), ``known_row`` (row of ``known_bitsets`` per categorical column),
    ``value`` and ``roots`` (first node of each tree).
    """
    X, codes = _matrices(X, codes)
    t = trees
    n_nodes = t["kind"].shape[0]
    for name in ("feat", "thr", "left", "right", "miss_left", "bitset", "value"):
        if t[name].shape[0] != n_nodes:
            raise ValueError(f"tree array '{name}' has {t[name].shape[0]} entries, expected {n_nodes}")
    inner = t["kind"] != LEAF
    num = t["kind"] == NUMERIC
    if (num & (t["feat"] >= X.shape[1])).any() or ((t["kind"] == CATEGORICAL) & (t["feat"] >= codes.shape[1])).any():
        raise ValueError(f"the trees use more columns than X ({X.shape[1]}) and codes ({codes.shape[1]}) have")
    if inner.any() and (t["left"][inner].max() >= n_nodes or t["right"][inner].max() >= n_nodes):
        raise ValueError("a child index points outside the node arrays")
    return _trees(X, codes, t["kind"], t["feat"], t["thr"], t["left"], t["right"], t["miss_left"], t["bitset"],
                  t["cat_bitsets"], t["known_bitsets"], t["known_row"], t["value"], t["roots"],
                  float(t["baseline"]), *_calibration(calib))
