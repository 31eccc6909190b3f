"""Decisions per customer from versioned rules in params: treatment, next best offer, preferred
channel and medium, and the contact policy (do-not-contact, frequency cap, control holdback).

Rules are evaluated in order, first match wins; each ``when`` is a pandas expression over the
customer's scores (``value_band == 'high' and risk_band == 'high'``). The control group is drawn
by hashing the customer key with the rules' version, so a customer's group is stable while the
rules stay the same, and recorded per customer so measurement can compare against it later.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .config import check_rules
from .errors import ConfigError, CrmlabError
from .features import _slug

DAY = pd.Timedelta(days=1)

#: reasons against a contact, in the order they are checked (batch and moment of contact alike)
NO_CONTACT_TREATMENT, DO_NOT_CONTACT, NO_MEDIUM, CONTROL = ("no contact for this treatment", "do not contact",
                                                            "no consented medium", "control group")


def cap_reason(cap: int, days: int) -> str:
    return f"frequency cap ({cap} in {days} days)"


def held_back(keys, share: float, version) -> np.ndarray:
    """The control-group draw of a rules version (the trailing '|' keeps the groups of earlier versions)."""
    return control_flags(keys, share, f"{version}|")

#: medium -> (opt-in column, reachability column) of the customer profile
MEDIUM_CONSENT = {"email": ("email_opt_in", "has_email"), "mail": ("mail_opt_in", None),
                  "sms": ("sms_opt_in", "has_phone")}


def preferred_channel(orders: pd.DataFrame, cutoff, days: int = 365) -> pd.Series:
    """Per customer, the channel of most orders in the last ``days`` before ``cutoff`` (all history
    when none); ties go to the channel of the most recent order (by date, then by row order). Each
    customer's answer depends on their own orders only, so it is the same computed by parts."""
    o = orders[(orders["order_date"] < pd.Timestamp(cutoff)) & orders["channel"].notna()]
    recent = (o["order_date"] >= pd.Timestamp(cutoff) - days * DAY).to_numpy()
    latest = np.empty(len(o), dtype=np.int64)                # order of the orders by date, then row
    latest[np.argsort(o["order_date"].to_numpy(), kind="stable")] = np.arange(len(o))
    g = pd.DataFrame({"customer_key": o["customer_key"].to_numpy(), "channel": o["channel"].to_numpy(),
                      "score": np.where(recent, 1_000_000, 1), "latest": latest})
    per = g.groupby(["customer_key", "channel"], sort=False).agg(score=("score", "sum"), latest=("latest", "max"))
    per = per.reset_index().sort_values(["customer_key", "score", "latest"], ascending=[True, False, False],
                                        kind="stable").drop_duplicates("customer_key")
    return pd.Series(per["channel"].to_numpy(), index=pd.Index(per["customer_key"].to_numpy()), name="preferred_channel")


def _answered(contacts: pd.DataFrame, cutoff) -> tuple[pd.DataFrame, pd.Series]:
    """The contacts before ``cutoff`` and whether each was answered before it."""
    c = contacts[contacts["contact_date"] < pd.Timestamp(cutoff)]
    return c, c["responded"] & (c["response_date"] < pd.Timestamp(cutoff)).fillna(False)


def medium_rates(contacts: pd.DataFrame | None, cutoff) -> dict:
    """Per medium, the share of contacts before ``cutoff`` answered before it (over all customers): the
    rate :func:`preferred_medium` shrinks each customer's own towards (computed once when by parts)."""
    return rates_of([medium_counts(contacts, cutoff)])


def medium_counts(contacts: pd.DataFrame | None, cutoff) -> dict:
    """Per medium, (contacts before ``cutoff``, of them answered before it): what :func:`medium_rates`
    divides; they add up over parts of the customers (:func:`rates_of`)."""
    if contacts is None or not len(contacts):
        return {}
    c, answered = _answered(contacts, cutoff)
    at = {m: (c["medium"] == m).to_numpy() for m in MEDIUM_CONSENT}
    return {m: (int(a.sum()), int(answered[a].sum())) for m, a in at.items() if a.any()}


