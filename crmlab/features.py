"""Customer features at a cut-off date, strictly from what happened before it, and labels after it.

Both read a run's :class:`~crmlab.events.CustomerEvents`. ``FeatureBuilder`` learns its vocabularies
(channels, departments, media) from rows before the training cut-off, so a table built at any
later cut-off has the same columns. ``labels`` reads the window after a cut-off.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from .errors import CrmlabError
from .estimator import Params, reset
from .events import CustomerEvents

DAY = pd.Timedelta(days=1)


def _slug(s) -> str:
    return re.sub(r"[^0-9a-z]+", "_", str(s).lower()).strip("_")


def _vocabulary(ev: CustomerEvents, cutoff) -> tuple[bool, set, set]:
    """(any order before ``cutoff``, the orders' channels and the contacts' media before it) of ``ev``."""
    o = ev.orders[ev.orders["order_date"] < cutoff]
    c = ev.contacts
    media = set() if c is None else set(c.loc[c["contact_date"] < cutoff, "medium"].dropna().unique().tolist())
    return len(o) > 0, set(o["channel"].dropna().unique().tolist()), media


class FeatureBuilder(Params):
    """Point-in-time customer features (one row per customer with an order before the cut-off).

    Parameters
    ----------
    windows : recent-activity windows in days (orders and spend in the last w days, and in the w before).

    Attributes
    ----------
    channels_, departments_, media_ : vocabularies seen before the training cut-off.
    feature_names_, categorical_ : output columns, and those that are categorical.
    """

    def __init__(self, windows: tuple[int, ...] = (90, 365)):
        self.windows = windows

    def fit(self, ev: CustomerEvents, cutoff) -> "FeatureBuilder":
        reset(self)
        cutoff = pd.Timestamp(cutoff)
        got = ev.map_parts(_vocabulary, cutoff, what="the features' channels and media")
        if not any(g[0] for g in got):
            raise CrmlabError(f"no orders before the cut-off {cutoff:%Y-%m-%d}: nothing to build features from")
        self.channels_ = sorted(set().union(*(g[1] for g in got)))
        self.departments_ = ev.departments(cutoff)
        self.media_ = sorted(set().union(*(g[2] for g in got)))
        self.categorical_ = ["first_channel", "top_department"]
        self.feature_names_ = list(self.transform(ev.empty(), cutoff).columns)   # the columns, not the rows
        return self

    def transform(self, ev: CustomerEvents, cutoff) -> pd.DataFrame:
        """The features at ``cutoff``: customer keys are coded once and every per-customer count, sum and
        extreme is a ``bincount`` over those codes (a pandas groupby per feature cost 0.4 s per table on
        5,000 customers, most of it fixed overhead, and grows with every order at 1M)."""
        if not hasattr(self, "channels_"):
            raise CrmlabError("FeatureBuilder is not fitted: call fit(events, training_cutoff) first")
        cutoff = pd.Timestamp(cutoff)
        C = ev.codes()
        orows = (ev.orders["order_date"] < cutoff).to_numpy()
        o = ev.orders[orows]
        keys, remap = C.subset(orows)                    # sorted keys of customers with an order before
        codes = remap[C.order[orows]]
        K = len(keys)
        ok = codes >= 0
        cnt = _Counter(codes, ok, K)
        dates = o["order_date"].to_numpy()
        first, last = cnt.extreme(dates, np.minimum, keys), cnt.extreme(dates, np.maximum, keys)
        n = pd.Series(cnt.sum(), index=keys)
        value = np.nan_to_num(o["value"].to_numpy(np.float64))
        f = pd.DataFrame(index=keys)
        f["recency_days"] = (cutoff - last) / DAY
        f["tenure_days"] = (cutoff - first) / DAY
        f["orders"] = n.astype("float64")
        f["spend"] = cnt.sum(value)
        f["order_value"] = f["spend"] / f["orders"]
        span = (last - first) / DAY
        f["interpurchase_days"] = (span / (n - 1)).where(n > 1).clip(lower=1.0)
        f["overdue"] = f["recency_days"] / f["interpurchase_days"]
        for w in self.windows:
            recent = dates >= np.datetime64(cutoff - w * DAY)
            before = ~recent & (dates >= np.datetime64(cutoff - 2 * w * DAY))
            f[f"orders_{w}d"] = cnt.sum(recent)
            f[f"trend_{w}d"] = f[f"orders_{w}d"] - cnt.sum(before)
            f[f"spend_{w}d"] = cnt.sum(np.where(recent, value, 0.0))
        ch = cnt.table(pd.Index(self.channels_).get_indexer(o["channel"]), len(self.channels_))   # -1: unseen
        tot = ch.sum(axis=1, keepdims=True)
        ch = np.divide(ch, tot, out=np.zeros_like(ch), where=tot > 0)     # shares among known channels
        for j, c in enumerate(self.channels_):
            f[f"share_channel_{_slug(c)}"] = ch[:, j]
        lrows = (ev.lines["order_date"] < cutoff).to_numpy()
        ln = ev.lines[lrows]
        lcodes = remap[C.line[lrows]]
        dcnt = _Counter(lcodes, lcodes >= 0, K)
        dv = dcnt.table(pd.Index(self.departments_).get_indexer(ln["department"]), len(self.departments_),
                        np.nan_to_num(ln["value"].to_numpy(np.float64)))
        tot = dv.sum(axis=1, keepdims=True)
        share = np.divide(dv, tot, out=np.zeros_like(dv), where=tot != 0)
        for j, d in enumerate(self.departments_):
            f[f"share_dept_{_slug(d)}"] = share[:, j]
        if ev.contacts is not None:
            self._contact_features(f, ev.contacts, C.contact, remap, cutoff)
        pos = C.profile_pos[remap[:-1] >= 0]
        prof = ev.profile.iloc[pos].set_axis(f.index) if (pos >= 0).all() else ev.profile.reindex(f.index)
        f["age"] = ((cutoff - prof["dob"]) / DAY / 365.25).where(prof["dob"] < cutoff)
        for col in ("n_systems", "email_opt_in", "mail_opt_in", "sms_opt_in", "has_email", "has_phone"):
            f[col] = prof[col].astype("float64") if col in prof else np.nan
        best = np.full(K, np.iinfo(np.int64).max)            # each customer's first order by (date, order id)
        np.minimum.at(best, codes[ok], C.order_rank[orows][ok])
        f["first_channel"] = ev.orders["channel"].iloc[C.order_by[best]].set_axis(f.index).astype(object)
        if len(self.departments_):
            top = pd.Series(np.asarray(self.departments_, dtype=object)[dv.argmax(axis=1)], index=keys)
            f["top_department"] = top.where(dv.max(axis=1) > 0).astype(object)
        else:
            f["top_department"] = None
        return f

    def _contact_features(self, f: pd.DataFrame, contacts: pd.DataFrame, contact_codes: np.ndarray,
                          remap: np.ndarray, cutoff) -> None:
        crows = (contacts["contact_date"] < cutoff).to_numpy()
        c = contacts[crows]
        codes = remap[contact_codes[crows]]
        cnt = _Counter(codes, codes >= 0, len(f))
        answered = (c["responded"] & (c["response_date"] < cutoff).fillna(False)).to_numpy(bool)
        dates = c["contact_date"].to_numpy()
        f["contacts"] = cnt.sum()
        f["responses"] = cnt.sum(answered)
        f["response_rate"] = (f["responses"] / f["contacts"]).where(f["contacts"] > 0)
        f["contacts_365d"] = cnt.sum(dates >= np.datetime64(cutoff - 365 * DAY))
        medium = c["medium"].to_numpy(object)
        for m in self.media_:
            f[f"contacts_{_slug(m)}"] = cnt.sum(medium == m)
        f["days_since_contact"] = (cutoff - cnt.extreme(dates, np.maximum, index=f.index)) / DAY


class _Counter:
    """Per-group sums, tables and extremes over integer group codes (rows with ``ok`` False are left out)."""

    def __init__(self, codes: np.ndarray, ok: np.ndarray, groups: int):
        self.codes, self.ok, self.k = codes[ok], ok, groups

    def sum(self, weights=None) -> np.ndarray:
        """Per group: the row count, or the sum of ``weights`` (float64)."""
        w = None if weights is None else np.asarray(weights, dtype=np.float64)[self.ok]
        return np.bincount(self.codes, weights=w, minlength=self.k).astype(np.float64)

    def table(self, cat: np.ndarray, width: int, weights=None) -> np.ndarray:
        """groups x ``width``: counts (or sums of ``weights``) per category code (code -1 left out)."""
        cat = np.asarray(cat)[self.ok]
        keep = cat >= 0
        w = None if weights is None else np.asarray(weights, dtype=np.float64)[self.ok][keep]
        flat = np.bincount(self.codes[keep] * width + cat[keep], weights=w, minlength=self.k * width)
        return flat.astype(np.float64).reshape(self.k, width)

    def extreme(self, dates: np.ndarray, ufunc, index: pd.Index) -> pd.Series:
        """Per group, the earliest (``np.minimum``) or latest (``np.maximum``) date; NaT for none."""
        ints = dates.view("i8")[self.ok]
        fill = np.iinfo(np.int64).max if ufunc is np.minimum else np.iinfo(np.int64).min
        out = np.full(self.k, fill, dtype=np.int64)
        ufunc.at(out, self.codes, ints)
        out[out == fill] = np.iinfo(np.int64).min                  # NaT
        return pd.Series(out.view(dates.dtype), index=index)


def labels(ev: CustomerEvents, customers: pd.Index, cutoff, horizon_days: int, departments=()) -> pd.DataFrame:
    """Outcomes in ``[cutoff, cutoff + horizon)`` for ``customers``.

    ``attrition``: no order in the window; ``buy_<department>``: bought from the department.
    """
    cutoff = pd.Timestamp(cutoff)
    end = cutoff + horizon_days * DAY
    if end > ev.last_date + DAY:
        raise CrmlabError(f"the label window {cutoff:%Y-%m-%d} .. {end:%Y-%m-%d} runs past the last order "
                          f"({ev.last_date:%Y-%m-%d}): choose an earlier cut-off or a shorter horizon")
    y = pd.DataFrame(index=customers)
    y["attrition"] = ~ev.ordered(customers, cutoff, end).to_numpy()
    bought = ev.bought(customers, cutoff, end, list(departments))
    for d in departments:
        y[f"buy_{_slug(d)}"] = bought[d].to_numpy()
    return y.astype(np.int8)
