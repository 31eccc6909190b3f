"""Frequent itemsets on a Dask cluster (#19, basket mining), equal to :func:`crmlab.affinity.frequent_itemsets`.

The baskets are split into parts on the workers. Item supports and the packed pair counts are counted
per part with the local kernels and summed (counts add up over any split). Longer itemsets come from a
partitioned search, as in parallel FP-growth: the frequent items are split into groups of about equal
estimated work, each part projects its baskets on each group (a basket that holds an item of the group,
cut to the items ranked at or after its lowest-ranked one), and one task per group runs the local
depth-first search on its projected baskets from the group's first items only. Every basket that
contains an itemset's first item reaches that group once, so every support is the global one. Rules,
significance and guards then run on the gathered :class:`~crmlab.affinity.Itemsets` as they do locally.

The baskets themselves can be made where the order lines lie (:class:`BasketParts`, from the events'
customer parts): the stage's process then holds the vocabulary and counts, never a basket.

``dask`` is imported inside the functions: the core install runs without the ``dask`` extra.
"""
from __future__ import annotations

import math
import operator

import numpy as np
import pandas as pd

from . import engine, table_parts
from .affinity import Baskets, Itemsets, _as_baskets, _min_count, coarse_codes
from .errors import CrmlabError
from .kernels import baskets as K
from .table_parts import TableParts


def _parts(b: Baskets, partition_baskets: int) -> list[Baskets]:
    """Runs of consecutive baskets, about ``partition_baskets`` each (same vocabulary, ids kept)."""
    n = max(1, math.ceil(b.n_baskets / partition_baskets))
    cuts = np.linspace(0, b.n_baskets, n + 1).astype(np.int64)
    return [Baskets(b.indptr[lo:hi + 1] - b.indptr[lo], b.indices[b.indptr[lo]:b.indptr[hi]], b.items,
                    None if b.ids is None else b.ids[lo:hi]) for lo, hi in zip(cuts[:-1], cuts[1:])]


def _baskets_of(ev, basket_col: str, items: pd.Index, ids: bool) -> Baskets:
    """The baskets of ``basket_col`` over an events part's order lines (none: no basket); ``ids``: keep
    the baskets' ids (customers' keys), else drop them (order ids, which nothing reads)."""
    if not len(ev.lines):
        return Baskets(np.zeros(1, np.int64), np.zeros(0, np.int32), items, np.zeros(0, object) if ids else None)
    b = Baskets.from_frame(ev.lines, basket_col, "product_id", items)
    return b if ids else Baskets(b.indptr, b.indices, b.items)


def _size(part: Baskets) -> int:
    return part.n_baskets


def _used_codes(part: Baskets, code: np.ndarray) -> np.ndarray:
    return np.unique(part.coarse_lines(code))


def _rolled(part: Baskets, code: np.ndarray, used: np.ndarray, vocab: pd.Index) -> Baskets:
    return part.rolled(part.coarse_lines(code), used, vocab)


def _id_sample(part: Baskets, every: int) -> np.ndarray:
    return np.sort(part.ids)[::every]


class BasketParts:
    """Disjoint baskets over one vocabulary ``items``, left on the workers of ``client`` as
    :class:`~crmlab.affinity.Baskets` parts (``parts``: futures; parts without a basket dropped). What
    the miners, :class:`~crmlab.affinity.ItemRecommender` and :func:`~crmlab.affinity.lift_matrix` ask
    of baskets (their number, the vocabulary, item and pair counts, a roll-up) is computed by parts and
    equals the whole's. ``in_order``: the parts laid end to end are the baskets in id order (runs of a
    table sent from here), else (baskets of the events' customer parts) the ids are spread by a hash."""

    def __init__(self, client, parts: list, items: pd.Index, in_order: bool, again=None):
        self.client, self.items, self.in_order, self._again = client, pd.Index(items), in_order, again
        self._set(parts)

    def _set(self, parts: list) -> None:
        sizes = self.client.gather([self.client.submit(_size, p, pure=False) for p in parts])
        self.parts = [p for p, k in zip(parts, sizes) if k]
        self.n_baskets = int(sum(sizes))

    @property
    def n(self) -> int:
        return len(self.parts)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"BasketParts({self.n_baskets:,} baskets over {self.n_items:,} items in {self.n} parts)"

    def again(self) -> None:
        """The parts anew after a worker was lost: parts sent from here are sent again (parts that tasks
        made are made again by Dask itself)."""
        if self._again is not None:
            self._set(self._again())

    @classmethod
    def scatter(cls, client, b: Baskets, partition_baskets: int = 1_000_000) -> "BasketParts":
        """``b`` sent to the workers in runs of about ``partition_baskets`` consecutive baskets."""
        pieces = _parts(b, partition_baskets)
        return cls(client, engine.scatter(client, pieces), b.items, True, again=lambda: engine.scatter(client, pieces))

    @classmethod
    def of_events(cls, client, parts: list, basket_col: str, items) -> "BasketParts":
        """The baskets of ``basket_col`` (``order_id`` or ``customer_key``) over the order lines of each
        events part (futures of :class:`~crmlab.events.CustomerEvents` parts split by customer, e.g.
        :class:`~crmlab.events_dask.PartedEvents`' ``parts.parts``), made where the part lies; customer
        baskets keep their keys as ids, order baskets none."""
        items = pd.Index(items)
        ids = basket_col == "customer_key"
        return cls(client, [client.submit(_baskets_of, p, basket_col, items, ids, pure=False) for p in parts], items,
                   False)

    def _gather(self, fn, *args, what: str) -> list:
        """``fn(part, *args)`` of every part, on the workers (once more on parts made anew after a lost
        worker)."""
        return engine.retry_lost(lambda: self.client.gather([self.client.submit(fn, p, *args, pure=False)
                                                             for p in self.parts]),
                                 f"{what} of {self.n_baskets:,} baskets on {self.n} parts", again=self.again)

    def item_counts(self) -> np.ndarray:
        """:meth:`crmlab.affinity.Baskets.item_counts`, added up over the parts."""
        return np.sum([g[0] for g in self._gather(_item_counts, self.n_items, what="item counts")], axis=0)

    def pair_counts(self, min_count: int = 1):
        """:meth:`crmlab.affinity.Baskets.pair_counts` by parts (:func:`pair_counts`)."""
        return pair_counts(self.client, self, min_count)

    def roll_up(self, mapping: pd.Series) -> "BasketParts":
        """:meth:`crmlab.affinity.Baskets.roll_up` of every part, over the coarse labels any part holds."""
        code, coarse = coarse_codes(self.items, mapping)
        got = self._gather(_used_codes, code, what="coarse codes")
        used = np.unique(np.concatenate(got)) if got else np.zeros(0, np.int64)
        if not len(used):
            raise CrmlabError("baskets: no baskets (empty input)")
        vocab = pd.Index(coarse[used])

        def made():
            return [self.client.submit(_rolled, p, code, used, vocab, pure=False) for p in self.parts]

        def again():
            self.again()
            return made()

        return BasketParts(self.client, made(), vocab, self.in_order, again=again)

    def id_bounds(self, n: int, every: int = 1000) -> np.ndarray:
        """``n - 1`` ids cutting the baskets' sorted ids into ``n`` ranges of about equal size (from
        every ``every``-th id of each part)."""
        got = self._gather(_id_sample, every, what="a sample of the ids")
        return table_parts.bounds(np.sort(np.concatenate(got)), n)


def _on_cluster(client, data, partition_baskets: int) -> BasketParts:
    """``data`` as :class:`BasketParts` (baskets of this process sent in runs); no basket is an error."""
    b = data if isinstance(data, BasketParts) else BasketParts.scatter(client, _as_baskets(data), partition_baskets)
    if b.n_baskets == 0:
        raise CrmlabError("no baskets")
    return b


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


def _mine_counts(b: BasketParts, mc: int, max_len: int, groups: int | None):
    """:func:`crmlab.kernels.baskets.frequent_itemsets` by parts: (flat item ids, lengths, counts)."""
    client = b.client
    groups = groups or 2 * max(1, len(client.scheduler_info().get("workers", {})))

    def run():
        parts, n = b.parts, b.n
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

    return engine.retry_lost(run, f"frequent itemsets of {b.n_baskets:,} baskets on {b.n} parts", again=b.again)


def frequent_itemsets(client, data, min_support: float = 0.5, max_len: int | None = None,
                      partition_baskets: int = 1_000_000, groups: int | None = None) -> Itemsets:
    """:func:`crmlab.affinity.frequent_itemsets` (``columnar=True``) computed on the cluster of ``client``:
    the same itemsets with the same supports, in the same order. ``data``: baskets here (sent in runs of
    about ``partition_baskets``) or :class:`BasketParts`. ``groups``: first-item groups of the deep
    search (default: twice the workers)."""
    b = _on_cluster(client, data, partition_baskets)
    max_len = b.n_items if max_len is None else int(max_len)
    flat, lens, counts = _mine_counts(b, _min_count(min_support, b.n_baskets), max_len, groups)
    return Itemsets(flat, lens, counts, b.items, b.n_baskets)


def pair_counts(client, b, min_count: int, partition_baskets: int = 1_000_000):
    """:func:`crmlab.kernels.baskets.pair_counts` by parts (of baskets here, or :class:`BasketParts`):
    (item_a, item_b, count) of the pairs in at least ``min_count`` baskets, in the local order."""
    flat, lens, cnts = _mine_counts(_on_cluster(client, b, partition_baskets), int(min_count), 2, 1)
    start = int(np.sum(lens == 1))
    pairs = flat[start:].reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1], cnts[lens == 2]


def _recommend(part: Baskets, recommender, exclude_items, bounds) -> pd.DataFrame | list:
    recs = recommender.recommend(part, exclude_items=exclude_items)
    return recs if bounds is None else table_parts.by_range(recs, bounds, "customer")


def recommend_parts(client, recommender, b, exclude_items=(), partition_baskets: int = 1_000_000,
                    finish=None, *args) -> TableParts:
    """``recommender.recommend(b, exclude_items)`` by parts of the customers' baskets on the cluster (each
    customer's list is its own), then ``finish(rows, *args)`` where given, left there: the parts laid
    end to end are the local table. ``b``: baskets here (sent in runs of about ``partition_baskets``) or
    :class:`BasketParts`, whose lists are regrouped there by ranges of the customer where its parts are
    not in id order."""
    b = _on_cluster(client, b, partition_baskets)

    def run():
        bounds = None if b.in_order else b.id_bounds(b.n)
        made = [client.submit(_recommend, p, recommender, list(exclude_items), bounds, pure=False) for p in b.parts]
        got = TableParts(client, made) if bounds is None else table_parts.regroup(client, made, ["customer"])
        return got if finish is None else got.transform(finish, *args)

    return engine.retry_lost(run, f"recommendations for {b.n_baskets:,} customers on {b.n} parts", again=b.again)


def recommend(client, recommender, b, exclude_items=(), partition_baskets: int = 1_000_000) -> pd.DataFrame:
    """:func:`recommend_parts` gathered: the local table, in the same order."""
    return recommend_parts(client, recommender, b, exclude_items, partition_baskets).compute()