def rates_of(counts: list[dict]) -> dict:
    """:func:`medium_rates` from the :func:`medium_counts` of parts of the customers."""
    total = {}
    for part in counts:
        for m, (n, answered) in part.items():
            had = total.get(m, (0, 0))
            total[m] = (had[0] + n, had[1] + answered)
    return {m: total[m][1] / total[m][0] for m in MEDIUM_CONSENT if m in total}


def preferred_medium(profile: pd.DataFrame, contacts: pd.DataFrame | None, cutoff, prior: float = 5.0,
                     rates: dict | None = None) -> pd.DataFrame:
    """Per customer, the medium they consented to (and can be reached by) with the best response
    rate in their own history, shrunk towards the medium's overall rate by ``prior`` contacts
    (``rates``: those overall rates, :func:`medium_rates` of ``contacts`` when None).

    Returns ``preferred_medium`` (None when no medium is allowed) and ``allowed_media``.
    """
    allowed = pd.DataFrame(index=profile.index)
    for m, (opt, reach) in MEDIUM_CONSENT.items():
        ok = profile[opt].fillna(0).astype(bool) if opt in profile else pd.Series(False, index=profile.index)
        if reach is not None and reach in profile:
            ok &= profile[reach].fillna(0).astype(bool)
        allowed[m] = ok
    score = pd.DataFrame(0.0, index=profile.index, columns=allowed.columns)
    rates = medium_rates(contacts, cutoff) if rates is None else rates
    if rates and contacts is not None:         # a part without contacts still gets the overall rates
        c, answered = _answered(contacts, cutoff)
        for m in allowed.columns:
            if m not in rates:                      # nobody was ever contacted by m
                continue
            hit = c["medium"] == m
            base = rates[m]
            n = hit.groupby(c["customer_key"]).sum().reindex(profile.index, fill_value=0)
            r = (answered & hit).groupby(c["customer_key"]).sum().reindex(profile.index, fill_value=0)
            score[m] = (r + prior * base) / (n + prior)
    order = list(allowed.columns)
    s = score.where(allowed, -1.0).to_numpy() + 1e-9 * (len(order) - np.arange(len(order)))   # ties: listed order
    best = np.asarray(order, dtype=object)[s.argmax(axis=1)]
    out = pd.DataFrame({"preferred_medium": np.where(allowed.any(axis=1), best, None)}, index=profile.index)
    # the comma-joined allowed media per row, from a bit code per row (a row-wise apply took 16 s at 100k)
    bits = allowed.to_numpy(bool) @ (1 << np.arange(len(order)))
    names = np.array([",".join(m for j, m in enumerate(order) if code >> j & 1) for code in range(1 << len(order))],
                     dtype=object)
    out["allowed_media"] = names[bits] if len(allowed) else ""
    return out


def offers(recs: pd.DataFrame, products: pd.DataFrame, propensity: pd.DataFrame | None = None,
           bought: pd.DataFrame | None = None, exclude=(), top: int = 10) -> pd.DataFrame:
    """Per customer, the ``top`` recommended products ranked by score x department propensity: the
    offers a touchpoint may make (``customer_offers``; rank 1 is the next best offer).

    ``recs``: customer_key, product_id, score (recommendations); ``propensity``: customer_key and
    ``propensity_<department slug>`` columns (a department without a model counts 1);
    ``bought``: customer_key, product_id pairs never to offer again; ``exclude``: product ids
    never offered (guarded). Sensitive products (``products.sensitive``) are always excluded.
    Returns customer_key, rank (1 = best), product_id, product_name, nbo_score.
    """
    for col in ("customer_key", "product_id", "score"):
        if col not in recs:
            raise CrmlabError(f"next_best_offer: recommendations need column '{col}'")
    prod = products.set_index("product_id")
    r = recs[["customer_key", "product_id", "score"]].copy()
    unknown = ~r["product_id"].isin(prod.index)
    if unknown.any():
        raise CrmlabError(f"next_best_offer: {int(unknown.sum())} recommended product ids are not in products, "
                          f"e.g. {r.loc[unknown, 'product_id'].iloc[:3].tolist()}")
    r = r[~r["product_id"].isin(guarded(products, exclude))]
    if bought is not None and len(bought):
        seen = pd.MultiIndex.from_frame(bought[["customer_key", "product_id"]])
        r = r[~pd.MultiIndex.from_frame(r[["customer_key", "product_id"]]).isin(seen)]
    r["department"] = prod["department"].reindex(r["product_id"]).to_numpy()
    r["weight"] = 1.0
    if propensity is not None:
        p = propensity.set_index("customer_key")
        for dept in r["department"].dropna().unique():
            col = f"propensity_{_slug(dept)}"
            if col in p:
                hit = r["department"] == dept
                r.loc[hit, "weight"] = p[col].reindex(r.loc[hit, "customer_key"]).fillna(1.0).to_numpy()
    r["nbo_score"] = r["score"].clip(lower=0) * r["weight"]
    r = r.sort_values(["customer_key", "nbo_score", "score"], ascending=[True, False, False], kind="stable")
    r["rank"] = r.groupby("customer_key", sort=False).cumcount() + 1
    r = r[r["rank"] <= top]
    return pd.DataFrame({"customer_key": r["customer_key"].to_numpy(), "rank": r["rank"].to_numpy(np.int64),
                         "product_id": r["product_id"].to_numpy(),
                         "product_name": prod["product_name"].reindex(r["product_id"]).to_numpy(),
                         "nbo_score": r["nbo_score"].to_numpy(float)})


