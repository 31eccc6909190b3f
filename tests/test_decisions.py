"""Decisions: rules in order, contact policy, control group, next best offer, preferred channel and medium."""
import numpy as np
import pandas as pd
import pytest

from crmlab import decisions
from crmlab.config import DEFAULTS
from crmlab.errors import ConfigError, CrmlabError

CUT = pd.Timestamp("2026-07-01")


def _world(n=400):
    keys = pd.Index([f"K{i:04d}" for i in range(n)], name="customer_key")
    rng = np.random.default_rng(0)
    scores = pd.DataFrame({"value_band": rng.choice(["low", "medium", "high"], n),
                           "risk_band": rng.choice(["low", "medium", "high"], n),
                           "segment_id": 0, "next_best_offer": "P1"}, index=keys)
    profile = pd.DataFrame({"email_opt_in": 1.0, "has_email": 1.0, "mail_opt_in": 1.0, "sms_opt_in": 0.0,
                            "has_phone": 1.0}, index=keys)
    profile.iloc[:10] = 0.0                                        # no consent at all
    orders = pd.DataFrame({"customer_key": np.repeat(keys, 3), "order_date": CUT - pd.to_timedelta(
        np.tile([400, 100, 10], n), unit="D"), "channel": np.tile(["store", "web", "web"], n)})
    orders.loc[orders.index[-3:], "channel"] = ["web", "store", "store"]   # last customer prefers store
    contacts = pd.DataFrame({"customer_key": np.repeat(keys[10:20], 2), "contact_date": CUT - pd.Timedelta(days=5),
                             "medium": "email", "responded": False, "response_date": pd.NaT})
    return scores, profile, orders, contacts


def test_rules_first_match_wins_and_policy_applies():
    scores, profile, orders, contacts = _world()
    D = dict(DEFAULTS["decisions"], control_share=0.2)
    out = decisions.decide(scores, D, profile, orders, contacts, CUT, do_not_contact={"K0100"})
    hv = (scores["value_band"] == "high") & (scores["risk_band"] != "low")
    assert (out.loc[hv, "treatment"] == "retention_offer").all()
    assert (out.loc[hv, "rule"] == "retain valuable at risk").all()
    letgo = (scores["value_band"] == "low") & (scores["risk_band"] == "high")
    assert (out.loc[letgo, "treatment"] == "no_action").all() and not out.loc[letgo, "contact"].any()
    assert (out.loc[out.index[:10], "contact_reason"].isin(["no consented medium", "no contact for this treatment"])).all()
    assert out.loc["K0100", "contact_reason"] in ("do not contact", "no contact for this treatment")
    capped = out.loc[out.index[10:20]]
    assert (capped["contact_reason"].fillna("").str.startswith(("frequency cap", "no contact"))).all()
    assert not out.loc[out["control"], "contact"].any()
    would = out["contact"] | out["control"]                  # held back only from a contact that would happen
    assert 0.12 < out.loc[would, "control"].mean() < 0.28
    assert not out.loc[out["treatment"] == "no_action", "control"].any()
    assert (out.loc[out["control"], "contact_reason"] == "control group").all()
    assert out.loc["K0399", "preferred_channel"] == "store" and out.loc["K0001", "preferred_channel"] == "web"
    assert out.loc["K0050", "preferred_medium"] == "email" and pd.isna(out.loc["K0001", "preferred_medium"])
    assert (out["decision_version"] == D["version"]).all()
    assert decisions.summary(out)["customers"].sum() == len(out)


def test_control_group_is_stable_and_follows_the_version():
    keys = pd.Index([f"K{i}" for i in range(20000)])
    a = decisions.control_flags(keys, 0.1, "v1")
    assert np.array_equal(a, decisions.control_flags(keys, 0.1, "v1"))
    assert abs(a.mean() - 0.1) < 0.01
    b = decisions.control_flags(keys, 0.1, "v2")
    assert 0.005 < (a & b).mean() < 0.02                             # independent draw for a new version
    with pytest.raises(ConfigError, match="control_share"):
        decisions.control_flags(keys, 1.0, "v1")


