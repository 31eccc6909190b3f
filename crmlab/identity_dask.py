"""Record matching on a Dask cluster (#19), with the local matcher's parameters and key map.

Everything that grows with the records or the candidate pairs runs on the workers; what is fitted
from it is fitted here on reduced tables:

* **keys per chunk**: the records go to the workers once, in chunks of rows, and get their blocking
  keys there (:func:`~crmlab.identity.add_keys`); column checks and value counts (term frequencies,
  the exact levels' u) are reduced from the chunks;
* **blocks to parts**: per blocking rule, the chunks' records are shuffled by a hash of the rule's
  key (records lacking a field of it are never paired and stay behind), so every block lies in one
  part, whose pairs are the rule's pairs of its blocks (oversized blocks skipped, counted and their
  keys kept). A pair that an earlier rule also makes (both records share its key, not an oversized
  block's) is left to that rule: the parts hold the union of the rules' pairs, each once;
* **levels per part**: each part builds the comparison arenas of its own records and computes the
  levels with the local comparisons; the candidate pairs' level patterns are counted per part and
  summed, so the prior, and with it everything the matcher learns, equals the local fit's;
* **training samples**: per training rule, the parts send each block's first row and size; the
  blocks in first-row order are the local enumeration, so the local random stream draws the same
  pairs, whose rows the parts then name. u's random pairs are drawn here as locally; the levels of
  sampled pairs come from arenas of just their records;
* **scores and clusters per part**: weights and probabilities per part; each part's links give a
  forest of its components, forests are merged pairwise on the workers (union-find), and only the
  labels, each record's strongest candidate probability and the links of oversized clusters (for
  the guard) come here.

The records themselves can stay in Parquet parts (:class:`PartedRecords`: the run's sources): the
chunks are then the parts, read by the workers, and this process holds only the columns that name
a record (source system, source id), in table order. ``dask`` is imported inside the functions.
"""
from __future__ import annotations

import copy
import math
import operator
from pathlib import Path

import numpy as np
import pandas as pd

from . import engine, identity_index
from .errors import CrmlabError
from .events_dask import SOURCE_KEY, by_columns, parts_on_workers
from .identity import (DEFAULT_BLOCKING, KEY_INPUTS, UNION, PairScores, RecordMatcher, _fingerprint, _patterns,
                       add_keys, best_probability, blocking_row, column_stats, largest_table, merge_column_stats,
                       top_blocks)
from .identity import key_map as identity_key_map
from .kernels import graph
from .kernels.strings import text_hash
from .table_parts import TableParts

#: chunks merged by one task when value counts and forests are reduced
FAN_IN = 8

#: blocks each part keeps named for :meth:`DaskRecordMatcher.largest_blocks`, per rule
LARGEST = 10


# ----------------------------------------------------------------------------- records in Parquet parts

#: the columns that name a record, held by :class:`PartedRecords` in this process
NAME_COLUMNS = ["source_system", "source_id"]


