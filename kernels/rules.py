"""Association rules over an itemset table: subset supports through a hash index, rule enumeration
with confidence pruning, the measures, one-sided Fisher exact p-values.

The itemset table is what :func:`crmlab.kernels.baskets.frequent_itemsets` returns: ``flat`` (item
codes, each itemset ascending), ``lens`` and ``counts``. A rule is (itemset, consequent mask): bit q
of the mask puts the itemset's q-th item in the consequent, the other items form the antecedent.
Subsets are found by a Zobrist hash (XOR of one random 64-bit word per item, so the hash of
``itemset minus consequent`` is one XOR away) in an open-addressing table, and every hit is checked
item by item: a lookup is exact, never probabilistic.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange
from numba.cpython.unsafe.numbers import trailing_zeros

#: Measures computed per rule, in this order (mlxtend's columns, then all-confidence and the p-value).
MEASURES = ("antecedent support", "consequent support", "support", "confidence", "lift", "representativity",
            "leverage", "conviction", "zhangs_metric", "jaccard", "certainty", "kulczynski", "all_confidence",
            "p_value")
#: Measures a threshold may be set on (all but the p-value).
METRICS = MEASURES[:-1]
CONFIDENCE = METRICS.index("confidence")
CHUNK_RULES = 1_000_000        # rules enumerated per kernel call (memory per chunk ~ 32 bytes a rule)
PARALLEL_RULES = 200_000       # rules below which the measures are computed in the calling thread
MAX_ITEMSET = 30               # consequent masks are 2^k: longer itemsets are refused


# ----------------------------------------------------------------------------- measures

@njit(cache=True, inline="always")
def _measure(code, sA, sC, sAC, s_max):
    """One measure (index into ``METRICS``) from the supports, as mlxtend computes it; ``s_max``: the
    largest single-item support among the rule's items (for all-confidence)."""
    if code == 0:
        return sA
    if code == 1:
        return sC
    if code == 2:
        return sAC
    conf = sAC / sA
    if code == 3:
        return conf
    if code == 4:
        return conf / sC
    if code == 5:
        return 1.0
    lev = sAC - sA * sC
    if code == 6:
        return lev
    if code == 7:
        return (1.0 - sC) / (1.0 - conf) if conf < 1.0 else np.inf
    if code == 8:
        den = max(sAC * (1.0 - sA), sA * (sC - sAC))
        return 0.0 if den == 0.0 else lev / den
    if code == 9:
        return sAC / (sA + sC - sAC)
    if code == 10:
        return 0.0 if 1.0 - sC == 0.0 else (conf - sC) / (1.0 - sC)
    if code == 11:
        return (sAC / sA + sAC / sC) / 2.0
    return sAC / s_max


@njit(cache=True)
def log_factorials(n):
    """``log(i!)`` for i = 0..n (lgamma per entry: no error accumulates along the table)."""
    out = np.empty(n + 1)
    for i in range(n + 1):
        out[i] = math.lgamma(i + 1.0)
    return out


@njit(cache=True, inline="always")
def _fisher_greater(ab, a, c, n, lf):
    """P(X >= ab) for X ~ Hypergeometric(n baskets, c holding the consequent, a holding the
    antecedent): the one-sided Fisher exact test of positive association.

    The tail is summed from the side where its terms fall away from the mode (each term from the last
    by the pmf ratio, the first from the log-factorial table ``lf``) until they stop adding; below the
    mode the complement of the lower tail is taken (that p-value is not small, so nothing cancels).
    Relative accuracy ~10 ulp of log(n!): 2e-10 at 10,000 baskets, 3e-8 at a million."""
    lo = max(0, a + c - n)
    hi = min(a, c)
    if ab <= lo:
        return 1.0
    if ab > hi:
        return 0.0
    base = lf[c] + lf[n - c] + lf[a] + lf[n - a] - lf[n]
    mode = ((a + 1) * (c + 1)) // (n + 2)
    if ab > mode:
        x = ab
        t = math.exp(base - lf[x] - lf[c - x] - lf[a - x] - lf[n - c - a + x])
        total = t
        while x < hi:
            t *= (c - x) * 1.0 * (a - x) / ((x + 1.0) * (n - c - a + x + 1.0))
            x += 1
            total += t
            if t <= total * 1e-17:
                break
        return min(total, 1.0)
    x = ab - 1
    t = math.exp(base - lf[x] - lf[c - x] - lf[a - x] - lf[n - c - a + x])
    total = t
    while x > lo:
        t *= x * 1.0 * (n - c - a + x) / ((c - x + 1.0) * (a - x + 1.0))
        x -= 1
        total += t
        if t <= total * 1e-17:
            break
    return max(0.0, 1.0 - total)


