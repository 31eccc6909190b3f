"""Campaign measurement: planted increments recovered within their intervals, null campaign not significant."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crmlab import measure
from crmlab.errors import CrmlabError
from crmlab.events import CustomerEvents
from crmlab.sources import load

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


@pytest.fixture(scope="module")
def truth_responses():
    """Responses of the bundled sample keyed by the true customer, with the true life stage as segment."""
    rt = pd.read_csv(SAMPLE / "truth" / "record_truth.csv", dtype={"source_id": str})
    ev = CustomerEvents.from_sources(load(SAMPLE), rt.rename(columns={"customer_id": "customer_key"}))
    life = pd.read_csv(SAMPLE / "truth" / "customer_truth.csv").set_index("customer_id")["life_stage"]
    return measure.add_segment(ev.contacts, life, "life_stage")


def test_planted_increments_inside_their_intervals(truth_responses):
    t = measure.lift_table(truth_responses, ["life_stage"])
    up = pd.read_csv(SAMPLE / "truth" / "uplift_truth.csv")
    j = t.merge(up, on=["campaign_id", "life_stage"])
    assert len(j) == 9
    inside = (j["ci_low"] <= j["true_incremental_rate"]) & (j["true_incremental_rate"] <= j["ci_high"])
    assert inside.all(), j[~inside]
    overall = measure.lift_table(truth_responses).set_index("campaign_id")
    assert not overall.loc["SU26", "significant"]                      # planted: no effect
    assert overall.loc["SP26", "significant"] and overall.loc["SP26", "incremental_rate"] > 0
    assert overall["verdict"].str.len().gt(0).all()


def test_lift_counts_of_parts_added_equal_the_whole_and_plain_moments():
    """Lift counts of disjoint sets of customers, added, give the whole's lift table: counts exactly,
    pooled revenue means and variances to 1e-12 of the group's plain mean and variance (NumPy), with
    heavy-tailed revenues, groups of one contact, groups held by one part and an empty part."""
    rng = np.random.default_rng(3)
    n = 40_000
    camp = rng.choice(["A", "B", "C", "D"], n, p=[0.6, 0.3, 0.0999, 0.0001])          # D: a handful of contacts
    responded = rng.random(n) < 0.12
    value = np.where(responded, rng.lognormal(3, 2.5, n), 0.0)                         # skewed, up to ~1e6
    r = pd.DataFrame({"customer_key": rng.integers(0, 9000, n).astype(str), "campaign_id": camp,
                      "group": np.where(rng.random(n) < 0.9, "treatment", "control"), "responded": responded,
                      "response_value": value, "seg": rng.choice(["x", "y", "z"], n, p=[0.7, 0.2999, 0.0001])})
    part = pd.util.hash_array(r["customer_key"].to_numpy(object)) % np.uint64(5)
    pieces = [r[part == p] for p in range(5)] + [r.iloc[:0]]
    for by in (None, ["seg"]):
        whole = measure.lift_counts(r, by)
        added = measure.add_lift_counts([measure.lift_counts(p, by) for p in pieces])
        pd.testing.assert_frame_equal(added[["n", "k"]], whole[["n", "k"]], check_exact=True)
        pd.testing.assert_frame_equal(added, whole, rtol=1e-12, atol=0)
        r_t = r.assign(_t=r["group"] == "treatment")
        for key, g in r_t.groupby(["campaign_id", *(by or []), "_t"]):
            v = g["response_value"].to_numpy()
            assert added.loc[key, "rev"] == pytest.approx(v.mean(), rel=1e-12)
            if len(v) > 1:
                assert added.loc[key, "rev_var"] == pytest.approx(v.var(ddof=1), rel=1e-12)
            else:
                assert np.isnan(added.loc[key, "rev_var"])
        assert (whole["n"] == 1).any() or by is None
        pd.testing.assert_frame_equal(measure.lift_of(added), measure.lift_table(r, by), rtol=1e-12, atol=0)
        pd.testing.assert_frame_equal(measure.add_lift_counts([whole]), whole, check_exact=True)   # one part: itself


def test_customer_sample_is_drawn_by_key_whatever_the_parts():
    keys = pd.Series([f"k{i}" for i in range(50_000)]).repeat(3).to_numpy(object)
    picked = measure.in_sample(keys, 0.2, seed=4)
    assert abs(picked.mean() - 0.2) < 0.01
    assert (pd.Series(picked).groupby(keys).nunique() == 1).all()          # a customer's contacts: all or none
    np.testing.assert_array_equal(np.concatenate([measure.in_sample(keys[a:b], 0.2, seed=4) for a, b in
                                                  ((0, 10), (10, 70_000), (70_000, len(keys)))]), picked)
    assert measure.sample_share(1000, 250) == 0.25 and measure.sample_share(1000, None) == 1.0


def test_true_life_stage_of_a_sample_of_keys_is_the_whole_restricted(tmp_path):
    """The uplift check's truth on a seeded sample of customer keys (a large world): the key map as a
    frame or as its Parquet file (only its key column read whole) gives the same sample, and each
    sampled key the life stage it has in the whole."""
    from crmlab import truth

    rt = pd.read_csv(SAMPLE / "truth" / "record_truth.csv", dtype={"source_id": str})
    km = rt.assign(customer_key=rt["source_system"] + ":" + rt["source_id"])[["source_system", "source_id", "customer_key"]]
    km.to_parquet(tmp_path / "key_map.parquet", index=False)
    whole, n = truth.true_life_stage(SAMPLE, km)
    assert n == len(km) and len(whole) == n and set(whole) == {"family", "senior", "young"}
    samples = [truth.key_sample(k, 300, seed=4)[0] for k in (km, tmp_path / "key_map.parquet")]
    assert len(samples[0]) == 300 and samples[0].equals(samples[1]) and not samples[0].equals(truth.key_sample(km, 300, 5)[0])
    assert truth.key_sample(km, n, seed=4) == (None, n)
    for k in (km, tmp_path / "key_map.parquet"):
        some, total = truth.true_life_stage(SAMPLE, k, most=300, seed=4)
        assert total == n and len(some) == 300 and set(some.index) == set(samples[0])
        pd.testing.assert_series_equal(some.sort_index(), whole[whole.index.isin(some.index)].sort_index())
    assert truth.true_life_stage(tmp_path, km) == (None, 0)                     # no truth files: real data


def test_intervals_match_textbook_values():
    lo, hi = measure.wilson(81, 263)                 # Newcombe (1998) example: 0.2553 .. 0.3662
    assert abs(lo - 0.2553) < 5e-4 and abs(hi - 0.3662) < 5e-4
    lo, hi = measure.diff_interval(56, 70, 48, 80)   # Newcombe (1998) method 10: 0.0524 .. 0.3339
    assert abs(lo - 0.0524) < 5e-4 and abs(hi - 0.3339) < 5e-4


def test_no_control_group_is_a_clear_error(truth_responses):
    treated_only = truth_responses[truth_responses["group"] == "treatment"]
    with pytest.raises(CrmlabError, match="control share of 0"):
        measure.lift_table(treated_only)


def test_two_model_uplift_ranks_by_true_uplift():
    rng = np.random.default_rng(0)
    n = 20000
    X = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n)})
    treated = rng.random(n) < 0.5
    true_uplift = np.where(X["a"] > 0, 0.15, 0.0)
    y = rng.random(n) < 0.1 + treated * true_uplift
    half = np.arange(n) < n // 2
    m = measure.TwoModelUplift().fit(X[half], treated[half], y[half])
    pred = m.predict(X[~half])
    assert np.corrcoef(pred, true_uplift[~half])[0, 1] > 0.6
    curve = measure.qini_curve(pred, treated[~half], y[~half])
    shuffled = measure.qini_curve(rng.permutation(pred), treated[~half], y[~half])
    total = curve["incremental_responders"].iloc[-1]                 # ~ 0.15 x treated with a > 0
    assert measure.qini_coefficient(curve) > 0.2 * total > abs(measure.qini_coefficient(shuffled))
