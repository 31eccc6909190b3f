"""Point-in-time features (no leakage), labels, and response attribution."""
import numpy as np
import pandas as pd
import pytest

from crmlab.errors import CrmlabError
from crmlab.events import CustomerEvents
from crmlab.features import FeatureBuilder, labels
from crmlab.measure import attribute_responses
from crmlab.sources import load


@pytest.fixture(scope="module")
def events(world):
    return CustomerEvents.from_sources(load(world))


def _poison_after(ev: CustomerEvents, cutoff) -> CustomerEvents:
    """Every row dated on or after the cut-off replaced by nonsense."""
    o = ev.orders.copy()
    late = o["order_date"] >= cutoff
    o.loc[late, "value"] = 1e9
    o.loc[late, "channel"] = "teleport"
    ln = ev.lines.copy()
    late_l = ln["order_date"] >= cutoff
    ln.loc[late_l, "value"] = -5.0
    ln.loc[late_l, "department"] = "Nonsense"
    c = ev.contacts.copy()
    late_c = c["contact_date"] >= cutoff
    c.loc[late_c, "medium"] = "pigeon"
    c.loc[late_c, "responded"] = True
    c.loc[late_c, "response_date"] = cutoff - pd.Timedelta(days=1)        # even a back-dated response
    extra = o[late].head(50).assign(customer_key=o["customer_key"].iloc[0], order_id=-np.arange(1, 51))
    return CustomerEvents(pd.concat([o, extra]), ln, c, ev.profile)


def test_features_use_nothing_from_after_the_cutoff(events):
    cutoff = events.last_date - pd.Timedelta(days=200)
    fb = FeatureBuilder().fit(events, cutoff)
    clean = fb.transform(events, cutoff)
    poisoned_ev = _poison_after(events, cutoff)
    poisoned = FeatureBuilder().fit(poisoned_ev, cutoff).transform(poisoned_ev, cutoff)
    pd.testing.assert_frame_equal(clean, poisoned)
    assert clean.shape[1] > 35 and clean["recency_days"].min() >= 1
    assert (clean.index.isin(events.orders.loc[events.orders["order_date"] < cutoff, "customer_key"])).all()


@pytest.mark.parametrize("days_back", [0, 200, 700])
def test_features_equal_the_groupby_reference(events, days_back):
    """The bincount features equal one pandas groupby per feature (tests/naive.py), also with a
    value missing, a department and channel never seen in training and NaN keys in the lines."""
    from naive import features_ref

    cutoff = events.last_date + pd.Timedelta(days=1) - pd.Timedelta(days=days_back)
    fb = FeatureBuilder().fit(events, events.last_date - pd.Timedelta(days=400))
    ev = CustomerEvents(events.orders.copy(), events.lines.copy(), events.contacts, events.profile)
    ev.orders.loc[ev.orders.index[:40], "value"] = np.nan
    ev.lines.loc[ev.lines.index[:30], "department"] = "Brand new"
    ev.lines.loc[ev.lines.index[30:60], "value"] = np.nan
    pd.testing.assert_frame_equal(fb.transform(ev, cutoff), features_ref(fb, ev, cutoff), rtol=1e-12, atol=1e-9)


def test_labels_read_only_the_window(events):
    cutoff = events.last_date - pd.Timedelta(days=200)
    X = FeatureBuilder().fit(events, cutoff).transform(events, cutoff)
    y = labels(events, X.index, cutoff, 90, ["Baby"])
    o = events.orders
    bought = set(o.loc[(o["order_date"] >= cutoff) & (o["order_date"] < cutoff + pd.Timedelta(days=90)), "customer_key"])
    assert (y["attrition"] == ~X.index.isin(bought)).all() and 0.3 < y["attrition"].mean() < 0.95
    assert (y["buy_baby"] <= 1 - y["attrition"]).all()
    with pytest.raises(CrmlabError, match="runs past the last order"):
        labels(events, X.index, events.last_date, 90)


def test_attribution_by_code_then_window_one_response_each():
    d = pd.Timestamp
    contacts = pd.DataFrame({
        "contact_id": [1, 2, 3, 4], "customer_key": ["a", "b", "c", "c"],
        "contact_date": [d("2026-01-01"), d("2026-01-01"), d("2026-01-01"), d("2026-01-10")],
        "ref_code": ["R1", "R2", "R3", "R4"], "window_days": [30, 30, 30, 30]})
    orders = pd.DataFrame({
        "order_id": [10, 11, 12, 13, 14], "customer_key": ["a", "a", "b", "c", "c"],
        "order_date": [d("2026-01-03"), d("2026-01-05"), d("2026-02-15"), d("2026-01-12"), d("2026-01-13")],
        "value": [5.0, 7.0, 9.0, 3.0, 4.0], "ref_code": [None, "R1", None, None, "R3"]})
    r = attribute_responses(contacts, orders).set_index("contact_id")
    assert r.loc[1, "response_order_id"] == 11 and r.loc[1, "attribution"] == "ref_code"   # code beats earlier order
    assert not r.loc[2, "responded"]                                                       # outside the window
    assert r.loc[3, "response_order_id"] == 14 and r.loc[3, "attribution"] == "ref_code"
    assert r.loc[4, "response_order_id"] == 13 and r.loc[4, "attribution"] == "window"    # 14 already used
    assert r["response_order_id"].dropna().is_unique
    with pytest.raises(CrmlabError, match="lack column\\(s\\) window_days"):
        attribute_responses(contacts.drop(columns="window_days"), orders)
