"""Campaign measurement: contacts joined to what customers did next.

Responses come from the events layer (:func:`crmlab.events.attribute_responses`, re-exported
here): each contact is linked to at most one later order (by reference code when the order quotes
the contact's code, else the customer's first order inside the campaign window), and each order
to at most one contact. This module measures lift against control groups and models uplift.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import CrmlabError
from .estimator import Params, reset
from .events import RESPONSE_COLUMNS, attribute_responses, campaign_starts, keyed_contacts  # noqa: F401 - the measurement API
from .features import FeatureBuilder
from .labels import currency
from .propensity import PropensityModel


def response_history(responses: pd.DataFrame, cutoff) -> pd.DataFrame:
    """Per customer, contacts and responses strictly before ``cutoff`` (responses dated before it too)."""
    cutoff = pd.Timestamp(cutoff)
    r = responses[responses["contact_date"] < cutoff]
    answered = r["responded"].to_numpy() & (r["response_date"] < cutoff).fillna(False).to_numpy()
    g = pd.DataFrame({"customer_key": r["customer_key"].to_numpy(), "contacts": 1,
                      "responses": answered.astype(np.int64)}).groupby("customer_key").sum()
    return g


# ----------------------------------------------------------------------------- lift against control

Z95 = 1.959963984540054
Z80 = 0.8416212335729143


def wilson(k, n, z: float = Z95):
    """Wilson score interval for k successes out of n (arrays allowed)."""
    k, n = np.asarray(k, float), np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def diff_interval(k1, n1, k0, n0, z: float = Z95):
    """Newcombe's hybrid score interval for p1 - p0 (method 10, from the two Wilson intervals)."""
    p1, p0 = np.asarray(k1, float) / n1, np.asarray(k0, float) / n0
    l1, u1 = wilson(k1, n1, z)
    l0, u0 = wilson(k0, n0, z)
    d = p1 - p0
    return d - np.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2), d + np.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)


