"""Basket counting: item and pair supports over CSR baskets, and depth-first itemset mining.

Baskets are CSR arrays: ``indptr`` (n_baskets + 1) and ``indices`` (item ids, each basket's items
unique). Mining is hybrid: singles by bincount, pairs by a parallel scan of the baskets into a
triangular count matrix over frequent items (no candidate lists), longer itemsets by Eclat over
basket-id lists restricted to candidates whose every pair is frequent.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import get_num_threads, njit, prange
from numba.cpython.unsafe.numbers import trailing_zeros


SERIAL_PAIRS = 2_000_000       # basket items below which pairs are counted in the calling thread
BITSET_BYTES = 256 * 2**20     # largest item x basket bitset; above it basket-id lists are merged


def _csr(indptr, indices):
    indptr = np.ascontiguousarray(indptr, dtype=np.int64)
    indices = np.ascontiguousarray(indices, dtype=np.int32)
    if indptr.ndim != 1 or indices.ndim != 1 or len(indptr) < 1 or indptr[0] != 0 or indptr[-1] != len(indices):
        raise ValueError("baskets must be CSR: indptr[0] == 0 and indptr[-1] == len(indices)")
    if np.any(np.diff(indptr) < 0):
        raise ValueError("baskets: indptr must be non-decreasing")
    return indptr, indices


@njit(cache=True, inline="always")
def _count_pairs(indptr, indices, rank, m, lo, hi, counts, buf):
    """Add the pair counts of baskets lo..hi into ``counts`` (packed triangular).

    ``buf`` must hold the longest basket: it is never regrown here, since reassigning an array
    inside a ``prange`` body makes parfors treat it as a reduction variable and fail at run time
    ("Sizes of ... do not match") as soon as one thread's copy grows."""
    for bkt in range(lo, hi):
        k = 0
        for p in range(indptr[bkt], indptr[bkt + 1]):
            r = rank[indices[p]]
            if r >= 0:
                buf[k] = r
                k += 1
        if k < 2:
            continue
        if k > 32:
            buf[:k].sort()
        else:
            for a in range(1, k):                   # insertion sort: most baskets are short
                v = buf[a]
                q = a - 1
                while q >= 0 and buf[q] > v:
                    buf[q + 1] = buf[q]
                    q -= 1
                buf[q + 1] = v
        for a in range(k - 1):
            ia = buf[a]
            base = ia * m - (ia * (ia + 1)) // 2 - ia - 1     # pair (ia < ib) sits at base + ib
            for b in range(a + 1, k):
                counts[base + buf[b]] += 1


@njit(cache=True, parallel=True)
def _pair_counts(indptr, indices, rank, m, nt, maxlen):
    """Support counts of all pairs of frequent items (rank[item] >= 0), packed triangular, int64.

    ``nt`` thread-local count arrays are filled from basket chunks, then summed.
    """
    n = indptr.shape[0] - 1
    size = m * (m - 1) // 2
    local = np.zeros((nt, size), np.int32)
    chunk = (n + nt - 1) // nt
    for t in prange(nt):
        buf = np.empty(maxlen, np.int64)
        _count_pairs(indptr, indices, rank, m, t * chunk, min(n, (t + 1) * chunk), local[t], buf)
    out = np.zeros(size, np.int64)
    for s in prange(size):
        acc = 0
        for t in range(nt):
            acc += local[t, s]
        out[s] = acc
    return out