def test_bad_rule_is_a_clear_error():
    scores, profile, orders, contacts = _world(20)
    D = dict(DEFAULTS["decisions"], rules=[{"name": "typo", "when": "valu_band == 'high'", "treatment": "x"}])
    with pytest.raises(ConfigError, match="rule 'typo'.*valu_band"):
        decisions.decide(scores, D, profile, orders, contacts, CUT)
    with pytest.raises(ConfigError, match="name, when and treatment"):
        decisions.apply_rules(scores, [{"name": "x", "when": "True"}])


def test_next_best_offer_excludes_sensitive_guarded_and_bought():
    products = pd.DataFrame({"product_id": ["P1", "P2", "P3", "P4"], "product_name": ["a", "b", "c", "d"],
                             "department": ["Food", "Food", "Baby", "Home"], "sensitive": [False, False, False, True]})
    recs = pd.DataFrame({"customer_key": ["A"] * 4 + ["B"] * 2, "product_id": ["P4", "P1", "P3", "P2", "P1", "P3"],
                         "score": [9.0, 5.0, 4.0, 1.0, 1.0, 0.9]})
    prop = pd.DataFrame({"customer_key": ["A", "B"], "propensity_food": [0.1, 0.1], "propensity_baby": [0.9, 0.05]})
    bought = pd.DataFrame({"customer_key": ["B"], "product_id": ["P1"]})
    nbo = decisions.next_best_offer(recs, products, prop, bought, exclude={"P2"})
    assert nbo.loc["A", "next_best_offer"] == "P3"                  # P4 sensitive; 4 x 0.9 beats 5 x 0.1
    assert nbo.loc["B", "next_best_offer"] == "P3"                  # P1 already bought
    with pytest.raises(CrmlabError, match="not in products"):
        decisions.next_best_offer(recs.assign(product_id="P9"), products)


def test_do_not_contact_file(tmp_path):
    km = pd.DataFrame({"source_system": ["web", "store"], "source_id": ["W1", "S1"], "customer_key": ["K1", "K2"]})
    p = tmp_path / "dnc.csv"
    p.write_text("source_system,source_id\nweb,W1\n")
    assert decisions.read_do_not_contact(p, km) == {"K1"}
    p.write_text("system,id\nweb,W1\n")
    with pytest.raises(CrmlabError, match="dnc.csv.*source_system and source_id"):
        decisions.read_do_not_contact(p, km)


def test_allowed_media_lists_each_customers_consented_media():
    """allowed_media (built from a bit code per row) equals joining each row's allowed media in order."""
    _, profile, _, contacts = _world()
    rng = np.random.default_rng(1)
    for col in profile:
        profile[col] = rng.integers(0, 2, len(profile)).astype(float)
    out = decisions.preferred_medium(profile, contacts, CUT)
    want = [",".join(m for m, (opt, reach) in decisions.MEDIUM_CONSENT.items()
                     if row[opt] and (reach is None or row[reach])) for _, row in profile.iterrows()]
    assert out["allowed_media"].tolist() == want and "" in want and "email,mail,sms" in want


