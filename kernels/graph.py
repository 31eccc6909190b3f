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
    codes = np.asarray(codes, dtype=np.int64)
    order = np.argsort(codes, kind="stable")
    sc = codes[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sc)) + 1, len(sc)].astype(np.int64)
    group_ok = sc[starts[:-1]] >= 0 if len(sc) else np.zeros(0, bool)
    sizes = np.diff(starts)
    skipped = int(np.sum(group_ok & (sizes > max_block)))
    left, right = _block_pairs(order.astype(np.int64), starts, int(max_block), group_ok)
    return left, right, skipped


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
