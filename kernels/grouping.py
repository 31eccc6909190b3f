"""Grouping helpers: integer codes for values on a regular grid (days, weeks), in one pass."""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _grid_codes(v, scale):
    """If every v*scale is (within 1e-7) an integer in a span below 5e7: (True, codes, distinct values)."""
    n = v.shape[0]
    k = np.empty(n, np.int64)
    lo = np.iinfo(np.int64).max
    hi = np.iinfo(np.int64).min
    for i in range(n):
        y = v[i] * scale
        r = np.rint(y)
        if not np.isfinite(y) or abs(y - r) > 1e-7 * max(1.0, abs(r)):
            return False, k[:0], np.empty(0)
        ki = np.int64(r)
        k[i] = ki
        lo = min(lo, ki)
        hi = max(hi, ki)
    if n == 0 or hi - lo >= 50_000_000:
        return False, k[:0], np.empty(0)
    code_of = np.full(hi - lo + 1, -1, np.int64)
    for i in range(n):
        code_of[k[i] - lo] = 0
    m = 0
    for j in range(code_of.shape[0]):
        if code_of[j] == 0:
            code_of[j] = m
            m += 1
    values = np.empty(m)
    for j in range(code_of.shape[0]):
        if code_of[j] >= 0:
            values[code_of[j]] = (j + lo) / scale
    for i in range(n):
        k[i] = code_of[k[i] - lo]
    return True, k, values


def grid_codes(v, scales=(1.0, 7.0, 365.25 / 12, 365.25)):
    """Sorted distinct values of a 1-d float array and each element's code.

    O(n) when the values lie on a grid of 1/scale (whole days in day, week, month or year units),
    else a sort-based ``np.unique``.
    """
    v = np.ascontiguousarray(v, dtype=np.float64)
    for s in scales:
        ok, codes, values = _grid_codes(v, float(s))
        if ok:
            return values, codes
    values, codes = np.unique(v, return_inverse=True)
    return values, codes.astype(np.int64).ravel()
