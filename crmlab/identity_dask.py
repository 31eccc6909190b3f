"""Record matching on a Dask cluster (#19), with the local matcher's parameters and key map.

The work that grows with the candidate pairs (pairs, comparison levels, match weights) runs on the
workers; what is fitted from it is fitted here on reduced tables:

* **blocks to parts**: per blocking rule, each record's block code (one integer per record, made
  here over the whole table) picks its part (code mod parts), so every block lies in one part, whose
  pairs are the rule's pairs of its blocks (oversized blocks skipped and counted as locally). A pair
  that an earlier rule also makes (both records in one of its blocks, not an oversized one) is left
  to that rule: the parts hold the union of the rules' pairs, each once, with no global de-duplication;
* **levels per part**: each part builds the comparison arenas of its own records and computes the
  levels with the local comparisons; the candidate pairs' level patterns are counted per part and
  summed, so the prior, and with it everything the matcher learns, equals the local fit's (u and
  the training sessions come from samples drawn here with the local code and random stream; only
  their records' arenas are built);
* **scores per part**: weights (term frequencies from the global value counts) and probabilities
  per part; the links at or above the threshold and each record's strongest candidate probability
  come back, and components, the oversized-cluster guard and the keys run here on them.

The records and their block codes are still in this process (as for the other Dask stages until the
sources are read by the workers). ``dask`` is imported inside the functions.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import engine
from .errors import CrmlabError
from .identity import (DEFAULT_BLOCKING, UNION, PairScores, RecordMatcher, _fingerprint, _patterns,
                       best_probability, blocking_row)
from .kernels import graph


def _part_pairs(piece: pd.DataFrame, matcher: RecordMatcher, rule: int, n_levels: list[int]):
    """One part of one blocking rule: its pairs (global rows, each kept by the first rule that makes
    it), their levels, and the rule's counts. ``piece`` holds the part's records in table order with
    ``_row`` and per rule up to this one ``_c{k}`` (block code) and ``_s{k}`` (block size)."""
    left, right, skipped = graph.block_pairs(piece[f"_c{rule}"].to_numpy(), matcher.max_block)
    keep = matcher._mode_filter(piece, left, right)
    left, right = left[keep], right[keep]
    made = len(left)
    first = np.ones(len(left), bool)
    for k in range(rule):                               # an earlier rule's pair: that rule keeps it
        c, s = piece[f"_c{k}"].to_numpy(), piece[f"_s{k}"].to_numpy()
        first &= ~((c[left] == c[right]) & (c[left] >= 0) & (s[left] <= matcher.max_block))
    left, right = left[first], right[first]
    comps = matcher._comps()
    L = matcher._levels(matcher._arenas(piece, comps), comps, left, right)
    matcher._codes_memo = {}
    return {"piece": piece, "left": left, "right": right, "levels": L, "made": made, "skipped": skipped,
            "patterns": _patterns(L, n_levels)}


def _part_scores(part: dict, scorer: RecordMatcher, first_new: int | None = None):
    """Weights and probabilities of a part's pairs (only those with a record at or past row
    ``first_new``, when given): its links at or above the threshold (global rows) and each of its
    records' strongest candidate probability."""
    piece, left, right, L = part["piece"], part["left"], part["right"], part["levels"]
    rows = piece["_row"].to_numpy()
    if first_new is not None:
        new = rows[right] >= first_new                   # left < right within the part, as globally
        left, right, L = left[new], right[new], L[new]
    scored = scorer._scored(piece, L, left, right)
    best = best_probability(len(piece), scored)
    has = best > 0
    acc = scored.probability >= scorer.threshold
    return {"left": rows[left[acc]], "right": rows[right[acc]], "levels": L[acc], "weight": scored.weight[acc],
            "probability": scored.probability[acc], "rows": rows[has], "best": best[has]}


def _part_sample(part: dict, scorer: RecordMatcher, share: float, seed: int) -> PairScores:
    """A share of a part's candidate pairs drawn at random, scored (global rows)."""
    rng = np.random.default_rng(seed)
    take = np.flatnonzero(rng.random(len(part["left"])) < share)
    piece, left, right, L = part["piece"], part["left"][take], part["right"][take], part["levels"][take]
    scored = scorer._scored(piece, L, left, right)
    rows = piece["_row"].to_numpy()
    return PairScores(rows[left], rows[right], L, scored.weight, scored.probability)


def _pattern_table(parts: list) -> tuple[np.ndarray, np.ndarray]:
    """The level patterns of all parts with their summed counts, in :func:`identity._patterns`' order."""
    rows = np.concatenate([p[0] for p in parts])
    counts = np.concatenate([p[1] for p in parts]).astype(np.int64)
    if len(rows) == 0:
        return rows, counts
    uniq, inv = np.unique(rows, axis=0, return_inverse=True)
    return uniq, np.bincount(inv.ravel(), weights=counts, minlength=len(uniq)).astype(np.int64)