def guarded(products: pd.DataFrame, exclude=()) -> set:
    """Product ids never offered: ``exclude`` (guarded by affinity rules) and every sensitive product."""
    banned = set(exclude)
    if "sensitive" in products:
        banned |= set(products.loc[products["sensitive"].fillna(False).astype(bool), "product_id"])
    return banned


def next_best_offer(recs: pd.DataFrame, products: pd.DataFrame, propensity: pd.DataFrame | None = None,
                    bought: pd.DataFrame | None = None, exclude=()) -> pd.DataFrame:
    """Per customer, the best of :func:`offers` (indexed by customer_key): next_best_offer,
    next_best_offer_name, nbo_score."""
    best = offers(recs, products, propensity, bought, exclude, top=1)
    return pd.DataFrame({"next_best_offer": best["product_id"].to_numpy(),
                         "next_best_offer_name": best["product_name"].to_numpy(),
                         "nbo_score": best["nbo_score"].to_numpy()}, index=pd.Index(best["customer_key"], name="customer_key"))


def control_flags(keys: pd.Series | pd.Index, share: float, salt: str) -> np.ndarray:
    """Deterministic control-group draw: True for about ``share`` of keys, stable for a given salt."""
    if not 0 <= share < 1:
        raise ConfigError(f"decisions.control_share must be in [0, 1), got {share}")
    hash_key = (salt * 16)[:16] if salt else "crmlab-control00"
    h = pd.util.hash_pandas_object(pd.Series(np.asarray(keys, dtype=object)), index=False,
                                   hash_key=hash_key).to_numpy()
    return (h / 2.0**64) < share


def apply_rules(scores: pd.DataFrame, rules: list[dict], default: str = "no_action") -> pd.DataFrame:
    """Treatment and the rule that gave it, first matching rule wins."""
    rules = check_rules(rules, "apply_rules")
    treatment = pd.Series(default, index=scores.index, dtype=object)
    rule = pd.Series("default", index=scores.index, dtype=object)
    todo = pd.Series(True, index=scores.index)
    for r in rules:
        try:
            hit = scores.eval(r["when"], engine="python")
        except Exception as exc:  # noqa: BLE001 - any parse/name error is the rule author's to fix
            raise ConfigError(f"decisions rule '{r['name']}': cannot evaluate when: {r['when']!r}: {exc}; "
                              f"columns available: {', '.join(scores.columns)}") from None
        hit = pd.Series(np.asarray(hit, dtype=bool) if np.ndim(hit) else bool(hit), index=scores.index)
        hit &= todo
        treatment[hit] = r["treatment"]
        rule[hit] = r["name"]
        todo &= ~hit
    return pd.DataFrame({"treatment": treatment, "rule": rule})


