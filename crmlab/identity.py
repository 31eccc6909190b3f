"""Record matching: one recognised customer across source systems (Fellegi-Sunter, unsupervised).

Flow: standardised records (:mod:`crmlab.sources`) -> blocking (several rules, candidate pairs
unioned) -> comparison levels per field (Numba string kernels over code-point arenas) ->
u-probabilities from random pairs, m-probabilities and the match prior by EM on the candidates
(no labels) -> match weight and probability per pair, with term-frequency adjustment for common
names -> connected components of accepted pairs, guarded against long chains -> customer keys that
stay stable across runs.

``RecordMatcher`` follows scikit-learn: ``fit(records)`` learns ``m_``, ``u_``, ``lambda_``;
``predict(records)`` returns the ``customer_key_map``; ``score_pairs`` and ``explain`` show why.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .errors import CrmlabError, mask_value
from .estimator import Params, reset
from .kernels import graph, linkage
from .kernels import strings as S

NULL = -1


# ----------------------------------------------------------------------------- keys for blocking

_SOUNDEX = {**dict.fromkeys("bfpv", "1"), **dict.fromkeys("cgjkqsxz", "2"), **dict.fromkeys("dt", "3"),
            "l": "4", **dict.fromkeys("mn", "5"), "r": "6"}


def _soundex_one(v: str) -> str:
    v = "".join(ch for ch in v.lower() if ch.isalpha())
    if not v:
        return ""
    out, last = [v[0].upper()], _SOUNDEX.get(v[0], "")
    for ch in v[1:]:
        c = _SOUNDEX.get(ch, "")
        if c and c != last:
            out.append(c)
        if ch not in "hw":
            last = c
    return ("".join(out) + "000")[:4]


def soundex(s: pd.Series) -> pd.Series:
    """American Soundex of standardised names ('robert' -> 'R163'); <NA> for missing."""
    s = s.astype("string")
    uniq = s.dropna().unique()
    table = {u: _soundex_one(u) for u in uniq}
    out = s.map(table, na_action="ignore").astype("string")
    return out.mask(out == "")


#: the columns :func:`add_keys` derives its keys from (with those it adds, what a matcher may read)
KEY_INPUTS = ("first_name_std", "last_name_std", "dob", "postcode_std", "postcode_area", "email_std", "phone_std")


def add_keys(df: pd.DataFrame, keys=None) -> pd.DataFrame:
    """Derived fields used by blocking rules and comparisons (``keys``: only those of them, e.g. the
    compared ones for a sample's arenas; None: all)."""
    out = df.copy()

    def want(*names):
        return keys is None or any(n in keys for n in names)

    if "first_name_std" in out and want("first_initial"):
        out["first_initial"] = out["first_name_std"].str[:1]
    if "last_name_std" in out and want("last_soundex"):
        out["last_soundex"] = soundex(out["last_name_std"])
    if "first_name_std" in out and "last_name_std" in out and want("names_sorted"):   # transposed names too
        f, la = out["first_name_std"].astype("string"), out["last_name_std"].astype("string")
        out["names_sorted"] = f.where(f <= la, la) + "|" + la.where(f <= la, f)
    if "dob" in out and want("dob_str", "dob_year"):
        d = pd.to_datetime(out["dob"], errors="coerce")
        out["dob_str"] = d.dt.strftime("%Y%m%d").astype("string")
        out["dob_year"] = d.dt.year.astype("Int64").astype("string")
    if "postcode_std" in out and want("postcode_district", "postcode_sector", "postcode_area"):
        pc = out["postcode_std"].astype("string")
        out["postcode_district"] = pc.str.split(" ").str[0]
        out["postcode_sector"] = pc.str[:-2]
        if "postcode_area" not in out:
            out["postcode_area"] = pc.str.extract(r"^([A-Za-z]+)", expand=False)
    if "email_std" in out and want("email_local"):
        out["email_local"] = out["email_std"].str.split("@").str[0]
    if "phone_std" in out and want("phone_tail"):
        out["phone_tail"] = out["phone_std"].str[-7:]
    return out


def person_keys(std: dict, dob=None) -> dict:
    """:func:`add_keys` for one standardised record (a dict of ``*_std`` fields and ``postcode_area``;
    ``dob`` a date or ISO text), as plain values with None for missing; a test holds the two equal."""
    out = dict(std)
    f, la = std.get("first_name_std"), std.get("last_name_std")
    out["first_initial"] = None if f is None else f[:1]
    out["last_soundex"] = None if la is None else (_soundex_one(la) or None)
    out["names_sorted"] = None if f is None or la is None else (f + "|" + la if f <= la else la + "|" + f)
    d = dob
    if isinstance(d, str):
        try:
            d = dt.date.fromisoformat(d[:10])
        except ValueError:
            d = pd.to_datetime(d, errors="coerce")
    ok = d is not None and not pd.isna(d)
    out["dob_str"] = d.strftime("%Y%m%d") if ok else None
    out["dob_year"] = str(d.year) if ok else None
    pc = std.get("postcode_std")
    out["postcode_district"] = None if pc is None else pc.split(" ")[0]
    out["postcode_sector"] = None if pc is None else pc[:-2]
    e, ph = std.get("email_std"), std.get("phone_std")
    out["email_local"] = None if e is None else e.split("@")[0]
    out["phone_tail"] = None if ph is None else ph[-7:]
    return out


#: blocking rules for CRM customer records: candidate pairs share all fields of at least one rule
DEFAULT_BLOCKING = [
    ("last_name_std", "postcode_sector"),
    ("names_sorted", "postcode_area"),           # transposed names too
    ("dob_str", "first_initial"),
    ("email_std",),
    ("phone_std",),
    ("last_soundex", "first_initial", "postcode_district"),
    ("first_name_std", "postcode_std"),
    ("names_sorted", "dob_year"),
]


# ----------------------------------------------------------------------------- comparisons

@dataclass(frozen=True)
class Comparison:
    """One field's comparison levels, best level last; each level is (label, test).

    ``kind``: 'name' (exact / Jaro-Winkler >= thresholds / swapped with ``swap_with`` / else),
    'exact' (exact / else), 'string' (exact / JW thresholds / bigram Dice >= dice / else),
    'date' or 'code' (exact / one typo or transposition, e.g. in yyyymmdd / else), 'numeric'
    (exact / absolute difference within each of ``thresholds`` / else; a numeric column), 'postcode' (exact / sector /
    district / else), 'email' (exact / same local part / else), 'phone' (exact / same last 7 / else).
    ``tf``: term-frequency adjustment of the exact level (common values weigh less).
    """

    column: str
    kind: str
    thresholds: tuple = (0.92, 0.8)
    tf: bool = False
    swap_with: str | None = None
    dice: float = 0.6

    def labels(self) -> list[str]:
        k = self.kind
        if k == "name":
            return (["else"] + (["swapped"] if self.swap_with else [])
                    + [f"JW>={t:g}" for t in sorted(self.thresholds)] + ["exact"])
        if k == "string":
            return ["else", f"dice>={self.dice:g}"] + [f"JW>={t:g}" for t in sorted(self.thresholds)] + ["exact"]
        if k == "address":
            return ["else", "district", "sector", "postcode", "postcode + similar street", "exact"]
        if k == "numeric":
            return ["else"] + [f"within {t:g}" for t in sorted(self.thresholds, reverse=True)] + ["exact"]
        return {"exact": ["else", "exact"], "date": ["else", "1 edit", "exact"], "code": ["else", "1 edit", "exact"],
                "postcode": ["else", "district", "sector", "exact"], "email": ["else", "exact"],
                "phone": ["else", "last 7 digits", "exact"]}[k]

    def levels(self, arenas: dict, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Level index per pair (NULL where either value is missing)."""
        if self.kind == "numeric":                   # absolute difference within tolerances
            v = arenas[self.column]
            d = np.abs(v[left] - v[right])
            lv = np.zeros(len(left), np.int8)
            for n, tol in enumerate(sorted(self.thresholds, reverse=True), start=1):
                lv[d <= tol] = n
            lv[d == 0] = len(self.thresholds) + 1
            lv[np.isnan(d)] = NULL
            return lv
        a = arenas[self.column]
        null = a[2][left] | a[2][right]
        exact = _same(arenas, self.column, left, right)
        lv = np.zeros(len(left), np.int8)
        k = self.kind
        if k in ("name", "string"):
            # similarities only where they decide the level: not for exact pairs, nor missing values
            fuzzy = np.flatnonzero(~exact & ~null)
            jw = np.zeros(len(left))
            jw[fuzzy] = S.jaro_winkler(a, a, left[fuzzy], right[fuzzy])
            base = 1
            low = fuzzy[jw[fuzzy] < min(self.thresholds)]      # 'different' by Jaro-Winkler
            if k == "string":                          # Dice only where Jaro-Winkler says 'different'
                lv[low[S.bigram_dice(a, a, left[low], right[low]) >= self.dice]] = 1
                base = 2
            elif self.swap_with:
                b = arenas[self.swap_with]
                ll, rr = left[low], right[low]
                sw = (S.exact(a, b, ll, rr) == 1.0) & (S.exact(b, a, ll, rr) == 1.0)
                lv[low[sw]] = 1
                base = 2
            for n, t in enumerate(sorted(self.thresholds)):
                lv[jw >= t] = base + n
            lv[exact] = base + len(self.thresholds)
        elif k == "exact":
            lv[exact] = 1
        elif k in ("date", "code"):
            lv[S.damerau(a, a, left, right, max_dist=1) <= 1] = 1
            lv[exact] = 2
        elif k == "postcode":
            for n, col in enumerate(("postcode_district", "postcode_sector"), start=1):
                lv[_same(arenas, col, left, right)] = n
            lv[exact] = 3
        elif k == "address":                           # one comparison: postcode and street together
            pc = arenas["postcode_std"]
            same_pc = _same(arenas, "postcode_std", left, right)
            for n, col in enumerate(("postcode_district", "postcode_sector"), start=1):
                lv[_same(arenas, col, left, right)] = n
            lv[same_pc] = 3
            near = np.flatnonzero(same_pc & ~exact)
            lv[near[S.jaro_winkler(a, a, left[near], right[near]) >= self.thresholds[0]]] = 4
            lv[same_pc & exact] = 5
            null = pc[2][left] | pc[2][right]
        elif k == "email":                           # no 'same local part' level: it follows the names
            lv[exact] = 1
        elif k == "phone":
            lv[_same(arenas, "phone_tail", left, right)] = 1
            lv[exact] = 2
        else:
            raise CrmlabError(f"unknown comparison kind '{k}'")
        lv[null] = NULL
        return lv

    def compares_text(self) -> list[str]:
        """The columns whose characters :meth:`levels` reads (similarities, edit distances); the others
        it reads only as value codes and missing flags."""
        if self.kind in ("name", "string", "date", "code", "address"):
            return [self.column, *([self.swap_with] if self.swap_with else [])]
        return []

    def needs(self) -> list[str]:
        extra = {"postcode": ["postcode_district", "postcode_sector"],
                 "address": ["postcode_std", "postcode_district", "postcode_sector"],
                 "phone": ["phone_tail"]}.get(self.kind, [])
        return [self.column, *extra, *([self.swap_with] if self.swap_with else [])]


def _same(arenas: dict, col: str, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """True where both records hold the same value of ``col`` (False where either is missing): by the
    column's value codes when the arenas carry them (``("codes", col)``), else by comparing the strings."""
    codes = arenas.get(("codes", col))
    if codes is None:
        a = arenas[col]
        return S.exact(a, a, left, right) == 1.0
    cl = codes[left]
    return (cl == codes[right]) & (cl >= 0)


DEFAULT_COMPARISONS = [
    Comparison("first_name_std", "name", (0.92, 0.8), tf=True, swap_with="last_name_std"),
    Comparison("last_name_std", "name", (0.94, 0.85), tf=True),
    Comparison("dob_str", "date"),
    Comparison("email_std", "email"),
    Comparison("phone_std", "phone"),
    Comparison("address_std", "address", (0.88,)),
]

#: candidate pairs drawn per training session (uniformly from the rule's blocks)
TRAINING_PAIRS = 500_000

#: blocking rules whose candidate pairs train the m-probabilities (Splink's sessions): in each, the
#: comparisons on the rule's own fields are left out, since they agree by construction
DEFAULT_TRAINING = [("dob_str",), ("last_name_std", "postcode_district"), ("email_std",),
                    ("first_name_std", "last_name_std"), ("phone_std",)]


# ----------------------------------------------------------------------------- the matcher

#: The ``rule`` of the last row of ``blocking_``: the rules' pairs together.
UNION = "all rules (union)"


def blocking_row(rule: str, pairs: int, skipped: int, total: float) -> dict:
    """One row of ``blocking_``: a rule's candidate pairs (or the union's), the share of the ``total``
    possible pairs they avoid, and the blocks skipped as larger than ``max_block``."""
    return {"rule": rule, "pairs": pairs, "reduction_ratio": 1 - pairs / max(total, 1), "blocks_skipped": skipped}


@dataclass
class PairScores:
    """Scored candidate pairs: row indices, level per comparison, match weight and probability."""

    left: np.ndarray
    right: np.ndarray
    levels: np.ndarray          # (n_pairs, n_comparisons) int8, NULL = missing
    weight: np.ndarray
    probability: np.ndarray
    blocking: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: each record's strongest candidate probability, where only some pairs are held (Dask: the links)
    best: np.ndarray | None = None


class RecordMatcher(Params):
    """Unsupervised Fellegi-Sunter record matcher with clustering into stable customer keys.

    Parameters
    ----------
    comparisons, blocking : see DEFAULT_COMPARISONS / DEFAULT_BLOCKING.
    mode : 'link_and_dedupe' (all pairs), 'link' (only pairs from different ``source_col`` values)
        or 'dedupe' (only pairs within one source).
    threshold : match probability at which a pair is accepted.
    u_sample : random pairs used to estimate u-probabilities.
    max_block : blocks larger than this are skipped (reported in ``blocking_``).
    max_cluster : components larger than this are split by raising the threshold on their pairs.
    tf_min_u : floor of term-frequency u-values (a typo'd unique name is not infinitely rare).

    Attributes
    ----------
    m_, u_ : list of arrays, per comparison, probability of each level among matches / non-matches
    lambda_ : prior probability that a candidate pair is a match
    blocking_ : candidate pairs, reduction ratio (and pairs completeness when truth is given) per rule
    n_iter_ : EM iterations
    """

    def __init__(self, comparisons=None, blocking=None, training=None, mode: str = "link_and_dedupe",
                 threshold: float = 0.9,
                 u_sample: int = 100_000, max_block: int = 2000, max_cluster: int = 25, tf_min_u: float | None = None,
                 max_iter: int = 200, tol: float = 1e-6, source_col: str = "source_system", random_state: int = 0):
        self.comparisons = comparisons
        self.blocking = blocking
        self.training = training
        self.mode = mode
        self.threshold = threshold
        self.u_sample = u_sample
        self.max_block = max_block
        self.max_cluster = max_cluster
        self.tf_min_u = tf_min_u
        self.max_iter = max_iter
        self.tol = tol
        self.source_col = source_col
        self.random_state = random_state

    # -- helpers
    def _comps(self):
        return list(self.comparisons or DEFAULT_COMPARISONS)

    def _prepare(self, records: pd.DataFrame):
        if not isinstance(records, pd.DataFrame) or len(records) == 0:
            raise CrmlabError("record matching needs a non-empty DataFrame of records")
        df = add_keys(records.reset_index(drop=True))
        self._codes_memo = {}
        comps = self._comps()
        self._check_records(df, df.columns, column_stats(df, self._needed()[0]))
        return df, self._arenas(df, comps), comps

    def _needed(self) -> tuple[list[str], set]:
        """The columns the comparisons and rules read (after :func:`add_keys`), and the numeric ones."""
        comps = self._comps()
        rules = [*(self.blocking or DEFAULT_BLOCKING), *(self.training or DEFAULT_TRAINING)]
        needed = sorted({c for comp in comps for c in comp.needs()} | {c for rule in rules for c in rule})
        return needed, {comp.column for comp in comps if comp.kind == "numeric"}

    def _check_records(self, df: pd.DataFrame, keyed_columns, stats: dict):
        """Clear errors for records the matcher cannot read. ``df``: the records (keys not needed);
        ``keyed_columns``: their columns after :func:`add_keys`; ``stats``: :func:`column_stats` of those."""
        if self.mode not in ("link_and_dedupe", "link", "dedupe"):
            raise CrmlabError(f"mode must be link_and_dedupe, link or dedupe, got '{self.mode}'")
        needed, numeric = self._needed()
        missing = [c for c in ["source_id", *needed] if c not in keyed_columns]
        if missing:
            raise CrmlabError(f"records lack column(s) {missing} needed by the comparisons/blocking rules "
                              f"(standardise them with crmlab.sources / identity.add_keys)")
        if df["source_id"].isna().any() or df.duplicated(["source_id", *([self.source_col] if self.source_col in df
                                                                          else [])]).any():
            raise CrmlabError("source_id must be present and unique within each source system")
        for c in needed:
            present, kind, dtype, is_number = stats[c]
            if present == 0:
                raise CrmlabError(f"column '{c}' is empty in every record: drop it from the comparisons "
                                  "and blocking rules")
            if c in numeric:
                if not is_number:
                    raise CrmlabError(f"column '{c}' is compared as a number but holds {dtype}")
            elif kind not in ("string", "empty"):
                raise CrmlabError(f"column '{c}' must hold text (found {dtype}); convert it first")
        if self.mode != "link_and_dedupe" and self.source_col not in df:
            raise CrmlabError(f"mode '{self.mode}' needs the column '{self.source_col}'")
        if self.mode == "link" and df[self.source_col].nunique() < 2:
            raise CrmlabError(f"mode 'link' only compares records of different source systems, but every record "
                              f"comes from '{df[self.source_col].iloc[0]}': use mode='dedupe' (or "
                              "'link_and_dedupe') to find duplicates within one system")

    def _arenas(self, df: pd.DataFrame, comps) -> dict:
        """The compared columns of ``df`` as the comparison kernels read them (blocking needs none)."""
        numeric = {comp.column for comp in comps if comp.kind == "numeric"}
        compared = sorted({c for comp in comps for c in comp.needs()})
        arenas = {c: (pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64) if c in numeric
                      else S.to_arena(df[c])) for c in compared}
        # value codes per text column: 'exact' is one integer comparison per pair, not a string scan
        arenas.update({("codes", c): self._column_codes(df, c) for c in compared if c not in numeric})
        return arenas

    def _mode_filter(self, df, left, right):
        if self.mode == "link_and_dedupe":
            return np.ones(len(left), bool)
        src = pd.factorize(df[self.source_col])[0]
        same = src[left] == src[right]
        return ~same if self.mode == "link" else same

    def candidate_pairs(self, df: pd.DataFrame, truth: np.ndarray | None = None):
        """Union of the blocking rules' pairs; per-rule statistics in the returned frame."""
        n = len(df)
        total = n * (n - 1) / 2
        rules = self.blocking or DEFAULT_BLOCKING
        keys, stats = [], []
        true_pairs = None
        if truth is not None:
            t = pd.factorize(truth)[0]
            true_pairs = float(np.sum(np.bincount(t) * (np.bincount(t) - 1) / 2))
        for rule in rules:
            cols = list(rule)
            left, right, skipped = self._rule_pairs(df, cols)
            key = left * n + right
            keys.append(key)
            row = blocking_row(" & ".join(cols), len(key), skipped, total)
            if true_pairs:
                row["pairs_completeness"] = float(np.sum(t[left] == t[right]) / true_pairs)
            stats.append(row)
        allk = np.sort(np.concatenate(keys)) if keys else np.zeros(0, np.int64)
        allk = allk[np.r_[True, allk[1:] != allk[:-1]]] if len(allk) else allk
        left, right = allk // n, allk % n
        row = blocking_row(UNION, len(allk), sum(s["blocks_skipped"] for s in stats), total)
        if true_pairs:
            row["pairs_completeness"] = float(np.sum(t[left] == t[right]) / true_pairs)
        stats.append(row)
        return left, right, pd.DataFrame(stats)

    def largest_blocks(self, records: pd.DataFrame, k: int = 3) -> pd.DataFrame:
        """Per blocking rule its ``k`` largest blocks: the key (values joined by ' | ', masked), the
        records in it and whether it exceeds ``max_block`` (then its pairs are not made: it is
        skipped and counted in ``blocking_``). Blocks past ``max_block`` are where a rule would run
        out of memory; this names them."""
        df = self._keyed(records)
        return largest_table([(rule, top_blocks(df, self._rule_codes(df, list(rule)), list(rule), k))
                              for rule in (self.blocking or DEFAULT_BLOCKING)], self.max_block)

    def _column_codes(self, df, col):
        """Integer code per record for one column (-1 = missing), memoised per record table."""
        memo = self.__dict__.setdefault("_codes_memo", {})
        key = (id(df), col)
        if key not in memo:
            memo[key] = pd.factorize(df[col], use_na_sentinel=True)[0].astype(np.int64)
        return memo[key]

    def _rule_codes(self, df, cols) -> np.ndarray:
        """Block code of each record under one blocking rule (-1: a field is missing, never paired)."""
        n = len(df)
        codes = np.zeros(n, np.int64)
        ok = np.ones(n, bool)
        for c in cols:                                   # combine per-column codes, re-densified
            cc = self._column_codes(df, c)
            ok &= cc >= 0
            codes = pd.factorize(codes * (int(cc.max()) + 2) + cc + 1)[0].astype(np.int64)
        codes[~ok] = -1
        return codes

    def _rule_pairs(self, df, cols, sample: int | None = None, rng=None):
        """Pairs of one blocking rule; with ``sample``, at most that many drawn uniformly (before the
        mode filter) without making the others: a training rule can hold 100x more pairs than it needs."""
        codes = self._rule_codes(df, cols)
        if sample is not None:
            left, right, skipped, _ = graph.sample_block_pairs(codes, self.max_block, sample, rng)
        else:
            left, right, skipped = graph.block_pairs(codes, self.max_block)
        keep = self._mode_filter(df, left, right)
        return left[keep], right[keep], skipped

    def _levels(self, arenas, comps, left, right):
        return np.column_stack([c.levels(arenas, left, right) for c in comps]) if len(left) else \
            np.zeros((0, len(comps)), np.int8)

    def _random_pairs(self, df, rng):
        n = len(df)
        k = int(min(self.u_sample, max(n * (n - 1) // 2, 1)))
        canon = _canonical_order(df, self.source_col)      # the same records in any row order: same sample
        left = canon[rng.integers(0, n, k)]
        right = canon[rng.integers(0, n, k)]
        keep = (left != right) & self._mode_filter(df, left, right)
        left, right = left[keep], right[keep]
        return np.minimum(left, right), np.maximum(left, right)

    # -- fitting
    def fit(self, records: pd.DataFrame, y=None) -> "RecordMatcher":
        """Estimate u from random pairs, then m and the prior by EM on the candidate pairs."""
        reset(self)                                # a refit learns everything anew
        df, arenas, comps = self._prepare(records)
        rng = np.random.default_rng(self.random_state)
        n_levels = [len(c.labels()) for c in comps]
        ul, ur = self._random_pairs(df, rng)
        U = self._levels(arenas, comps, ul, ur)
        self.u_ = [_freq(U[:, k], n_levels[k], prior=1.0) for k in range(len(comps))]
        # the exact level's u is known exactly from the value frequencies (sum of squared shares);
        # the sample only has to resolve the fuzzy levels, which are far more common
        counted = {c.column: self._value_counts(df, c.column) for c in comps if c.kind != "address" or c.tf}
        for k, c in enumerate(comps):
            if c.kind == "address":
                continue
            counts = counted[c.column].to_numpy(np.int64)
            if len(counts):                        # sum of squared shares, in integers: any order
                u_exact = float(np.sum(counts * counts)) / float(counts.sum()) ** 2
                rest = self.u_[k][:-1]
                self.u_[k] = np.r_[rest / rest.sum() * (1.0 - u_exact), u_exact]
        cand_patterns, cand_counts = self._candidate_patterns(records, df, arenas, comps, n_levels)
        # m by EM in sessions, one per training rule, u fixed; a comparison on the rule's own fields
        # agrees by construction there, so it is left out of that session
        sums = [np.zeros(n) for n in n_levels]
        counts_k = np.zeros(len(comps))
        self.sessions_ = []
        for rule in (self.training or DEFAULT_TRAINING):
            tl, tr, _ = self._rule_pairs(df, list(rule), sample=TRAINING_PAIRS, rng=rng)
            if len(tl) < 10:
                continue
            active = [k for k, c in enumerate(comps) if not set(c.needs()) & set(rule)]
            L = self._levels(arenas, [comps[k] for k in active], tl, tr)
            patterns, counts = _patterns(L, [n_levels[k] for k in active])
            m_s, lam_s, it = _em_m(patterns, counts, [self.u_[k] for k in active], [n_levels[k] for k in active],
                                   self.max_iter, self.tol)
            for j, k in enumerate(active):
                sums[k] += m_s[j]
                counts_k[k] += 1
            self.sessions_.append({"rule": " & ".join(rule), "pairs": len(tl), "match_share": lam_s, "iterations": it,
                                   "trained": [comps[k].column for k in active]})
        untrained = [comps[k].column for k in range(len(comps)) if counts_k[k] == 0]
        if untrained:
            raise CrmlabError(f"no training session could estimate m for {untrained}: add a training rule that "
                              "does not use those fields")
        self.m_ = [s / c for s, c in zip(sums, counts_k)]
        # prior: expected matches among the candidates over all comparable pairs (fixed point)
        patterns, counts = cand_patterns, cand_counts
        n_rec = len(df)
        total = n_rec * (n_rec - 1) / 2
        if self.mode != "link_and_dedupe":
            src = pd.factorize(df[self.source_col])[0]
            c = np.bincount(src).astype(float)
            cross = (c.sum() ** 2 - np.sum(c ** 2)) / 2
            total = cross if self.mode == "link" else total - cross
        bf = _loglik(patterns, self.m_) - _loglik(patterns, self.u_)
        lam = 1.0 / total
        for it in range(200):
            p = 1.0 / (1.0 + np.exp(np.clip(-(np.log(lam / (1 - lam)) + bf), -700, 700)))
            new = max(float(np.dot(p, counts)) / total, 1e-12)
            if abs(new - lam) <= 1e-9 * lam:
                break
            lam = new
        self.lambda_, self.n_iter_ = lam, it + 1
        self.comparisons_ = comps
        self.blocking_rules_ = [tuple(r) for r in (self.blocking or DEFAULT_BLOCKING)]
        self.tf_ = {}
        for c in comps:
            if c.tf:
                vc = counted[c.column]
                self.tf_[c.column] = (vc / vc.sum()).to_dict()
        self.tf_min_u_ = self.tf_min_u if self.tf_min_u is not None else 1.0 / max(len(df), 1)
        self.n_records_ = len(df)
        return self

    def _value_counts(self, df, col) -> pd.Series:
        """Records per value of a compared column (missing values left out)."""
        return df[col].value_counts(dropna=True)

    def _candidate_patterns(self, records, df, arenas, comps, n_levels):
        """The candidate pairs' distinct level patterns and their counts (sets ``blocking_``; the
        pairs and levels are kept for :meth:`score_pairs` on the same records)."""
        left, right, self.blocking_ = self.candidate_pairs(df)
        if len(left) == 0:
            raise CrmlabError("blocking produced no candidate pairs: check the blocking rules and fields")
        L = self._levels(arenas, comps, left, right)
        self._cache = (_fingerprint(records), left, right, L, self.blocking_, df)
        return _patterns(L, n_levels)

    def _keyed(self, records: pd.DataFrame) -> pd.DataFrame:
        """:func:`add_keys` of ``records``, reused from fit when they are the records it was fitted on."""
        cache = getattr(self, "_cache", None)
        if cache is not None and cache[0] == _fingerprint(records):
            return cache[5]
        return add_keys(records.reset_index(drop=True))

    # -- scoring
    def _check_fitted(self):
        if not hasattr(self, "m_"):
            raise CrmlabError("RecordMatcher is not fitted yet: call fit() first")

    def _weights(self, df, levels, left, right):
        """Per comparison log2 Bayes factors (0 for missing) incl. term-frequency adjustment."""
        comps = self.comparisons_
        bf = np.zeros(levels.shape, np.float64)
        for k, c in enumerate(comps):
            lv = levels[:, k]
            # log2(m/u) per level, and 0 at the end for NULL (-1) levels: one gather per comparison
            bf[:, k] = np.r_[np.log2(self.m_[k] / self.u_[k]), 0.0][lv]
            if c.tf:
                top = len(c.labels()) - 1
                ex = lv == top
                if ex.any():
                    tf_rec = _tf_values(df[c.column], self.tf_[c.column])
                    u_tf = np.maximum(tf_rec[left[ex]], self.tf_min_u_)
                    # Splink's adjustment, downwards only: agreeing on a common value ('smith') weighs
                    # less than an average exact match; a rare value gets no extra credit, because
                    # rare surnames cluster in households (same name and address, another person)
                    bf[ex, k] += np.minimum(np.log2(self.u_[k][top] / u_tf), 0.0)
        return bf

    def score_pairs(self, records: pd.DataFrame) -> PairScores:
        """Candidate pairs with levels, match weight (log2 odds) and probability."""
        self._check_fitted()
        cache = getattr(self, "_cache", None)
        if cache is not None and cache[0] == _fingerprint(records):
            _, left, right, levels, stats, df = cache              # fit just scored these records
        else:
            df, arenas, comps = self._prepare(records)
            left, right, stats = self.candidate_pairs(df)
            levels = self._levels(arenas, self.comparisons_, left, right)
        return self._scored(df, levels, left, right, stats)

    def _scored(self, df, levels, left, right, stats=None) -> PairScores:
        """Pairs of rows of ``df`` with their levels, scored: match weight (prior plus the
        comparisons' log2 Bayes factors) and probability."""
        weight = np.log2(self.lambda_ / (1 - self.lambda_)) + self._weights(df, levels, left, right).sum(axis=1)
        return PairScores(left, right, levels, weight, 1.0 / (1.0 + np.exp2(-weight)),
                          pd.DataFrame() if stats is None else stats)

    def explain(self, records: pd.DataFrame, pairs: PairScores, index: int) -> pd.DataFrame:
        """Waterfall of one pair's match weight: prior, then each comparison's level and contribution."""
        i, j = 0, 1                                 # the pair's two records only: keys are per record
        df = add_keys(records.take([pairs.left[index], pairs.right[index]]).reset_index(drop=True))
        bf = self._weights(df, pairs.levels[[index]], np.array([i]), np.array([j]))[0]
        rows = [("prior (match rate among all pairs)", "", "", "", np.log2(self.lambda_ / (1 - self.lambda_)))]
        for k, c in enumerate(self.comparisons_):
            lv = pairs.levels[index, k]
            rows.append((c.column, mask_value(df.at[i, c.column]), mask_value(df.at[j, c.column]),
                         "missing" if lv == NULL else c.labels()[lv], bf[k]))
        out = pd.DataFrame(rows, columns=["comparison", "left", "right", "level", "log2_bayes_factor"])
        out["cumulative"] = out["log2_bayes_factor"].cumsum()
        return out

    # -- one record against known records (real-time identification)
    def index_columns(self) -> list[str]:
        """Columns of keyed records (:func:`add_keys`) that blocking and comparisons read."""
        self._check_fitted()
        comps = {c for comp in self.comparisons_ for c in comp.needs()}
        rules = {c for rule in self.blocking_rules_ for c in rule}
        return sorted(comps | rules)

    def score_candidates(self, query: dict, candidates: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One keyed record (``query``: column -> value, None for missing) against candidates (column
        -> list of values): the match probability of each pair, the (n_candidates, n_comparisons)
        levels and log2 Bayes factors (0 where a field is missing). Plain lists, no DataFrame, one
        compiled call (:func:`crmlab.kernels.linkage.score_one`): the per-request path of real-time
        identification, with the batch's levels and weights."""
        self._check_fitted()
        n = len(candidates["customer_key"]) if "customer_key" in candidates else len(next(iter(candidates.values())))
        plan = self._one_record_plan()
        texts = [v for c in plan["text"] for v in (query.get(c), *candidates[c])]
        nums = np.array([[np.nan if v is None else float(v) for v in (query.get(c), *candidates[c])]
                         for c in plan["numeric"]], np.float64)
        tf_adjust = np.zeros(len(self.comparisons_))
        for k, c in enumerate(self.comparisons_):
            if c.tf and query.get(c.column) is not None:
                u_tf = max(self.tf_[c.column].get(query[c.column], 0.0), self.tf_min_u_)
                tf_adjust[k] = min(np.log2(self.u_[k][-1] / u_tf), 0.0)
        return linkage.score_one(S.to_arena(texts), nums, n, plan["spec"], plan["thresholds"], plan["n_thr"],
                                 plan["dice"], plan["log2_bf"], plan["top"], tf_adjust, plan["prior"])

    def _one_record_plan(self) -> dict:
        """The fitted comparisons as :func:`crmlab.kernels.linkage.score_one` reads them (built once)."""
        plan = getattr(self, "_plan_", None)
        if plan is not None:
            return plan
        comps = self.comparisons_
        numeric = [c.column for c in comps if c.kind == "numeric"]
        text = sorted({col for c in comps if c.kind != "numeric" for col in c.needs()})
        at = {c: i for i, c in enumerate(text)}
        kinds = {"exact": linkage.EXACT, "email": linkage.EXACT, "name": linkage.NAME, "string": linkage.STRING,
                 "date": linkage.EDIT, "code": linkage.EDIT, "postcode": linkage.POSTCODE,
                 "address": linkage.ADDRESS, "phone": linkage.PHONE, "numeric": linkage.NUMERIC}
        helpers = {"postcode": ["postcode_district", "postcode_sector"],
                   "address": ["postcode_std", "postcode_district", "postcode_sector"], "phone": ["phone_tail"],
                   "name": lambda c: [c.swap_with] if c.swap_with else []}
        width = max(1, *(len(c.thresholds) for c in comps))
        spec = np.full((len(comps), 5), -1, np.int64)
        thresholds = np.zeros((len(comps), width))
        n_thr = np.zeros(len(comps), np.int64)
        levels = max(len(c.labels()) for c in comps)
        log2_bf = np.zeros((len(comps), levels))
        for k, c in enumerate(comps):
            if c.kind not in kinds:
                raise CrmlabError(f"unknown comparison kind '{c.kind}'")
            extra = helpers.get(c.kind, [])
            extra = extra(c) if callable(extra) else extra
            spec[k, 0] = kinds[c.kind]
            spec[k, 1] = numeric.index(c.column) if c.kind == "numeric" else at[c.column]
            spec[k, 2:2 + len(extra)] = [at[h] for h in extra]
            # names and strings: from the lowest; numeric tolerances: from the widest; address: its first
            thr = {"name": sorted(c.thresholds), "string": sorted(c.thresholds),
                   "numeric": sorted(c.thresholds, reverse=True), "address": list(c.thresholds[:1])}.get(c.kind, [])
            thresholds[k, :len(thr)], n_thr[k] = thr, len(thr)
            log2_bf[k, :len(c.labels())] = np.log2(self.m_[k] / self.u_[k])
        self._plan_ = plan = {
            "text": text, "numeric": numeric, "spec": spec, "thresholds": thresholds, "n_thr": n_thr,
            "dice": np.array([c.dice for c in comps], np.float64), "log2_bf": log2_bf,
            "top": np.array([len(c.labels()) - 1 if c.tf else -2 for c in comps], np.int64),
            "prior": float(np.log2(self.lambda_ / (1 - self.lambda_)))}
        return plan

    def to_dict(self) -> dict:
        """What a fitted matcher learned, as plain JSON-ready data (:meth:`from_dict` reads it back)."""
        self._check_fitted()
        comps = [{"column": c.column, "kind": c.kind, "thresholds": list(c.thresholds), "tf": c.tf,
                  "swap_with": c.swap_with, "dice": c.dice} for c in self.comparisons_]
        return {"format": 1, "params": {k: v for k, v in self.get_params(deep=False).items()
                                        if k not in ("comparisons", "blocking", "training")},
                "comparisons": comps, "blocking": [list(r) for r in self.blocking_rules_],
                "m": [v.tolist() for v in self.m_], "u": [v.tolist() for v in self.u_],
                "lambda": self.lambda_, "tf": self.tf_, "tf_min_u": self.tf_min_u_, "n_records": self.n_records_}

    @classmethod
    def from_dict(cls, d: dict) -> "RecordMatcher":
        """A fitted matcher from :meth:`to_dict`'s output (scores exactly as the one saved)."""
        if not isinstance(d, dict) or d.get("format") != 1:
            raise CrmlabError("not a saved RecordMatcher (format 1)")
        comps = [Comparison(c["column"], c["kind"], tuple(c["thresholds"]), c["tf"], c["swap_with"], c["dice"])
                 for c in d["comparisons"]]
        rules = [tuple(r) for r in d["blocking"]]
        m = cls(comparisons=comps, blocking=rules, **d["params"])
        m.comparisons_, m.blocking_rules_ = comps, rules
        m.m_ = [np.asarray(v, float) for v in d["m"]]
        m.u_ = [np.asarray(v, float) for v in d["u"]]
        m.lambda_, m.tf_, m.tf_min_u_, m.n_records_ = float(d["lambda"]), d["tf"], float(d["tf_min_u"]), d["n_records"]
        return m

    # -- clustering and keys
    def cluster(self, n: int, pairs: PairScores) -> np.ndarray:
        """Connected components of pairs at or above the threshold; oversized ones split by raising it."""
        acc = pairs.probability >= self.threshold
        left, right, prob = pairs.left[acc], pairs.right[acc], pairs.probability[acc]
        labels = graph.connected_components(n, left, right)
        for _ in range(20):
            sizes = np.bincount(labels, minlength=n)
            big = sizes[labels] > self.max_cluster
            if not big.any():
                break
            inside = big[left]
            cut = np.quantile(prob[inside], 0.25) if inside.any() else 1.0
            keep = ~inside | (prob > cut)
            if keep.all():
                break
            left, right, prob = left[keep], right[keep], prob[keep]
            labels = graph.connected_components(n, left, right)
        self.n_oversized_ = int(np.sum(np.bincount(labels, minlength=n) > self.max_cluster))
        return labels

    def predict(self, records: pd.DataFrame, previous: pd.DataFrame | None = None) -> pd.DataFrame:
        """The customer key map: source_system, source_id -> customer_key, match_confidence.

        ``previous``: an earlier key map; unchanged clusters keep their keys (see :func:`assign_keys`).
        """
        pairs = self.score_pairs(records)
        labels = self.cluster(len(records), pairs)
        return key_map(records, labels, pairs, previous, self.source_col)

    def fit_predict(self, records: pd.DataFrame, previous: pd.DataFrame | None = None) -> pd.DataFrame:
        return self.fit(records).predict(records, previous)

    def match_new(self, records: pd.DataFrame, key_map_: pd.DataFrame, new_records: pd.DataFrame) -> pd.DataFrame:
        """Incremental matching: give ``new_records`` customer keys against an existing key map.

        Only candidate pairs that involve a new record are scored; existing clusters keep their keys
        (a new record linking two existing customers joins the larger one and the link is reported in
        ``bridges_``). Returns the key map extended by the new records.
        """
        self._check_fitted()
        km = key_map_.astype({"source_id": "string"})
        have = records[[self.source_col, "source_id"]].astype({"source_id": "string"})
        if len(have.merge(km, left_on=[self.source_col, "source_id"], right_on=["source_system", "source_id"])) \
                != len(records):
            raise CrmlabError("every existing record must be in the key map given to match_new")
        allrec = pd.concat([records, new_records], ignore_index=True)
        n_old = len(records)
        scores = self._new_pairs(allrec, n_old)
        left, right = scores.left, scores.right
        acc = scores.probability >= self.threshold
        key_of_old = have.merge(km, left_on=[self.source_col, "source_id"], right_on=["source_system", "source_id"],
                                how="left")["customer_key"].to_numpy()
        codes, uniq = pd.factorize(key_of_old)
        # existing customers are fixed nodes: link every old record to its customer's first record
        first = np.unique(codes, return_index=True)[1]
        old_l, old_r = first[codes], np.arange(n_old)
        labels = graph.connected_components(len(allrec), np.r_[old_l, left[acc]], np.r_[old_r, right[acc]])
        bridge = pd.Series(codes).groupby(labels[:n_old]).nunique()
        self.bridges_ = int((bridge > 1).sum())
        return key_map(allrec, labels, scores, km, self.source_col)

    def _new_pairs(self, allrec: pd.DataFrame, n_old: int) -> PairScores:
        """The scored candidate pairs of ``allrec`` that involve a record at or past row ``n_old``."""
        df, arenas, _ = self._prepare(allrec)
        left, right, _ = self.candidate_pairs(df)
        keep = right >= n_old                                  # left < right: the pair involves a new record
        left, right = left[keep], right[keep]
        return self._scored(df, self._levels(arenas, self.comparisons_, left, right), left, right)


def _tf_values(values, tf: dict) -> np.ndarray:
    """Term frequency of each value (0 for missing or unseen); a Series or a plain list."""
    if isinstance(values, pd.Series):
        return values.map(tf).astype("float64").fillna(0.0).to_numpy()
    return np.array([0.0 if v is None else tf.get(v, 0.0) for v in values])


def _patterns(L: np.ndarray, n_levels, inverse: bool = False) -> tuple[np.ndarray, ...]:
    """Distinct rows of a level matrix with their counts (levels encoded into one small integer), and
    with ``inverse`` each row's index among them (``rows[index]`` is ``L``)."""
    code = np.zeros(len(L), np.int64)
    for k, n in enumerate(n_levels):
        code = code * (n + 1) + (L[:, k].astype(np.int64) + 1)
    counts = np.bincount(code) if int(np.prod([n + 1 for n in n_levels])) < 50_000_000 else None
    if counts is None:
        uniq, index, counts = np.unique(code, return_inverse=True, return_counts=True)
    else:
        uniq = np.flatnonzero(counts)
        if inverse:
            lookup = np.zeros(len(counts), np.int64)
            lookup[uniq] = np.arange(len(uniq))
            index = lookup[code]
        counts = counts[uniq]
    rows = np.empty((len(uniq), len(n_levels)), np.int8)
    rest = uniq.copy()
    for k in range(len(n_levels) - 1, -1, -1):
        n = n_levels[k] + 1
        rows[:, k] = rest % n - 1
        rest //= n
    return (rows, counts, index.ravel()) if inverse else (rows, counts)


def _em_m(patterns, counts, u, n_levels, max_iter, tol):
    """EM for m-probabilities and the match share with u fixed; returns (m, share, iterations)."""
    m = [np.linspace(0.05, 1.0, n) ** 3 for n in n_levels]
    m = [v / v.sum() for v in m]
    lam = 0.3
    lu = _loglik(patterns, u)
    for it in range(max_iter):
        lm = _loglik(patterns, m)
        p = 1.0 / (1.0 + np.exp(np.clip(np.log1p(-lam) + lu - np.log(lam) - lm, -700, 700)))
        w = p * counts
        new_m = [_freq(patterns[:, k], n, weights=w, prior=1e-6) for k, n in enumerate(n_levels)]
        new_lam = float(min(max(w.sum() / counts.sum(), 1e-9), 1 - 1e-9))
        delta = max([abs(new_lam - lam)] + [float(np.max(np.abs(a - b))) for a, b in zip(new_m, m)])
        m, lam = new_m, new_lam
        if delta < tol:
            break
    return m, lam, it + 1


def top_blocks(df: pd.DataFrame, codes: np.ndarray, cols: list[str], k: int) -> pd.DataFrame:
    """The ``k`` largest blocks of ``codes`` (one per row of ``df``, -1: no key; codes numbered in
    order of their first row): key (``cols``' values of its first row, masked, joined by ' | '),
    records, and that first row (``_first``), largest first, ties by first row."""
    ok = codes >= 0
    sizes = np.bincount(codes[ok])
    first = np.full(len(sizes), -1, np.int64)
    first[codes[ok][::-1]] = np.flatnonzero(ok)[::-1]          # each block's first record
    top = np.argsort(-sizes, kind="stable")[:k]
    return pd.DataFrame({"key": [" | ".join(mask_value(df.at[int(first[b]), c]) for c in cols) for b in top],
                         "records": sizes[top].astype(np.int64), "_first": first[top]})


def largest_table(tops: list, max_block: int) -> pd.DataFrame:
    """:meth:`RecordMatcher.largest_blocks`' table from (rule, :func:`top_blocks`) per rule."""
    rows = [{"rule": " & ".join(rule), "key": key, "records": int(size), "pairs": int(size) * (int(size) - 1) // 2,
             "skipped": bool(size > max_block)}
            for rule, top in tops for key, size in zip(top["key"], top["records"])]
    return pd.DataFrame(rows, columns=["rule", "key", "records", "pairs", "skipped"])


def column_stats(df: pd.DataFrame, cols) -> dict:
    """Per column of ``cols`` in ``df``: (values present, pandas' inferred kind, dtype, numeric dtype),
    what :meth:`RecordMatcher._check_records` reads; parts of a table merge with :func:`merge_column_stats`."""
    return {c: (int(df[c].notna().sum()), pd.api.types.infer_dtype(df[c], skipna=True), str(df[c].dtype),
                bool(pd.api.types.is_numeric_dtype(df[c]))) for c in cols if c in df}


def merge_column_stats(parts: list[dict]) -> dict:
    """:func:`column_stats` of a table from those of its row parts: a part that holds no text decides
    the kind (and dtype) it reports, as the whole column would."""
    out = {}
    for part in parts:
        for c, (present, kind, dtype, number) in part.items():
            if c not in out:
                out[c] = (present, kind, dtype, number)
                continue
            p0, k0, d0, n0 = out[c]
            if k0 in ("string", "empty") and kind not in ("string", "empty"):
                k0, d0 = kind, dtype
            elif k0 == "empty" and kind == "string":
                k0 = kind
            out[c] = (p0 + present, k0, d0, n0 and number)
    return out


def _canonical_order(df: pd.DataFrame, source_col: str = "source_system") -> np.ndarray:
    """Row positions sorted by (source system, source id): results must not depend on row order."""
    keys = [df["source_id"].astype("string").to_numpy()]
    if source_col in df:
        keys.append(df[source_col].astype("string").to_numpy())
    return np.lexsort(keys)


def _fingerprint(records: pd.DataFrame) -> tuple:
    """Cheap content hash of a record table (all columns), to reuse pairs scored in fit. Columns
    whose values cannot be hashed (lists, dicts) are hashed through their text form."""
    try:
        ids = pd.util.hash_pandas_object(records, index=False).to_numpy()
    except TypeError:
        safe = records.copy()
        for c in safe.columns:
            if safe[c].dtype == object:
                safe[c] = safe[c].map(repr)
        ids = pd.util.hash_pandas_object(safe, index=False).to_numpy()
    return len(records), int(ids.sum()), int((ids * np.arange(1, len(ids) + 1, dtype=np.uint64)).sum())


def _freq(col: np.ndarray, n: int, weights=None, prior: float = 0.0) -> np.ndarray:
    ok = col != NULL
    w = np.ones(len(col)) if weights is None else weights
    f = np.bincount(col[ok].astype(np.int64), weights=w[ok], minlength=n)[:n] + prior
    return f / f.sum()


def _loglik(patterns: np.ndarray, probs: list) -> np.ndarray:
    out = np.zeros(len(patterns))
    for k, p in enumerate(probs):
        lv = patterns[:, k]
        ok = lv != NULL
        out[ok] += np.log(p[lv[ok]])
    return out


def best_probability(n: int, pairs: PairScores) -> np.ndarray:
    """Each record's strongest candidate pair's match probability (0 without a candidate)."""
    best = np.zeros(n)
    np.maximum.at(best, pairs.left, pairs.probability)
    np.maximum.at(best, pairs.right, pairs.probability)
    return best


def key_map(records: pd.DataFrame, labels: np.ndarray, pairs: PairScores | None, previous: pd.DataFrame | None = None,
            source_col: str = "source_system", best: np.ndarray | None = None) -> pd.DataFrame:
    """Key map rows with confidence: linked records get their strongest accepted link's probability,
    single records 1 - their strongest candidate's probability (``best``: those probabilities
    when the pairs are not at hand, :func:`best_probability`)."""
    n = len(records)
    if best is None:
        best = pairs.best if pairs.best is not None else best_probability(n, pairs)
    sizes = np.bincount(labels, minlength=n)[labels]
    conf = np.where(sizes > 1, best, 1.0 - best)
    out = pd.DataFrame({"source_system": records[source_col].to_numpy(), "source_id": records["source_id"].to_numpy(),
                        "cluster": labels, "match_confidence": conf})
    out["customer_key"] = assign_keys(out, previous)
    return out[["source_system", "source_id", "customer_key", "match_confidence"]]


def assign_keys(current: pd.DataFrame, previous: pd.DataFrame | None = None) -> np.ndarray:
    """Customer keys for clusters: a cluster inherits the previous key most of its records had
    (each previous key to one cluster, largest overlap first); new clusters get new keys."""
    clusters = current["cluster"].to_numpy()
    uniq, inv = np.unique(clusters, return_inverse=True)
    keys = np.empty(len(uniq), dtype=object)
    taken = np.zeros(len(uniq), bool)
    next_no = 1
    if previous is not None and len(previous):
        prev = previous[["source_system", "source_id", "customer_key"]]
        m = current[["source_system", "source_id"]].assign(_c=inv).merge(prev, on=["source_system", "source_id"])
        ov = m.groupby(["_c", "customer_key"]).size().rename("n").reset_index()
        ov = ov.sort_values(["n", "customer_key"], ascending=[False, True])
        used = set()
        for c, k in zip(ov["_c"].to_numpy(), ov["customer_key"].to_numpy()):
            if not taken[c] and k not in used:
                keys[c], taken[c] = k, True
                used.add(k)
        nums = pd.Series(prev["customer_key"]).str.extract(r"(\d+)$", expand=False).dropna().astype(int)
        next_no = int(nums.max()) + 1 if len(nums) else 1
    need = np.flatnonzero(~taken)
    if len(need):                       # new keys numbered by each cluster's first (system, id) as text: row order free
        system, sid = (pd.factorize(current[c].astype("string"), sort=True, use_na_sentinel=False)[0]
                       for c in ("source_system", "source_id"))
        _, first = np.unique(inv[np.lexsort((sid, system))], return_index=True)    # each cluster's first row so
        need = need[np.argsort(first[need], kind="stable")]
    keys[need] = [f"K{next_no + i:010d}" for i in range(len(need))]
    return keys[inv]
