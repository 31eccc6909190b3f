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
