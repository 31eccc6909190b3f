"""How good a propensity model is: ROC/PR AUC, Brier and log loss, gains by decile, calibration,
cross-validation, and the evaluation plot."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .labels import label as plain
from .propensity import PropensityModel


def evaluate(y, p) -> dict:
    """ROC AUC, PR AUC (average precision), Brier score, log loss, top-decile lift, base rate."""
    from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

    y = np.asarray(y).astype(int)
    p = np.asarray(p, np.float64)
    g = gains(y, p)
    return {"n": int(len(y)), "base_rate": float(y.mean()), "roc_auc": float(roc_auc_score(y, p)),
            "pr_auc": float(average_precision_score(y, p)), "brier": float(brier_score_loss(y, p)),
            "log_loss": float(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1])),
            "top_decile_lift": float(g["lift"].iloc[0])}


def gains(y, p, bins: int = 10) -> pd.DataFrame:
    """Cumulative gains and lift by score decile (decile 1 = highest scores)."""
    y = np.asarray(y).astype(int)
    order = np.argsort(-np.asarray(p), kind="stable")
    dec = np.minimum((np.arange(len(y)) * bins) // max(len(y), 1), bins - 1) + 1
    df = pd.DataFrame({"decile": dec, "y": y[order], "p": np.asarray(p)[order]})
    g = df.groupby("decile").agg(customers=("y", "size"), positives=("y", "sum"), mean_score=("p", "mean"))
    g["rate"] = g["positives"] / g["customers"]
    g["lift"] = g["rate"] / max(y.mean(), 1e-12)
    g["cum_share_customers"] = g["customers"].cumsum() / len(y)
    g["cum_share_positives"] = g["positives"].cumsum() / max(y.sum(), 1)
    g["cum_lift"] = g["cum_share_positives"] / g["cum_share_customers"]
    return g


def calibration_table(y, p, bins: int = 10) -> pd.DataFrame:
    """Mean predicted vs observed rate in equal-count bins of the score."""
    df = pd.DataFrame({"y": np.asarray(y).astype(int), "p": np.asarray(p)})
    df["bin"] = pd.qcut(df["p"].rank(method="first"), bins, labels=False)
    return df.groupby("bin").agg(predicted=("p", "mean"), observed=("y", "mean"), customers=("y", "size"))


def cross_validate(X: pd.DataFrame, y, folds: int = 5, random_state: int = 0, **model) -> pd.DataFrame:
    """Stratified k-fold metrics of a :class:`PropensityModel` (one row per fold, plus the mean)."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y).astype(int)
    rows = []
    for k, (tr, te) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=random_state).split(X, y)):
        m = PropensityModel(random_state=random_state, **model).fit(X.iloc[tr], y[tr])
        rows.append({"fold": k + 1, **evaluate(y[te], m.predict_proba(X.iloc[te])[:, 1])})
    out = pd.DataFrame(rows).set_index("fold").astype(float)      # the mean row is fractional (n too)
    out.loc["mean"] = out.mean()
    return out


def plot_evaluation(results: dict, title: str = ""):
    """ROC curves, calibration and cumulative gains for {label: (y, p)}."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(1, 3, figsize=(11.5, 4.0))
    for name, (y, p) in results.items():
        label = plain(name)
        fpr, tpr, _ = roc_curve(y, p)
        ax[0].plot(fpr, tpr, label=f"{label} (AUC {evaluate(y, p)['roc_auc']:.3f})")
        ct = calibration_table(y, p)
        ax[1].plot(ct["predicted"], ct["observed"], "o-", label=label)
        g = gains(y, p)
        ax[2].plot(np.r_[0, g["cum_share_customers"]], np.r_[0, g["cum_share_positives"]], "o-", label=label)
    ax[0].plot([0, 1], [0, 1], "k:", lw=1)
    ax[0].set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax[1].plot([0, 1], [0, 1], "k:", lw=1)
    ax[1].set(xlabel="mean predicted probability", ylabel="observed rate", title="Calibration (deciles)")
    ax[2].plot([0, 1], [0, 1], "k:", lw=1)
    ax[2].set(xlabel="share of customers targeted (by score)", ylabel="share of positives reached",
              title="Cumulative gains")
    ax[0].legend(fontsize=7)                      # one legend with the AUCs: the colours are the same in all three
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