@njit(cache=True)
def _pair_counts_serial(indptr, indices, rank, m, maxlen):
    """As :func:`_pair_counts` in the calling thread: for small inputs, where waking (and then
    leaving spinning) the OpenMP workers costs more than it saves and slows the threads that follow."""
    out = np.zeros(m * (m - 1) // 2, np.int64)
    _count_pairs(indptr, indices, rank, m, 0, indptr.shape[0] - 1, out, np.empty(maxlen, np.int64))
    return out


@njit(cache=True)
def _tidlists(indptr, indices, rank, m):
    """Basket ids per frequent item (CSC of the frequent part), each list sorted."""
    counts = np.zeros(m + 1, np.int64)
    for p in range(indices.shape[0]):
        r = rank[indices[p]]
        if r >= 0:
            counts[r + 1] += 1
    ptr = np.cumsum(counts)
    fill = ptr[:-1].copy()
    tids = np.empty(ptr[-1], np.int32)
    for bkt in range(indptr.shape[0] - 1):
        for p in range(indptr[bkt], indptr[bkt + 1]):
            r = rank[indices[p]]
            if r >= 0:
                tids[fill[r]] = bkt
                fill[r] += 1
    return ptr, tids


@njit(cache=True, inline="always")
def _intersect(a, na, b, nb, out):
    i = 0
    j = 0
    k = 0
    while i < na and j < nb:
        x, y = a[i], b[j]
        if x == y:
            out[k] = x
            k += 1
            i += 1
            j += 1
        elif x < y:
            i += 1
        else:
            j += 1
    return k


@njit(cache=True)
def _bitsets(ptr, tids, m, n_baskets):
    """One bit per basket for each frequent item."""
    words = (n_baskets + 63) // 64
    bits = np.zeros((m, words), np.uint64)
    for r in range(m):
        for q in range(ptr[r], ptr[r + 1]):
            t = tids[q]
            bits[r, t >> 6] |= np.uint64(1) << np.uint64(t & 63)
    return bits


@njit(cache=True, inline="always")
def _intersect_bits(a, na, bits_row, out, need):
    """Basket ids of ``a`` whose bit is set: O(len(a)) whatever the other list's length.

    Branch-free (each id is written, the count advances by its bit: the bits are unpredictable);
    stops early (returning a count below ``need``) once ``need`` can no longer be reached, checked
    every 16 ids. Unsigned arithmetic: no negative-index wrap-around checks in the loop.
    """
    k = np.uint64(0)
    one = np.uint64(1)
    for q0 in range(0, na, 16):
        if np.int64(k) + na - q0 < need:
            return np.int64(k)
        for q in range(q0, min(na, q0 + 16)):
            t = np.uint32(a[q])
            out[k] = t
            k += (bits_row[t >> np.uint32(6)] >> np.uint64(t & np.uint32(63))) & one
    return np.int64(k)


@njit(cache=True, inline="always")
def _popcount(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


@njit(cache=True, inline="always")
def _has(nbr, a, b):
    return (nbr[a, b >> 6] >> np.uint64(b & 63)) & np.uint64(1)


@njit(cache=True)
def _neighbours(pair_cnt, m, min_count):
    """Per frequent item, a bitset of the items it forms a frequent pair with (fits in L1 where the
    packed pair counts do not)."""
    nbr = np.zeros((m, (m + 63) >> 6), np.uint64)
    k = 0
    for i in range(m):
        for j in range(i + 1, m):
            if pair_cnt[k] >= min_count:
                nbr[i, j >> 6] |= np.uint64(1) << np.uint64(j & 63)
                nbr[j, i >> 6] |= np.uint64(1) << np.uint64(i & 63)
            k += 1
    return nbr


@njit(cache=True)
def _work_estimate(pair_cnt, nbr, m, min_count):
    """Expected mining cost per first item: over its frequent pairs (i, j), the pair's support times
    the number of candidates (items frequent with both). Correlates ~0.7-0.95 with measured time."""
    est = np.zeros(m)
    k = 0
    for i in range(m):
        for j in range(i + 1, m):
            c = pair_cnt[k]
            k += 1
            if c >= min_count:
                nc = 1
                for wd in range(nbr.shape[1]):
                    nc += _popcount(nbr[i, wd] & nbr[j, wd])
                est[i] += c * nc
    return est


@njit(cache=True)
def _grow(arr, need):
    if need <= arr.shape[0]:
        return arr
    new = np.empty(max(need, 2 * arr.shape[0]), arr.dtype)
    new[:arr.shape[0]] = arr
    return new


@njit(cache=True, nogil=True)
def _eclat_deep(nbr, m, ptr, tids, min_count, max_len, bits, use_bits, firsts):
    """Itemsets of size 3..max_len: depth-first from each frequent pair.

    Returns (flat items, lengths, counts) in ranks. A candidate extends a prefix only if it forms a
    frequent pair with the prefix's last item (``nbr``) and, below the first level, if it extended
    the parent prefix: candidates are taken last to first, so a candidate's later siblings are known
    frequent or not before it is extended. Basket-id lists are intersected against the other item's
    bitset when ``use_bits`` (cost of the shorter list only), else by merging. Only itemsets whose
    first item is in ``firsts`` are mined: threads split the work by first item (the kernel releases
    the GIL). Buffers grow with ``max_len``: the caller caps it at the longest basket.
    """
    out_items = np.empty(1024, np.int32)
    out_len = np.empty(256, np.int32)
    out_cnt = np.empty(256, np.int64)
    n_out = 0
    n_items_out = 0
    maxc = 0
    for r in range(m):
        maxc = max(maxc, ptr[r + 1] - ptr[r])
    depth_cap = min(max_len, m) + 1
    buf = np.empty((depth_cap, maxc), np.int32)
    blen = np.zeros(depth_cap, np.int64)
    cand = np.empty((depth_cap, m), np.int32)
    ok = np.zeros((depth_cap, m), np.bool_)
    ncand = np.zeros(depth_cap, np.int64)
    pos = np.zeros(depth_cap, np.int64)
    prefix = np.empty(depth_cap, np.int32)
    one = np.uint64(1)
    for i in firsts:
        for j in range(i + 1, m):
            if not _has(nbr, i, j):
                continue
            nc = 0                                  # candidates l > j frequent with both i and j
            w0 = (j + 1) >> 6
            for wd in range(w0, nbr.shape[1]):
                x = nbr[i, wd] & nbr[j, wd]
                if wd == w0:
                    x &= ~((one << np.uint64((j + 1) & 63)) - one)
                while x:
                    cand[2, nc] = (wd << 6) + trailing_zeros(x)
                    nc += 1
                    x &= x - one
            if nc == 0:
                continue
            prefix[0] = i
            prefix[1] = j
            if use_bits:
                blen[2] = _intersect_bits(tids[ptr[i]:ptr[i + 1]], ptr[i + 1] - ptr[i], bits[j], buf[2], 0)
            else:
                blen[2] = _intersect(tids[ptr[i]:ptr[i + 1]], ptr[i + 1] - ptr[i], tids[ptr[j]:ptr[j + 1]],
                                     ptr[j + 1] - ptr[j], buf[2])
            ncand[2] = nc
            pos[2] = nc
            d = 2
            while d >= 2:
                if pos[d] == 0:
                    d -= 1
                    continue
                pos[d] -= 1
                q = pos[d]
                l = cand[d, q]
                if use_bits:
                    c = _intersect_bits(buf[d], blen[d], bits[l], buf[d + 1], min_count)
                else:
                    c = _intersect(buf[d], blen[d], tids[ptr[l]:ptr[l + 1]], ptr[l + 1] - ptr[l], buf[d + 1])
                ok[d, q] = c >= min_count
                if c < min_count:
                    continue
                size = d + 1
                out_items = _grow(out_items, n_items_out + size)
                out_len = _grow(out_len, n_out + 1)
                out_cnt = _grow(out_cnt, n_out + 1)
                for s in range(d):
                    out_items[n_items_out + s] = prefix[s]
                out_items[n_items_out + d] = l
                n_items_out += size
                out_len[n_out] = size
                out_cnt[n_out] = c
                n_out += 1
                if size < max_len:
                    nc2 = 0
                    for q2 in range(q + 1, ncand[d]):
                        l2 = cand[d, q2]
                        if ok[d, q2] and _has(nbr, l, l2):
                            cand[d + 1, nc2] = l2
                            nc2 += 1
                    if nc2 > 0:
                        prefix[d] = l
                        blen[d + 1] = c
                        ncand[d + 1] = nc2
                        pos[d + 1] = nc2
                        d += 1
    return out_items[:n_items_out], out_len[:n_out], out_cnt[:n_out]


def _balanced(est: np.ndarray, nt: int) -> list[np.ndarray]:
    """First items split over ``nt`` threads, largest estimated cost first to the least loaded."""
    loads, parts = [0.0] * nt, [[] for _ in range(nt)]
    for i in np.argsort(-est, kind="stable").tolist():
        t = loads.index(min(loads))
        parts[t].append(i)
        loads[t] += est[i]
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


@njit(cache=True)
def _by_size(items, lens, counts, freq, to_ids):
    """Itemsets grouped by size (stable), items mapped to ids through ``freq`` when ``to_ids`` and
    sorted ascending within each itemset."""
    n = lens.shape[0]
    top = 0
    for k in range(n):
        top = max(top, lens[k])
    per = np.zeros(top + 2, np.int64)
    for k in range(n):
        per[lens[k] + 1] += lens[k]
    nper = np.zeros(top + 2, np.int64)
    for k in range(n):
        nper[lens[k] + 1] += 1
    item_at = np.cumsum(per)
    set_at = np.cumsum(nper)
    out = np.empty(items.shape[0], np.int32)
    out_len = np.empty(n, np.int32)
    out_cnt = np.empty(n, np.int64)
    src = 0
    for k in range(n):
        L = lens[k]
        dst = item_at[L]
        for q in range(L):
            v = items[src + q]
            out[dst + q] = freq[v] if to_ids else v
        for q in range(1, L):                       # insertion sort: itemsets are short
            v = out[dst + q]
            r = q - 1
            while r >= 0 and out[dst + r] > v:
                out[dst + r + 1] = out[dst + r]
                r -= 1
            out[dst + r + 1] = v
        item_at[L] += L
        out_len[set_at[L]] = L
        out_cnt[set_at[L]] = counts[k]
        set_at[L] += 1
        src += L
    return out, out_len, out_cnt


_POOL: list = []


def _pool(n: int) -> ThreadPoolExecutor:
    """A process-wide pool for GIL-free kernels (created once: thread start-up would cost more than
    the work on small data)."""
    if not _POOL or _POOL[0]._max_workers < n:
        _POOL[:] = [ThreadPoolExecutor(n, thread_name_prefix="crmlab-baskets")]
    return _POOL[0]


def item_counts(indptr, indices, n_items: int) -> np.ndarray:
    """Number of baskets containing each item."""
    indptr, indices = _csr(indptr, indices)
    if len(indices) and (indices.min() < 0 or indices.max() >= n_items):
        raise ValueError(f"baskets: item ids must lie in [0, {n_items})")
    return np.bincount(indices, minlength=n_items).astype(np.int64)


def frequent_itemsets(indptr, indices, n_items: int, min_count: int, max_len: int | None = None):
    """All itemsets contained in at least ``min_count`` baskets, up to ``max_len`` items.

    Returns ``(items, lengths, counts)``: itemsets as a flat array of item ids (each itemset
    sorted ascending) with their sizes and support counts, ordered by size.
    """
    indptr, indices = _csr(indptr, indices)
    if min_count < 1:
        raise ValueError("min_count must be >= 1")
    max_len = n_items if max_len is None else int(max_len)
    counts = item_counts(indptr, indices, n_items)
    freq, rank = frequent_ranks(counts, min_count)
    m = len(freq)
    levels = [singles(counts, freq)]
    if max_len >= 2 and m >= 2:
        longest = max(1, int(np.diff(indptr).max()))
        pc = ranked_pair_counts(indptr, indices, rank, m, longest, parallel=len(indices) >= SERIAL_PAIRS)
        two = frequent_pairs(pc, freq, min_count)
        levels.append(two)
        max_len = min(max_len, longest)                          # no itemset outgrows its basket
        if max_len >= 3 and len(two[1]):
            nbr = _neighbours(pc, m, min_count)
            nt = max(1, min(get_num_threads(), m // 8))
            parts = _balanced(_work_estimate(pc, nbr, m, min_count), nt) if nt > 1 else [np.arange(m)]
            ptr, tids, bits, use_bits = _deep_index(indptr, indices, rank, m)

            def run(firsts):
                return _eclat_deep(nbr, m, ptr, tids, int(min_count), max_len, bits, use_bits, firsts)

            res = list(_pool(nt).map(run, parts)) if nt > 1 else [run(parts[0])]
            levels.append(sized_itemsets(res, freq))
    return stacked(levels)


# -- the steps of frequent_itemsets, public for mining by parts (crmlab.affinity_dask): item counts and
# -- pair counts add up over any split of the baskets; the deep search runs per group of first items
# -- on the baskets projected on that group (project), each group's itemsets exactly once.

def singles(counts: np.ndarray, freq: np.ndarray):
    """The frequent single items: (ids ascending, lengths, counts)."""
    ids = np.sort(freq)
    return ids, np.ones(len(ids), np.int32), counts[ids]


def stacked(levels: list):
    """Levels of itemsets (flat items, lengths, counts; None for an empty one) as one result, smallest first."""
    levels = [lv for lv in levels if lv is not None]
    return (np.concatenate([lv[0] for lv in levels]).astype(np.int32),
            np.concatenate([lv[1] for lv in levels]).astype(np.int32),
            np.concatenate([lv[2] for lv in levels]).astype(np.int64))


def frequent_ranks(counts: np.ndarray, min_count: int) -> tuple[np.ndarray, np.ndarray]:
    """(frequent item ids by ascending support, rank of every item id: -1 if not frequent)."""
    freq = np.flatnonzero(counts >= min_count)
    freq = freq[np.argsort(counts[freq], kind="stable")].astype(np.int32)   # rank = ascending support
    rank = np.full(len(counts), -1, np.int64)
    rank[freq] = np.arange(len(freq))
    return freq, rank


def ranked_pair_counts(indptr, indices, rank, m: int, longest: int, parallel: bool = False) -> np.ndarray:
    """Baskets containing each pair of frequent items, packed upper triangle over ranks (int64)."""
    if m * (m - 1) // 2 > 400_000_000:
        raise MemoryError(f"{m:,} frequent items: the pair matrix would be too large; raise min_support")
    if parallel:
        return _pair_counts(indptr, indices, rank, m, get_num_threads(), longest)
    return _pair_counts_serial(indptr, indices, rank, m, longest)


def frequent_pairs(pc: np.ndarray, freq: np.ndarray, min_count: int):
    """The frequent pairs of packed counts ``pc``: (flat item ids, lengths, counts)."""
    m = len(freq)
    sel = np.flatnonzero(pc >= min_count)
    # invert the packed index: row i holds positions [start_i, start_i + m - i - 1)
    starts = np.arange(m) * m - np.arange(m) * (np.arange(m) + 1) // 2
    i = np.searchsorted(starts, sel, side="right") - 1
    j = sel - starts[i] + i + 1
    a, b = freq[i], freq[j]
    return (np.column_stack([np.minimum(a, b), np.maximum(a, b)]).ravel().astype(np.int32),
            np.full(len(sel), 2, np.int32), pc[sel])


def deep_plan(pc: np.ndarray, m: int, min_count: int, groups: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """(frequent-pair bitsets, first items split into ``groups`` of about equal estimated work)."""
    nbr = _neighbours(pc, m, min_count)
    return nbr, _balanced(_work_estimate(pc, nbr, m, min_count), groups) if groups > 1 else [np.arange(m)]


def _deep_index(indptr, indices, rank, m):
    ptr, tids = _tidlists(indptr, indices, rank, m)
    n = len(indptr) - 1
    use_bits = m * ((n + 63) // 64) * 8 <= BITSET_BYTES
    bits = _bitsets(ptr, tids, m, n) if use_bits else np.zeros((1, 1), np.uint64)
    return ptr, tids, bits, use_bits


def mine_deep(indptr, indices, rank, nbr, min_count: int, max_len: int, firsts: np.ndarray):
    """Itemsets of 3..``max_len`` items whose first (lowest-ranked) item is in ``firsts``, in ranks,
    from baskets holding every basket that contains one of ``firsts`` (e.g. :func:`project`'s)."""
    indptr, indices = _csr(indptr, indices)
    m = nbr.shape[0]
    ptr, tids, bits, use_bits = _deep_index(indptr, indices, np.asarray(rank, np.int64), m)
    return _eclat_deep(nbr, m, ptr, tids, int(min_count), int(max_len), bits, use_bits, np.asarray(firsts, np.int64))


def sized_itemsets(results: list, freq: np.ndarray):
    """Deep itemsets of several runs (in ranks) as item ids grouped by size, each size in item order (so
    the result depends neither on how the search was split, over threads or workers, nor on its order);
    None when there are none."""
    it = np.concatenate([r[0] for r in results])
    ln = np.concatenate([r[1] for r in results])
    ct = np.concatenate([r[2] for r in results])
    if not len(ln):
        return None
    it, ln, ct = _by_size(it, ln, ct, freq, True)
    at = 0
    for size in np.unique(ln):
        k = int(np.sum(ln == size))
        block = it[at:at + k * size].reshape(k, size)
        order = np.lexsort(block.T[::-1])
        it[at:at + k * size] = block[order].ravel()
        first = int(np.argmax(ln == size))                        # the size's first itemset
        ct[first:first + k] = ct[first:first + k][order]
        at += k * size
    return it, ln, ct


@njit(cache=True)
def _project(indptr, indices, rank, group, g):
    """Each basket holding an item of group ``g`` (by rank), cut to its items ranked at or after the
    lowest-ranked of them; CSR (indptr, items)."""
    n = indptr.shape[0] - 1
    lo = np.full(n, -1, np.int64)
    size = np.zeros(n + 1, np.int64)
    for b in range(n):
        mn = -1
        for p in range(indptr[b], indptr[b + 1]):
            r = rank[indices[p]]
            if r >= 0 and group[r] == g and (mn < 0 or r < mn):
                mn = r
        if mn < 0:
            continue
        lo[b] = mn
        k = 0
        for p in range(indptr[b], indptr[b + 1]):
            if rank[indices[p]] >= mn:
                k += 1
        size[b + 1] = k
    keep = np.cumsum(size > 0) if n else np.zeros(0, np.int64)
    out_ptr = np.zeros((keep[-1] if n else 0) + 1, np.int64)
    k = 0
    for b in range(n):
        if lo[b] >= 0:
            out_ptr[k + 1] = out_ptr[k] + size[b + 1]
            k += 1
    out = np.empty(out_ptr[-1], np.int32)
    k = 0
    q = 0
    for b in range(n):
        if lo[b] < 0:
            continue
        for p in range(indptr[b], indptr[b + 1]):
            if rank[indices[p]] >= lo[b]:
                out[q] = indices[p]
                q += 1
        k += 1
    return out_ptr, out


def project(indptr, indices, rank, group: np.ndarray, g: int):
    """The baskets that hold an item of group ``g`` (``group``: group of each rank), each cut to its
    items ranked at or after its lowest-ranked item of ``g``: all that :func:`mine_deep` needs to find
    the itemsets whose first item is in ``g``, each basket once. CSR (indptr int64, items int32)."""
    indptr, indices = _csr(indptr, indices)
    return _project(indptr, indices, np.asarray(rank, np.int64), np.asarray(group, np.int64), int(g))


def pair_counts(indptr, indices, n_items: int, min_count: int):
    """Frequent pairs only (the fast path for very large basket sets): (item_a, item_b, count), a < b."""
    flat, lens, cnts = frequent_itemsets(indptr, indices, n_items, min_count, max_len=2)
    two = lens == 2
    start = int(np.sum(lens == 1))
    pairs = flat[start:].reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1], cnts[two]
