"""What stage 60's checks and report read of the decided scores, computed where the scores lie.

Counts that add up over parts of the customers (treatments, rules, channels, media, offers), each
numeric score's sum and its counts in the deciles of the version published before (so its population
stability index is exact), and a sample of the plotted scores chosen by a hash of the customer key.
Locally they are computed on the whole table. In Dask mode they are computed on every part left on
the workers (:class:`~crmlab.table_parts.TableParts`) and added up, with the same result. The table
does not come back to the stage's process. The version published before is read one column at a time.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import decisions, publish
from .labels import label, money_label
from .table_parts import TableParts

#: the scores the report plots against the version published before
PLOTTED = ("value", "attrition_risk", "p_alive", "response_propensity")
#: about how many customers' scores those plots sample
SAMPLE = 200_000
#: the columns whose values are counted -> the label their missing values are counted under (None: left out)
COUNTED = {"rule": None, "preferred_channel": None, "preferred_medium": "none (do not contact)",
           "next_best_offer_name": None}


def drift_columns(scores: pd.DataFrame) -> list[str]:
    """The score columns drift compares: the numeric ones, flags and ids left out."""
    return [c for c in scores.columns if c not in ("score_version", "segment_id")
            and pd.api.types.is_numeric_dtype(scores[c]) and not pd.api.types.is_bool_dtype(scores[c])]


def decile_edges(old: np.ndarray, bins: int = 10) -> np.ndarray:
    """The bins :func:`psi` counts scores in: the deciles of the old ones (no missing values), the outer
    bins open; one bin when the old scores are all equal or none."""
    edges = np.unique(np.quantile(old, np.linspace(0, 1, bins + 1))) if len(old) else np.zeros(1)
    if len(edges) < 2:
        return np.array([-np.inf, np.inf])
    edges[0], edges[-1] = -np.inf, np.inf
    return edges


def psi_of_counts(old: np.ndarray, new: np.ndarray) -> float:
    """Population stability index from the old and new scores' counts in :func:`decile_edges` (NaN when
    either has none)."""
    if old.sum() == 0 or new.sum() == 0:
        return float("nan")
    a, b = old / old.sum() + 1e-6, new / new.sum() + 1e-6
    return float(np.sum((b - a) * np.log(b / a)))


def psi(old: pd.Series, new: pd.Series, bins: int = 10) -> float:
    """Population stability index of a numeric score between two versions (deciles of the old)."""
    old, new = old.dropna().to_numpy(float), new.dropna().to_numpy(float)
    edges = decile_edges(old, bins)
    return psi_of_counts(np.histogram(old, edges)[0], np.histogram(new, edges)[0])


def _every(rows: int) -> int:
    return max(1, -(-rows // SAMPLE))


@dataclass
class PreviousScores:
    """The version published before, as drift compares it: per numeric score its mean, its deciles'
    ``edges`` and its ``counts`` in them; its ``rows``; a ``sample`` of the plotted scores."""

    version: int | None
    rows: int
    means: dict
    edges: dict
    counts: dict
    sample: pd.DataFrame

    @classmethod
    def of(cls, scores: pd.DataFrame, version: int | None = None) -> "PreviousScores":
        """Of a score table in this process."""
        return cls._of(version, len(scores), ((c, scores[c].to_numpy(float)) for c in drift_columns(scores)))

    @classmethod
    def read(cls, url: str, columns: list[str]) -> "PreviousScores | None":
        """Of the current version of ``customer_scores`` at ``url`` (those of ``columns`` it has), read one
        column at a time; None when nothing is published."""
        version = publish.current_version(url)
        if not version:
            return None
        h = publish.history(url).set_index("version")
        rows = json.loads(h.loc[version, "row_counts"])["customer_scores"]
        have = set(publish.table_columns(url, "customer_scores"))
        return cls._of(version, rows, ((c, publish.read_column(url, "customer_scores", c))
                                       for c in columns if c in have))

    @classmethod
    def _of(cls, version, rows: int, columns) -> "PreviousScores":
        at = np.arange(0, rows, _every(rows))
        means, edges, counts, sample = {}, {}, {}, {}
        for c, v in columns:
            present = v[~np.isnan(v)]
            means[c] = float(present.mean()) if len(present) else float("nan")
            edges[c] = decile_edges(present)
            counts[c] = np.histogram(present, edges[c])[0]
            if c in PLOTTED:
                sample[c] = v[at]
        return cls(version, rows, means, edges, counts, pd.DataFrame(sample))


@dataclass
class ScoreFigures:
    """What stage 60 checks and reports of its scores: the ``customers``, :func:`decisions.summary` of the
    ``treatments``, value ``counts`` of the :data:`COUNTED` columns (most first), how many have a next
    best offer and how many of those are guarded products, per numeric score its (sum, non-missing
    count) and its counts in the previous version's deciles, and a ``sample`` of the plotted scores."""

    customers: int
    treatments: pd.DataFrame
    counts: dict
    with_offer: int
    guarded_offers: int
    sums: dict
    bins: dict
    sample: pd.DataFrame

    @classmethod
    def compute(cls, scores, guarded=(), previous: PreviousScores | None = None) -> "ScoreFigures":
        """Of ``scores``: a frame here, or :class:`~crmlab.table_parts.TableParts` (computed on every part
        where it lies, then added up)."""
        edges = {} if previous is None else previous.edges
        every = _every(len(scores))
        if isinstance(scores, TableParts):
            return cls.combine(scores.map(_part_figures, set(guarded), edges, every))
        return cls.combine([_part_figures(scores, set(guarded), edges, every)])

    @classmethod
    def combine(cls, parts: list["ScoreFigures"]) -> "ScoreFigures":
        """The figures of the parts' customers together (parts in table order)."""
        def added(series):
            s = pd.concat(series).groupby(level=0).sum()
            return s.sort_values(ascending=False, kind="stable").astype(np.int64)

        first = parts[0]
        return cls(sum(p.customers for p in parts), decisions.summed([p.treatments for p in parts]),
                   {c: added([p.counts[c] for p in parts]) for c in first.counts},
                   sum(p.with_offer for p in parts), sum(p.guarded_offers for p in parts),
                   {c: tuple(map(sum, zip(*[p.sums[c] for p in parts]))) for c in first.sums},
                   {c: sum(p.bins[c] for p in parts) for c in first.bins},
                   pd.concat([p.sample for p in parts], ignore_index=True))

    def drift(self, previous: PreviousScores, warn_psi: float = 0.2) -> pd.DataFrame:
        """Per numeric score in both versions: mean before and now, PSI, and a warning where the PSI is
        above ``warn_psi``."""
        rows = [(c, previous.means[c], s / n if n else float("nan"), psi_of_counts(previous.counts[c], self.bins[c]))
                for c, (s, n) in self.sums.items() if c in self.bins]
        t = pd.DataFrame(rows, columns=["column", "mean_previous", "mean_now", "psi"]).set_index("column")
        t["warning"] = np.where(t["psi"] > warn_psi, "shifted (PSI > %.2g)" % warn_psi, "")
        return t


