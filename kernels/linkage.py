"""One record against its candidates: every comparison level, Bayes factor and match probability in
one compiled call.

The batch matcher scores millions of pairs column by column (one parallel pair kernel per
comparison, :mod:`crmlab.kernels.strings`). Real-time identification scores one record against a
handful of candidates, where those dozen parallel launches and the NumPy calls around them cost
more than the comparisons themselves (0.5 ms for 7 candidates). This kernel walks the candidates
once, serially, with the same string functions and the same level rules as
:meth:`crmlab.identity.Comparison.levels`.

Layout: the text columns share one arena (see :func:`crmlab.kernels.strings.to_arena`); column
``c`` holds rows ``c * (n + 1) .. c * (n + 1) + n``, row 0 being the record asked about and rows
1..n its candidates. Numeric columns are rows of ``nums`` (NaN = missing).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .strings import _bigram_dice, _jaro_winkler, _osa

#: comparison kinds as the kernel knows them (email compares like exact)
EXACT, NAME, STRING, EDIT, POSTCODE, ADDRESS, PHONE, NUMERIC = range(8)
#: the level of a pair where either value is missing
NULL = -1


@njit(cache=True, inline="always")
def _same(chars, offs, null, i, j):
    if null[i] or null[j]:
        return False
    la, lb = offs[i + 1] - offs[i], offs[j + 1] - offs[j]
    if la != lb:
        return False
    for k in range(la):
        if chars[offs[i] + k] != chars[offs[j] + k]:
            return False
    return True


@njit(cache=True)
def _score_one(chars, offs, null, nums, n, spec, thresholds, n_thr, dice, log2_bf, top, tf_adjust, prior):
    n_comp = spec.shape[0]
    levels = np.empty((n, n_comp), np.int8)
    bf = np.zeros((n, n_comp))
    prob = np.empty(n)
    stride = n + 1
    longest = 1
    for r in range(offs.shape[0] - 1):
        longest = max(longest, offs[r + 1] - offs[r])
    ma = np.empty(longest, np.bool_)
    mb = np.empty(longest, np.bool_)
    for p in range(n):
        total = 0.0
        for k in range(n_comp):
            kind, col, aux1, aux2, aux3 = spec[k, 0], spec[k, 1], spec[k, 2], spec[k, 3], spec[k, 4]
            q, c = col * stride, col * stride + 1 + p
            lv = 0
            if kind == NUMERIC:
                d = abs(nums[col, 0] - nums[col, 1 + p])
                if np.isnan(d):
                    lv = NULL
                else:
                    for t in range(n_thr[k]):                # tolerances sorted from the widest
                        if d <= thresholds[k, t]:
                            lv = t + 1
                    if d == 0.0:
                        lv = n_thr[k] + 1
            elif kind == ADDRESS:                            # postcode and street together
                pq, pc = aux1 * stride, aux1 * stride + 1 + p
                if null[pq] or null[pc]:
                    lv = NULL
                else:
                    if _same(chars, offs, null, aux2 * stride, aux2 * stride + 1 + p):
                        lv = 1
                    if _same(chars, offs, null, aux3 * stride, aux3 * stride + 1 + p):
                        lv = 2
                    if _same(chars, offs, null, pq, pc):
                        if _same(chars, offs, null, q, c):
                            lv = 5
                        elif not (null[q] or null[c]) and _jaro_winkler(
                                chars[offs[q]:offs[q + 1]], chars[offs[c]:offs[c + 1]], 0.1, ma, mb) >= thresholds[k, 0]:
                            lv = 4
                        else:
                            lv = 3
            elif null[q] or null[c]:
                lv = NULL
            elif _same(chars, offs, null, q, c):
                if kind == NAME or kind == STRING:
                    lv = (1 if kind == NAME and aux1 < 0 else 2) + n_thr[k]
                elif kind == EDIT or kind == PHONE:
                    lv = 2
                elif kind == POSTCODE:
                    lv = 3
                else:
                    lv = 1
            elif kind == NAME or kind == STRING:
                jw = _jaro_winkler(chars[offs[q]:offs[q + 1]], chars[offs[c]:offs[c + 1]], 0.1, ma, mb)
                base = 1 if kind == NAME and aux1 < 0 else 2
                if jw < thresholds[k, 0]:                    # 'different' by Jaro-Winkler
                    if kind == STRING:
                        if _bigram_dice(chars[offs[q]:offs[q + 1]], chars[offs[c]:offs[c + 1]]) >= dice[k]:
                            lv = 1
                    elif aux1 >= 0:                          # first and last name swapped
                        sq, sc = aux1 * stride, aux1 * stride + 1 + p
                        if _same(chars, offs, null, q, sc) and _same(chars, offs, null, sq, c):
                            lv = 1
                for t in range(n_thr[k]):                    # thresholds sorted from the lowest
                    if jw >= thresholds[k, t]:
                        lv = base + t
            elif kind == EDIT:
                if _osa(chars[offs[q]:offs[q + 1]], chars[offs[c]:offs[c + 1]], 1, True) <= 1:
                    lv = 1
            elif kind == POSTCODE:
                if _same(chars, offs, null, aux1 * stride, aux1 * stride + 1 + p):
                    lv = 1
                if _same(chars, offs, null, aux2 * stride, aux2 * stride + 1 + p):
                    lv = 2
            elif kind == PHONE:
                if _same(chars, offs, null, aux1 * stride, aux1 * stride + 1 + p):
                    lv = 1
            levels[p, k] = lv
            if lv != NULL:
                b = log2_bf[k, lv]
                if lv == top[k]:
                    b += tf_adjust[k]
                bf[p, k] = b
                total += b
        prob[p] = 1.0 / (1.0 + 2.0 ** (-(prior + total)))
    return prob, levels, bf


def score_one(arena, nums, n: int, spec, thresholds, n_thr, dice, log2_bf, top, tf_adjust, prior: float):
    """Levels (n, K; -1 where a value is missing), log2 Bayes factors (0 there) and match
    probabilities of one record (row 0 of each column) against ``n`` candidates.

    ``arena``: (chars, offsets, null) of the text columns, ``n + 1`` rows each, stacked; ``nums``:
    (numeric columns, n + 1) float64; ``spec`` (K, 5) int64: kind, column, then the helper columns
    (name: the swap column or -1; postcode: district, sector; address: postcode, district, sector;
    phone: the last digits); ``thresholds`` (K, T) with ``n_thr`` used per comparison (names and
    strings ascending, numeric tolerances descending); ``dice`` per comparison; ``log2_bf`` (K, L)
    log2(m/u) per level; ``top`` the exact level whose factor gets ``tf_adjust`` added; ``prior``
    the log2 prior odds."""
    chars, offs, null = arena
    spec = np.ascontiguousarray(spec, np.int64)
    if spec.ndim != 2 or spec.shape[1] != 5:
        raise ValueError("spec must be (comparisons, 5)")
    k = spec.shape[0]
    if len(offs) - 1 != len(null) or len(null) % (n + 1):
        raise ValueError("the arena must hold n + 1 rows per text column")
    text_cols, num_cols = len(null) // (n + 1), (nums.shape[0] if nums.size else 0)
    hi = np.where(spec[:, 0] == NUMERIC, num_cols, text_cols)
    if (spec[:, 1:] >= hi[:, None]).any() or (spec[:, 1] < 0).any():
        raise ValueError("spec names a column the arena does not hold")
    thresholds = np.ascontiguousarray(thresholds, np.float64)
    log2_bf = np.ascontiguousarray(log2_bf, np.float64)
    if thresholds.shape[0] != k or log2_bf.shape[0] != k:
        raise ValueError("thresholds and log2_bf need one row per comparison")
    return _score_one(np.ascontiguousarray(chars, np.uint32), np.ascontiguousarray(offs, np.int64),
                      np.ascontiguousarray(null, np.bool_), np.ascontiguousarray(nums, np.float64).reshape(-1, n + 1),
                      int(n), spec, thresholds, np.ascontiguousarray(n_thr, np.int64),
                      np.ascontiguousarray(dice, np.float64), log2_bf, np.ascontiguousarray(top, np.int64),
                      np.ascontiguousarray(tf_adjust, np.float64), float(prior))
