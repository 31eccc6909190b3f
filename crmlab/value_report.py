"""How good a customer-value model is, and the pictures: calibration/holdout checks, cumulative
tracking against actual purchases, probability-alive heatmaps and the value distribution."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import CrmlabError
from .labels import money_label


@dataclass
class HoldoutReport:
    """Holdout accuracy of a purchase model against the naive 'past rate continues' baseline."""

    table: pd.DataFrame
    by_frequency: pd.DataFrame


#: the sums over customers, per predictor, from which :class:`HoldoutReport`'s table follows
_SUMS = ["customers", "predicted", "predicted_sq", "actual", "actual_sq", "product", "abs_error", "sq_error"]


@dataclass
class HoldoutCounts:
    """Sums over customers from which a :class:`HoldoutReport` follows (:meth:`report`); counted on
    disjoint sets of customers (parts, on Dask workers) and added with ``+``: the whole's."""

    sums: pd.DataFrame           # index: predictor; columns: _SUMS
    by_frequency: pd.DataFrame   # index: calibration frequency, capped; customers and sums of actual, model, naive
    max_frequency: int

    def __add__(self, other: "HoldoutCounts") -> "HoldoutCounts":
        by = self.by_frequency.add(other.by_frequency, fill_value=0).sort_index()
        return HoldoutCounts(self.sums + other.sums, by, self.max_frequency)

    def report(self) -> HoldoutReport:
        s = self.sums
        n = s["customers"]
        corr = (n * s["product"] - s["predicted"] * s["actual"]) / np.sqrt(
            (n * s["predicted_sq"] - s["predicted"] ** 2) * (n * s["actual_sq"] - s["actual"] ** 2))
        table = pd.DataFrame({"predicted_total": s["predicted"], "actual_total": s["actual"],
                              "aggregate_error": s["predicted"] / s["actual"] - 1, "correlation": corr,
                              "mae": s["abs_error"] / n, "rmse": np.sqrt(s["sq_error"] / n)})
        table.index.name = "predictor"
        b = self.by_frequency
        by = b[["actual", "model", "naive"]].div(b["customers"], axis=0).assign(customers=b["customers"].astype("int64"))
        m = self.max_frequency
        by.index = [str(int(i)) if i < m else f"{m}+" for i in by.index]
        by.index.name = "calibration frequency"
        return HoldoutReport(table, by)


def holdout_counts(model, rfm: pd.DataFrame, max_frequency: int = 7) -> HoldoutCounts:
    """The sums behind :func:`holdout_report` for the customers of ``rfm`` (an RFM table with a holdout
    period): add those of disjoint sets of customers to get the whole's."""
    if "frequency_holdout" not in rfm:
        raise CrmlabError("holdout_report needs an RFM table with a holdout period (calibration_end)")
    actual = rfm["frequency_holdout"].to_numpy(np.float64)
    t = float(rfm["duration_holdout"].iloc[0]) if len(rfm) else 0.0
    pred = model.expected_purchases(rfm, t) if len(rfm) else np.zeros(0)
    naive = rfm["frequency"].to_numpy() / np.maximum(rfm["T"].to_numpy(), 1e-9) * t
    sums = pd.DataFrame([(len(actual), p.sum(), (p * p).sum(), actual.sum(), (actual * actual).sum(), (p * actual).sum(),
                          np.abs(p - actual).sum(), ((p - actual) ** 2).sum()) for p in (pred, naive)],
                        index=pd.Index(["model", "naive: past rate continues"], name="predictor"), columns=_SUMS)
    f = np.minimum(rfm["frequency"].to_numpy(), max_frequency)
    byf = pd.DataFrame({"frequency": f, "actual": actual, "model": pred, "naive": naive}).groupby("frequency")
    by = byf.sum().assign(customers=byf.size())
    return HoldoutCounts(sums, by, max_frequency)


def holdout_report(model, rfm: pd.DataFrame, max_frequency: int = 7) -> HoldoutReport:
    """Predicted vs actual holdout purchases: aggregate error, per-customer correlation and MAE, for
    the model and the naive baseline (frequency / T, extrapolated); and the mean by calibration frequency."""
    return holdout_counts(model, rfm, max_frequency).report()


@dataclass
class TrackingCounts:
    """What :func:`tracking` plots, counted on disjoint sets of customers and added with ``+``: repeat
    purchase days per period (``repeat``, by the period's label), customers per first purchase day
    (``cohorts``) and the last purchase day (``end``)."""

    repeat: pd.Series
    cohorts: pd.Series
    end: pd.Timestamp
    freq: str

    def __add__(self, other: "TrackingCounts") -> "TrackingCounts":
        end = max((e for e in (self.end, other.end) if not pd.isna(e)), default=pd.NaT)
        return TrackingCounts(self.repeat.add(other.repeat, fill_value=0), self.cohorts.add(other.cohorts, fill_value=0),
                              end, self.freq)


def tracking_counts(rfm: pd.DataFrame, transactions: pd.DataFrame, customer_col: str = "customer_key",
                    date_col: str = "order_date", freq: str = "W-SUN") -> TrackingCounts:
    """The counts behind :func:`tracking` for the customers of ``rfm`` (their ``first_purchase``) and
    their ``transactions`` (at any date)."""
    first = rfm["first_purchase"]
    d = transactions[[customer_col, date_col]].copy()
    d[date_col] = pd.to_datetime(d[date_col]).dt.normalize()
    d = d.drop_duplicates().merge(first.rename("first").reset_index(), on=customer_col)
    rep = d[d[date_col] > d["first"]]
    repeat = rep.groupby(pd.Grouper(key=date_col, freq=freq)).size()
    return TrackingCounts(repeat, first.value_counts(), d[date_col].max(), freq)


