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


def holdout_report(model, rfm: pd.DataFrame, max_frequency: int = 7) -> HoldoutReport:
    """Predicted vs actual holdout purchases: aggregate error, per-customer correlation and MAE, for
    the model and the naive baseline (frequency / T, extrapolated); and the mean by calibration frequency."""
    if "frequency_holdout" not in rfm:
        raise CrmlabError("holdout_report needs an RFM table with a holdout period (calibration_end)")
    t = float(rfm["duration_holdout"].iloc[0])
    actual = rfm["frequency_holdout"].to_numpy(np.float64)
    pred = model.expected_purchases(rfm, t)
    naive = rfm["frequency"].to_numpy() / np.maximum(rfm["T"].to_numpy(), 1e-9) * t
    rows = []
    for name, p in (("model", pred), ("naive: past rate continues", naive)):
        rows.append((name, p.sum(), actual.sum(), p.sum() / actual.sum() - 1, np.corrcoef(p, actual)[0, 1],
                     np.mean(np.abs(p - actual)), np.sqrt(np.mean((p - actual) ** 2))))
    table = pd.DataFrame(rows, columns=["predictor", "predicted_total", "actual_total", "aggregate_error",
                                        "correlation", "mae", "rmse"]).set_index("predictor")
    f = np.minimum(rfm["frequency"].to_numpy(), max_frequency)
    byf = pd.DataFrame({"frequency": f, "actual": actual, "model": pred, "naive": naive}).groupby("frequency")
    by = byf.mean()
    by["customers"] = byf.size()
    by.index = [str(i) if i < max_frequency else f"{max_frequency}+" for i in by.index]
    by.index.name = "calibration frequency"
    return HoldoutReport(table, by)


def tracking(model, rfm: pd.DataFrame, transactions: pd.DataFrame, customer_col: str = "customer_key",
             date_col: str = "order_date", time_unit: float = 7.0, freq: str = "W-SUN") -> pd.DataFrame:
    """Actual vs expected repeat purchases per period (incremental and cumulative), all customers of ``rfm``."""
    first = rfm["first_purchase"]
    d = transactions[[customer_col, date_col]].copy()
    d[date_col] = pd.to_datetime(d[date_col]).dt.normalize()
    d = d.drop_duplicates().merge(first.rename("first").reset_index(), on=customer_col)
    rep = d[d[date_col] > d["first"]]
    end = d[date_col].max()
    periods = pd.date_range(first.min(), end, freq=freq)
    actual = rep.groupby(pd.Grouper(key=date_col, freq=freq)).size().reindex(periods, fill_value=0)
    cohorts = first.value_counts()
    elapsed = ((periods.to_numpy()[:, None] - cohorts.index.to_numpy()[None, :]) / np.timedelta64(1, "D"))
    elapsed = np.maximum(elapsed, 0) / time_unit
    grid = np.unique(elapsed)
    e_grid = model.expected_purchases_new(grid)
    e = np.interp(elapsed, grid, e_grid) @ cohorts.to_numpy()
    out = pd.DataFrame({"actual_cumulative": actual.cumsum().to_numpy(), "expected_cumulative": e},
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