@njit(cache=True)
def _fisher_many(ab, a, c, n, lf):
    out = np.empty(ab.shape[0])
    for r in range(ab.shape[0]):
        out[r] = _fisher_greater(ab[r], a[r], c[r], n, lf)
    return out


def fisher_greater(n_both, n_antecedent, n_consequent, n: int) -> np.ndarray:
    """One-sided (greater) Fisher exact p-values of 2x2 tables given by their margins, vectorised.

    ``n_both``: baskets with antecedent and consequent; ``n_antecedent`` / ``n_consequent``: with
    each; ``n``: all baskets. Equal to ``scipy.stats.fisher_exact(table, alternative="greater")``.
    """
    ab, a, c = (np.ascontiguousarray(v, dtype=np.int64) for v in (n_both, n_antecedent, n_consequent))
    if not (ab.shape == a.shape == c.shape) or ab.ndim != 1:
        raise ValueError("n_both, n_antecedent and n_consequent must be 1-d arrays of one length")
    if len(ab) and (ab.min() < 0 or (ab > np.minimum(a, c)).any() or max(a.max(), c.max()) > n):
        raise ValueError("inconsistent tables: need 0 <= n_both <= min(n_antecedent, n_consequent), margins <= n")
    return _fisher_many(ab, a, c, int(n), log_factorials(int(n)))


# ----------------------------------------------------------------------------- the itemset index

@njit(cache=True)
def _index(flat, starts, lens, rnd):
    """Zobrist key of every itemset and an open-addressing table (load <= 1/2) of their positions."""
    n = lens.shape[0]
    keys = np.empty(n, np.uint64)
    size = 2
    while size < 2 * n:
        size <<= 1
    table = np.full(size, -1, np.int64)
    msk = np.uint64(size - 1)
    for j in range(n):
        h = np.uint64(0)
        for t in range(starts[j], starts[j] + lens[j]):
            h ^= rnd[flat[t]]
        keys[j] = h
        s = h & msk
        while table[s] >= 0:
            s = (s + np.uint64(1)) & msk
        table[s] = j
    return keys, table


@njit(cache=True, inline="always")
def _find(h, sub, L, table, keys, flat, starts, lens):
    """Position of the itemset ``sub[:L]`` (ascending) with key ``h``, or -1."""
    msk = np.uint64(table.shape[0] - 1)
    s = h & msk
    while True:
        j = table[s]
        if j < 0:
            return -1
        if keys[j] == h and lens[j] == L:
            st = starts[j]
            same = True
            for q in range(L):
                if flat[st + q] != sub[q]:
                    same = False
                    break
            if same:
                return j
        s = (s + np.uint64(1)) & msk


# ----------------------------------------------------------------------------- enumeration

