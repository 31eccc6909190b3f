"""How good a record matching is, and the pictures that show why: pair and cluster scores against a
truth, the m/u table, the threshold curve, pairs for review, blocking statistics and plots."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import masked
from .identity import DEFAULT_BLOCKING, PairScores, RecordMatcher
from .kernels import graph
from .labels import label


def _joint(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Code of each (cluster, true entity) combination of two code arrays."""
    return pd.factorize(p.astype(np.int64) * (int(t.max()) + 1 if len(t) else 1) + t)[0]


def pairwise_scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Precision, recall and F1 over record pairs placed in the same cluster."""
    p = pd.factorize(pred)[0]
    t = pd.factorize(truth)[0]

    def pairs(x):
        c = np.bincount(x).astype(np.float64)
        return float(np.sum(c * (c - 1) / 2))

    both = pairs(_joint(p, t))
    pp, tp = pairs(p), pairs(t)
    prec = both / pp if pp else 1.0
    rec = both / tp if tp else 1.0
    return {"precision": prec, "recall": rec, "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0}


def bcubed_scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    """B-cubed precision, recall and F1 (per record, averaged)."""
    p = pd.factorize(pred)[0]
    t = pd.factorize(truth)[0]
    joint = _joint(p, t)
    nj = np.bincount(joint)[joint].astype(float)
    prec = float(np.mean(nj / np.bincount(p)[p]))
    rec = float(np.mean(nj / np.bincount(t)[t]))
    return {"precision": prec, "recall": rec, "f1": 2 * prec * rec / (prec + rec)}


# ----------------------------------------------------------------------------- report helpers

_LEVELS = {"else": "different", "exact": "same", "swapped": "first and last name swapped", "1 edit": "one typing error",
           "last 7 digits": "same last 7 digits", "district": "same postcode district", "sector": "same postcode sector",
           "postcode": "same postcode", "postcode + similar street": "same postcode, similar street", "missing": "missing"}


def level_label(level: str) -> str:
    """A comparison level in words ("JW>=0.92" -> "similar (Jaro-Winkler at least 0.92)")."""
    lv = str(level)
    if lv.startswith("JW>="):
        return f"similar (Jaro-Winkler at least {lv[4:]})"
    return _LEVELS.get(lv, lv)


def m_u_table(matcher: RecordMatcher) -> pd.DataFrame:
    """Per comparison level: m, u and the log2 Bayes factor (the model in one table)."""
    rows = []
    for c, m, u in zip(matcher.comparisons_, matcher.m_, matcher.u_):
        for lv, name in enumerate(c.labels()):
            rows.append((c.column, name, m[lv], u[lv], np.log2(m[lv] / u[lv])))
    return pd.DataFrame(rows, columns=["comparison", "level", "m", "u", "log2_bayes_factor"])


def threshold_curve(pairs: PairScores, truth: np.ndarray | None = None, thresholds=None) -> pd.DataFrame:
    """Pair-level precision / recall by threshold: measured against ``truth`` when given, else as the
    model expects them (sums of match probabilities)."""
    thresholds = np.asarray(thresholds if thresholds is not None else
                            [0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999])
    p = pairs.probability
    rows = []
    if truth is not None:
        same = truth[pairs.left] == truth[pairs.right]
        t = pd.factorize(truth)[0]
        c = np.bincount(t).astype(float)
        all_true = float(np.sum(c * (c - 1) / 2))
    for th in thresholds:
        acc = p >= th
        if truth is not None:
            tp, fp = float(np.sum(acc & same)), float(np.sum(acc & ~same))
            fn = all_true - tp
        else:
            tp, fp, fn = float(p[acc].sum()), float((1 - p[acc]).sum()), float(p[~acc].sum())
        prec = tp / (tp + fp) if tp + fp else 1.0
        rec = tp / (tp + fn) if tp + fn else 1.0
        rows.append((th, int(acc.sum()), prec, rec, 2 * prec * rec / (prec + rec) if prec + rec else 0.0))
    return pd.DataFrame(rows, columns=["threshold", "accepted_pairs", "precision", "recall", "f1"])


def review_sample(records: pd.DataFrame, pairs: PairScores, threshold: float, n: int = 10,
                  columns=("first_name", "last_name", "dob", "email", "phone", "address", "postcode"),
                  seed: int = 0) -> pd.DataFrame:
    """Pairs closest to the threshold (in match weight), side by side, for clerical review."""
    w_th = np.log2(threshold / (1 - threshold))
    gap = np.abs(pairs.weight - w_th)
    near = np.argpartition(gap, n - 1)[:n] if 0 < n < len(gap) else np.arange(len(gap))[:max(n, 0)]
    order = near[np.argsort(gap[near], kind="stable")]
    cols = ["source_system", *[c for c in columns if c in records]]
    left, right = records.take(pairs.left[order])[cols], records.take(pairs.right[order])[cols]
    rows = []
    for k, q in enumerate(order):
        row = {"probability": pairs.probability[q], "weight": pairs.weight[q]}
        for c in cols:
            row[f"{c} (1)"] = left[c].iloc[k]
            row[f"{c} (2)"] = right[c].iloc[k]
        rows.append(row)
    return masked(pd.DataFrame(rows))


def review_long(review: pd.DataFrame) -> pd.DataFrame:
    """A ``review_sample`` frame as one row per pair and field, the two records side by side (readable at any
    page width): pair (probability and weight on its first row), field, record 1, record 2 (None: missing)."""
    fields = [c[:-4] for c in review.columns if c.endswith(" (1)")]
    rows = []
    for k, r in enumerate(review.itertuples(index=False), start=1):
        d = dict(zip(review.columns, r))
        for j, f in enumerate(fields):
            rows.append({"pair": f"{k}: {d['probability']:.1%} ({d['weight']:+.1f} bits)" if j == 0 else "",
                         "field": label(f), "record 1": d[f"{f} (1)"] or None, "record 2": d[f"{f} (2)"] or None})
    return pd.DataFrame(rows, columns=["pair", "field", "record 1", "record 2"])


def blocking_report(matcher: RecordMatcher, records: pd.DataFrame, truth: np.ndarray | None = None) -> pd.DataFrame:
    """Per blocking rule and for their union: candidate pairs, reduction ratio, skipped blocks (from
    the fit); with ``truth`` (planted customer per record) also pairs completeness, which blocks again."""
    matcher._check_fitted()
    if truth is None:
        return matcher.blocking_
    on_workers = getattr(matcher, "pairs_completeness", None)      # Dask: the records stay on the workers
    if on_workers is not None:
        return matcher.blocking_.assign(pairs_completeness=on_workers(records, truth))
    df = matcher._keyed(records)
    if matcher.mode != "link_and_dedupe":                   # pairs filtered by source: count them again
        return matcher.candidate_pairs(df, truth)[2]
    # completeness from the true pairs (records of one planted customer), not from the candidate
    # pairs: 1.5 million true pairs against 50 million candidates at 1M customers
    t = pd.factorize(truth)[0]
    tl, tr, _ = graph.block_pairs(t, max_block=len(t) + 1)
    found = np.zeros(len(tl), bool)
    share = []
    for rule in (matcher.blocking or DEFAULT_BLOCKING):
        codes = matcher._rule_codes(df, list(rule))
        sizes = np.bincount(codes[codes >= 0]) if (codes >= 0).any() else np.zeros(1, np.int64)
        ct = codes[tl]
        hit = (ct >= 0) & (ct == codes[tr])
        hit[hit] &= sizes[ct[hit]] <= matcher.max_block
        found |= hit
        share.append(hit.sum() / max(len(tl), 1))
    return matcher.blocking_.assign(pairs_completeness=[*share, found.sum() / max(len(tl), 1)])


def cluster_sizes(key_map_: pd.DataFrame) -> pd.Series:
    return key_map_.groupby("customer_key").size().value_counts().sort_index().rename("customers")


def plot_weights(pairs: PairScores, threshold: float, truth: np.ndarray | None = None):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.5))
    bins = np.linspace(max(pairs.weight.min(), -40), min(pairs.weight.max(), 60), 80)
    if truth is None:
        ax.hist(pairs.weight, bins=bins, color="#4c72b0")
    else:
        same = truth[pairs.left] == truth[pairs.right]
        ax.hist([pairs.weight[~same], pairs.weight[same]], bins=bins, stacked=True,
                color=["#e76f51", "#2a9d8f"], label=["different customers (truth)", "same customer (truth)"])
        ax.legend()
    ax.axvline(np.log2(threshold / (1 - threshold)), color="black", ls="--", label="threshold")
    ax.set(yscale="log", xlabel="match weight (bits: log2 odds of one person)", ylabel="candidate pairs (log scale)",
           title="Match weights of candidate pairs")
    fig.tight_layout()
    return fig


def plot_waterfall(explanation: pd.DataFrame):
    import matplotlib.pyplot as plt

    e = explanation
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(e) + 1.5))
    start = e["cumulative"] - e["log2_bayes_factor"]
    colours = np.where(e["log2_bayes_factor"] >= 0, "#2a9d8f", "#e76f51")
    labels = [f"{label(c)}: {level_label(lv)}" if lv else label(c) for c, lv in zip(e["comparison"], e["level"])]
    ax.barh(range(len(e)), e["log2_bayes_factor"], left=start, color=colours)
    ax.set_yticks(range(len(e)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="grey", lw=0.8)
    total = e["cumulative"].iloc[-1]
    ax.set(xlabel="evidence (bits: log2 odds of one person)",
           title=f"Why this pair: weight {total:.1f}, probability {1 / (1 + 2 ** -total):.3f}")
    fig.tight_layout()
    return fig