def test_decide_now_keeps_standing_reasons_redraws_cap_and_control_and_skips_guarded():
    """decide_now: the batch's standing reasons stand; the cap counts what it is given; the control
    draw is the batch's hash (every key); guarded and basket items are never the offer."""
    import json

    D = {"version": "v7", "control_share": 0.3, "frequency_cap": 2, "frequency_days": 30,
         "no_contact_treatments": ["no_action"]}
    policy = dict(decisions.policy_table(D, "2026-06-30", {"P9"}).to_numpy())
    assert json.loads(policy["guarded_products"]) == ["P9"]
    keys = [f"K{i:04d}" for i in range(400)]
    held = decisions.control_flags(pd.Index(keys), 0.3, "v7|")
    offers = [{"rank": 1, "product_id": "P9", "product_name": "guarded"},
              {"rank": 2, "product_id": "P1", "product_name": "one"}, {"rank": 3, "product_id": "P2", "product_name": "two"}]
    for k, h in zip(keys, held):
        row = {"customer_key": k, "treatment": "newsletter", "rule": "default", "contact_reason": None}
        d = decisions.decide_now(row, offers, 0, policy)
        assert d["control"] == h and d["contact"] == (not h)
        assert d["offer"] == (None if h else {"product_id": "P1", "name": "one", "rank": 2})
    row = {"customer_key": keys[int(np.flatnonzero(~held)[0])], "treatment": "newsletter", "rule": "r",
           "contact_reason": "frequency cap (2 in 30 days)"}
    assert decisions.decide_now(row, offers, 1, policy)["contact"]                   # the cap is counted again
    assert decisions.decide_now(row, offers, 2, policy)["reason"] == "frequency cap (2 in 30 days)"
    assert decisions.decide_now(row, offers, 0, policy, basket=["P1"])["offer"]["product_id"] == "P2"
    assert decisions.decide_now(row, offers, 0, policy, basket=["P1", "P2"])["offer"] is None
    for standing in ("do not contact", "no consented medium"):
        d = decisions.decide_now({**row, "contact_reason": standing}, offers, 0, policy)
        assert (d["contact"], d["reason"], d["offer"]) == (False, standing, None)
    d = decisions.decide_now({**row, "treatment": "no_action", "contact_reason": None}, offers, 0, policy)
    assert d["reason"] == "no contact for this treatment"


def test_offers_rank_excludes_bought_and_guarded_and_rank_one_is_the_next_best_offer():
    products = pd.DataFrame({"product_id": ["A", "B", "C", "D"], "product_name": list("abcd"),
                             "department": ["x", "x", "y", "y"], "sensitive": [False, False, False, True]})
    recs = pd.DataFrame({"customer_key": ["K1"] * 4 + ["K2"] * 2, "product_id": ["A", "B", "C", "D", "A", "C"],
                         "score": [0.9, 0.8, 0.7, 0.95, 0.1, 0.2]})
    bought = pd.DataFrame({"customer_key": ["K1"], "product_id": ["A"]})
    o = decisions.offers(recs, products, bought=bought, exclude={"C"}, top=5)
    assert o[o["customer_key"] == "K1"][["rank", "product_id"]].to_numpy().tolist() == [[1, "B"]]
    assert o[o["customer_key"] == "K2"][["rank", "product_id"]].to_numpy().tolist() == [[1, "A"]]
    nbo = decisions.next_best_offer(recs, products, bought=bought, exclude={"C"})
    assert nbo["next_best_offer"].to_dict() == {"K1": "B", "K2": "A"}


def test_preferred_channel_ties_go_to_the_most_recent_order_whatever_the_other_customers():
    """Equal counts: the channel of the customer's most recent order (by date, then row) wins, and a
    customer's answer does not move when other customers' orders are added (decisions by parts)."""
    d = lambda days: CUT - pd.Timedelta(days=days)                       # noqa: E731
    orders = pd.DataFrame({"customer_key": ["A", "A", "A", "A", "B", "B", "C", "C"],
                           "order_date": [d(300), d(10), d(200), d(150), d(5), d(5), d(20), d(20)],
                           "channel": ["web", "web", "store", "store", "store", "web", "web", "store"]})
    got = decisions.preferred_channel(orders, CUT)
    assert got.to_dict() == {"A": "web", "B": "web", "C": "store"}     # same-day ties: the later row
    others = pd.DataFrame({"customer_key": [f"X{i}" for i in range(50)], "order_date": d(250), "channel": "phone"})
    for extra in (others, others.iloc[::-1]):
        more = decisions.preferred_channel(pd.concat([extra, orders, extra], ignore_index=True), CUT)
        assert more[["A", "B", "C"]].to_dict() == got.to_dict()
