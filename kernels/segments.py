"""Segment assignment: each row to its nearest centre after imputation and standardisation.

One kernel serves k-means (plain squared distance) and a diagonal Gaussian mixture (distance
weighted per centre and dimension by the inverse variance, plus a per-centre bias holding the
log-determinant and the mixing weight).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def _nearest(X, fill, log_cols, centre, scale, centers, weights, bias, labels, dist):
    """Blocks of rows, prepared column by column into ``zb`` (d, B), so the distance loops run
    along rows (long, contiguous: vectorised). The outputs come from the caller: arrays NumPy
    allocates are backed by huge pages (see ``kernels.scoring._output``)."""
    n, d = X.shape
    k = centers.shape[0]
    B = 512
    for blk in prange((n + B - 1) // B):
        lo = blk * B
        m = min(n, lo + B) - lo
        zb = np.empty((d, B))
        best = np.zeros(B, np.int32)
        bd = np.full(B, np.inf)
        s = np.empty(B)
        for j in range(d):
            f, c0, sc, lg = fill[j], centre[j], scale[j], log_cols[j]
            for r in range(m):
                v = X[lo + r, j]
                v = f if v != v else v
                if lg:
                    v = np.log1p(max(v, 0.0))
                zb[j, r] = (v - c0) / sc
        for c in range(k):
            s[:m] = bias[c]
            for j in range(d):
                cj, wj = centers[c, j], weights[c, j]
                zj = zb[j]
                for r in range(m):
                    t = zj[r] - cj
                    s[r] += wj * t * t
            for r in range(m):
                if s[r] < bd[r]:
                    bd[r] = s[r]
                    best[r] = c
        labels[lo:lo + m] = best[:m]
        dist[lo:lo + m] = bd[:m]


def nearest_center(X, fill, log_cols, centre, scale, centers, weights=None, bias=None):
    """Label each row of ``X`` (n, d) with its nearest centre.

    Each column is prepared as in fitting: missing values replaced by ``fill``, ``log1p`` of the
    columns flagged in ``log_cols`` (negatives clipped to 0), then ``(v - centre) / scale``.
    The distance to centre c is ``bias[c] + sum_j weights[c, j] * (z_j - centers[c, j])**2``
    (defaults: weights 1, bias 0, i.e. squared Euclidean distance).
    Returns ``labels`` (int32, ties to the lower index) and that distance ``dist``.
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    centers = np.ascontiguousarray(centers, dtype=np.float64)
    if X.ndim != 2 or centers.ndim != 2 or centers.shape[1] != X.shape[1]:
        raise ValueError(f"X must be (n, d) and centers (k, d) with the same d; got {X.shape} and {centers.shape}")
    if centers.shape[0] == 0:
        raise ValueError("no centres")
    d = X.shape[1]
    arrs = []
    for name, a, dt in (("fill", fill, np.float64), ("log_cols", log_cols, np.bool_),
                        ("centre", centre, np.float64), ("scale", scale, np.float64)):
        a = np.ascontiguousarray(a, dtype=dt)
        if a.shape != (d,):
            raise ValueError(f"{name} must have shape ({d},), got {a.shape}")
        arrs.append(a)
    if np.any(arrs[3] <= 0) or not np.all(np.isfinite(arrs[3])):
        raise ValueError("scale must be positive and finite")
    k = centers.shape[0]
    weights = np.ones((k, d)) if weights is None else np.ascontiguousarray(weights, dtype=np.float64)
    bias = np.zeros(k) if bias is None else np.ascontiguousarray(bias, dtype=np.float64)
    if weights.shape != (k, d) or bias.shape != (k,):
        raise ValueError(f"weights must be ({k}, {d}) and bias ({k},); got {weights.shape} and {bias.shape}")
    labels, dist = np.empty(X.shape[0], np.int32), np.empty(X.shape[0])
    _nearest(X, *arrs, centers, weights, bias, labels, dist)
    return labels, dist
