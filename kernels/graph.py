"""Candidate pairs from blocks and connected components of accepted pairs."""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _block_pairs(order, starts, max_block, group_ok):
    """All pairs (a < b in record order) within each block; blocks larger than max_block are skipped."""
    total = 0
    for g in range(starts.shape[0] - 1):
        s = starts[g + 1] - starts[g]
        if group_ok[g] and 1 < s <= max_block:
            total += s * (s - 1) // 2
    left = np.empty(total, np.int64)
    right = np.empty(total, np.int64)
    k = 0
    for g in range(starts.shape[0] - 1):
        lo, hi = starts[g], starts[g + 1]
        s = hi - lo
        if not group_ok[g] or s < 2 or s > max_block:
            continue
        for x in range(lo, hi - 1):
            for y in range(x + 1, hi):
                a, b = order[x], order[y]
                if a < b:
                    left[k], right[k] = a, b
                else:
                    left[k], right[k] = b, a
                k += 1
    return left, right


def block_pairs(codes: np.ndarray, max_block: int = 1000):
    """Pairs of rows sharing a block code (code -1 = no key: never paired).

    Returns (left, right, n_skipped_blocks) with left < right.
    """
    order, starts, group_ok, skipped, _ = _blocks(codes, max_block)
    left, right = _block_pairs(order, starts, int(max_block), group_ok)
    return left, right, skipped


@njit(cache=True)
def _sampled_block_pairs(order, starts, max_block, group_ok, picks):
    """The pairs numbered ``picks`` (ascending) in :func:`_block_pairs`' enumeration, without the others."""
    n = picks.shape[0]
    left = np.empty(n, np.int64)
    right = np.empty(n, np.int64)
    g, base, size = 0, 0, 0
    for p in range(n):
        t = picks[p]
        while True:                                # the block holding pair number t
            s = starts[g + 1] - starts[g]
            size = s * (s - 1) // 2 if (group_ok[g] and 1 < s <= max_block) else 0
            if t < base + size:
                break
            base += size
            g += 1
        s = starts[g + 1] - starts[g]
        r = t - base                               # pair r of the block: row x with the rows after it
        b2 = 2 * s - 1
        x = int((b2 - np.sqrt(float(b2 * b2 - 8 * r))) // 2)
        while x > 0 and x * (2 * s - x - 1) // 2 > r:
            x -= 1
        while (x + 1) * (2 * s - x - 2) // 2 <= r:
            x += 1
        y = x + 1 + (r - x * (2 * s - x - 1) // 2)
        a, b = order[starts[g] + x], order[starts[g] + y]
        if a < b:
            left[p], right[p] = a, b
        else:
            left[p], right[p] = b, a
    return left, right


def pair_blocks(codes: np.ndarray, max_block: int = 1000):
    """The blocks that make pairs under :func:`block_pairs`: (rows sorted by block code, stable; each
    block's start in them, one more at the end; the indices of the blocks with 2..max_block records
    and a code; the number of blocks skipped as larger than max_block)."""
    order, starts, group_ok, skipped, _ = _blocks(codes, max_block)
    sizes = np.diff(starts)
    return order, starts, np.flatnonzero(group_ok & (sizes > 1) & (sizes <= max_block)), skipped


def nth_block_pairs(starts: np.ndarray, max_block: int, picks: np.ndarray):
    """Pairs numbered ``picks`` (ascending) in :func:`block_pairs`' enumeration of blocks that lie at
    positions ``starts[g]..starts[g+1]`` of one sequence (each block 2..max_block long), as the two
    positions (a < b): what :func:`sample_block_pairs` draws, for blocks held elsewhere."""
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    picks = np.ascontiguousarray(picks, dtype=np.int64)
    n = int(starts[-1]) if len(starts) else 0
    if len(picks) and (picks[0] < 0 or np.any(np.diff(picks) < 0)):
        raise ValueError("picks must be ascending and non-negative")
    return _sampled_block_pairs(np.arange(n, dtype=np.int64), starts, int(max_block),
                                np.ones(max(len(starts) - 1, 0), np.bool_), picks)


def _blocks(codes, max_block):
    codes = np.asarray(codes, dtype=np.int64)
    order = np.argsort(codes, kind="stable")
    sc = codes[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sc)) + 1, len(sc)].astype(np.int64)
    group_ok = sc[starts[:-1]] >= 0 if len(sc) else np.zeros(0, bool)
    sizes = np.diff(starts)
    skipped = int(np.sum(group_ok & (sizes > max_block)))
    kept = group_ok & (sizes > 1) & (sizes <= max_block)
    total = int(np.sum(sizes[kept] * (sizes[kept] - 1) // 2))
    return order.astype(np.int64), starts, group_ok, skipped, total


def sample_block_pairs(codes: np.ndarray, max_block: int, k: int, rng: np.random.Generator):
    """``k`` of :func:`block_pairs`' pairs drawn uniformly without replacement, in memory for ``k`` only
    (all of them when there are no more than ``k``). Returns (left, right, n_skipped_blocks, n_pairs)."""
    order, starts, group_ok, skipped, total = _blocks(codes, max_block)
    if total <= k:
        left, right = _block_pairs(order, starts, int(max_block), group_ok)
        return left, right, skipped, total
    picks = np.sort(rng.choice(total, int(k), replace=False)).astype(np.int64)
    left, right = _sampled_block_pairs(order, starts, int(max_block), group_ok, picks)
    return left, right, skipped, total


@njit(cache=True)
def _find(parent, x):
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:                       # path compression
        nxt = parent[x]
        parent[x] = root
        x = nxt
    return root


@njit(cache=True)
def _components(n, left, right):
    parent = np.arange(n)
    for p in range(left.shape[0]):
        a = _find(parent, left[p])
        b = _find(parent, right[p])
        if a != b:
            if a < b:
                parent[b] = a
            else:
                parent[a] = b
    labels = np.empty(n, np.int64)
    for i in range(n):
        labels[i] = _find(parent, i)
    return labels


def connected_components(n: int, left, right) -> np.ndarray:
    """Component label of each of n nodes (the smallest node index in its component)."""
    left = np.ascontiguousarray(left, dtype=np.int64)
    right = np.ascontiguousarray(right, dtype=np.int64)
    if left.shape != right.shape:
        raise ValueError("left and right must have the same length")
    if len(left) and (min(left.min(), right.min()) < 0 or max(left.max(), right.max()) >= n):
        raise ValueError("pair indices out of range")
    return _components(int(n), left, right)
