"""Per-customer top-k scoring from item neighbour lists (and the popularity baseline)."""
from __future__ import annotations

import numpy as np
from numba import get_num_threads, njit, prange


@njit(cache=True, parallel=True)
def _top_k(indptr, indices, nbr_ptr, nbr_idx, nbr_sim, banned, k, popularity, pop_order, nt):
    n = indptr.shape[0] - 1
    m = banned.shape[0]
    out_items = np.full((n, k), -1, np.int32)
    out_scores = np.zeros((n, k))
    chunk = (n + nt - 1) // nt
    for t in prange(nt):
        score = np.zeros(m)
        owned = np.zeros(m, np.bool_)
        touched = np.empty(m, np.int32)
        for c in range(t * chunk, min(n, (t + 1) * chunk)):
            for p in range(indptr[c], indptr[c + 1]):
                owned[indices[p]] = True
            nt_ = 0
            for p in range(indptr[c], indptr[c + 1]):
                i = indices[p]
                for q in range(nbr_ptr[i], nbr_ptr[i + 1]):
                    j = nbr_idx[q]
                    if owned[j] or banned[j]:
                        continue
                    if score[j] == 0.0:
                        touched[nt_] = j
                        nt_ += 1
                    score[j] += nbr_sim[q]
            r = 0
            while r < k:
                best = -1
                bs = 0.0
                for u in range(nt_):
                    j = touched[u]
                    s = score[j]
                    if s > bs or (s == bs and s > 0.0 and best >= 0 and popularity[j] > popularity[best]):
                        best = j
                        bs = s
                if best < 0:
                    break
                out_items[c, r] = best
                out_scores[c, r] = bs
                score[best] = -1.0
                r += 1
            # fill up with popular unseen items (score 0) when neighbours give fewer than k
            q = 0
            while r < k and q < m:
                j = pop_order[q]
                q += 1
                if owned[j] or banned[j] or score[j] < 0.0:
                    continue
                out_items[c, r] = j
                r += 1
            for u in range(nt_):
                score[touched[u]] = 0.0
            for p in range(indptr[c], indptr[c + 1]):
                owned[indices[p]] = False
    return out_items, out_scores


def top_k(indptr, indices, nbr_ptr, nbr_idx, nbr_sim, banned, k, popularity):
    """Top-k unseen, not banned items per basket by summed neighbour similarity (ties: popularity).

    Returns (items (n, k) int32 with -1 where fewer exist, scores (n, k)).
    """
    indptr = np.ascontiguousarray(indptr, np.int64)
    indices = np.ascontiguousarray(indices, np.int32)
    banned = np.ascontiguousarray(banned, np.bool_)
    popularity = np.ascontiguousarray(popularity, np.float64)
    if k < 1:
        raise ValueError("k must be >= 1")
    pop_order = np.argsort(-popularity, kind="stable").astype(np.int64)
    return _top_k(indptr, indices, np.ascontiguousarray(nbr_ptr, np.int64), np.ascontiguousarray(nbr_idx, np.int32),
                  np.ascontiguousarray(nbr_sim, np.float64), banned, int(k), popularity, pop_order, get_num_threads())


def top_k_popular(indptr, indices, popularity, banned, k):
    """Popularity baseline: the k most popular items each basket does not hold (score = popularity)."""
    indptr = np.ascontiguousarray(indptr, np.int64)
    indices = np.ascontiguousarray(indices, np.int32)
    popularity = np.ascontiguousarray(popularity, np.float64)
    empty = np.zeros(len(popularity) + 1, np.int64)
    items, _ = _top_k(indptr, indices, empty, np.zeros(0, np.int32), np.zeros(0), np.ascontiguousarray(banned, np.bool_),
                      int(k), popularity, np.argsort(-popularity, kind="stable").astype(np.int64), get_num_threads())
    scores = np.where(items >= 0, popularity[np.maximum(items, 0)], 0.0)
    return items, scores