def _part_figures(scores: pd.DataFrame, guarded: set, edges: dict, every: int) -> ScoreFigures:
    """:class:`ScoreFigures` of one part (or all) of the scores, counts not yet ordered."""
    def counted(c, missing):
        v = scores[c] if missing is None else scores[c].fillna(missing)
        return v.value_counts().sort_index()

    drift = drift_columns(scores)
    values = {c: scores[c].to_numpy(float) for c in drift}
    keys = scores["customer_key"].to_numpy(dtype=object)
    kept = pd.util.hash_array(keys) % np.uint64(every) == 0
    offer = scores["next_best_offer"]
    return ScoreFigures(
        len(scores), decisions.treatment_counts(scores),
        {c: counted(c, missing) for c, missing in COUNTED.items() if c in scores},
        int(offer.notna().sum()), int(offer.isin(guarded).sum()),
        {c: (float(np.nansum(v)), int((~np.isnan(v)).sum())) for c, v in values.items()},
        {c: np.histogram(v[~np.isnan(v)], edges[c])[0] for c, v in values.items() if c in edges},
        scores.loc[kept, [c for c in PLOTTED if c in scores]].reset_index(drop=True))


def plot_drift(previous: pd.DataFrame, scores: pd.DataFrame, columns=PLOTTED):
    """Histograms of the main scores, previous published version against the new one (to the 99th
    percentile): of the tables, or of samples of them (:attr:`PreviousScores.sample`, :attr:`ScoreFigures.sample`)."""
    import matplotlib.pyplot as plt

    cols = [c for c in columns if c in scores and c in previous]
    ncols = min(len(cols), 2)
    nrows = -(-len(cols) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(10, 2.9 * nrows), squeeze=False)
    for ax in axes.ravel()[len(cols):]:
        ax.set_visible(False)
    for ax, c in zip(axes.ravel(), cols):
        lo, hi = np.nanpercentile(pd.concat([previous[c], scores[c]]).astype(float), [0, 99])
        ax.hist([previous[c].dropna(), scores[c].dropna()], bins=30, range=(lo, hi), label=["previous", "new"], density=True)
        ax.set(title=label(c), xlabel=money_label("value") if c == "value" else "probability", ylabel="density")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Scores: previous published version against this one (top 1% clipped)")
    fig.tight_layout()
    return fig