class PartedRecords:
    """Customer records whose rows stay in Parquet ``files`` (in table order; the run's sources):
    the columns that name a record (:data:`NAME_COLUMNS`) are held here, the rest is read by the
    workers (:class:`DaskRecordMatcher`) or, for a few rows, by :meth:`take`. Answers what the stage
    and its report ask of a record table: ``len``, ``column in``, a name column, ``take(rows)``."""

    def __init__(self, files: list):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.files = [Path(f) for f in files]
        if not self.files:
            raise CrmlabError("record matching needs a non-empty table of records (no Parquet parts given)")
        names = [pq.read_table(f, columns=NAME_COLUMNS) for f in self.files]
        self.offsets = np.r_[0, np.cumsum([t.num_rows for t in names])].astype(np.int64)
        self.keys = pa.concat_tables(names).to_pandas()         # one copy: the parts' Arrow buffers
        self.columns = [c for c in pq.read_schema(self.files[0]).names if not c.startswith("__index_level_")]

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, column) -> bool:
        return column in self.columns

    def __getitem__(self, column):
        """A name column (or a list of them) in table order; the others are read by :meth:`take`."""
        cols = [column] if isinstance(column, str) else list(column)
        if not set(cols) <= set(NAME_COLUMNS):
            raise KeyError(f"{column}: PartedRecords holds only {NAME_COLUMNS}; read other columns with take(rows)")
        return self.keys[column]

    def empty(self) -> pd.DataFrame:
        """No rows, every column with its type."""
        import pyarrow.parquet as pq

        return pq.read_schema(self.files[0]).empty_table().to_pandas()[self.columns]

    def take(self, rows) -> pd.DataFrame:
        """Records at positions ``rows`` (in that order), every column, read from their parts only."""
        import pyarrow.parquet as pq

        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"record rows must lie in 0..{len(self) - 1}")
        part = np.searchsorted(self.offsets, rows, side="right") - 1
        got = [pq.read_table(self.files[k]).take(rows[part == k] - self.offsets[k]).to_pandas()[self.columns]
               for k in np.unique(part)]
        table = pd.concat(got, ignore_index=True) if got else self.empty()
        at = np.argsort(np.argsort(part, kind="stable"), kind="stable")      # back to the order of ``rows``
        return table.iloc[at].reset_index(drop=True)

    def fingerprint(self) -> tuple:
        """The parts as they are on disk (path, size, modification time) and the rows they hold."""
        return ("parts", len(self), *((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in self.files))


def _keyed_part(path: str, start: int, read: list[str], cols: list[str]) -> pd.DataFrame:
    """:func:`_keyed_chunk` of a Parquet part holding records ``start``.. (``read``: its columns to read)."""
    return _keyed_chunk(pd.read_parquet(path, columns=read), start, cols)


def _rows_of(chunk: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    """A keyed chunk's records at table positions ``rows`` (sorted, all inside the chunk)."""
    return chunk.iloc[rows - int(chunk["_row"].iat[0])] if len(chunk) else chunk


# ----------------------------------------------------------------------------- tasks on the records

def _keyed_chunk(raw: pd.DataFrame, start: int, cols: list[str]) -> pd.DataFrame:
    """Records ``start``.. of the table with their keys, only ``cols`` kept, and their row as ``_row``."""
    df = add_keys(raw.reset_index(drop=True))
    out = df[[c for c in cols if c in df]]
    return out.assign(_row=np.arange(start, start + len(df), dtype=np.int64))


def _split(chunk: pd.DataFrame, rule: list[str], n_parts: int, cols: list[str]) -> list[pd.DataFrame]:
    """A chunk's records with every field of ``rule``, cut in ``n_parts`` pieces by a hash of the
    rule's key: a block's records get the same piece number in every chunk."""
    ok = np.flatnonzero(chunk[rule].notna().all(axis=1).to_numpy())
    keys = chunk[rule].iloc[ok]
    try:
        h = text_hash([keys[c] for c in rule])
    except TypeError:                                       # a rule on a column that is not text
        h = pd.util.hash_pandas_object(keys.astype(object), index=False).to_numpy()
    h = h % np.uint64(n_parts)
    order = np.argsort(h, kind="stable")
    bounds = np.searchsorted(h[order], np.arange(n_parts + 1))
    at = [chunk.columns.get_loc(c) for c in cols]
    return [chunk.iloc[ok[order[a:b]], at] for a, b in zip(bounds[:-1], bounds[1:])]


def _joined(pieces) -> pd.DataFrame:
    """One part's pieces (one per chunk) as one table in table order."""
    piece = pd.concat(pieces, ignore_index=True)
    rows = piece["_row"].to_numpy()
    if len(rows) < 2 or bool(np.all(rows[1:] > rows[:-1])):    # chunks in order, each piece in order
        return piece
    return piece.sort_values("_row", kind="stable").reset_index(drop=True)


def _add_counts(*counts: pd.Series) -> pd.Series:
    return pd.concat(counts).groupby(level=0, sort=False).sum()


def _in_keys(piece: pd.DataFrame, cols: list[str], keys: pd.DataFrame) -> np.ndarray:
    """Whether each record's key (``cols``) is one of ``keys``' rows."""
    if not len(keys) or not len(piece):
        return np.zeros(len(piece), bool)
    got = piece[cols].astype(object).merge(keys.astype(object).assign(_in=True), on=cols, how="left")["_in"]
    return got.notna().to_numpy()


def _fresh(matcher: RecordMatcher) -> RecordMatcher:
    """The task's own copy of the matcher (its column-code memo is per table, never shared by threads)."""
    m = copy.copy(matcher)
    m._codes_memo = {}
    return m


# ----------------------------------------------------------------------------- tasks on the parts

def _true_hits(rules: list, oversized: list, mode: str, source_col: str, *pieces) -> np.ndarray:
    """The true pairs (records of one planted customer, ``_truth``) among a part's records, which hold
    whole planted customers: per blocking rule how many it makes (both records in one block that is
    not oversized: ``oversized``, the rule's keys; the pair kept by the mode), how many any rule
    makes, and how many there are."""
    piece = _joined(pieces)
    tl, tr, _ = graph.block_pairs(pd.factorize(piece["_truth"])[0], max_block=len(piece) + 1)
    keep = np.ones(len(tl), bool)
    if mode != "link_and_dedupe":
        src = pd.factorize(piece[source_col])[0]
        keep = (src[tl] != src[tr]) if mode == "link" else (src[tl] == src[tr])
    m, found, out = RecordMatcher(), np.zeros(len(tl), bool), []
    for rule, keys in zip(rules, oversized):
        codes = m._rule_codes(piece, rule)
        codes[_in_keys(piece, rule, keys)] = -1
        hit = keep & (codes[tl] >= 0) & (codes[tl] == codes[tr])
        found |= hit
        out.append(int(hit.sum()))
    return np.array([*out, int(found.sum()), len(tl)], dtype=np.int64)


def _part_keys(cols: list[str], max_block: int, *pieces) -> dict:
    """A blocking rule's part, joined from its pieces: its records, their block codes, the keys of its
    oversized blocks (which later rules read) and its largest blocks (:data:`LARGEST`, named for
    :meth:`DaskRecordMatcher.largest_blocks`): a rule's pairs wait only for the earlier rules'
    oversized keys, not for their pairs."""
    piece = _joined(pieces)
    codes = RecordMatcher()._rule_codes(piece, cols) if len(piece) else np.zeros(0, np.int64)
    sizes = np.bincount(codes)
    first = np.unique(codes, return_index=True)[1]          # codes number the blocks by first record
    largest = top_blocks(piece, codes, cols, LARGEST)
    largest["_first"] = piece["_row"].to_numpy()[largest["_first"].to_numpy()]    # rows of the whole table
    return {"piece": piece, "codes": codes, "largest": largest,
            "oversized": piece.loc[first[sizes > max_block], cols].reset_index(drop=True)}


def _part_pairs(keyed: dict, matcher: RecordMatcher, rule: int, rules: list, n_levels: list[int], oversized: list):
    """One part of blocking rule ``rule`` (:func:`_part_keys`): its pairs (each kept by the first rule
    that makes it), their levels and the rule's counts; ``oversized``: the earlier rules' oversized
    keys. The part keeps only the records of its pairs (most records are alone in a rule's block), and
    of those only what scoring reads: their row and the term-frequency-adjusted columns; the pairs as
    rows of the part (int32) and the number of their level pattern in the part's table (2 B, not a byte
    per comparison)."""
    m = _fresh(matcher)
    piece, codes = keyed["piece"], keyed["codes"]
    if len(piece) < 2:                                      # (the kernel wants one block at least)
        left, right, skipped = np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    else:
        left, right, skipped = graph.block_pairs(codes, m.max_block)
    keep = m._mode_filter(piece, left, right)
    left, right = left[keep], right[keep]
    made = len(left)
    piece, left, right = _only_paired(piece, left, right)
    alone = np.ones(len(left), bool)
    for k in range(rule):                                   # an earlier rule's pair: that rule keeps it
        c = m._rule_codes(piece, list(rules[k]))
        big = _in_keys(piece, list(rules[k]), oversized[k])
        alone &= ~((c[left] == c[right]) & (c[left] >= 0) & ~big[left])
    piece, left, right = _only_paired(piece, left[alone], right[alone])
    comps = m._comps()
    L = m._levels(m._arenas(piece, comps), comps, left, right) if len(left) else np.zeros((0, len(comps)), np.int8)
    piece = piece[["_row", *sorted({c.column for c in comps if c.tf})]]   # what scoring reads of the records
    at = np.int32 if len(piece) < 2 ** 31 else np.int64                  # rows of the part: half the bytes
    table, counts, index = _patterns(L, n_levels, inverse=True)
    return {"piece": piece, "left": left.astype(at), "right": right.astype(at), "made": made, "skipped": skipped,
            "patterns": (table, counts), "pattern": index.astype(np.uint16 if len(table) <= 2 ** 16 else np.int32),
            "largest": keyed["largest"]}


def _levels_of(part: dict, take=slice(None)) -> np.ndarray:
    """The levels of a part's pairs (``take``: of those), from their pattern numbers."""
    return part["patterns"][0][part["pattern"][take]]


def _only_paired(piece: pd.DataFrame, left: np.ndarray, right: np.ndarray):
    """``piece`` cut to the records of the pairs (``left``, ``right``: its rows, renumbered)."""
    paired = np.zeros(len(piece), bool)
    paired[left] = True
    paired[right] = True
    if paired.all():
        return piece, left, right
    new = np.cumsum(paired) - 1                             # the records' rows in the cut table
    return piece.iloc[np.flatnonzero(paired)].reset_index(drop=True), new[left], new[right]


def _oversized(*parts) -> pd.DataFrame:
    return pd.concat([p["oversized"] for p in parts], ignore_index=True)


def _part_blocks(matcher: RecordMatcher, cols: list[str], *pieces) -> dict:
    """A training rule's part: its blocks that make pairs (in table order of their first record),
    with each block's records' rows, for :func:`_block_meta` and :func:`_pick_rows`."""
    m = _fresh(matcher)
    piece = _joined(pieces)
    rows = piece["_row"].to_numpy()
    if len(piece) < 2:
        e = np.zeros(0, np.int64)
        return {"rows": rows, "starts": e, "kept": e, "skipped": 0}
    order, starts, kept, skipped = graph.pair_blocks(m._rule_codes(piece, cols), m.max_block)
    return {"rows": rows[order], "starts": starts, "kept": kept, "skipped": skipped}


def _block_meta(blocks: dict):
    """(first row, size) of each pair-making block of a training part, and its skipped blocks."""
    s, k = blocks["starts"], blocks["kept"]
    return blocks["rows"][s[k]], (s[k + 1] - s[k]), blocks["skipped"]


def _pick_rows(blocks: dict, block: np.ndarray, x: np.ndarray, y: np.ndarray):
    """Rows of records ``x`` and ``y`` (positions in table order) of the part's pair-making blocks ``block``."""
    s = blocks["starts"][blocks["kept"][block]]
    return blocks["rows"][s + x], blocks["rows"][s + y]


def _part_scores(part: dict, scorer: RecordMatcher, first_new: int | None = None):
    """Weights and probabilities of a part's pairs (only those with a record at or past row
    ``first_new``, when given): its links at or above the threshold (global rows) and each of its
    records' strongest candidate probability."""
    piece, left, right, L = part["piece"], part["left"], part["right"], _levels_of(part)
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


def _part_sample(part: dict, scorer: RecordMatcher, share: float, seed: int) -> dict:
    """A share of a part's candidate pairs drawn at random, scored (global rows)."""
    rng = np.random.default_rng(seed)
    take = np.flatnonzero(rng.random(len(part["left"])) < share)
    piece, left, right, L = part["piece"], part["left"][take], part["right"][take], _levels_of(part, take)
    rows = piece["_row"].to_numpy()
    scored = scorer._scored(piece, L, left, right)
    return {"left": rows[left], "right": rows[right], "levels": L, "weight": scored.weight,
            "probability": scored.probability}


def _in_order(n: int, got: list, stats: pd.DataFrame, best=None) -> PairScores:
    """The parts' scored pairs (dicts of global rows, levels, weight, probability) as one
    :class:`PairScores` in the local order, by (left, right)."""
    cat = {k: np.concatenate([g[k] for g in got]) for k in ("left", "right", "levels", "weight", "probability")}
    left, right = cat["left"].astype(np.int64), cat["right"].astype(np.int64)
    order = np.argsort(left * n + right, kind="stable")
    return PairScores(left[order], right[order], cat["levels"][order], cat["weight"][order],
                      cat["probability"][order], stats, best=best)


def _best(n: int, got: list) -> np.ndarray:
    """Each record's strongest candidate probability from the parts' (rows, best)."""
    best = np.zeros(n)
    for rows, b in got:
        np.maximum.at(best, rows, b)
    return best


def _forest(*found) -> tuple[np.ndarray, np.ndarray]:
    """The components of links as (record, the smallest record of its component) for every linked
    record that is not that smallest one: from parts' scores (``left``/``right``) or from forests."""
    left = np.concatenate([f["left"] if isinstance(f, dict) else f[0] for f in found]).astype(np.int64)
    right = np.concatenate([f["right"] if isinstance(f, dict) else f[1] for f in found]).astype(np.int64)
    nodes, pos = np.unique(np.r_[left, right], return_inverse=True)
    if not len(nodes):
        return nodes, nodes
    labels = graph.connected_components(len(nodes), pos[:len(left)], pos[len(left):])
    moved = labels != np.arange(len(nodes))
    return nodes[moved], nodes[labels[moved]]


def _links_among(found: dict, inside: np.ndarray) -> dict:
    """A part's links whose first record is one of the rows ``inside``."""
    keep = np.isin(found["left"], inside)
    return {k: found[k][keep] for k in ("left", "right", "probability")}


def _pattern_table(parts: list) -> tuple[np.ndarray, np.ndarray]:
    """The level patterns of all parts with their summed counts, in :func:`identity._patterns`' order."""
    rows = np.concatenate([p[0] for p in parts])
    counts = np.concatenate([p[1] for p in parts]).astype(np.int64)
    if len(rows) == 0:
        return rows, counts
    uniq, inv = np.unique(rows, axis=0, return_inverse=True)
    return uniq, np.bincount(inv.ravel(), weights=counts, minlength=len(uniq)).astype(np.int64)


def _reduce(client, futures: list, fn):
    """``fn`` applied FAN_IN at a time on the workers until one future is left."""
    while len(futures) > 1:
        futures = [client.submit(fn, *futures[i:i + FAN_IN], pure=False) for i in range(0, len(futures), FAN_IN)]
    return futures[0]


class DaskRecordMatcher(RecordMatcher):
    """:class:`~crmlab.identity.RecordMatcher` whose keys, candidate pairs, levels, scores and
    components are made on the workers of ``client`` (set with :meth:`on`); learns and predicts what
    the local one does.

    ``parts``: parts per blocking rule (None: one per ``partition_rows`` records, at least two per
    worker); the records go to the workers in chunks of ``partition_rows``."""

    def on(self, client, parts: int | None = None, partition_rows: int = 200_000) -> "DaskRecordMatcher":
        self._client, self._n_parts, self._partition_rows = client, parts, partition_rows
        return self

    @classmethod
    def like(cls, matcher: RecordMatcher) -> "DaskRecordMatcher":
        return cls(**matcher.get_params(deep=False))

    def _plain(self) -> RecordMatcher:
        """The matcher as the tasks need it (no client), fitted state included when there is one."""
        if hasattr(self, "m_"):
            return RecordMatcher.from_dict(self.to_dict())
        return RecordMatcher(**self.get_params(deep=False))

    def _parts_count(self, n: int) -> int:
        workers = max(1, len(self._client.scheduler_info()["workers"]))
        return self._n_parts or max(2 * workers, math.ceil(n / self._partition_rows))

    # -- the records, keyed, on the workers
    def _chunks(self, df: pd.DataFrame, fingerprint: tuple) -> list:
        """Futures of the keyed chunks of ``df`` (made once per record table and kept until dropped):
        slices sent from here, or the Parquet parts of :class:`PartedRecords` read by the workers."""
        cached = getattr(self, "_dask_chunks", None)
        if cached is not None and cached[0] == fingerprint:
            return cached[1]
        needed, _ = self._needed()
        parted = self._parted_of(df)
        have = parted.columns if parted is not None else list(df.columns)
        cols = sorted({*needed, *([self.source_col] if self.source_col in have else [])})
        client = self._client
        if parted is not None:
            read = [c for c in have if c in set(cols) | set(KEY_INPUTS)]
            futures = [client.submit(_keyed_part, str(f), int(a), read, cols, pure=False)
                       for f, a in zip(parted.files, parted.offsets[:-1])]
        else:
            raw = [df.columns.get_loc(c) for c in df.columns if c in set(cols) | set(KEY_INPUTS)]
            step = max(1, self._partition_rows)
            futures = [client.submit(_keyed_chunk, engine.scatter(client, df.iloc[a:a + step, raw]), a, cols,
                                     pure=False) for a in range(0, len(df), step)]     # one chunk's copy here at a time
        self._dask_chunks = (fingerprint, futures)
        return futures

    @staticmethod
    def _frame(records) -> pd.DataFrame:
        """The frame the matcher works on: :class:`PartedRecords`' name columns, or the table with row
        positions as its index (itself when it has them, so that its fingerprint is hashed once)."""
        if isinstance(records, PartedRecords):
            return records.keys
        return records if records.index.equals(pd.RangeIndex(len(records))) else records.reset_index(drop=True)

    def _parted_of(self, records) -> PartedRecords | None:
        """The :class:`PartedRecords` that ``records`` are (or whose name columns they are), else None."""
        parted = getattr(self, "_parted", None)
        if isinstance(records, PartedRecords):
            return records
        return parted if parted is not None and records is parted.keys else None

    def _print(self, df) -> tuple:
        """:func:`~crmlab.identity._fingerprint` of ``df``, hashed once while the same table is at hand
        (:meth:`PartedRecords.fingerprint` for records in parts)."""
        parted = self._parted_of(df)
        if parted is not None:
            return parted.fingerprint()
        memo = getattr(self, "_print_memo", None)
        if memo is None or memo[0] is not df:
            self._print_memo = memo = (df, _fingerprint(df))
        return memo[1]

    def _drop_chunks(self):
        self._dask_chunks = self._print_memo = None

    def _prepare(self, records):
        """The records' checks, made on the keyed chunks; arenas only for what the samples need.
        ``records``: a DataFrame, or :class:`PartedRecords` (checked on the name columns held here)."""
        if not isinstance(records, (pd.DataFrame, PartedRecords)) or len(records) == 0:
            raise CrmlabError("record matching needs a non-empty DataFrame of records")
        self._parted = records if isinstance(records, PartedRecords) else None
        df = self._frame(records)
        empty = records.empty() if self._parted is not None else df.iloc[:0]
        needed, _ = self._needed()
        client = self._client

        def run():
            chunks = self._chunks(df, self._print(df))
            return client.gather([client.submit(column_stats, c, needed, pure=False) for c in chunks])

        stats = engine.retry_lost(run, f"the keys of {len(df):,} records", self._drop_chunks)
        self._check_records(df, add_keys(empty).columns, merge_column_stats(stats))
        self._codes_memo = {}
        return df, {"_records": df}, self._comps()

    def _value_counts(self, df, col) -> pd.Series:
        """Records per value of ``col``, counted per chunk and summed on the workers."""
        client = self._client

        def run():
            chunks = self._chunks(df, self._print(df))
            counts = [client.submit(lambda c: c[col].value_counts(dropna=True), ch, pure=False) for ch in chunks]
            return _reduce(client, counts, _add_counts).result()

        return engine.retry_lost(run, f"the value counts of '{col}'", self._drop_chunks)

    def fit(self, records: pd.DataFrame, y=None) -> "DaskRecordMatcher":
        try:
            return super().fit(records)
        finally:
            self._drop_chunks()                  # the parts keep what scoring needs

    # -- arenas here only for the records the samples need
    def _levels(self, arenas, comps, left, right):
        """Levels of sampled pairs: arenas of just their records while those are a small share of
        the table; once a sample touches a quarter of it, of the whole table, built once and kept."""
        if "_records" not in arenas:
            return super()._levels(arenas, comps, left, right)
        df = arenas["_records"]
        rows = np.unique(np.r_[left, right])
        compared = {c for comp in self._comps() for c in comp.needs()}
        if self._parted_of(df) is not None:          # the sample's rows, keyed, from the workers' chunks
            sub = self._keyed_rows(df, rows)
        else:
            at = [df.columns.get_loc(c) for c in df.columns if c in compared | set(KEY_INPUTS)]
            if "_all" in arenas or 4 * len(rows) >= len(df):
                if "_all" not in arenas:
                    arenas["_all"] = RecordMatcher._arenas(self, add_keys(df.iloc[:, at], compared), self._comps())
                return super()._levels(arenas["_all"], comps, left, right)
            sub = add_keys(df.iloc[rows, at].reset_index(drop=True), compared)
        local = super()._levels(RecordMatcher._arenas(self, sub, comps), comps, np.searchsorted(rows, left),
                                np.searchsorted(rows, right))
        self._codes_memo = {k: v for k, v in self._codes_memo.items() if k[0] != id(sub)}
        return local

    def _keyed_rows(self, df, rows: np.ndarray) -> pd.DataFrame:
        """The keyed records at the sorted table positions ``rows`` of :class:`PartedRecords`' name
        columns ``df``, gathered from the chunks (one per part)."""
        client = self._client
        cut = np.searchsorted(rows, self._parted_of(df).offsets)

        def run():
            chunks = self._chunks(df, self._print(df))
            return client.gather([client.submit(_rows_of, c, rows[cut[i]:cut[i + 1]], pure=False)
                                  for i, c in enumerate(chunks)])

        got = engine.retry_lost(run, f"{len(rows):,} sampled records", self._drop_chunks)
        return pd.concat(got, ignore_index=True).drop(columns="_row")

    # -- shuffles of the chunks by a rule's key
    def _shuffle(self, chunks: list, rule: list[str], n_parts: int, cols: list[str]) -> list[list]:
        """Per part, the futures of its pieces (one per chunk) under ``rule``."""
        client = self._client
        splits = [client.submit(_split, c, rule, n_parts, cols, pure=False) for c in chunks]
        return [[client.submit(operator.getitem, s, j, pure=False) for s in splits] for j in range(n_parts)]

    def _blocking_parts(self, df: pd.DataFrame, n_levels: list[int]):
        """The rules and, per (rule, part), the rule's index with the future of :func:`_part_pairs`."""
        client = self._client
        chunks = self._chunks(df, self._print(df))
        n_parts = self._parts_count(len(df))
        rules = [list(r) for r in (self.blocking or DEFAULT_BLOCKING)]
        compared = {c for comp in self._comps() for c in comp.needs()}
        extra = {self.source_col} if self.mode != "link_and_dedupe" else set()
        plain = engine.scatter(client, self._plain(), broadcast=True)
        futures, oversized = [], []
        for r, rule in enumerate(rules):          # submitted rule by rule: Dask runs them in this order
            if r:                                 # once the previous rule's parts hold their keys (its small
                oversized[-1].result()            # result), so that one rule's pieces are on the workers at a time
            cols = sorted(compared | extra | {c for earlier in rules[:r + 1] for c in earlier}) + ["_row"]
            keyed = [client.submit(_part_keys, rule, self.max_block, *pieces, pure=False)
                     for pieces in self._shuffle(chunks, rule, n_parts, cols)]
            oversized.append(client.submit(_oversized, *keyed, pure=False))
            futures += [(r, client.submit(_part_pairs, k, plain, r, rules, n_levels, oversized[:r], pure=False))
                        for k in keyed]
        self._dask_oversized = oversized          # per rule: its oversized keys (small), for pairs_completeness
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
            rules, futures = self._blocking_parts(df, n_levels)
            stats, union = self._gather_parts(len(df), rules, futures)
            got = client.gather([client.submit(lambda d: d["patterns"], f, pure=False) for _, f in futures])
            return stats, union, futures, got

        self.blocking_, union, futures, got = engine.retry_lost(run, f"candidate pairs of {len(df):,} records",
                                                                self._drop_chunks)
        if union == 0:
            raise CrmlabError("blocking produced no candidate pairs: check the blocking rules and fields")
        self._cache = None
        self._dask_parts = (self._print(records), futures, self.blocking_)
        return _pattern_table(got)

    def _rule_pairs(self, df, cols, sample: int | None = None, rng=None):
        """A training rule's sample, drawn as locally: the parts' pair-making blocks in the order of
        their first record are the local enumeration, the same random picks name the same pairs."""
        if sample is None:
            raise NotImplementedError("DaskRecordMatcher makes the blocking rules' pairs by parts")
        client = self._client
        cols = list(cols)

        def blocks():
            chunks = self._chunks(df, self._print(df))
            plain = engine.scatter(client, self._plain(), broadcast=True)
            parts = [client.submit(_part_blocks, plain, cols, *pieces, pure=False)
                     for pieces in self._shuffle(chunks, cols, self._parts_count(len(df)), cols + ["_row"])]
            return parts, client.gather([client.submit(_block_meta, p, pure=False) for p in parts])

        parts, meta = engine.retry_lost(blocks, f"the blocks of training rule {' & '.join(cols)}", self._drop_chunks)
        part = np.concatenate([np.full(len(m[0]), i) for i, m in enumerate(meta)]).astype(np.int64)
        block = np.concatenate([np.arange(len(m[0])) for m in meta]).astype(np.int64)
        first = np.concatenate([m[0] for m in meta]).astype(np.int64)
        size = np.concatenate([m[1] for m in meta]).astype(np.int64)
        skipped = sum(m[2] for m in meta)
        order = np.argsort(first, kind="stable")
        part, block, size = part[order], block[order], size[order]
        starts = np.r_[0, np.cumsum(size)].astype(np.int64)
        total = int(np.sum(size * (size - 1) // 2))
        picks = (np.arange(total, dtype=np.int64) if total <= sample else
                 np.sort(rng.choice(total, int(sample), replace=False)).astype(np.int64))
        a, b = graph.nth_block_pairs(starts, self.max_block, picks)
        g = np.searchsorted(starts, a, side="right") - 1
        left, right = np.empty(len(a), np.int64), np.empty(len(a), np.int64)
        by_part = [np.flatnonzero(part[g] == i) for i in range(len(parts))]
        got = engine.retry_lost(lambda: client.gather([
            client.submit(_pick_rows, parts[i], block[g[sel]], a[sel] - starts[g[sel]], b[sel] - starts[g[sel]],
                          pure=False) for i, sel in enumerate(by_part)]), "the training pairs' rows")
        for sel, (ra, rb) in zip(by_part, got):
            left[sel], right[sel] = np.minimum(ra, rb), np.maximum(ra, rb)
        keep = self._mode_filter(df, left, right)
        return left[keep], right[keep], skipped

    def largest_blocks(self, records: pd.DataFrame, k: int = 3) -> pd.DataFrame:
        """:meth:`RecordMatcher.largest_blocks` from the parts of the last fit or scoring of ``records``
        (each part names its :data:`LARGEST` largest blocks; more than that are counted here)."""
        if k > LARGEST:
            return super().largest_blocks(records, k)
        parts = self._parts(records)[0]
        client = self._client
        got = engine.retry_lost(lambda: client.gather([client.submit(lambda d: d["largest"], f, pure=False)
                                                       for _, f in parts]), "the largest blocks")
        rules = list(self.blocking or DEFAULT_BLOCKING)
        tops = [pd.concat([g for (q, _), g in zip(parts, got) if q == r], ignore_index=True)
                .sort_values(["records", "_first"], ascending=[False, True], kind="stable").head(k)
                for r in range(len(rules))]
        return largest_table(list(zip(rules, tops)), self.max_block)

    # -- scoring
    def _parts(self, records: pd.DataFrame):
        """(parts as (rule, future), blocking statistics) of ``records``: those of the last fit or
        scoring when they are the same records, else made anew."""
        fingerprint = self._print(records)
        cached = getattr(self, "_dask_parts", None)
        if cached is not None and cached[0] == fingerprint:
            return cached[1], cached[2]
        df, _, comps = self._prepare(records)
        try:
            rules, tagged = self._blocking_parts(df, [len(c.labels()) for c in comps])
            stats, _ = self._gather_parts(len(df), rules, tagged)
        finally:
            self._drop_chunks()
        self._dask_parts = (fingerprint, tagged, stats)        # kept on the workers for the next call
        return tagged, stats

    def _scores(self, records: pd.DataFrame, first_new: int | None = None):
        """(blocking statistics, futures of each part's :func:`_part_scores`)."""
        client = self._client
        parts, stats = self._parts(records)
        scorer = engine.scatter(client, self._plain(), broadcast=True)
        return stats, [client.submit(_part_scores, f, scorer, first_new, pure=False) for _, f in parts]

    def _lost(self):                               # the parts died with their worker: make them anew
        self._dask_parts = self._dask_oversized = None
        self._drop_chunks()

    def pairs_completeness(self, records, truth: np.ndarray) -> list[float]:
        """Per blocking rule and for their union (last): the share of true pairs (records of one
        planted customer, ``truth`` in record order) that the blocking makes, as
        :func:`crmlab.matching_report.blocking_report` counts them locally; the records are shuffled
        by their true customer on the workers, so every true pair lies in one part."""
        self._check_fitted()
        client = self._client
        truth = np.asarray(truth)
        rules = [list(r) for r in (self.blocking or DEFAULT_BLOCKING)]
        cols = sorted({c for r in rules for c in r} | ({self.source_col} if self.mode != "link_and_dedupe" else set()))

        def run():
            self._parts(records)                    # the fit's blocking of these records: its oversized keys
            df = self._frame(records)
            chunks = self._chunks(df, self._print(df))
            bounds = self._bounds(df)
            tagged = [client.submit(lambda c, t: c.assign(_truth=t), ch, truth[a:b], pure=False)
                      for ch, a, b in zip(chunks, bounds[:-1], bounds[1:])]
            return client.gather([client.submit(_true_hits, rules, self._dask_oversized, self.mode, self.source_col,
                                                *pieces, pure=False)
                                  for pieces in self._shuffle(tagged, ["_truth"], self._parts_count(len(df)),
                                                              cols + ["_row", "_truth"])])

        try:
            got = np.sum(engine.retry_lost(run, "the true pairs' blocks", self._lost), axis=0)
        finally:
            self._drop_chunks()
        return [float(h) / max(int(got[-1]), 1) for h in got[:-1]]

    def _bounds(self, df) -> np.ndarray:
        """First row of each chunk of ``df`` (:meth:`_chunks`), and the row count last."""
        parted = self._parted_of(df)
        if parted is not None:
            return parted.offsets
        return np.r_[np.arange(0, len(df), max(1, self._partition_rows)), len(df)].astype(np.int64)

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
            stats, scores = self._scores(records, first_new)
            return stats, client.gather(scores)

        stats, got = engine.retry_lost(run, f"match weights of {len(records):,} records", self._lost)
        n = len(records)
        return _in_order(n, got, stats, best=_best(n, [(g["rows"], g["best"]) for g in got]))

    def predict(self, records: pd.DataFrame, previous: pd.DataFrame | None = None) -> pd.DataFrame:
        """The customer key map, as :meth:`RecordMatcher.predict`, with the links left on the workers:
        components from merged per-part forests, the oversized-cluster guard on the links of the
        oversized clusters only, each record's strongest candidate probability gathered."""
        self._check_fitted()
        client = self._client
        n = len(records)

        def run():
            stats, scores = self._scores(records)
            nodes, roots = _reduce(client, [client.submit(_forest, s, pure=False) for s in scores], _forest).result()
            labels = np.arange(n, dtype=np.int64)
            labels[nodes] = roots
            sizes = np.bincount(labels, minlength=n)
            big = np.flatnonzero(sizes[labels] > self.max_cluster)        # sorted rows of oversized clusters
            inside = client.gather([client.submit(_links_among, s, big, pure=False) for s in scores]) if len(big) \
                else []
            best = client.gather([client.submit(lambda g: (g["rows"], g["best"]), s, pure=False) for s in scores])
            return stats, labels, inside, best

        self.blocking_, labels, inside, best = engine.retry_lost(run, f"the clusters of {n:,} records", self._lost)
        if inside:                                  # the guard, where it acts, on those clusters' links only
            links = {k: np.concatenate([g[k] for g in inside]) for k in ("left", "right", "probability")}
            sub = self.cluster(n, PairScores(links["left"].astype(np.int64), links["right"].astype(np.int64),
                                             np.zeros((len(links["left"]), 0), np.int8), np.zeros(len(links["left"])),
                                             links["probability"]))
            rows = np.unique(np.r_[links["left"], links["right"]]).astype(np.int64)
            labels[rows] = sub[rows]
        self.n_oversized_ = int(np.sum(np.bincount(labels, minlength=n) > self.max_cluster))
        return identity_key_map(records, labels, None, previous, self.source_col, best=_best(n, best))

    def pair_sample(self, records: pd.DataFrame, n: int, seed: int = 0) -> PairScores:
        """About ``n`` of the candidate pairs of ``records`` (those :meth:`fit` or :meth:`score_pairs`
        last made for them), drawn uniformly and scored: for the reports, which plot weights and
        review pairs near the threshold from a sample when the pairs stay on the workers."""
        self._check_fitted()
        client = self._client

        def run():
            parts, stats = self._parts(records)
            share = min(1.0, n / max(int(stats["pairs"].iloc[-1]), 1))
            scorer = engine.scatter(client, self._plain(), broadcast=True)
            return stats, client.gather([client.submit(_part_sample, f, scorer, share, seed + i, pure=False)
                                         for i, (_, f) in enumerate(parts)])

        stats, got = engine.retry_lost(run, f"a sample of {n:,} candidate pairs", self._lost)
        return _in_order(len(records), got, stats)


# ----------------------------------------------------------------------------- the identity index by parts


def index_rows_by_parts(client, files: list, key_map, matcher: RecordMatcher) -> TableParts:
    """:func:`crmlab.identity_index.index_rows` of the customer records in the Parquet ``files`` (the
    run's sources parts), left on ``client``'s workers: each file read and keyed there, its rows
    regrouped with the key map's by a hash of (source_system, source_id) and joined there. The same rows
    as the local index, in another order (the database keeps none). ``key_map``: a frame, or the path
    of its artifact, read and cut by the workers."""
    n = max(1, len(files))
    km_parts = parts_on_workers(client, key_map, n, by=SOURCE_KEY)
    plain = engine.scatter(client, matcher, broadcast=True)
    keyed = [client.submit(_keyed_file, str(f), plain, n, pure=False) for f in files]
    return TableParts(client, [client.submit(_index_bucket, km_parts[b], plain,
                                             *[client.submit(operator.getitem, k, b, pure=False) for k in keyed], pure=False)
                               for b in range(n)])


def _keyed_file(path: str, matcher: RecordMatcher, n: int) -> list[pd.DataFrame]:
    """One file's records with the blocking keys, split by bucket of their source."""
    return by_columns(identity_index.keyed_records(pd.read_parquet(path), matcher), SOURCE_KEY, n)


def _index_bucket(km: pd.DataFrame, matcher: RecordMatcher, *pieces) -> pd.DataFrame:
    return identity_index.with_customer_keys(pd.concat(pieces, ignore_index=True), km, matcher)