def decide(scores: pd.DataFrame, D: dict, profile: pd.DataFrame, orders: pd.DataFrame,
           contacts: pd.DataFrame | None, cutoff, do_not_contact=(), medium_rates: dict | None = None) -> pd.DataFrame:
    """All decisions for customers in ``scores`` (indexed by customer_key).

    Adds preferred_channel, preferred_medium, treatment, rule, contact (bool), contact_reason,
    control (bool) and decision_version. ``contact`` is False for customers in the control group,
    on the do-not-contact list or without any consented medium, over the frequency cap, or whose
    treatment is in ``D['no_contact_treatments']``; the reason says which. ``medium_rates``: see
    :func:`preferred_medium` (given when ``scores`` is a part of the customers).
    """
    cutoff = pd.Timestamp(cutoff)
    out = scores.copy()
    out["preferred_channel"] = preferred_channel(orders, cutoff).reindex(out.index)
    med = preferred_medium(profile.reindex(out.index), contacts, cutoff, rates=medium_rates)
    out["preferred_medium"] = med["preferred_medium"]
    out = out.join(apply_rules(out, D["rules"], D["default_treatment"]))
    recent = pd.Series(0, index=out.index)
    if contacts is not None and len(contacts):
        c = contacts[(contacts["contact_date"] < cutoff) & (contacts["contact_date"] >= cutoff - D["frequency_days"] * DAY)]
        recent = c.groupby("customer_key").size().reindex(out.index, fill_value=0)
    held = held_back(out.index, D["control_share"], D["version"])
    reason = pd.Series("", index=out.index, dtype=object)
    checks = [(out["treatment"].isin(D["no_contact_treatments"]), NO_CONTACT_TREATMENT),
              (out.index.isin(list(do_not_contact)), DO_NOT_CONTACT),
              (out["preferred_medium"].isna(), NO_MEDIUM),
              (recent >= D["frequency_cap"], cap_reason(D["frequency_cap"], D["frequency_days"])),
              (held, CONTROL)]
    for mask, why in checks:
        reason[np.asarray(mask) & (reason == "").to_numpy()] = why
    # the control group: customers held back from a contact that would otherwise have happened (a customer
    # suppressed for another reason, e.g. a treatment without contact, is in no group)
    out["control"] = (reason == CONTROL).to_numpy()
    out["contact"] = (reason == "").to_numpy()
    out["contact_reason"] = reason.where(reason != "", None)
    out["decision_version"] = str(D["version"])
    return out


# ----------------------------------------------------------------------------- at the moment of contact

#: reasons against a contact that hold all day (the batch's verdict stands); the frequency cap and the
#: control group are decided again at the moment of contact
_STANDING = (NO_CONTACT_TREATMENT, DO_NOT_CONTACT, NO_MEDIUM)


def policy_table(D: dict, cutoff, guarded_products) -> pd.DataFrame:
    """The decision policy touchpoints apply at the moment of contact (``decision_policy``: setting, value)."""
    rows = {"decision_version": str(D["version"]), "control_share": repr(float(D["control_share"])),
            "frequency_cap": str(int(D["frequency_cap"])), "frequency_days": str(int(D["frequency_days"])),
            "no_contact_treatments": json.dumps(list(D["no_contact_treatments"])),
            "guarded_products": json.dumps(sorted(map(str, guarded_products))),
            "cutoff": pd.Timestamp(cutoff).isoformat()}
    return pd.DataFrame({"setting": list(rows), "value": list(rows.values())})


def recent_contacts(contacts: pd.DataFrame | None, cutoff, days: int) -> pd.DataFrame:
    """Contacts per customer and day in the ``days`` before ``cutoff`` (``recent_contacts``): what the
    frequency cap counts, published so that a touchpoint adds today's contacts to them."""
    cols = {"customer_key": pd.Series(dtype=object), "contact_date": pd.Series(dtype="datetime64[ns]"),
            "contacts": pd.Series(dtype=np.int64)}
    if contacts is None or not len(contacts):
        return pd.DataFrame(cols)
    cutoff = pd.Timestamp(cutoff)
    c = contacts[(contacts["contact_date"] < cutoff) & (contacts["contact_date"] >= cutoff - days * DAY)]
    out = c.groupby(["customer_key", c["contact_date"].dt.normalize()]).size().rename("contacts").reset_index()
    return out.astype({"contacts": np.int64, "customer_key": object})