@njit(cache=True, nogil=True)
def _enumerate(flat, starts, lens, counts, keys, table, rnd, single, single_pos, n, lo, cap, kmax, max_cons,
               metric, threshold, prune):
    """Rules of the itemsets from position ``lo`` on whose ``metric`` >= ``threshold``, until at least
    ``cap`` rules are found (an itemset is never split between calls).

    Consequents grow level by level (1 item, 2 items, ...); with ``prune`` (the metric is confidence)
    a consequent is only tried when every consequent one item smaller passed: moving an item from
    antecedent to consequent can only lower confidence. Returns per rule its itemset, consequent mask,
    and the table positions of its antecedent and consequent; then the next itemset position, and
    the position of an itemset whose subset is missing from the table (-1 when downward closed).
    """
    nsets = lens.shape[0]
    full_cap = cap + (1 << kmax)
    out_set = np.empty(full_cap, np.int64)
    out_mask = np.empty(full_cap, np.int64)
    out_ja = np.empty(full_cap, np.int64)
    out_jc = np.empty(full_cap, np.int64)
    ok = np.zeros(1 << kmax, np.uint8)
    cx = np.zeros(1 << kmax, np.uint64)
    sub = np.empty(kmax, np.int32)
    r = 0
    i = lo
    while i < nsets and r < cap:
        k = lens[i]
        if k < 2:
            i += 1
            continue
        st = starts[i]
        sAC = counts[i] / n
        top = 0
        for q in range(k):
            top = max(top, single[flat[st + q]])
        s_max = top / n
        full = (1 << k) - 1
        for mask in range(1, full + 1):                  # consequent hashes: one XOR per mask
            low = mask & -mask
            cx[mask] = cx[mask ^ low] ^ rnd[flat[st + trailing_zeros(low)]]
        passed_before = 1
        for size in range(1, min(k - 1, max_cons) + 1):
            if prune and passed_before == 0:
                break
            passed = 0
            mask = (1 << size) - 1
            while mask < full:
                try_it = True
                if prune and size > 1:
                    rest = mask
                    while rest:
                        low = rest & -rest
                        if ok[mask ^ low] == 0:
                            try_it = False
                            break
                        rest ^= low
                ok[mask] = 0
                if try_it:
                    if size == 1:
                        jc = single_pos[flat[st + trailing_zeros(mask)]]
                    else:
                        L = 0
                        for q in range(k):
                            if (mask >> q) & 1:
                                sub[L] = flat[st + q]
                                L += 1
                        jc = _find(cx[mask], sub, L, table, keys, flat, starts, lens)
                        if jc < 0:
                            return out_set[:r], out_mask[:r], out_ja[:r], out_jc[:r], i, i
                    if size == k - 1:
                        ja = single_pos[flat[st + trailing_zeros(full ^ mask)]]
                    else:
                        L = 0
                        for q in range(k):
                            if not (mask >> q) & 1:
                                sub[L] = flat[st + q]
                                L += 1
                        ja = _find(keys[i] ^ cx[mask], sub, L, table, keys, flat, starts, lens)
                        if ja < 0:
                            return out_set[:r], out_mask[:r], out_ja[:r], out_jc[:r], i, i
                    if _measure(metric, counts[ja] / n, counts[jc] / n, sAC, s_max) >= threshold:
                        ok[mask] = 1
                        passed += 1
                        out_set[r] = i
                        out_mask[r] = mask
                        out_ja[r] = ja
                        out_jc[r] = jc
                        r += 1
                low = mask & -mask                       # next mask with as many bits (Gosper)
                ripple = mask + low
                mask = (((ripple ^ mask) >> 2) // low) | ripple
            passed_before = passed
        i += 1
    return out_set[:r], out_mask[:r], out_ja[:r], out_jc[:r], i, -1


# ----------------------------------------------------------------------------- measures per rule

@njit(cache=True, inline="always")
def _fill(rr, set_idx, ja, jc, counts, flat, starts, lens, single, n, lf, out):
    i = set_idx[rr]
    st = starts[i]
    top = 0
    for q in range(lens[i]):
        top = max(top, single[flat[st + q]])
    na = counts[ja[rr]]
    nc = counts[jc[rr]]
    sAC = counts[i] / n
    for code in range(13):
        out[code, rr] = _measure(code, na / n, nc / n, sAC, top / n)
    out[13, rr] = _fisher_greater(counts[i], na, nc, n, lf)


@njit(cache=True, parallel=True)
def _measures_parallel(set_idx, ja, jc, counts, flat, starts, lens, single, n, lf):
    out = np.empty((14, set_idx.shape[0]))
    for rr in prange(set_idx.shape[0]):
        _fill(rr, set_idx, ja, jc, counts, flat, starts, lens, single, n, lf, out)
    return out


@njit(cache=True, nogil=True)
def _measures_serial(set_idx, ja, jc, counts, flat, starts, lens, single, n, lf):
    out = np.empty((14, set_idx.shape[0]))
    for rr in range(set_idx.shape[0]):
        _fill(rr, set_idx, ja, jc, counts, flat, starts, lens, single, n, lf, out)
    return out


@njit(cache=True)
def _split(set_idx, masks, flat, starts, lens):
    """Antecedent and consequent item codes of each rule, as two CSR arrays (each part ascending)."""
    m = set_idx.shape[0]
    a_ptr = np.zeros(m + 1, np.int64)
    c_ptr = np.zeros(m + 1, np.int64)
    for rr in range(m):
        k = lens[set_idx[rr]]
        pc = 0
        x = masks[rr]
        while x:
            x &= x - 1
            pc += 1
        a_ptr[rr + 1] = a_ptr[rr] + k - pc
        c_ptr[rr + 1] = c_ptr[rr] + pc
    ant = np.empty(a_ptr[m], np.int32)
    con = np.empty(c_ptr[m], np.int32)
    for rr in range(m):
        i = set_idx[rr]
        st = starts[i]
        pa = a_ptr[rr]
        pc = c_ptr[rr]
        for q in range(lens[i]):
            if (masks[rr] >> q) & 1:
                con[pc] = flat[st + q]
                pc += 1
            else:
                ant[pa] = flat[st + q]
                pa += 1
    return a_ptr, ant, c_ptr, con


@njit(cache=True)
def _bh_sorted(p_sorted, m_total):
    """Benjamini-Hochberg q-values of ascending p-values (cumulative minimum from the top), capped at 1."""
    m = p_sorted.shape[0]
    q = np.empty(m)
    run = 1.0
    for t in range(m - 1, -1, -1):
        v = p_sorted[t] * m_total / (t + 1)
        if v < run:
            run = v
        q[t] = run
    return q


def bh_sorted(p_sorted: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values of p-values already in ascending order."""
    return _bh_sorted(np.ascontiguousarray(p_sorted, dtype=np.float64), len(p_sorted))


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), monotone in p, capped at 1."""
    p = np.asarray(p, dtype=np.float64)
    if len(p) == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    out = np.empty(len(p))
    out[order] = _bh_sorted(p[order], len(p))
    return out


# ----------------------------------------------------------------------------- the public wrapper

class ItemsetTable:
    """An itemset table prepared for rule generation: the hash index and single-item counts.

    ``flat``/``lens``/``counts`` as the mining kernel returns them (each itemset ascending; any order
    of itemsets); ``n_items``: codes lie in [0, n_items); ``n``: the number of baskets.
    """

    def __init__(self, flat, lens, counts, n_items: int, n: int):
        self.flat = np.ascontiguousarray(flat, dtype=np.int32)
        self.lens = np.ascontiguousarray(lens, dtype=np.int64)
        self.counts = np.ascontiguousarray(counts, dtype=np.int64)
        self.n = int(n)
        if self.lens.shape != self.counts.shape or self.lens.sum() != len(self.flat):
            raise ValueError("itemsets: lens must sum to len(flat) and match counts")
        if len(self.flat) and (self.flat.min() < 0 or self.flat.max() >= n_items):
            raise ValueError(f"itemsets: item codes must lie in [0, {n_items})")
        if self.n < 1 or (len(self.counts) and (self.counts.min() < 1 or self.counts.max() > self.n)):
            raise ValueError("itemsets: counts must lie in [1, n_baskets]")
        self.kmax = int(self.lens.max()) if len(self.lens) else 0
        if self.kmax > MAX_ITEMSET:
            raise ValueError(f"itemsets of {self.kmax} items: rules are enumerated up to {MAX_ITEMSET} items")
        self.starts = np.r_[0, np.cumsum(self.lens)[:-1]].astype(np.int64)
        one = self.lens == 1
        self.single = np.zeros(n_items, np.int64)
        self.single[self.flat[self.starts[one]]] = self.counts[one]
        self.single_pos = np.full(n_items, -1, np.int64)
        self.single_pos[self.flat[self.starts[one]]] = np.flatnonzero(one)
        self.rnd = np.random.default_rng(0x5EED).integers(0, 2**63, n_items, dtype=np.int64).astype(np.uint64) \
            * np.uint64(2) + np.uint64(1)
        self.keys, self.table = _index(self.flat, self.starts, self.lens, self.rnd)
        missing = self.single[self.flat] == 0
        self.missing_single = int(np.flatnonzero(missing)[0]) if missing.any() else -1

    def enumerate(self, metric: int, threshold: float, max_consequent_len: int | None = None,
                  chunk: int | None = None):
        """Rules as chunks of (itemset, consequent mask, antecedent position, consequent position)
        arrays (positions in this table), at most ``chunk`` rules plus one itemset's per chunk. Raises ``KeyError(position)`` naming an itemset whose
        subset is missing (the table is not downward closed)."""
        if self.missing_single >= 0:
            raise KeyError(int(np.searchsorted(self.starts, self.missing_single, side="right") - 1))
        max_cons = self.kmax if max_consequent_len is None else int(max_consequent_len)
        prune = metric == CONFIDENCE
        chunk = CHUNK_RULES if chunk is None else chunk
        lo = 0
        kmax = max(self.kmax, 1)
        while lo < len(self.lens):
            s, mk, ja, jc, lo, bad = _enumerate(self.flat, self.starts, self.lens, self.counts, self.keys, self.table,
                                                self.rnd, self.single, self.single_pos, self.n, lo, int(chunk), kmax,
                                                max_cons, int(metric), float(threshold), prune)
            if bad >= 0:
                raise KeyError(int(bad))
            yield s, mk, ja, jc

    def measures(self, set_idx, ja, jc, lf=None) -> np.ndarray:
        """The ``MEASURES`` of each rule, as rows of a (14, rules) array."""
        lf = log_factorials(self.n) if lf is None else lf
        fn = _measures_parallel if len(set_idx) >= PARALLEL_RULES else _measures_serial
        return fn(set_idx, ja, jc, self.counts, self.flat, self.starts, self.lens, self.single, self.n, lf)

    def split(self, set_idx, masks):
        """(antecedent indptr, antecedent codes, consequent indptr, consequent codes) of the rules."""
        return _split(set_idx, masks, self.flat, self.starts, self.lens)
