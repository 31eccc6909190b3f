"""Campaign measurement: contacts joined to what customers did next.

``attribute_responses`` links each contact to at most one later order (by reference code when the
order quotes the contact's code, else the customer's first order inside the campaign window), and
each order to at most one contact.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import CrmlabError


def keyed_contacts(src, key_map: pd.DataFrame | None = None) -> pd.DataFrame:
    """Contacts with ``customer_key`` (record keys ``<system>:<id>`` without a key map) and ``window_days``."""
    if "contacts" not in src.tables or "campaigns" not in src.tables:
        raise CrmlabError("this run's inputs have no 'contacts' and 'campaigns' tables: nothing to measure")
    c = src["contacts"].astype({"source_id": "string"})
    if key_map is None:
        c = c.assign(customer_key=(c["source_system"].astype("string") + ":" + c["source_id"]).to_numpy())
    else:
        km = key_map[["source_system", "source_id", "customer_key"]].astype({"source_id": "string"})
        c = c.merge(km, on=["source_system", "source_id"], how="left")
        missing = c["customer_key"].isna()
        if missing.any():
            raise CrmlabError(f"{int(missing.sum()):,} contacts reference source records missing from the customer "
                              f"key map, e.g. {c.loc[missing, ['source_system', 'source_id']].head(3).to_dict('records')}")
    camp = src["campaigns"][["campaign_id", "window_days"]]
    return c.merge(camp, on="campaign_id", how="left")


def attribute_responses(contacts: pd.DataFrame, orders: pd.DataFrame, window_days: int | None = None) -> pd.DataFrame:
    """One row per contact with its response, if any.

    ``contacts``: ``contact_id, customer_key, contact_date, ref_code`` and ``window_days`` (or pass
    ``window_days``); ``orders``: ``order_id, customer_key, order_date, value, ref_code``.
    An order quoting a contact's reference code within the window is that contact's response; else
    the customer's first order in ``[contact_date, contact_date + window)``. An order answers one
    contact only (a code-quoted one first, then the latest contact before it).
    Adds ``responded``, ``response_order_id``, ``response_date``, ``response_value`` and
    ``attribution`` (``ref_code`` | ``window`` | missing).
    """
    need_c = {"contact_id", "customer_key", "contact_date"} | ({"window_days"} if window_days is None else set())
    need_o = {"order_id", "customer_key", "order_date", "value"}
    for name, df, need in (("contacts", contacts, need_c), ("orders", orders, need_o)):
        missing = sorted(need - set(df.columns))
        if missing:
            raise CrmlabError(f"attribute_responses: {name} lack column(s) {', '.join(missing)}")
    c = contacts.reset_index(drop=True)
    win = pd.to_timedelta(c["window_days"] if window_days is None else window_days, unit="D")
    c = c.assign(_end=c["contact_date"] + win)
    o = orders[["order_id", "customer_key", "order_date", "value"]
               + (["ref_code"] if "ref_code" in orders else [])]

    hits = []
    if "ref_code" in c and "ref_code" in o:
        quoted = o[o["ref_code"].notna()]
        m = c[["contact_id", "ref_code", "contact_date", "_end"]].dropna(subset=["ref_code"]).merge(
            quoted.drop(columns="customer_key"), on="ref_code")
        m = m[(m["order_date"] >= m["contact_date"]) & (m["order_date"] < m["_end"])]
        m = m.sort_values(["order_date", "order_id"]).drop_duplicates("contact_id").drop_duplicates("order_id")
        hits.append(m.assign(attribution="ref_code"))
    used_c = set(hits[0]["contact_id"]) if hits else set()
    used_o = set(hits[0]["order_id"]) if hits else set()
    rest = c[~c["contact_id"].isin(used_c)][["contact_id", "customer_key", "contact_date", "_end"]]
    m = rest.merge(o[~o["order_id"].isin(used_o)], on="customer_key")
    m = m[(m["order_date"] >= m["contact_date"]) & (m["order_date"] < m["_end"])]
    m = m.sort_values(["order_date", "order_id"]).drop_duplicates("contact_id")
    m = m.sort_values(["contact_date", "contact_id"], ascending=False).drop_duplicates("order_id")  # latest touch
    hits.append(m.assign(attribution="window"))

    h = pd.concat(hits, ignore_index=True)[["contact_id", "order_id", "order_date", "value", "attribution"]]
    h = h.rename(columns={"order_id": "response_order_id", "order_date": "response_date", "value": "response_value"})
    out = c.drop(columns="_end").merge(h, on="contact_id", how="left")
    out["responded"] = out["response_order_id"].notna()
    out["response_value"] = out["response_value"].fillna(0.0)
    return out


def response_history(responses: pd.DataFrame, cutoff) -> pd.DataFrame:
    """Per customer, contacts and responses strictly before ``cutoff`` (responses dated before it too)."""
    cutoff = pd.Timestamp(cutoff)
    r = responses[responses["contact_date"] < cutoff]
    answered = r["responded"].to_numpy() & (r["response_date"] < cutoff).fillna(False).to_numpy()
    g = pd.DataFrame({"customer_key": r["customer_key"].to_numpy(), "contacts": 1,
                      "responses": answered.astype(np.int64)}).groupby("customer_key").sum()
    return g