class DaskRecordMatcher(RecordMatcher):
    """:class:`~crmlab.identity.RecordMatcher` whose candidate pairs are made, compared and scored on
    the workers of ``client`` (set with :meth:`on`); learns and predicts what the local one does.

    ``parts``: parts per blocking rule (None: one per ``partition_rows`` records, at least two per
    worker)."""

    def on(self, client, parts: int | None = None, partition_rows: int = 200_000) -> "DaskRecordMatcher":
        self._client, self._n_parts, self._partition_rows = client, parts, partition_rows
        return self

    @classmethod
    def like(cls, matcher: RecordMatcher) -> "DaskRecordMatcher":
        return cls(**matcher.get_params(deep=False))

    # -- arenas here only for the records the samples need
    def _arenas(self, df, comps):
        return {"_records": df}

    def _levels(self, arenas, comps, left, right):
        """Levels of sampled pairs: arenas of just their records while those are a small share of
        the table; once a sample touches a quarter of it, of the whole table, built once and kept."""
        if "_records" not in arenas:
            return super()._levels(arenas, comps, left, right)
        df = arenas["_records"]
        rows = np.unique(np.r_[left, right])
        if "_all" in arenas or 4 * len(rows) >= len(df):
            if "_all" not in arenas:
                arenas["_all"] = RecordMatcher._arenas(self, df, self._comps())
            return super()._levels(arenas["_all"], comps, left, right)
        sub = df.iloc[rows].reset_index(drop=True)
        local = super()._levels(RecordMatcher._arenas(self, sub, comps), comps, np.searchsorted(rows, left),
                                np.searchsorted(rows, right))
        self._codes_memo = {k: v for k, v in self._codes_memo.items() if k[0] != id(sub)}
        return local

    # -- the candidate pairs on the workers
    def _plain(self) -> RecordMatcher:
        """The matcher as the tasks need it (no client), fitted state included when there is one."""
        if hasattr(self, "m_"):
            return RecordMatcher.from_dict(self.to_dict())
        return RecordMatcher(**self.get_params(deep=False))

    def _scatter_parts(self, df: pd.DataFrame, n_levels: list[int]):
        """The rules and, per (rule, part), the rule's index with the future of :func:`_part_pairs`."""
        client = self._client
        n = len(df)
        workers = max(1, len(client.scheduler_info()["workers"]))
        n_parts = self._n_parts or max(2 * workers, math.ceil(n / self._partition_rows))
        rules = [list(r) for r in (self.blocking or DEFAULT_BLOCKING)]
        comps = self._comps()
        cols = sorted({c for comp in comps for c in comp.needs()} |
                      ({self.source_col} if self.mode != "link_and_dedupe" else set()))
        at = [df.columns.get_loc(c) for c in cols]
        plain = client.scatter(self._plain(), broadcast=True)
        futures, codes, sizes = [], [], []
        for r, rule in enumerate(rules):
            code = self._rule_codes(df, rule)
            size = np.bincount(code[code >= 0], minlength=1)
            codes.append(code)
            sizes.append(np.where(code >= 0, size[np.maximum(code, 0)], 0))
            rows = np.flatnonzero(code >= 0)
            part = code[rows] % n_parts
            order = np.argsort(part, kind="stable")             # each part in table order
            bounds = np.searchsorted(part[order], np.arange(n_parts + 1))
            for a, b in zip(bounds[:-1], bounds[1:]):
                if b - a < 2:
                    continue
                take = rows[order[a:b]]                     # only this part's rows are copied here
                piece = df.iloc[take, at].reset_index(drop=True).assign(
                    _row=take, **{f"_c{k}": codes[k][take] for k in range(r + 1)},
                    **{f"_s{k}": sizes[k][take] for k in range(r + 1)})
                futures.append((r, client.submit(_part_pairs, client.scatter(piece), plain, r, n_levels,
                                                 pure=False)))
                del piece                                   # on a worker now
        return rules, futures

    def _gather_parts(self, n: int, rules, futures):
        """(blocking statistics, pairs in the union) once every part is made."""
        client = self._client
        stats = client.gather([client.submit(lambda d: (d["made"], d["skipped"], len(d["left"])), f, pure=False)
                               for _, f in futures])
        total = n * (n - 1) / 2
        rows = [blocking_row(" & ".join(rule), sum(s[0] for (k, _), s in zip(futures, stats) if k == r),
                             sum(s[1] for (k, _), s in zip(futures, stats) if k == r), total)
                for r, rule in enumerate(rules)]
        union = sum(s[2] for s in stats)
        rows.append(blocking_row(UNION, union, sum(r["blocks_skipped"] for r in rows), total))
        return pd.DataFrame(rows), union

    def _candidate_patterns(self, records, df, arenas, comps, n_levels):
        client = self._client

        def run():
            rules, futures = self._scatter_parts(df, n_levels)
            stats, union = self._gather_parts(len(df), rules, futures)
            got = client.gather([client.submit(lambda d: d["patterns"], f, pure=False) for _, f in futures])
            return stats, union, [f for _, f in futures], got

        self.blocking_, union, futures, got = engine.retry_lost(run, f"candidate pairs of {len(df):,} records")
        if union == 0:
            raise CrmlabError("blocking produced no candidate pairs: check the blocking rules and fields")
        self._cache = None
        self._dask_parts = (_fingerprint(records), futures, self.blocking_)
        return _pattern_table(got)

    def score_pairs(self, records: pd.DataFrame) -> PairScores:
        """The links (pairs at or above the threshold) with levels, weights and probabilities, the
        blocking statistics, and each record's strongest candidate probability (``best``): what
        :meth:`cluster` and :func:`~crmlab.identity.key_map` need, not every candidate pair."""
        self._check_fitted()
        return self._links(records)

    def _new_pairs(self, allrec: pd.DataFrame, n_old: int) -> PairScores:
        """:meth:`match_new`'s pairs on the workers: the links that involve a new record, and ``best``."""
        return self._links(allrec, first_new=n_old)

    def _links(self, records: pd.DataFrame, first_new: int | None = None) -> PairScores:
        client = self._client

        def run():
            cached = getattr(self, "_dask_parts", None)
            if cached is not None and cached[0] == _fingerprint(records):
                futures, stats = cached[1], cached[2]
            else:
                df, _, comps = self._prepare(records)
                rules, tagged = self._scatter_parts(df, [len(c.labels()) for c in comps])
                stats, _ = self._gather_parts(len(df), rules, tagged)
                futures = [f for _, f in tagged]
                self._dask_parts = (_fingerprint(records), futures, stats)   # kept on the workers for the next call
            scorer = client.scatter(self._plain(), broadcast=True)
            return stats, client.gather([client.submit(_part_scores, f, scorer, first_new, pure=False)
                                         for f in futures])

        def again():                                   # the parts died with their worker: make them anew
            self._dask_parts = None

        stats, got = engine.retry_lost(run, f"match weights of {len(records):,} records", again)
        n = len(records)
        if not got:                                     # no block holds two records
            e = np.zeros(0, np.int64)
            return PairScores(e, e, np.zeros((0, len(self.comparisons_)), np.int8), np.zeros(0), np.zeros(0), stats,
                              best=np.zeros(n))
        best = np.zeros(n)
        for g in got:
            np.maximum.at(best, g["rows"], g["best"])
        cat = {k: np.concatenate([g[k] for g in got]) for k in ("left", "right", "levels", "weight", "probability")}
        left, right = cat["left"].astype(np.int64), cat["right"].astype(np.int64)
        order = np.argsort(left * n + right, kind="stable")     # the local order: by (left, right)
        return PairScores(left[order], right[order], cat["levels"][order], cat["weight"][order],
                          cat["probability"][order], stats, best=best)

    def pair_sample(self, records: pd.DataFrame, n: int, seed: int = 0) -> PairScores:
        """About ``n`` of the candidate pairs of ``records`` (those :meth:`fit` or :meth:`score_pairs`
        last made for them), drawn uniformly and scored: for the reports, which plot weights and
        review pairs near the threshold from a sample when the pairs stay on the workers."""
        self._check_fitted()
        cached = getattr(self, "_dask_parts", None)
        if cached is None or cached[0] != _fingerprint(records):
            self._links(records)
            cached = self._dask_parts
        union = int(cached[2]["pairs"].iloc[-1])
        share = min(1.0, n / max(union, 1))
        client = self._client
        scorer = client.scatter(self._plain(), broadcast=True)
        got = engine.retry_lost(lambda: client.gather([client.submit(_part_sample, f, scorer, share, seed + i,
                                                                     pure=False)
                                                       for i, f in enumerate(cached[1])]),
                                f"a sample of {n:,} candidate pairs")
        left = np.concatenate([g.left for g in got]).astype(np.int64)
        right = np.concatenate([g.right for g in got]).astype(np.int64)
        order = np.argsort(left * len(records) + right, kind="stable")
        return PairScores(left[order], right[order], np.concatenate([g.levels for g in got])[order],
                          np.concatenate([g.weight for g in got])[order],
                          np.concatenate([g.probability for g in got])[order], cached[2])
