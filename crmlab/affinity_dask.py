"""Frequent itemsets on a Dask cluster (#19, basket mining), equal to :func:`crmlab.affinity.frequent_itemsets`.

The baskets are split into parts on the workers. Item supports and the packed pair counts are counted
per part with the local kernels and summed (counts add up over any split). Longer itemsets come from a
partitioned search, as in parallel FP-growth: the frequent items are split into groups of about equal
estimated work, each part projects its baskets on each group (a basket that holds an item of the group,
cut to the items ranked at or after its lowest-ranked one), and one task per group runs the local
depth-first search on its projected baskets from the group's first items only. Every basket that
contains an itemset's first item reaches that group once, so every support is the global one. Rules,
significance and guards then run on the gathered :class:`~crmlab.affinity.Itemsets` as they do locally.

``dask`` is imported inside the functions: the core install runs without the ``dask`` extra.
"""
from __future__ import annotations

import math
import operator

import numpy as np
import pandas as pd

from . import engine
from .affinity import Baskets, Itemsets, _as_baskets, _min_count
from .errors import CrmlabError
from .kernels import baskets as K
from .table_parts import TableParts


def _parts(b: Baskets, partition_baskets: int) -> list[Baskets]:
    """Runs of consecutive baskets, about ``partition_baskets`` each (same vocabulary, ids kept)."""
    n = max(1, math.ceil(b.n_baskets / partition_baskets))
    cuts = np.linspace(0, b.n_baskets, n + 1).astype(np.int64)
    return [Baskets(b.indptr[lo:hi + 1] - b.indptr[lo], b.indices[b.indptr[lo]:b.indptr[hi]], b.items,
                    None if b.ids is None else b.ids[lo:hi]) for lo, hi in zip(cuts[:-1], cuts[1:])]


def _item_counts(part: Baskets, n_items):
    longest = int(np.diff(part.indptr).max()) if part.n_baskets else 0
    return K.item_counts(part.indptr, part.indices, n_items), longest


def _pair_counts(part: Baskets, rank, m, longest):
    return K.ranked_pair_counts(part.indptr, part.indices, rank, m, max(1, longest))


def _projections(part: Baskets, rank, group, groups):
    return [K.project(part.indptr, part.indices, rank, group, g) for g in range(groups)]


def _tree_sum(client, futures) -> np.ndarray:
    """Sum of the arrays of ``futures`` added pairwise on the workers (integers: exact in any order), so
    the client receives one packed pair matrix, not one per part."""
    while len(futures) > 1:
        nxt = [client.submit(operator.add, a, b, pure=False) for a, b in zip(futures[::2], futures[1::2])]
        futures = nxt + ([futures[-1]] if len(futures) % 2 else [])
    return futures[0].result()


def _mine(pieces, rank, nbr, min_count, max_len, firsts):
    ptrs = [p[0] for p in pieces]
    lens = np.concatenate([np.diff(p) for p in ptrs]) if ptrs else np.zeros(0, np.int64)
    indptr = np.r_[0, np.cumsum(lens)].astype(np.int64)
    indices = np.concatenate([p[1] for p in pieces]) if pieces else np.zeros(0, np.int32)
    return K.mine_deep(indptr, indices, rank, nbr, min_count, max_len, firsts)


def _mine_counts(client, b: Baskets, mc: int, max_len: int, partition_baskets: int, groups: int | None):
    """:func:`crmlab.kernels.baskets.frequent_itemsets` by parts: (flat item ids, lengths, counts)."""
    pieces = _parts(b, partition_baskets)
    n = len(pieces)
    groups = groups or 2 * max(1, len(client.scheduler_info().get("workers", {})))

    def run():
        parts = engine.scatter(client, pieces)
        got = client.gather(client.map(_item_counts, parts, [b.n_items] * n, pure=False))
        counts = np.sum([g[0] for g in got], axis=0)
        longest = max(g[1] for g in got)
        freq, rank = K.frequent_ranks(counts, mc)
        m = len(freq)
        levels = [K.singles(counts, freq)]
        if max_len >= 2 and m >= 2:
            pc = _tree_sum(client, client.map(_pair_counts, parts, [rank] * n, [m] * n, [longest] * n, pure=False))
            two = K.frequent_pairs(pc, freq, mc)
            levels.append(two)
            deep_len = min(max_len, longest)
            if deep_len >= 3 and len(two[1]):
                nbr, firsts = K.deep_plan(pc, m, mc, min(groups, m))
                group = np.empty(m, np.int64)
                for g, f in enumerate(firsts):
                    group[f] = g
                proj = client.map(_projections, parts, [rank] * n, [group] * n, [len(firsts)] * n, pure=False)
                mined = [client.submit(_mine, [client.submit(operator.getitem, p, g, pure=False) for p in proj],
                                       rank, nbr, mc, deep_len, f, pure=False)
                         for g, f in enumerate(firsts)]
                levels.append(K.sized_itemsets(client.gather(mined), freq))
        return K.stacked(levels)

    return engine.retry_lost(run, f"frequent itemsets of {b.n_baskets:,} baskets on {n} parts")


def frequent_itemsets(client, data, min_support: float = 0.5, max_len: int | None = None,
                      partition_baskets: int = 1_000_000, groups: int | None = None) -> Itemsets:
    """:func:`crmlab.affinity.frequent_itemsets` (``columnar=True``) computed on the cluster of ``client``:
    the same itemsets with the same supports, in the same order. ``groups``: first-item groups of the
    deep search (default: twice the workers)."""
    b = _as_baskets(data)
    if b.n_baskets == 0:
        raise CrmlabError("no baskets")
    max_len = b.n_items if max_len is None else int(max_len)
    flat, lens, counts = _mine_counts(client, b, _min_count(min_support, b.n_baskets), max_len, partition_baskets,
                                      groups)
    return Itemsets(flat, lens, counts, b.items, b.n_baskets)


def pair_counts(client, b: Baskets, min_count: int, partition_baskets: int = 1_000_000):
    """:func:`crmlab.kernels.baskets.pair_counts` by parts: (item_a, item_b, count) of the pairs in at
    least ``min_count`` baskets, in the local order (the recommender's co-occurrences)."""
    flat, lens, cnts = _mine_counts(client, b, int(min_count), 2, partition_baskets, 1)
    start = int(np.sum(lens == 1))
    pairs = flat[start:].reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1], cnts[lens == 2]


def _recommend(part: Baskets, recommender, exclude_items) -> pd.DataFrame:
    return recommender.recommend(part, exclude_items=exclude_items)


def recommend_parts(client, recommender, b: Baskets, exclude_items=(), partition_baskets: int = 1_000_000,
                    finish=None, *args) -> TableParts:
    """``recommender.recommend(b, exclude_items)`` by parts of the customers' baskets on the cluster (each
    customer's list is its own), then ``finish(rows, *args)`` where given, left there: the parts laid
    end to end are the local table."""
    pieces = _parts(b, partition_baskets)
    n = len(pieces)

    def run():
        parts = engine.scatter(client, pieces)
        got = TableParts(client, client.map(_recommend, parts, [recommender] * n, [list(exclude_items)] * n, pure=False))
        return got if finish is None else got.transform(finish, *args)

    return engine.retry_lost(run, f"recommendations for {b.n_baskets:,} customers on {n} parts")


def recommend(client, recommender, b: Baskets, exclude_items=(), partition_baskets: int = 1_000_000) -> pd.DataFrame:
    """:func:`recommend_parts` gathered: the local table, in the same order."""
    return recommend_parts(client, recommender, b, exclude_items, partition_baskets).compute()