def decide_now(row: dict, offer_rows: list[dict], contacts_in_window: int, policy: dict, basket=()) -> dict:
    """One customer's decision at the moment of contact, from the published row, their published
    offers (rank order) and the contacts counted in the frequency window (published ones plus those
    recorded since through the service).

    The treatment and the standing reasons against a contact (treatment without contact,
    do-not-contact, no consented medium) are the batch's; the frequency cap is applied to the count
    given; the control group is the batch's hash draw, so a customer is held back exactly when the
    batch would hold them back. The offer is the best published one that is not in the basket and
    not guarded, and only when a contact happens (the control group gets none)."""
    no_contact = set(json.loads(policy["no_contact_treatments"]))
    guarded_ids = set(json.loads(policy["guarded_products"]))
    cap, days = int(policy["frequency_cap"]), int(policy["frequency_days"])
    reason = row.get("contact_reason")
    if row["treatment"] in no_contact:
        reason = NO_CONTACT_TREATMENT
    elif reason not in _STANDING:
        reason = None
        if contacts_in_window >= cap:
            reason = cap_reason(cap, days)
        elif held_back([row["customer_key"]], float(policy["control_share"]), policy["decision_version"])[0]:
            reason = CONTROL
    in_basket = set(basket)
    best = next((o for o in sorted(offer_rows, key=lambda o: o["rank"])
                 if o["product_id"] not in in_basket and o["product_id"] not in guarded_ids), None)
    contact = reason is None
    return {"customer_key": row["customer_key"], "treatment": row["treatment"], "rule": row["rule"],
            "contact": contact, "control": reason == CONTROL, "reason": reason,
            "offer": ({"product_id": best["product_id"], "name": best["product_name"], "rank": int(best["rank"])}
                      if contact and best is not None else None),
            "contacts_in_window": int(contacts_in_window), "frequency_cap": cap,
            "preferred_channel": row.get("preferred_channel"), "preferred_medium": row.get("preferred_medium"),
            "decision_version": policy["decision_version"], "score_version": row.get("score_version")}


def summary(decided: pd.DataFrame) -> pd.DataFrame:
    """Customers per treatment: contacted, in the control group (held back from a contact that would
    otherwise have happened), and not contacted for another reason, by reason."""
    return summed([treatment_counts(decided)])


def treatment_counts(decided: pd.DataFrame) -> pd.DataFrame:
    """:func:`summary`'s counts before they are ordered: they add up over parts of the customers."""
    t = decided.groupby("treatment").agg(customers=("contact", "size"), contacted=("contact", "sum"),
                                         in_control_group=("control", "sum"))
    other = decided.dropna(subset=["contact_reason"])
    other = other[other["contact_reason"] != CONTROL]
    reasons = other.groupby(["treatment", "contact_reason"]).size().unstack(fill_value=0)
    reasons.columns = [f"not contacted: {c}" for c in reasons.columns]
    return t.join(reasons)


def summed(counts: list[pd.DataFrame]) -> pd.DataFrame:
    """The :func:`summary` of the customers of several parts from their :func:`treatment_counts`."""
    t = pd.concat(counts).fillna(0).groupby(level=0).sum().astype(int)
    fixed = ["customers", "contacted", "in_control_group"]
    return t[fixed + sorted(set(t.columns) - set(fixed))].sort_values("customers", ascending=False, kind="stable")


def read_do_not_contact(path, key_map: pd.DataFrame | None) -> set:
    """Customer keys on a do-not-contact file (CSV or Parquet with source_system, source_id)."""
    p = Path(path)
    try:
        df = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p, dtype=str)
    except (OSError, ValueError) as exc:
        raise CrmlabError(f"cannot read the do-not-contact file {p}: {exc}") from None
    missing = {"source_system", "source_id"} - set(df.columns)
    if missing:
        raise CrmlabError(f"{p}: do-not-contact file needs columns source_system and source_id; missing {sorted(missing)}")
    df = df.astype({"source_id": str, "source_system": str})
    if key_map is None:
        return set(df["source_system"] + ":" + df["source_id"])
    km = key_map.astype({"source_id": str})
    return set(df.merge(km, on=["source_system", "source_id"])["customer_key"])


SCORE_COLUMNS = ["customer_key", "segment_id", "segment", "value_band", "risk_band", "value_risk_cell", "value",
                 "p_alive", "expected_purchases_365d", "attrition_risk"]


def build_scores(segments: pd.DataFrame, value: pd.DataFrame, propensity: pd.DataFrame | None,
                 recs: pd.DataFrame | None, products: pd.DataFrame, ev, D: dict, cutoff,
                 bought: pd.DataFrame | None = None, do_not_contact=(), exclude_products=(),
                 offer_table: pd.DataFrame | None = None, medium_rates: dict | None = None) -> pd.DataFrame:
    """One row per recognised customer: segment, value, risks, propensities, next best offer,
    preferred channel and medium, treatment and contact policy (the ``customer_scores`` table
    without ``score_version`` / ``scored_at``, which publishing adds).

    ``bought``: customer_key, product_id of past purchases (never offered again);
    ``exclude_products``: guarded product ids (never offered); ``offer_table``: :func:`offers` of
    the same inputs when the caller has it (its rank 1 is the next best offer); ``medium_rates``: see
    :func:`decide`.
    """
    s = segments.set_index("customer_key")
    v = value.set_index("customer_key")
    s["p_alive"] = v["p_alive"].reindex(s.index)
    s["expected_purchases_365d"] = v["expected_purchases_365d"].reindex(s.index)
    if propensity is not None:
        p = propensity.set_index("customer_key")
        for c in p.columns:
            if c.startswith("propensity_") or c in ("response_propensity", "model_version"):
                s[c] = p[c].reindex(s.index)
        s["attrition_risk"] = p["attrition_risk"].reindex(s.index).fillna(s["attrition_risk"])
    if offer_table is not None and len(offer_table):
        best = offer_table[offer_table["rank"] == 1].set_index("customer_key")
        s = s.join(best[["product_id", "product_name"]].rename(
            columns={"product_id": "next_best_offer", "product_name": "next_best_offer_name"}))
    elif recs is not None and len(recs):
        nbo = next_best_offer(recs, products, propensity, bought, exclude_products)
        s = s.join(nbo[["next_best_offer", "next_best_offer_name"]])
    else:
        s["next_best_offer"] = s["next_best_offer_name"] = None
    decided = decide(s, D, ev.profile, ev.orders, ev.contacts, cutoff, do_not_contact, medium_rates)
    decided.index.name = "customer_key"
    out = decided.reset_index()
    keep = SCORE_COLUMNS + [c for c in out.columns if c.startswith("propensity_")] + [
        "response_propensity", "next_best_offer", "next_best_offer_name", "preferred_channel", "preferred_medium",
        "treatment", "rule", "contact", "contact_reason", "control", "model_version", "decision_version"]
    out = out.reindex(columns=keep)
    for c in ("segment", "value_band", "risk_band", "value_risk_cell", "next_best_offer", "next_best_offer_name",
              "preferred_channel", "preferred_medium", "contact_reason", "model_version", "treatment", "rule"):
        out[c] = out[c].astype(object).where(out[c].notna(), None)
    return out


def no_offers() -> pd.DataFrame:
    """An empty ``customer_offers`` table (no recommendations)."""
    return pd.DataFrame({"customer_key": [], "rank": pd.Series(dtype="int64"), "product_id": [],
                         "product_name": [], "nbo_score": pd.Series(dtype=float)})


def decide_tables(ev, segments, value, propensity, recs, products, D: dict, cutoff, do_not_contact, guarded,
                  top: int, medium_rates: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(``customer_scores`` without the publish columns, ``customer_offers``, ``recent_contacts``) of the
    customers in ``ev`` (:class:`~crmlab.events.CustomerEvents`) and ``segments``: all of them, or one part
    of them on a worker (:mod:`crmlab.decisions_dask`, with the overall ``medium_rates``)."""
    bought = ev.lines[["customer_key", "product_id"]].drop_duplicates()
    offered = (offers(recs, products, propensity, bought, guarded, top=top)
               if recs is not None and len(recs) else no_offers())
    scores = build_scores(segments, value, propensity, recs, products, ev, D, cutoff, bought=bought,
                          do_not_contact=do_not_contact, exclude_products=guarded, offer_table=offered,
                          medium_rates=medium_rates)
    return scores, offered, recent_contacts(ev.contacts, cutoff, D["frequency_days"])