def tracking(model, counts: TrackingCounts, time_unit: float = 7.0) -> pd.DataFrame:
    """Actual vs expected repeat purchases per period (incremental and cumulative), all customers of
    ``counts`` (:func:`tracking_counts`, added over parts)."""
    cohorts = counts.cohorts.sort_index()
    periods = pd.date_range(cohorts.index.min(), counts.end, freq=counts.freq)
    actual = counts.repeat.reindex(periods, fill_value=0)
    elapsed = ((periods.to_numpy()[:, None] - cohorts.index.to_numpy()[None, :]) / np.timedelta64(1, "D"))
    elapsed = np.maximum(elapsed, 0) / time_unit
    grid = np.unique(elapsed)
    e_grid = model.expected_purchases_new(grid)
    e = np.interp(elapsed, grid, e_grid) @ cohorts.to_numpy(np.float64)
    out = pd.DataFrame({"actual_cumulative": actual.cumsum().to_numpy(np.int64), "expected_cumulative": e},
                       index=periods)
    out["actual"] = out["actual_cumulative"].diff().fillna(out["actual_cumulative"])
    out["expected"] = out["expected_cumulative"].diff().fillna(out["expected_cumulative"])
    return out


# ----------------------------------------------------------------------------- plots

def plot_calibration_holdout(report: HoldoutReport):
    import matplotlib.pyplot as plt

    by = report.by_frequency
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(by.index, by["actual"], "o-", label="actual", color="black")
    ax.plot(by.index, by["model"], "s--", label="model", color="#4c72b0")
    ax.plot(by.index, by["naive"], "^:", label="naive (past rate)", color="#c44e52", alpha=0.7)
    ax.set(xlabel="repeat purchases before the cut-off", ylabel="mean purchases after the cut-off",
           title="Predicted and actual purchases after the cut-off")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_tracking(track: pd.DataFrame, holdout_start=None):
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11.5, 3.8))
    for ax, (col, title) in zip(axes, (("", "Weekly repeat purchases"), ("_cumulative", "Cumulative repeat purchases"))):
        ax.plot(track.index, track[f"actual{col}"], color="black", label="actual")
        ax.plot(track.index, track[f"expected{col}"], "--", color="#4c72b0", label="model")
        if holdout_start is not None:
            ax.axvline(pd.Timestamp(holdout_start), color="grey", ls=":", label="holdout starts")
        ax.set(title=title, xlabel="week", ylabel="repeat purchases" + (" per week" if not col else " so far"))
        loc = mdates.AutoDateLocator(maxticks=7)
        ax.xaxis.set_major_locator(loc)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def plot_heatmaps(model, T: float, horizon: float, max_frequency: int = 20, horizon_label: str | None = None,
                  unit: str = "time units"):
    """P(alive) and expected purchases in the next ``horizon`` over recency x frequency, for tenure T
    (``unit``: the model's time unit in words, e.g. "weeks")."""
    import matplotlib.pyplot as plt

    f = np.arange(0, max_frequency + 1, dtype=float)
    rec = np.linspace(0, T, 41)
    F, R = np.meshgrid(f, rec)
    grid = pd.DataFrame({"frequency": F.ravel(), "recency": np.where(F.ravel() == 0, 0.0, R.ravel()),
                         "T": np.full(F.size, T)})
    pa = model.p_alive(grid).reshape(F.shape)
    ex = model.expected_purchases(grid, horizon).reshape(F.shape)
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.5))
    ahead = horizon_label or f"{horizon:g} {unit}"
    for ax, z, title, cmap, what in ((axes[0], pa, "Probability still active", "RdYlGn", "probability active"),
                                     (axes[1], ex, f"Expected purchases, next {ahead}", "viridis",
                                      f"purchases in the next {ahead}")):
        im = ax.imshow(z, origin="lower", aspect="auto", cmap=cmap, extent=(-0.5, max_frequency + 0.5, 0, T))
        ax.set(xlabel="repeat purchases so far", ylabel=f"last purchase ({unit} after the first)", title=title)
        fig.colorbar(im, ax=ax, label=what)
    fig.suptitle(f"Customers whose first purchase was {T:.0f} {unit} ago")
    fig.tight_layout()
    return fig


def plot_value(table: pd.DataFrame, months: int = 12):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    col = f"clv_{months}m"
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 3.8))
    v = table[col]
    axes[0].hist(v.clip(upper=v.quantile(0.99)), bins=60, color="#55a868")
    axes[0].set(title=f"Customer value, next {months} months (top 1% clipped)", xlabel=money_label("customer value"),
                ylabel="customers (log scale)", yscale="log")
    share = table.groupby("value_decile")[col].sum() / v.sum()
    axes[1].bar(share.index, share.values, color="#8172b2")
    axes[1].set(title="Share of total CLV by value decile", xlabel="decile (10 = most valuable)",
                ylabel="share of all customer value")
    axes[1].yaxis.set_major_formatter(PercentFormatter(1))
    axes[1].set_xticks(range(1, 11))
    fig.tight_layout()
    return fig