def lift_table(responses: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Per campaign (and ``by`` columns): treated vs control response and revenue, with the increment.

    Columns: contacts and responders per group, response rates, ``incremental_rate`` (treated -
    control) with a 95% Newcombe interval, revenue per contact per group and its increment with a
    95% Welch interval, ``incremental_responders`` (rate x treated contacts), ``mde`` (the smallest
    true increment detectable with 80% power at this size), ``significant`` and a plain-language
    ``verdict``. The same as :func:`lift_of` the :func:`lift_counts` of the contacts.
    """
    return lift_of(lift_counts(responses, by))


def lift_counts(responses: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """What a lift table is made of, per campaign (and ``by`` columns) and group (index level ``_t``:
    treated): contacts ``n``, responders ``k``, the mean and variance of the response value (``rev``,
    ``rev_var``; no response is 0). Counts of disjoint sets of contacts add up (:func:`add_lift_counts`)."""
    keys = ["campaign_id"] + list(by or [])
    r = responses.assign(_t=(responses["group"] == "treatment").to_numpy())
    return r.groupby(keys + ["_t"], observed=True).agg(
        n=("responded", "size"), k=("responded", "sum"), rev=("response_value", "mean"),
        rev_var=("response_value", "var"))


def add_lift_counts(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """The :func:`lift_counts` of disjoint sets of contacts (parts of the customers) as those of all of
    them: contacts and responders summed, means and variances pooled (Chan, Golub and LeVeque's
    formulas). A group seen in one part keeps that part's figures as they are; a pooled mean or
    variance may differ from one computed on all the rows in the last digits."""
    c = pd.concat([p for p in parts if len(p)] or parts[:1])
    levels = list(range(c.index.nlevels))
    g = c.groupby(level=levels, observed=True)
    out = g[["n", "k"]].sum()
    n = out["n"].to_numpy(float)
    mean = (c["rev"] * c["n"]).groupby(level=levels, observed=True).sum().to_numpy() / n
    dev = c["rev"].to_numpy() - pd.Series(mean, index=out.index).reindex(c.index).to_numpy()
    m2 = (c["rev_var"].fillna(0.0) * (c["n"] - 1) + c["n"] * dev ** 2).groupby(level=levels, observed=True).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.where(n > 1, m2.to_numpy() / (n - 1), np.nan)
    one = g.size().to_numpy() == 1                              # in one part: its own figures
    out["rev"] = np.where(one, g["rev"].first().reindex(out.index).to_numpy(), mean)
    out["rev_var"] = np.where(one, g["rev_var"].first().reindex(out.index).to_numpy(), var)
    return out


def lift_of(counts: pd.DataFrame) -> pd.DataFrame:
    """The lift table (:func:`lift_table`) of :func:`lift_counts`."""
    if set(counts.index.get_level_values("_t")) != {True, False}:
        raise CrmlabError("lift needs both a treatment and a control group; a control share of 0 measures nothing")
    g = counts.unstack("_t")
    out = pd.DataFrame(index=g.index)
    for side, flag in (("treated", True), ("control", False)):
        out[f"contacts_{side}"] = g[("n", flag)].fillna(0).astype(int)
        out[f"responders_{side}"] = g[("k", flag)].fillna(0).astype(int)
        out[f"rate_{side}"] = out[f"responders_{side}"] / out[f"contacts_{side}"].replace(0, np.nan)
        out[f"revenue_per_contact_{side}"] = g[("rev", flag)]
    nt, nc = out["contacts_treated"], out["contacts_control"]
    out["incremental_rate"] = out["rate_treated"] - out["rate_control"]
    lo, hi = diff_interval(out["responders_treated"], nt, out["responders_control"], nc)
    out["ci_low"], out["ci_high"] = lo, hi
    out["incremental_responders"] = out["incremental_rate"] * nt
    se_rev = np.sqrt(g[("rev_var", True)].fillna(0) / nt + g[("rev_var", False)].fillna(0) / nc)
    out["incremental_revenue_per_contact"] = out["revenue_per_contact_treated"] - out["revenue_per_contact_control"]
    out["revenue_ci_low"] = out["incremental_revenue_per_contact"] - Z95 * se_rev
    out["revenue_ci_high"] = out["incremental_revenue_per_contact"] + Z95 * se_rev
    pooled = (out["responders_treated"] + out["responders_control"]) / (nt + nc)
    out["mde"] = (Z95 + Z80) * np.sqrt(pooled * (1 - pooled) * (1 / nt + 1 / nc))
    out["significant"] = (out["ci_low"] > 0) | (out["ci_high"] < 0)
    out["verdict"] = [_verdict(s, d, m, a, b) for s, d, m, a, b in zip(
        out["significant"], out["incremental_rate"], out["mde"], nt, nc)]
    return out.reset_index()


def _verdict(significant, d, mde, nt, nc) -> str:
    if min(nt, nc) < 30:
        return f"too few contacts to conclude ({int(nt)} treated, {int(nc)} control)"
    if significant:
        return f"{'raised' if d > 0 else 'lowered'} the response rate by {100 * abs(d):.1f} percentage points"
    if abs(d) < mde:
        return (f"no effect shown; an effect smaller than {100 * mde:.1f} percentage points could not be detected "
                "with this many contacts")
    return "no significant effect"


def add_segment(responses: pd.DataFrame, segments: pd.Series, name: str = "segment") -> pd.DataFrame:
    """Attach a segment per customer_key (missing -> 'unknown')."""
    seg = responses["customer_key"].map(segments)
    return responses.assign(**{name: seg.astype(object).where(seg.notna(), "unknown").to_numpy()})


def age_band(profile: pd.DataFrame, at) -> pd.Series:
    """A life-stage proxy: age band per customer_key from the date of birth at a date."""
    age = (pd.Timestamp(at) - profile["dob"]).dt.days / 365.25
    return pd.cut(age, [0, 35, 60, 200], labels=["under 35", "35-59", "60+"], right=False).astype(object)


# ----------------------------------------------------------------------------- uplift model

class TwoModelUplift(Params):
    """Uplift as P(response | treated, x) - P(response | control, x), one classifier per group.

    Attributes: ``treated_``, ``control_`` (fitted :class:`crmlab.propensity.PropensityModel`).
    """

    def __init__(self, kind: str = "logistic", C: float = 0.3, random_state: int = 0):
        self.kind = kind
        self.C = C
        self.random_state = random_state

    def fit(self, X: pd.DataFrame, treated, y) -> "TwoModelUplift":
        reset(self)
        treated, y = np.asarray(treated, bool), np.asarray(y).astype(int)
        for flag, name in ((True, "treated_"), (False, "control_")):
            m = treated == flag
            if len(set(y[m])) < 2:
                raise CrmlabError(f"uplift: the {'treatment' if flag else 'control'} group needs responders and "
                                  f"non-responders to fit")
            setattr(self, name, PropensityModel(kind=self.kind, C=self.C, calibration="none",
                                                random_state=self.random_state).fit(X[m], y[m]))
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return self.treated_.predict_proba(X)[:, 1] - self.control_.predict_proba(X)[:, 1]


def qini_curve(uplift, treated, y, points: int = 50) -> pd.DataFrame:
    """Qini curve: targeting the top share by predicted uplift, the incremental responders gained
    (treated responders - control responders scaled to the treated count), against random targeting."""
    order = np.argsort(-np.asarray(uplift), kind="stable")
    t = np.asarray(treated, bool)[order]
    yy = np.asarray(y).astype(int)[order]
    rt, rc = np.cumsum(yy * t), np.cumsum(yy * ~t)
    nt, nc = np.cumsum(t), np.cumsum(~t)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = rt - np.where(nc > 0, rc * nt / nc, 0.0)
    idx = np.unique(np.linspace(0, len(q) - 1, points + 1).astype(int))
    share = (idx + 1) / len(q)
    return pd.DataFrame({"share_targeted": np.r_[0, share], "incremental_responders": np.r_[0, q[idx]],
                         "random": np.r_[0, share * q[-1]]})


def qini_coefficient(curve: pd.DataFrame) -> float:
    """Area between the Qini curve and random targeting, over the share targeted."""
    x = curve["share_targeted"].to_numpy()
    gap = (curve["incremental_responders"] - curve["random"]).to_numpy()
    return float(np.sum((gap[1:] + gap[:-1]) / 2 * np.diff(x)))


def campaign_features(ev, responses: pd.DataFrame, builder=None, features=None, starts: pd.Series | None = None):
    """Per contact, the customer's features at the campaign's start (strictly before it).

    Returns ``(X, treated, y, meta)`` aligned on contacts: X indexed by contact_id, treated
    (bool), y (responded, 0/1) and meta (contact_id, customer_key, campaign_id, group).
    ``features(builder, cutoff)``: computes ``builder.transform(ev, cutoff)`` (e.g. by parts of the
    customers on a Dask cluster, left there: :func:`crmlab.events_dask.rows_on`; only the contacted
    customers' rows are fetched). ``starts``: each campaign's start (:func:`campaign_starts`), where
    ``responses`` are some of the contacts (a sample of the customers, :func:`in_sample`); else those
    of ``responses``.
    """
    starts = (campaign_starts(responses) if starts is None else starts).sort_values()
    builder = builder or FeatureBuilder().fit(ev, starts.iloc[0])
    features = features or ev.features
    parts = []
    for camp, start in starts.items():
        c = responses[responses["campaign_id"] == camp]
        try:
            F = features(builder, start)
        except CrmlabError:
            continue
        pos = F.index.get_indexer(c["customer_key"])          # contacted customers with an order before
        rows = F.iloc[pos[pos >= 0]]
        c = c.loc[pos >= 0, ["contact_id", "customer_key", "campaign_id", "group", "responded"]]
        parts.append(pd.concat([c.reset_index(drop=True), rows.reset_index(drop=True)], axis=1))
    if not parts:
        raise CrmlabError("no contacted customer has any order before their campaign: nothing to model uplift on")
    d = pd.concat(parts, ignore_index=True)
    meta = d[["contact_id", "customer_key", "campaign_id", "group"]]
    X = d[builder.feature_names_].set_index(d["contact_id"])
    return X, (d["group"] == "treatment").to_numpy(), d["responded"].astype(int).to_numpy(), meta


def sample_share(contacts: int, rows: int | None) -> float:
    """The share of the customers whose contacts number about ``rows`` of ``contacts`` (1: all)."""
    return 1.0 if rows is None or contacts <= rows else rows / contacts


def in_sample(keys, share: float, seed: int = 0) -> np.ndarray:
    """Whether each customer key is in a random sample of about ``share`` of the customers: a seeded hash
    of the key against ``share``, so each part of the customers draws its own customers of the one sample."""
    keys = np.asarray(keys, dtype=object)
    if share >= 1:
        return np.ones(len(keys), bool)
    h = pd.util.hash_array(keys, hash_key=f"{seed % 10 ** 16:016d}", categorize=False)
    return h < np.uint64(share * 2.0 ** 64)


def evaluate_uplift(X: pd.DataFrame, treated, y, customers, holdout: float = 0.3, seed: int = 0, **model):
    """Fit a two-model uplift on some customers, evaluate it on the others (no customer in both).

    Returns a dict: ``model``, ``holdout`` (bool mask), ``uplift`` (predictions on the held-out
    rows), ``qini`` (curve), ``qini_coefficient``, ``random_qini`` (mean and sd of the coefficient
    for 20 random rankings of the same rows) and ``by_tercile`` (measured lift per predicted-uplift
    tercile on the held-out rows).
    """
    if not 0 < holdout < 1:
        raise CrmlabError(f"measure.uplift_holdout must be in (0, 1), got {holdout}")
    treated, y = np.asarray(treated, bool), np.asarray(y).astype(int)
    cust = pd.unique(np.asarray(customers, dtype=object))
    rng = np.random.default_rng(seed)
    held = set(rng.choice(cust, int(round(holdout * len(cust))), replace=False))
    mask = np.fromiter((c in held for c in np.asarray(customers, dtype=object)), bool, len(X))
    m = TwoModelUplift(random_state=seed, **model).fit(X[~mask], treated[~mask], y[~mask])
    up = m.predict(X[mask])
    curve = qini_curve(up, treated[mask], y[mask])
    rand = [qini_coefficient(qini_curve(rng.permutation(up), treated[mask], y[mask])) for _ in range(20)]
    terc = pd.qcut(pd.Series(up).rank(method="first"), 3, labels=["lowest third", "middle third", "highest third"])
    terc = pd.Categorical(terc, categories=["highest third", "middle third", "lowest third"], ordered=True)
    r = pd.DataFrame({"campaign_id": "all (held out)", "group": np.where(treated[mask], "treatment", "control"),
                      "responded": y[mask].astype(bool), "response_value": 0.0, "predicted_uplift": terc})
    by = lift_table(r, ["predicted_uplift"])[["predicted_uplift", "contacts_treated", "contacts_control", "rate_treated",
                                              "rate_control", "incremental_rate", "ci_low", "ci_high", "verdict"]]
    return {"model": m, "holdout": mask, "uplift": up, "qini": curve, "qini_coefficient": qini_coefficient(curve),
            "random_qini": (float(np.mean(rand)), float(np.std(rand))), "by_tercile": by}


def reviewer_summary(lift: pd.DataFrame, names: pd.Series | None = None) -> pd.DataFrame:
    """The lift table in words and rounded figures, one row per campaign (and segment)."""
    keys = [c for c in lift.columns if c in ("campaign_id",) or c not in _LIFT_COLUMNS]
    out = pd.DataFrame({k: lift[k] for k in keys})
    if names is not None:
        out.insert(1, "campaign", lift["campaign_id"].map(names))
    out["contacted / control"] = [f"{a:,} / {b:,}" for a, b in zip(lift["contacts_treated"], lift["contacts_control"])]
    out["response: contacted vs control"] = [f"{a:.1%} vs {b:.1%}" for a, b in zip(lift["rate_treated"], lift["rate_control"])]
    out["extra response, percentage points (95% CI)"] = [
        f"{100 * d:+.1f} ({100 * lo:+.1f} to {100 * hi:+.1f})"
        for d, lo, hi in zip(lift["incremental_rate"], lift["ci_low"], lift["ci_high"])]
    out["extra responders"] = lift["incremental_responders"].round(0).astype("Int64")
    out[f"extra revenue per contact, {currency()} (95% CI)"] = [
        f"{d:+.2f} ({lo:+.2f} to {hi:+.2f})" for d, lo, hi in zip(
            lift["incremental_revenue_per_contact"], lift["revenue_ci_low"], lift["revenue_ci_high"])]
    out["verdict"] = lift["verdict"]
    return out


_LIFT_COLUMNS = {"contacts_treated", "responders_treated", "rate_treated", "revenue_per_contact_treated",
                 "contacts_control", "responders_control", "rate_control", "revenue_per_contact_control",
                 "incremental_rate", "ci_low", "ci_high", "incremental_responders", "incremental_revenue_per_contact",
                 "revenue_ci_low", "revenue_ci_high", "mde", "significant", "verdict"}


def plot_lift(lift: pd.DataFrame, by: str | None = None, truth: pd.Series | None = None, ax=None):
    """Incremental response rate with its 95% interval per campaign (and segment); ``truth``
    (same index labels) marks the true increments of a synthetic world."""
    import matplotlib.pyplot as plt

    labels = lift["campaign_id"].astype(str) + ("" if by is None else " · " + lift[by].astype(str))
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(lift) + 1.2))
    y = np.arange(len(lift))[::-1]
    d = lift["incremental_rate"].to_numpy()
    err = np.vstack([d - lift["ci_low"].to_numpy(), lift["ci_high"].to_numpy() - d])
    sig = lift["significant"].to_numpy(bool)
    for mask, color, label in ((sig, "tab:green", "significant (95% CI)"), (~sig, "tab:grey", "not significant")):
        if mask.any():
            ax.errorbar(d[mask], y[mask], xerr=err[:, mask], fmt="o", color=color, capsize=3, label=label)
    if truth is not None:
        ax.scatter(truth.reindex(labels.to_numpy()).to_numpy(), y, marker="x", color="tab:red", zorder=4, label="true increment")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, labels)
    ax.set_xlabel("extra response: contacted minus control (percentage points)")
    ax.xaxis.set_major_formatter(plt.matplotlib.ticker.FuncFormatter(lambda v, _: f"{100 * v:+.0f}"))
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    ax.figure.tight_layout()
    return ax.figure


def plot_uplift_evaluation(res: dict):
    """The held-out Qini curve and the measured lift per predicted-uplift third (from :func:`evaluate_uplift`)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    plot_qini(res["qini"], ax=axes[0])
    bt = res["by_tercile"]
    axes[1].bar(bt["predicted_uplift"].astype(str), bt["incremental_rate"],
                yerr=[bt["incremental_rate"] - bt["ci_low"], bt["ci_high"] - bt["incremental_rate"]], capsize=4,
                color="tab:green")
    axes[1].set(title="Measured lift by predicted-uplift third (held out)", xlabel="customers by predicted uplift",
                ylabel="extra response (percentage points)")
    axes[1].yaxis.set_major_formatter(plt.matplotlib.ticker.FuncFormatter(lambda v, _: f"{100 * v:+.0f}"))
    fig.tight_layout()
    return fig


def plot_qini(curve: pd.DataFrame, ax=None):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(curve["share_targeted"], curve["incremental_responders"], label="uplift model")
    ax.plot(curve["share_targeted"], curve["random"], "--", color="grey", label="random targeting")
    ax.set(xlabel="share of customers targeted (by predicted uplift)", ylabel="incremental responders",
           title="Qini curve (held-out customers)")
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure
