"""Product affinity: frequent itemsets, association rules with significance, guards, recommendations.

``frequent_itemsets`` and ``association_rules`` take and return the same shapes as mlxtend's
(``support`` / ``itemsets`` frames; ``antecedents`` / ``consequents`` with mlxtend's metric columns),
so users can switch; the counting runs in Numba kernels (:mod:`crmlab.kernels.baskets`). Rules also
get all-confidence, a one-sided Fisher exact test and Benjamini-Hochberg q-values: a rule that is
frequent but not significant is marked. ``guard_rules`` keeps sensitive items and weak rules away
from customers (they stay visible to reviewers), and ``ItemRecommender`` turns co-occurrence into
per-customer top-k recommendations, evaluated on a time holdout against popularity.
"""
from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain

import numpy as np
import pandas as pd

from .errors import CrmlabError
from .estimator import Params, reset
from .kernels import baskets as K
from .kernels import recommend as R
from .kernels import rules as RK

MLXTEND_COLUMNS = ["antecedents", "consequents", "antecedent support", "consequent support", "support",
                   "confidence", "lift", "representativity", "leverage", "conviction", "zhangs_metric",
                   "jaccard", "certainty", "kulczynski"]


# ----------------------------------------------------------------------------- baskets

@dataclass
class Baskets:
    """Baskets as CSR over an item vocabulary: basket ``b`` holds ``items[indices[indptr[b]:indptr[b+1]]]``."""

    indptr: np.ndarray
    indices: np.ndarray
    items: pd.Index
    ids: np.ndarray | None = None

    @property
    def n_baskets(self) -> int:
        return len(self.indptr) - 1

    @property
    def n_items(self) -> int:
        return len(self.items)

    @classmethod
    def from_frame(cls, df: pd.DataFrame, basket_col: str, item_col: str, items=None) -> "Baskets":
        """Baskets from long rows (one row per basket and item; repeats are merged).

        ``items``: the known item vocabulary (e.g. the product table); an item outside it is an error.
        """
        for c in (basket_col, item_col):
            if c not in df:
                raise CrmlabError(f"baskets: column '{c}' not found (columns: {', '.join(map(str, df.columns))})")
        if df[[basket_col, item_col]].isna().any().any():
            raise CrmlabError(f"baskets: missing values in '{basket_col}' or '{item_col}'")
        if items is None:
            vocab = pd.Index(pd.unique(df[item_col])).sort_values()
        else:
            vocab = pd.Index(items)
            unknown = ~df[item_col].isin(vocab)
            if unknown.any():
                bad = df.loc[unknown, item_col].unique()[:5].tolist()
                raise CrmlabError(f"baskets: {int(unknown.sum()):,} rows have item ids not in the item table, "
                                  f"e.g. {bad}")
        item_code = vocab.get_indexer(df[item_col])
        b_code, b_ids = pd.factorize(df[basket_col], sort=True)
        key = np.unique(b_code.astype(np.int64) * len(vocab) + item_code)
        b, it = key // len(vocab), (key % len(vocab)).astype(np.int32)
        indptr = np.r_[0, np.cumsum(np.bincount(b, minlength=len(b_ids)))].astype(np.int64)
        if len(b_ids) == 0:
            raise CrmlabError("baskets: no baskets (empty input)")
        return cls(indptr, it, vocab, np.asarray(b_ids))

    @classmethod
    def from_lists(cls, lists) -> "Baskets":
        rows = [(i, item) for i, basket in enumerate(lists) for item in basket]
        if not rows:
            raise CrmlabError("baskets: no items in any basket")
        df = pd.DataFrame(rows, columns=["basket", "item"])
        return cls.from_frame(df, "basket", "item")._padded(len(lists), np.arange(len(lists)))

    def _padded(self, n: int, ids) -> "Baskets":
        """These baskets (whose ``ids`` are positions 0..n-1) with the empty ones put back, so that
        supports keep every basket in the denominator."""
        counts = np.zeros(n, np.int64)
        counts[self.ids] = np.diff(self.indptr)
        return Baskets(np.r_[0, np.cumsum(counts)].astype(np.int64), self.indices, self.items, ids)

    @classmethod
    def from_onehot(cls, df: pd.DataFrame) -> "Baskets":
        """From a boolean one-hot frame (mlxtend's input: rows baskets, columns items)."""
        arr = df.to_numpy()
        if arr.dtype != bool and not np.isin(arr, [0, 1]).all():
            raise CrmlabError("one-hot input must hold only True/False or 0/1")
        rows, cols = np.nonzero(arr)
        indptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=arr.shape[0]))].astype(np.int64)
        return cls(indptr, cols.astype(np.int32), pd.Index(df.columns), np.asarray(df.index))

    def to_onehot(self) -> pd.DataFrame:
        m = np.zeros((self.n_baskets, self.n_items), bool)
        m[np.repeat(np.arange(self.n_baskets), np.diff(self.indptr)), self.indices] = True
        return pd.DataFrame(m, columns=self.items)

    def take(self, rows) -> "Baskets":
        """The baskets at positions ``rows`` (in that order), same vocabulary."""
        rows = np.asarray(rows, dtype=np.int64)
        lo, hi = self.indptr[rows], self.indptr[rows + 1]
        indptr = np.r_[0, np.cumsum(hi - lo)].astype(self.indptr.dtype)
        pos = np.repeat(lo - indptr[:-1], hi - lo) + np.arange(indptr[-1])
        return Baskets(indptr, self.indices[pos], self.items, None if self.ids is None else self.ids[rows])

    def item_counts(self) -> np.ndarray:
        """Baskets holding each item of the vocabulary."""
        return K.item_counts(self.indptr, self.indices, self.n_items)

    def pair_counts(self, min_count: int = 1):
        """(item_a, item_b, baskets) of the item pairs in at least ``min_count`` baskets."""
        return K.pair_counts(self.indptr, self.indices, self.n_items, min_count)

    def roll_up(self, mapping: pd.Series) -> "Baskets":
        """Baskets over a coarser vocabulary (item -> category, say): the coarse labels the baskets hold,
        sorted."""
        code, coarse = coarse_codes(self.items, mapping)
        line = self.coarse_lines(code)
        used = np.unique(line)
        if not len(used):
            raise CrmlabError("baskets: no baskets (empty input)")
        return self.rolled(line, used, pd.Index(coarse[used]))

    def coarse_lines(self, code: np.ndarray) -> np.ndarray:
        """The coarse code (:func:`coarse_codes`) of every basket line."""
        line = code[self.indices]
        if (line < 0).any():
            bad = self.items[np.unique(self.indices[line < 0])[:3]]
            raise CrmlabError(f"roll_up: items in baskets map to a missing value, e.g. {list(bad)}")
        return line

    def rolled(self, line: np.ndarray, used: np.ndarray, vocab: pd.Index) -> "Baskets":
        """These baskets over ``vocab``, the coarse labels of the sorted codes ``used``, which hold every
        code of ``line`` (:meth:`coarse_lines`); empty baskets and ids kept."""
        line = np.searchsorted(used, line)
        b = np.repeat(np.arange(self.n_baskets, dtype=np.int64), np.diff(self.indptr))
        key = np.unique(b * len(used) + line)
        indptr = np.r_[0, np.cumsum(np.bincount(key // len(used), minlength=self.n_baskets))].astype(np.int64)
        return Baskets(indptr, (key % len(used)).astype(np.int32), vocab, self.ids)


def coarse_codes(items: pd.Index, mapping: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Each item's code among the sorted coarse labels of ``mapping`` (-1: maps to a missing value) and
    those labels; an item ``mapping`` lacks is an error."""
    missing = ~items.isin(mapping.index)
    if missing.any():
        raise CrmlabError(f"roll_up: {int(missing.sum())} items have no mapping, e.g. {list(items[missing][:3])}")
    return pd.factorize(mapping.reindex(items), sort=True)


def _as_baskets(data) -> Baskets:
    if isinstance(data, Baskets):
        return data
    if isinstance(data, pd.DataFrame):
        return Baskets.from_onehot(data)
    raise CrmlabError("expected Baskets or a one-hot DataFrame")


def _min_count(min_support: float, n: int) -> int:
    """Smallest count c with c / n >= min_support (the comparison mlxtend makes)."""
    if not 0 < min_support <= 1:
        raise ValueError(f"min_support must be in (0, 1], got {min_support}")
    c = max(1, int(np.floor(min_support * n)))
    while c / n < min_support:
        c += 1
    while c > 1 and (c - 1) / n >= min_support:
        c -= 1
    return c


# ----------------------------------------------------------------------------- itemsets and rules

@contextmanager
def _no_gc():
    """Cyclic garbage collection paused while many small containers are built (tens of thousands
    of frozensets trigger collections that walk the whole heap; none of them form cycles)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@dataclass
class Itemsets:
    """Frequent itemsets in columnar form, as the kernels use them.

    ``flat``: item codes (positions in ``items``), each itemset ascending; ``lens``: itemset sizes;
    ``counts``: baskets holding each itemset, out of ``n_baskets``. :meth:`to_frame` gives mlxtend's
    ``support`` / ``itemsets`` frame.
    """

    flat: np.ndarray
    lens: np.ndarray
    counts: np.ndarray
    items: pd.Index
    n_baskets: int
    _sets: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.lens)

    def __repr__(self) -> str:
        longest = int(self.lens.max()) if len(self.lens) else 0
        return f"<Itemsets: {len(self):,} itemsets (longest {longest}) over {len(self.items):,} items, {self.n_baskets:,} baskets>"

    @property
    def support(self) -> np.ndarray:
        return self.counts / self.n_baskets

    def frozensets(self) -> np.ndarray:
        """Each itemset as a frozenset of item labels (built once, then shared: rules point at them)."""
        if self._sets is None:
            ptr = np.r_[0, np.cumsum(self.lens)].astype(np.int64)
            self._sets = _frozensets(ptr, self.flat, self.items.to_numpy(dtype=object))
        return self._sets

    def to_frame(self, use_colnames: bool = True) -> pd.DataFrame:
        """mlxtend's shape: ``support`` and ``itemsets`` (frozensets of item labels with
        ``use_colnames``, else of item positions); ``attrs`` carry ``n_baskets`` and the single-item
        supports for :func:`association_rules`."""
        labels = self.items.to_numpy(dtype=object) if use_colnames else np.arange(len(self.items))
        ptr = np.r_[0, np.cumsum(self.lens)].astype(np.int64)
        support = self.support
        sets = self.frozensets() if use_colnames else _frozensets(ptr, self.flat, labels)
        out = pd.DataFrame({"support": support, "itemsets": sets})
        one = np.flatnonzero(self.lens == 1)
        out.attrs.update(n_baskets=self.n_baskets,
                         item_support=dict(zip(labels[self.flat[ptr[one]]].tolist(), support[one].tolist())))
        return out

    @classmethod
    def from_frame(cls, df: pd.DataFrame, n_baskets: int) -> "Itemsets":
        """From an mlxtend-shaped frame (``support``, ``itemsets``); counts are support x ``n_baskets``."""
        sets = df["itemsets"].tolist()
        if not all(isinstance(s, (frozenset, set)) for s in sets):
            raise CrmlabError("the 'itemsets' column must hold frozensets (mlxtend's shape)")
        lens = np.fromiter(map(len, sets), np.int64, len(sets))
        if (lens == 0).any():
            raise CrmlabError("the itemsets frame holds an empty itemset")
        codes, vocab = pd.factorize(pd.Series(list(chain.from_iterable(sets)), dtype=object))
        owner = np.repeat(np.arange(len(sets)), lens)
        flat = codes[np.lexsort((codes, owner))].astype(np.int32)           # each itemset ascending
        support = df["support"].to_numpy(dtype=float)
        if not np.isfinite(support).all() or (support <= 0).any() or (support > 1).any():
            raise CrmlabError("the 'support' column must hold values in (0, 1]")
        counts = np.rint(support * n_baskets).astype(np.int64)
        return cls(flat, lens.astype(np.int32), counts, pd.Index(vocab, dtype=object), int(n_baskets),
                   df["itemsets"].to_numpy(dtype=object))


def _frozensets(ptr: np.ndarray, codes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One frozenset of ``labels`` per CSR row, built a row length at a time."""
    lens = np.diff(ptr)
    out = np.empty(len(lens), dtype=object)
    with _no_gc():
        for size in np.unique(lens).tolist():
            rows = np.flatnonzero(lens == size)
            block = labels[codes[ptr[rows][:, None] + np.arange(size)]]
            out[rows] = list(map(frozenset, block.tolist()))
    return out


def frequent_itemsets(data, min_support: float = 0.5, max_len: int | None = None,
                      use_colnames: bool = False, columnar: bool = False):
    """Itemsets in at least ``min_support`` of the baskets (mlxtend's ``fpgrowth`` result shape).

    ``data``: :class:`Baskets` or a one-hot DataFrame. Returns columns ``support`` and ``itemsets``
    (frozensets of item labels with ``use_colnames``, else of item positions); ``attrs`` carry
    ``n_baskets`` and the single-item supports for :func:`association_rules`. With ``columnar``:
    :class:`Itemsets` (integer arrays, no frozensets), the fast input to :func:`association_rules`.
    """
    b = _as_baskets(data)
    if b.n_baskets == 0:
        raise CrmlabError("no baskets")
    mc = _min_count(min_support, b.n_baskets)
    flat, lens, counts = K.frequent_itemsets(b.indptr, b.indices, b.n_items, mc, max_len)
    its = Itemsets(flat, lens, counts, b.items, b.n_baskets)
    return its if columnar else its.to_frame(use_colnames)


class Rules:
    """Association rules in columnar form: antecedent and consequent item codes as CSR arrays
    (``ant_ptr``/``ant``, ``con_ptr``/``con``; codes are positions in ``items``), the positions of
    antecedent and consequent in ``itemsets`` (``ant_set``, ``con_set``), and one row of ``measures``
    per rule (mlxtend's measure columns, ``all_confidence``, the counts, ``p_value``, ``q_value``,
    ``significant``; after :func:`guard_rules` also ``customer_facing`` and ``guard``).

    No Python object per rule: :meth:`to_frame` gives mlxtend's frame on request (its frozensets are
    the itemsets', one per itemset, shared); ``rules["lift"]`` reads a measure column;
    :func:`rules_table` gives readable text columns.
    """

    def __init__(self, itemsets: Itemsets, ant_set, con_set, ant_ptr, ant, con_ptr, con, measures: pd.DataFrame):
        self.itemsets, self.items, self.measures = itemsets, itemsets.items, measures
        self.ant_set, self.con_set = ant_set, con_set
        self.ant_ptr, self.ant, self.con_ptr, self.con = ant_ptr, ant, con_ptr, con

    def _with(self, measures: pd.DataFrame) -> "Rules":
        return Rules(self.itemsets, self.ant_set, self.con_set, self.ant_ptr, self.ant, self.con_ptr, self.con,
                     measures)

    def __len__(self) -> int:
        return len(self.measures)

    def __getitem__(self, column: str) -> pd.Series:
        return self.measures[column]

    def __repr__(self) -> str:
        return f"<Rules: {len(self):,} rules over {len(self.items):,} items>"

    def _repr_html_(self) -> str:
        head = self.take(np.arange(min(len(self), 10))).to_frame()
        return f"<p>{len(self):,} rules over {len(self.items):,} items (first {len(head)}):</p>" + head.to_html()

    def antecedents(self) -> np.ndarray:
        """Antecedents as frozensets of item labels (the itemsets' own objects, shared)."""
        return self.itemsets.frozensets()[self.ant_set]

    def consequents(self) -> np.ndarray:
        return self.itemsets.frozensets()[self.con_set]

    def to_frame(self) -> pd.DataFrame:
        """mlxtend's frame (``antecedents`` / ``consequents`` frozensets, its measure columns) plus
        crmlab's columns."""
        cols = {"antecedents": self.antecedents(), "consequents": self.consequents()}
        cols.update((c, self.measures[c].to_numpy()) for c in self.measures.columns)
        return pd.DataFrame(cols, copy=False)             # copy-on-write: the rules' columns stay theirs

    def take(self, rows) -> "Rules":
        """The rules at positions ``rows``, in that order."""
        rows = np.asarray(rows, dtype=np.int64)

        def part(ptr, codes):
            lo, hi = ptr[rows], ptr[rows + 1]
            new = np.r_[0, np.cumsum(hi - lo)].astype(np.int64)
            return new, codes[np.repeat(lo - new[:-1], hi - lo) + np.arange(new[-1])]

        ap, a = part(self.ant_ptr, self.ant)
        cp, c = part(self.con_ptr, self.con)
        return Rules(self.itemsets, self.ant_set[rows], self.con_set[rows], ap, a, cp, c,
                     self.measures.iloc[rows].reset_index(drop=True))

    def holds(self, labels) -> tuple[np.ndarray, np.ndarray]:
        """Per rule, whether its antecedent / its consequent holds any of ``labels``."""
        mark = self.items.isin(list(labels))

        def any_in(ptr, codes):
            hit = np.r_[0, np.cumsum(mark[codes])]
            return hit[ptr[1:]] > hit[ptr[:-1]]

        return any_in(self.ant_ptr, self.ant), any_in(self.con_ptr, self.con)

    def joined(self, part: str, sep: str = "|", labels: np.ndarray | None = None) -> list[str]:
        """``part`` ("antecedents" or "consequents") of each rule as text: ``labels`` (per item
        code; default the item labels as str) sorted and joined by ``sep``."""
        ptr, codes = (self.ant_ptr, self.ant) if part == "antecedents" else (self.con_ptr, self.con)
        labels = self.items.astype(str).to_numpy(dtype=object) if labels is None else labels
        rank = np.empty(len(labels), np.int64)
        rank[np.argsort(labels.astype(str), kind="stable")] = np.arange(len(labels))
        owner = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
        text = labels[codes[np.lexsort((rank[codes], owner))]].tolist()
        return [sep.join(text[a:b]) for a, b in zip(ptr[:-1].tolist(), ptr[1:].tolist())]


_MEASURE_COLUMNS = MLXTEND_COLUMNS[2:] + ["all_confidence", "n_antecedent", "n_consequent", "n_both",
                                          "p_value", "q_value", "significant"]


def association_rules(df, num_itemsets: int | None = None, metric: str = "confidence",
                      min_threshold: float = 0.8, max_consequent_len: int | None = None,
                      fdr: float = 0.05, max_rules: int | None = None, rank_by: str = "lift"):
    """Rules A -> C from frequent itemsets, with mlxtend's columns plus significance.

    Every split of every itemset (size >= 2) into antecedent and consequent is a rule (mlxtend);
    ``max_consequent_len=1`` gives arules' single-item consequents. Rules with ``metric`` below
    ``min_threshold`` are dropped. Added columns: ``all_confidence``, the counts, ``p_value``
    (one-sided Fisher exact test of positive association), ``q_value`` (Benjamini-Hochberg over all
    rules that pass the threshold) and ``significant`` (q <= ``fdr``).

    ``df``: mlxtend's itemsets frame (the result is then mlxtend's rules frame, frozensets and all)
    or :class:`Itemsets` (the result is :class:`Rules`, columnar: the form for large rule sets).
    ``max_rules``: keep only this many rules, the highest by ``rank_by``; rules are then generated in
    chunks and memory holds the kept rules plus one p-value per rule (for the q-values).
    Generation, measures and p-values run in Numba kernels (:mod:`crmlab.kernels.rules`).
    """
    if isinstance(df, Itemsets):
        its, columnar = df, True
        if num_itemsets and num_itemsets != its.n_baskets:
            raise CrmlabError(f"num_itemsets={num_itemsets} differs from the itemsets' {its.n_baskets} baskets")
    elif isinstance(df, pd.DataFrame):
        if df.empty:
            raise CrmlabError("no frequent itemsets: lower min_support")
        if not {"support", "itemsets"} <= set(df.columns):
            raise CrmlabError("the itemsets frame needs columns 'support' and 'itemsets'")
        n = num_itemsets or df.attrs.get("n_baskets")
        if not n:
            raise CrmlabError("num_itemsets (the number of baskets) is needed for counts and significance")
        its, columnar = Itemsets.from_frame(df, int(n)), False
    else:
        raise CrmlabError(f"association_rules takes an itemsets frame or Itemsets, not {type(df).__name__}")
    if len(its) == 0:
        raise CrmlabError("no frequent itemsets: lower min_support")
    if metric not in RK.METRICS:
        raise CrmlabError(f"metric must be one of {list(RK.METRICS)}, got '{metric}'")
    if rank_by not in RK.METRICS:
        raise CrmlabError(f"rank_by must be one of {list(RK.METRICS)}, got '{rank_by}'")
    if max_rules is not None and (isinstance(max_rules, bool) or int(max_rules) < 0):
        raise CrmlabError(f"max_rules must be a non-negative integer, got {max_rules!r}")
    try:
        table = RK.ItemsetTable(its.flat, its.lens, its.counts, len(its.items), its.n_baskets)
    except ValueError as exc:
        raise CrmlabError(str(exc)) from None
    lf = RK.log_factorials(its.n_baskets)
    rank_row = RK.MEASURES.index(rank_by)
    parts, p_all = [], []
    try:
        for s, mk, ja, jc in table.enumerate(RK.METRICS.index(metric), float(min_threshold), max_consequent_len):
            if max_rules is None:
                parts.append((s, mk, ja, jc))
                continue
            vals = table.measures(s, ja, jc, lf)
            p_all.append(vals[13].copy())                   # not a view: the chunk is dropped
            parts.append((s, mk, ja, jc, vals))
            parts = [_top(parts, int(max_rules), rank_row)]
    except KeyError as exc:
        pos = int(exc.args[0])
        start = int(np.sum(its.lens[:pos]))
        bad = set(its.items[its.flat[start:start + its.lens[pos]]].tolist())
        raise CrmlabError(f"itemset {bad} is missing a subset: the itemsets are not downward closed") from None
    s, mk, ja, jc = (np.concatenate([p[q] for p in parts]) for q in range(4))
    vals = parts[0][4] if max_rules is not None else table.measures(s, ja, jc, lf)
    if max_rules is None:
        q = RK.bh_qvalues(vals[13])
    else:
        p_every = np.concatenate(p_all)
        del p_all[:]
        q = _q_of(vals[13], p_every)
    cols = dict(zip(RK.MEASURES[:13], vals[:13]))
    cols.update(n_antecedent=its.counts[ja], n_consequent=its.counts[jc], n_both=its.counts[s], p_value=vals[13],
                q_value=q, significant=q <= fdr)
    measures = pd.DataFrame({c: cols[c] for c in _MEASURE_COLUMNS}, copy=False)
    ap, a, cp, c = table.split(s, mk)
    rules = Rules(its, ja, jc, ap, a, cp, c, measures)
    return rules if columnar else rules.to_frame()


def _top(parts: list, keep: int, row: int) -> tuple:
    """The ``keep`` rules of ``parts`` highest on measure ``row`` (ties: the earlier rule first)."""
    s, mk, ja, jc = (np.concatenate([p[q] for p in parts]) for q in range(4))
    vals = np.concatenate([p[4] for p in parts], axis=1)
    if len(s) > keep:
        order = np.sort(np.argsort(-vals[row], kind="stable")[:keep])        # keep generation order
        s, mk, ja, jc, vals = s[order], mk[order], ja[order], jc[order], vals[:, order]
    return s, mk, ja, jc, vals


def _q_of(p_kept: np.ndarray, p_every: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values of ``p_kept`` within the family ``p_every`` (which holds them;
    sorted in place: two arrays of the family's size at most)."""
    if len(p_kept) == 0:
        return np.empty(0)
    p_every.sort()
    q_sorted = RK.bh_sorted(p_every)
    return q_sorted[np.searchsorted(p_every, p_kept, side="left")]


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), monotone, capped at 1."""
    return RK.bh_qvalues(p)


def guard_rules(rules, sensitive_items=(), min_lift: float = 1.0, require_significant: bool = True,
                max_rules: int | None = None):
    """Mark which rules may face customers; the others keep a ``guard`` reason for reviewers.

    Guards, in order: a sensitive item anywhere in the rule; not significant after FDR control;
    lift below ``min_lift``; beyond the ``max_rules`` strongest by lift. ``rules``: a rules frame or
    :class:`Rules` (returned in the same form, with ``customer_facing`` and ``guard`` added).
    """
    sens = set(sensitive_items)
    if isinstance(rules, Rules):
        in_a, in_c = rules.holds(sens)
        out = rules.measures.copy()
    else:
        out = rules.copy()
        in_c = out["consequents"].map(lambda s: bool(s & sens)).to_numpy(bool)
        in_a = out["antecedents"].map(lambda s: bool(s & sens)).to_numpy(bool)
    reason = np.full(len(out), None, dtype=object)
    reason[in_a & ~in_c] = "sensitive item in antecedent"
    reason[in_c] = "sensitive item in consequent"
    if require_significant and "significant" in out:
        reason[(reason == None) & ~out["significant"].to_numpy(bool)] = "not significant (FDR)"  # noqa: E711
    reason[(reason == None) & (out["lift"].to_numpy() < min_lift)] = f"lift below {min_lift:g}"  # noqa: E711
    ok = reason == None  # noqa: E711
    if max_rules is not None and ok.sum() > max_rules:
        ranked = np.flatnonzero(ok)[np.argsort(-out["lift"].to_numpy()[ok], kind="stable")]
        reason[ranked[max_rules:]] = f"beyond the {max_rules} strongest rules"
    out["customer_facing"] = reason == None  # noqa: E711
    out["guard"] = pd.array(reason, dtype="string")
    return rules._with(out) if isinstance(rules, Rules) else out


def rules_table(rules, names: pd.Series | None = None) -> pd.DataFrame:
    """Rules with readable, joined antecedent/consequent labels (for reports and the artifact):
    ``rule`` ("names -> names", item names from ``names`` where given), ``antecedents`` and
    ``consequents`` as "|"-joined item labels, then the measures. Builds no frozensets from :class:`Rules`."""
    if isinstance(rules, Rules):
        text = rules.items.astype(str).to_numpy(dtype=object)
        shown = text if names is None else np.array(
            [names.get(i, s) for i, s in zip(rules.items.tolist(), text.tolist())], dtype=object).astype(str)
        out = rules.measures.copy()
        out.insert(0, "consequents", rules.joined("consequents", "|", text))
        out.insert(0, "antecedents", rules.joined("antecedents", "|", text))
        out.insert(0, "rule", [f"{a} -> {c}" for a, c in zip(rules.joined("antecedents", " + ", shown),
                                                               rules.joined("consequents", " + ", shown))])
        return out

    def fmt(s):
        labels = sorted(names.get(i, str(i)) if names is not None else str(i) for i in s)
        return " + ".join(labels)

    out = rules.copy()
    out.insert(0, "rule", [f"{fmt(a)} -> {fmt(c)}" for a, c in zip(out["antecedents"], out["consequents"])])
    out["antecedents"] = out["antecedents"].map(lambda s: "|".join(sorted(map(str, s))))
    out["consequents"] = out["consequents"].map(lambda s: "|".join(sorted(map(str, s))))
    return out


# ----------------------------------------------------------------------------- recommendations

class ItemRecommender(Params):
    """Top-k items per customer from item-item co-occurrence (customer-level baskets).

    Parameters
    ----------
    k : recommendations per customer.
    similarity : 'cosine' (co-occurrence / sqrt of both counts) or 'lift'.
    neighbours : strongest neighbours kept per item.
    min_co : co-occurrences needed for a neighbour.

    Attributes: ``items_`` (vocabulary), ``popularity_`` (customers per item), ``nbr_ptr_``,
    ``nbr_idx_``, ``nbr_sim_`` (neighbour CSR).
    """

    def __init__(self, k: int = 5, similarity: str = "cosine", neighbours: int = 30, min_co: int = 2):
        self.k = k
        self.similarity = similarity
        self.neighbours = neighbours
        self.min_co = min_co

    def fit(self, customer_baskets: Baskets) -> "ItemRecommender":
        """Learn each item's strongest neighbours from the customers' baskets (or
        :class:`crmlab.affinity_dask.BasketParts`: counted by parts on a Dask cluster, the same counts)."""
        if self.similarity not in ("cosine", "lift"):
            raise CrmlabError(f"similarity must be 'cosine' or 'lift', got '{self.similarity}'")
        reset(self)
        b = customer_baskets
        a, c, n_ab = b.pair_counts(self.min_co)
        pop = b.item_counts().astype(np.float64)
        if self.similarity == "cosine":
            sim = n_ab / np.sqrt(pop[a] * pop[c])
        else:
            sim = n_ab * b.n_baskets / (pop[a] * pop[c])
        src = np.r_[a, c]
        dst = np.r_[c, a]
        w = np.r_[sim, sim]
        order = np.lexsort((-w, src))
        src, dst, w = src[order], dst[order], w[order]
        first = np.r_[0, np.cumsum(np.bincount(src, minlength=b.n_items))]
        rank = np.arange(len(src)) - first[src]
        keep = rank < self.neighbours
        self.nbr_ptr_ = np.r_[0, np.cumsum(np.bincount(src[keep], minlength=b.n_items))].astype(np.int64)
        self.nbr_idx_ = dst[keep].astype(np.int32)
        self.nbr_sim_ = w[keep].astype(np.float64)
        self.items_ = b.items
        self.popularity_ = pop
        return self

    def recommend(self, customer_baskets: Baskets, exclude_items=(), k: int | None = None,
                  popularity: bool = False) -> pd.DataFrame:
        """Top-k unseen items per customer (long format: customer, rank, item, score).

        ``exclude_items`` (e.g. sensitive products) are never recommended; ``popularity=True`` gives
        the popularity baseline instead (most bought items the customer does not have).
        """
        if not hasattr(self, "items_"):
            raise CrmlabError("ItemRecommender is not fitted yet: call fit() first")
        b = customer_baskets
        if not b.items.equals(self.items_):
            raise CrmlabError("baskets must use the vocabulary the recommender was fitted on")
        k = k or self.k
        banned = np.zeros(len(self.items_), bool)
        banned[self.items_.get_indexer(list(exclude_items))] = True
        if popularity:
            items, scores = R.top_k_popular(b.indptr, b.indices, self.popularity_, banned, k)
        else:
            items, scores = R.top_k(b.indptr, b.indices, self.nbr_ptr_, self.nbr_idx_, self.nbr_sim_, banned, k,
                                    self.popularity_)
        valid = items >= 0
        cust = np.repeat(np.arange(b.n_baskets), k).reshape(-1, k)
        ids = b.ids if b.ids is not None else np.arange(b.n_baskets)
        return pd.DataFrame({"customer": ids[cust[valid]], "rank": np.tile(np.arange(1, k + 1), (b.n_baskets, 1))[valid],
                             "item": self.items_.to_numpy()[items[valid]], "score": scores[valid]})


def published_recommendations(recs: pd.DataFrame, names: pd.Series, sensitive=()) -> pd.DataFrame:
    """The ``customer_recommendations`` table from :meth:`ItemRecommender.recommend`'s rows (of all
    customers or of a part of them): keyed columns and the product names; a sensitive product among them
    is an error (the guard is the contract: never publish one)."""
    recs = recs.rename(columns={"customer": "customer_key", "item": "product_id"})
    recs["product_name"] = recs["product_id"].map(names)
    if recs["product_id"].isin(list(sensitive)).any():
        raise CrmlabError("a sensitive product was recommended: the recommender ignored its exclusions")
    return recs


def recommendation_counts(recs: pd.DataFrame, sensitive=()) -> dict:
    """What the report says of a ``customer_recommendations`` table (or of a part of its customers, added
    up with :func:`add_recommendation_counts`): customers, rows, sensitive products, rows per product name."""
    return {"customers": recs["customer_key"].nunique(), "rows": len(recs),
            "sensitive": int(recs["product_id"].isin(list(sensitive)).sum()), "names": recs["product_name"].value_counts()}


def add_recommendation_counts(counts: list[dict]) -> dict:
    """:func:`recommendation_counts` of disjoint sets of customers added up (names by count, most first)."""
    if len(counts) == 1:
        return counts[0]
    names = pd.concat([c["names"] for c in counts]).groupby(level=0).sum().sort_values(ascending=False, kind="stable")
    return {"customers": sum(c["customers"] for c in counts), "rows": sum(c["rows"] for c in counts),
            "sensitive": sum(c["sensitive"] for c in counts), "names": names}


def evaluate_recommendations(recs: pd.DataFrame, bought_before: pd.DataFrame, bought_after: pd.DataFrame,
                             k: int) -> dict:
    """Hit rate@k, precision@k and recall@k on items customers bought for the first time after the cutoff.

    ``bought_before`` / ``bought_after``: long frames (customer, item). Evaluated customers: those
    with a recommendation list who bought at least one new item after the cutoff. Customer and
    item pairs are coded as integers once, so membership tests are sorted-array lookups (the
    set-of-tuples version took most of 20_affinity's 167 s evaluation cell at 200,000 customers).
    """
    cust = pd.Index(pd.unique(pd.concat([recs["customer"], bought_before["customer"], bought_after["customer"]],
                                        ignore_index=True)))
    item = pd.Index(pd.unique(pd.concat([recs["item"], bought_before["item"], bought_after["item"]],
                                        ignore_index=True)))
    n_items = max(len(item), 1)

    def pairs(df):
        return cust.get_indexer(df["customer"]).astype(np.int64) * n_items + item.get_indexer(df["item"])

    new = np.unique(pairs(bought_after))
    new = new[~np.isin(new, pairs(bought_before))]                  # first purchases after the cutoff
    have_recs = np.unique(cust.get_indexer(recs["customer"]))
    r = recs[recs["rank"] <= k]
    new = new[np.isin(new // n_items, have_recs)]
    n_new = np.bincount(new // n_items, minlength=len(cust))
    targets = n_new > 0
    rp = pairs(r)
    hit = np.isin(rp, new)
    hits = np.bincount(rp[hit] // n_items, minlength=len(cust))[targets]
    n_new = n_new[targets]
    n = int(targets.sum())
    mean = (lambda v: float(v.mean())) if n else (lambda v: float("nan"))
    return {"customers": n, f"hit_rate@{k}": mean(hits > 0), f"precision@{k}": mean(hits / k),
            f"recall@{k}": mean(hits / np.maximum(n_new, 1))}


# ----------------------------------------------------------------------------- pipeline helpers

def sensitive_items(products: pd.DataFrame, categories=()) -> set:
    """Product ids never to recommend: flagged ``sensitive`` or in one of ``categories``."""
    flag = products["sensitive"].fillna(False).astype(bool) if "sensitive" in products else False
    return set(products.loc[flag | products["category"].isin(list(categories)), "product_id"])


def mine_rules(b: Baskets, p: dict, sensitive=(), names: pd.Series | None = None, itemsets=None) -> pd.DataFrame:
    """Itemsets -> rules -> significance -> guards with the ``affinity`` parameters; readable table.
    Columnar all the way (:class:`Itemsets`, :class:`Rules`): no frozenset is built. ``itemsets``: how
    to mine (``frequent_itemsets(b, min_support, max_len)`` -> :class:`Itemsets`; default the local one)."""
    fi = (itemsets(b, p["min_support"], p["max_len"]) if itemsets is not None else
          frequent_itemsets(b, min_support=p["min_support"], max_len=p["max_len"], columnar=True))
    rules = association_rules(fi, metric="confidence", min_threshold=p["min_confidence"], fdr=p["fdr"])
    g = guard_rules(rules, sensitive_items=sensitive, min_lift=p["min_lift"], max_rules=p["max_rules"])
    t = rules_table(g, names)
    return t.sort_values(["customer_facing", "lift"], ascending=[False, False]).reset_index(drop=True)


def lift_matrix(b: Baskets) -> pd.DataFrame:
    """Pairwise lift between all items of (usually rolled-up) baskets, or of
    :class:`crmlab.affinity_dask.BasketParts`; diagonal NaN."""
    a, c, n_ab = b.pair_counts(1)
    pop = b.item_counts().astype(float)
    m = np.full((b.n_items, b.n_items), np.nan)
    lift = n_ab * b.n_baskets / (pop[a] * pop[c])
    m[a, c] = lift
    m[c, a] = lift
    return pd.DataFrame(m, index=b.items, columns=b.items)


def holdout_evaluation(lines: pd.DataFrame, cutoff, k: int, exclude=(), max_customers: int | None = None,
                       random_state: int = 0, **recommender) -> pd.DataFrame:
    """Fit on customer baskets before ``cutoff``, recommend, score on first purchases after it;
    co-occurrence recommender vs popularity. ``lines``: product_id, customer_key, order_date.

    ``max_customers``: recommend for and score a random sample of this many customers (the model is
    fitted on all of them); the metrics are means over customers, so a sample estimates them.
    """
    cutoff = pd.Timestamp(cutoff)
    before = lines[lines["order_date"] <= cutoff]
    after = lines[lines["order_date"] > cutoff]
    items = pd.Index(np.sort(lines["product_id"].unique()))
    b = Baskets.from_frame(before, "customer_key", "product_id", items=items)
    model = ItemRecommender(k=k, **recommender).fit(b)
    if max_customers is not None and b.n_baskets > max_customers:
        b = b.take(np.sort(np.random.default_rng(random_state).choice(b.n_baskets, max_customers, replace=False)))
        chosen = pd.Index(b.ids)
        before, after = before[before["customer_key"].isin(chosen)], after[after["customer_key"].isin(chosen)]
    long_before = before[["customer_key", "product_id"]].set_axis(["customer", "item"], axis=1)
    long_after = after[["customer_key", "product_id"]].set_axis(["customer", "item"], axis=1)
    rows = {}
    for name, pop in (("co-occurrence recommender", False), ("popularity baseline", True)):
        recs = model.recommend(b, exclude_items=exclude, popularity=pop)
        rows[name] = evaluate_recommendations(recs, long_before, long_after, k)
    return pd.DataFrame(rows).T


def one_direction(rules: pd.DataFrame) -> pd.DataFrame:
    """One rule per set of items: of "A -> B" and "B -> A" (and every split of a larger itemset) keep the one
    with the highest confidence; lift and support are the same for all of them (a ``rules_table`` frame)."""
    key = (rules["antecedents"] + "|" + rules["consequents"]).map(lambda s: "|".join(sorted(s.split("|"))))
    best = (rules.assign(_key=key.to_numpy()).sort_values("confidence", ascending=False, kind="stable")
            .drop_duplicates("_key").index)
    return rules[rules.index.isin(best)]                 # in the rules' own order


def plot_rules(rules: pd.DataFrame, top: int = 15):
    """Support vs lift of all rules (colour: customer-facing, guarded, not significant), and below it the top
    customer-facing rules (one direction per set of items)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, PercentFormatter, StrMethodFormatter

    fig, axes = plt.subplots(2, 1, figsize=(10, 9.5), gridspec_kw={"height_ratios": [1, 1.1]})
    ax = axes[0]
    groups = (("customer-facing", rules["customer_facing"], "#2a9d8f"),
              ("not significant", rules["guard"].fillna("").str.startswith("not significant"), "#bbbbbb"),
              ("sensitive (guarded)", rules["guard"].fillna("").str.startswith("sensitive"), "#e63946"),
              ("other guard", ~rules["customer_facing"] & ~rules["guard"].fillna("").str.match("(not sig|sens)"),
               "#f4a261"))
    for label, mask, colour in groups:
        d = rules[mask.to_numpy(bool)]
        ax.scatter(d["support"], d["lift"], s=10 + 40 * d["confidence"], alpha=0.6, c=colour,
                   label=f"{label} ({len(d):,})")
    ax.set(xscale="log", yscale="log", xlabel="support: share of all baskets with every item of the rule",
           ylabel="lift (log scale)", title="Rules: support against lift (dot size: confidence)")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(PercentFormatter(1, decimals=1))
    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
    ax.axhline(1, color="grey", lw=0.8)
    ax.legend(fontsize=8, loc="upper right")
    t = one_direction(rules[rules["customer_facing"]]).nlargest(top, "lift").iloc[::-1]
    axes[1].barh(t["rule"].str.replace(" -> ", " → ").str.slice(0, 70), t["lift"], color="#2a9d8f")
    axes[1].set(title=f"Top {top} customer-facing rules by lift (one direction per set of items)",
                xlabel="lift: how many times more often than by chance")
    axes[1].tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    return fig


def plot_lift_heatmap(lift: pd.DataFrame, title: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(0.5 * len(lift) + 3, 0.45 * len(lift) + 2))
    v = np.log2(lift.to_numpy(dtype=float))
    lim = np.nanmax(np.abs(v)) if np.isfinite(v).any() else 1
    im = ax.imshow(v, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_xticks(range(len(lift)), lift.columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(lift)), lift.index, fontsize=8)
    bar = fig.colorbar(im, ax=ax, label="lift (log scale; 1 = as often as by chance)")
    marks = [x for x in (0.125, 0.25, 0.5, 0.67, 0.8, 1, 1.25, 1.5, 2, 4, 8) if abs(np.log2(x)) <= lim]
    bar.set_ticks(np.log2(marks), labels=[f"{x:g}x" for x in marks])
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_recommendation_eval(table: pd.DataFrame):
    import matplotlib.pyplot as plt

    metrics = [c for c in table.columns if "@" in c]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(metrics))
    for i, (name, row) in enumerate(table.iterrows()):
        ax.bar(x + 0.38 * i, row[metrics].astype(float), width=0.36, label=name)
    ax.set_xticks(x + 0.19, metrics)
    ax.set(title="Recommendations on the time holdout (higher is better)", ylabel="share", xlabel="measure (top 5)")
    ax.legend()
    fig.tight_layout()
    return fig
