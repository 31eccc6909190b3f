"""Customer value models: published CDNOW figures, recovery of planted truth, predictions, errors."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crmlab import datasets, truth, value, value_report
from crmlab.errors import CrmlabError
from crmlab.events import CustomerEvents

import naive

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cdnow():
    df = datasets.read_cdnow(ROOT / "data" / "cdnow" / "CDNOW_sample.txt")
    return value.rfm_summary(df, calibration_end="1997-09-30", observation_end="1998-06-30")


def _sig3(x, ref):
    return float(f"{x:.3g}") == float(f"{ref:.3g}")


def test_cdnow_rfm(cdnow):
    assert len(cdnow) == 2357 and (cdnow["frequency"] > 0).sum() == 946
    assert cdnow["duration_holdout"].iloc[0] == 39.0


def test_cdnow_bgnbd_published_figures(cdnow):
    """Fader, Hardie & Lee (2005): r=0.243, alpha=4.414, a=0.793, b=2.426, LL -9582.4."""
    m = value.BetaGeo().fit(cdnow)
    for k, ref in dict(r=0.243, alpha=4.414, a=0.793, b=2.426).items():
        assert _sig3(m.params_[k], ref), (k, m.params_[k])
    assert m.loglik_ == pytest.approx(-9582.4, abs=0.05)
    assert m.n_patterns_ < len(cdnow)
    assert m.summary_.loc["r", "se"] == pytest.approx(0.0126, rel=0.05)     # SEs as reported elsewhere


def test_cdnow_pareto_published_figures(cdnow):
    m = value.ParetoNBD().fit(cdnow)
    for k, ref in dict(r=0.553, alpha=10.578, s=0.606, beta=11.669).items():
        assert _sig3(m.params_[k], ref), (k, m.params_[k])
    assert m.loglik_ == pytest.approx(-9595.0, abs=0.05)


def test_cdnow_gamma_gamma_published_figures(cdnow):
    m = value.GammaGamma().fit(cdnow)
    assert m.n_customers_ == 946
    for k, ref in dict(p=6.25, q=3.74, gamma=15.44).items():
        assert _sig3(m.params_[k], ref), (k, m.params_[k])
    assert m.loglik_ == pytest.approx(-4055.92, abs=0.01)


def test_predictions_match_reference_formulas(cdnow):
    m = value.BetaGeo().fit(cdnow)
    p = m.params_
    x, tx, T = (cdnow[c].to_numpy() for c in ("frequency", "recency", "T"))
    p_ref, e_ref = naive.bgnbd_predict_ref(p["r"], p["alpha"], p["a"], p["b"], x, tx, T, 39.0)
    np.testing.assert_allclose(m.p_alive(cdnow), p_ref, rtol=1e-10)
    np.testing.assert_allclose(m.expected_purchases(cdnow, 39.0), e_ref, rtol=1e-8)
    rep = value_report.holdout_report(m, cdnow)
    raw = datasets.read_cdnow(ROOT / "data" / "cdnow" / "CDNOW_sample.txt")
    hold = raw[(raw["order_date"] > "1997-09-30") & (raw["order_date"] <= "1998-06-30")]
    assert rep.table.loc["model", "actual_total"] == len(hold.drop_duplicates(["customer_key", "order_date"]))
    assert rep.table.loc["model", "predicted_total"] == pytest.approx(e_ref.sum(), rel=1e-9)
    assert rep.table.loc["model", "mae"] < rep.table.loc["naive: past rate continues", "mae"]


def _holdout_ref(model, rfm, max_frequency=7):
    """holdout_report's table and means by frequency, from per-customer arrays (the plain formulas)."""
    t = float(rfm["duration_holdout"].iloc[0])
    a = rfm["frequency_holdout"].to_numpy(np.float64)
    p = model.expected_purchases(rfm, t)
    naive_p = rfm["frequency"].to_numpy() / np.maximum(rfm["T"].to_numpy(), 1e-9) * t
    rows = {name: [q.sum(), a.sum(), q.sum() / a.sum() - 1, np.corrcoef(q, a)[0, 1], np.mean(np.abs(q - a)),
                   np.sqrt(np.mean((q - a) ** 2))] for name, q in (("model", p), ("naive: past rate continues", naive_p))}
    f = np.minimum(rfm["frequency"].to_numpy(), max_frequency)
    by = pd.DataFrame({"f": f, "actual": a, "model": p, "naive": naive_p}).groupby("f").mean()
    return pd.DataFrame(rows, index=["predicted_total", "actual_total", "aggregate_error", "correlation", "mae",
                                     "rmse"]).T, by, np.bincount(f.astype(int))


def _tracking_ref(model, rfm, tx, time_unit=7.0):
    """Weekly repeat purchases of the customers of ``rfm``, actual (counted day by day) and expected
    (each customer's expected purchases since their first one, summed): the plain loops."""
    first = rfm["first_purchase"]
    days = tx.assign(d=tx["order_date"].dt.normalize())[["customer_key", "d"]].drop_duplicates()
    days = days[days["customer_key"].isin(first.index)]
    end = days["d"].max()
    periods = pd.date_range(first.min(), end, freq="W-SUN")
    rep = days[days["d"] > days["customer_key"].map(first)]["d"]
    actual = np.array([(rep <= p).sum() for p in periods])
    t = np.maximum((periods.to_numpy()[:, None] - first.to_numpy()[None, :]) / np.timedelta64(1, "D"), 0) / time_unit
    expected = np.array([model.expected_purchases_new(row).sum() for row in t])
    return periods, actual, expected


def test_holdout_and_tracking_counted_by_parts_equal_the_plain_formulas(cdnow):
    """The holdout table, the means by frequency and the weekly tracking, counted on three disjoint sets
    of customers and added (as Dask workers count them), equal the whole's and the per-customer formulas."""
    raw = datasets.read_cdnow(ROOT / "data" / "cdnow" / "CDNOW_sample.txt")
    m = value.BetaGeo().fit(cdnow)
    part = pd.Series(np.arange(len(cdnow)) % 3, index=cdnow.index)
    pieces = [cdnow[part.to_numpy() == i] for i in range(3)]
    counts = [value_report.holdout_counts(m, p) for p in pieces]
    whole = value_report.holdout_report(m, cdnow)
    added = (counts[0] + counts[1] + counts[2]).report()
    pd.testing.assert_frame_equal(added.table, whole.table, rtol=1e-12)
    pd.testing.assert_frame_equal(added.by_frequency, whole.by_frequency, rtol=1e-12)
    table, by, n = _holdout_ref(m, cdnow)
    np.testing.assert_allclose(whole.table.to_numpy(), table.loc[whole.table.index].to_numpy(), rtol=1e-10)
    np.testing.assert_allclose(whole.by_frequency[["actual", "model", "naive"]].to_numpy(), by.to_numpy(), rtol=1e-10)
    assert whole.by_frequency["customers"].tolist() == n.tolist() and whole.by_frequency.index[-1] == "7+"
    # a part without customers adds nothing
    none = value_report.holdout_counts(m, cdnow.iloc[:0])
    pd.testing.assert_frame_equal((none + counts[0] + counts[1] + counts[2]).report().table, whole.table, rtol=1e-12)

    by_part = [value_report.tracking_counts(p, raw[raw["customer_key"].isin(p.index)]) for p in pieces]
    track = value_report.tracking(m, by_part[0] + by_part[1] + by_part[2])
    pd.testing.assert_frame_equal(track, value_report.tracking(m, value_report.tracking_counts(cdnow, raw)), rtol=1e-12)
    periods, actual, expected = _tracking_ref(m, cdnow, raw)
    assert track.index.equals(periods)
    np.testing.assert_array_equal(track["actual_cumulative"].to_numpy(), actual)
    np.testing.assert_allclose(track["expected_cumulative"].to_numpy(), expected, rtol=1e-9)


def test_p_alive_at_future_date_monte_carlo():
    """P(alive at T+t) against simulation of the same posterior process."""
    m = value.BetaGeo()
    m.params_ = dict(r=0.5, alpha=6.0, a=0.9, b=3.0)
    m.theta_ = np.log(list(m.params_.values()))
    rfm = pd.DataFrame({"frequency": [0.0, 3.0], "recency": [0.0, 20.0], "T": [30.0, 30.0]})
    got = m.p_alive_at(rfm, 26.0)
    rng = np.random.default_rng(0)
    n = 400_000
    for i, (x, tx, T) in enumerate(rfm.to_numpy()):
        lam = rng.gamma(0.5 + x, 1 / (6.0 + T), n)
        p = rng.beta(0.9, 3.0 + x, n)
        alive_now = rng.random(n) < m.p_alive(rfm)[i]
        survive = rng.random(n) < np.exp(-lam * p * 26.0)
        assert (alive_now & survive).mean() == pytest.approx(got[i], abs=3e-3)
    assert np.all(got <= m.p_alive(rfm))


def test_recovers_planted_truth_of_the_synthetic_world():
    sample = ROOT / "data" / "sample"
    meta = json.loads((sample / "truth" / "truth.json").read_text())
    tx = truth.true_customer_transactions(sample)
    from crmlab.sources import load
    pd.testing.assert_frame_equal(truth.true_customer_transactions(sample, load(sample)), tx)   # the run's sources reused
    src = load(sample)
    ev = CustomerEvents.from_sources(src)                       # the run's order values reused
    pd.testing.assert_frame_equal(truth.true_customer_transactions(sample, src, ev), tx)
    # a sample of the true customers: their orders, found by scanning the orders in pieces
    keep, total = truth.true_customers(sample, most=100, seed=3)
    assert len(keep) == 100 and total == tx["customer_key"].nunique()
    assert truth.true_customers(sample, most=None) == (None, total)
    pd.testing.assert_frame_equal(truth.true_customer_transactions(sample, src, ev, keep),
                                  tx[tx["customer_key"].isin(keep)])
    check = truth.btyd_check(sample, src, meta["spec"]["end"], ev, most=400)
    assert check.attrs == {"customers": 400, "of": total}
    rfm_400 = value.rfm_summary(tx[tx["customer_key"].isin(truth.true_customers(sample, 400)[0])],
                                observation_end=meta["spec"]["end"])
    assert check["estimate"].to_dict() == value.BetaGeo().fit(rfm_400).summary_["estimate"].to_dict()
    rfm = value.rfm_summary(tx, observation_end=meta["spec"]["end"])
    bg = value.BetaGeo().fit(rfm)
    for k in ("r", "alpha", "a", "b"):
        row = bg.summary_.loc[k]
        assert row["ci_low"] <= meta["btyd"][k] <= row["ci_high"], (k, row.to_dict(), meta["btyd"][k])
    gg = value.GammaGamma().fit(rfm)
    for k, name in (("p", "p"), ("q", "q"), ("gamma", "gamma")):
        row = gg.summary_.loc[name]
        assert row["ci_low"] <= meta["gamma_gamma"][k] <= row["ci_high"], (k, row.to_dict())


def test_covariates_recover_group_effect():
    rng = np.random.default_rng(4)
    n = 20000
    grp = rng.random(n) < 0.5
    T = rng.integers(30, 80 * 7, n) / 7
    xa, ta, Ta = value.simulate_bgnbd(n, 0.8, 5.0, 1.2, 3.0, T, seed=1)
    xb, tb, Tb = value.simulate_bgnbd(n, 0.8, 2.5, 1.2, 3.0, T, seed=2)       # web: twice the purchase rate
    rfm = pd.DataFrame({"frequency": np.where(grp, xb, xa), "recency": np.where(grp, tb, ta),
                        "T": np.where(grp, Tb, Ta), "channel": np.where(grp, "web", "store")})
    m = value.BetaGeo(covariates=["channel"]).fit(rfm)
    assert m.coef_.loc["channel_web", "alpha"] == pytest.approx(np.log(0.5), abs=0.12)
    assert abs(m.coef_.loc["channel_web", "a"]) < 0.3 and abs(m.coef_.loc["channel_web", "b"]) < 0.5
    plain = value.BetaGeo().fit(rfm)
    assert m.loglik_ > plain.loglik_ + 50
    e = m.expected_purchases(rfm, 52.0)
    for g in (grp, ~grp):                                   # agrees with a separate model per group
        sep = value.BetaGeo().fit(rfm[g]).expected_purchases(rfm[g], 52.0)
        assert e[g].mean() == pytest.approx(sep.mean(), rel=0.03)


def test_clv_and_customer_value_table(cdnow):
    bg, gg = value.BetaGeo().fit(cdnow), value.GammaGamma().fit(cdnow)
    c = value.clv(bg, gg, cdnow, months=12, discount_rate=0.01, margin=0.3)
    months = np.arange(1, 13) * value.DAYS_PER_MONTH / 7
    e = bg.expected_purchases(cdnow, months)
    ref = 0.3 * naive.discounted_ref(e, gg.expected_spend(cdnow), 0.01)
    np.testing.assert_allclose(c, ref, rtol=1e-10)
    table = value.customer_value(bg, gg, cdnow)
    assert list(table.columns[:1]) == ["customer_key"] and len(table) == len(cdnow)
    assert set(table["value_decile"]) == set(range(1, 11))
    top = table.groupby("value_decile")["clv_12m"].mean()
    assert top.is_monotonic_increasing
    assert (table["expected_purchases_365d"] >= table["expected_purchases_90d"]).all()


def test_rfm_summary_by_hand():
    tx = pd.DataFrame({"customer_key": ["a", "a", "a", "a", "b", "c"],
                       "order_date": ["2025-01-01", "2025-01-01", "2025-01-15", "2025-02-05", "2025-01-08",
                                      "2025-03-01"],
                       "value": [10.0, 5.0, 20.0, 30.0, 7.0, 3.0]})
    out = value.rfm_summary(tx, calibration_end="2025-02-01", observation_end="2025-03-05")
    assert list(out.index) == ["a", "b"]                        # c first buys after calibration
    a = out.loc["a"]
    assert a["frequency"] == 1 and a["recency"] == 2.0 and a["T"] == pytest.approx(31 / 7)
    assert a["monetary_value"] == 20.0                          # repeat purchases only; same-day merged
    assert a["frequency_holdout"] == 1 and a["monetary_holdout"] == 30.0
    assert out.loc["b", "frequency"] == 0 and out.loc["b", "monetary_value"] == 0.0


def test_clear_errors():
    rfm = pd.DataFrame({"frequency": [0.0, 0.0], "recency": [0.0, 0.0], "T": [5.0, 6.0]})
    with pytest.raises(CrmlabError, match="no customer made a repeat purchase"):
        value.BetaGeo().fit(rfm)
    bad = pd.DataFrame({"frequency": [1.0, -1.0], "recency": [1.0, 0.0], "T": [5.0, 6.0]})
    with pytest.raises(CrmlabError, match=r"invalid RFM rows \[1\]"):
        value.BetaGeo().fit(bad)
    with pytest.raises(CrmlabError, match="recency <= T"):
        value.BetaGeo().fit(pd.DataFrame({"frequency": [1.0], "recency": [9.0], "T": [5.0]}))
    with pytest.raises(CrmlabError, match="lacks column"):
        value.BetaGeo().fit(pd.DataFrame({"frequency": [1.0]}))
    with pytest.raises(CrmlabError, match="not fitted"):
        value.BetaGeo().p_alive(rfm)
    with pytest.raises(CrmlabError, match="negative values"):
        value.rfm_summary(pd.DataFrame({"customer_key": [1], "order_date": ["2025-01-01"], "value": [-1.0]}))
    with pytest.raises(CrmlabError, match="column 'order_date' not found"):
        value.rfm_summary(pd.DataFrame({"customer_key": [1]}))


def test_mbgnbd_fits_and_differs(cdnow):
    m = value.BetaGeo(modified=True).fit(cdnow)
    assert m.loglik_ > -9590
    assert (m.p_alive(cdnow)[cdnow["frequency"].to_numpy() == 0] < 1).all()   # MBG: non-repeaters may be gone


# --- reliability findings (#14): value models at the edges
def test_bgnbd_predictions_finite_for_large_a_b():
    """a=1e4, b=1.4e4 gave NaN where the closed form gives a number; far larger a, b use the limit."""
    import mpmath

    x, tx, T = np.array([0.0, 2, 10]), np.array([0.0, 10, 35]), np.array([40.0, 40, 40])
    r, al = 0.5, 10.0
    for a, b in [(1e4, 1.4e4), (2.35e6, 3.0e6)]:
        p, e, s = value.btyd.bgnbd_predict(r, al, a, b, x, tx, T, [52.0])
        assert np.all(np.isfinite(e)) and np.all(np.isfinite(s)) and np.all((s > 0) & (s <= 1))
        mpmath.mp.dps = 30
        for i in range(3):
            hyp = mpmath.hyp2f1(r + x[i], b + x[i], a + b + x[i] - 1, 52 / (al + T[i] + 52))
            ref = (a + b + x[i] - 1) / (a - 1) * (1 - hyp * ((al + T[i]) / (al + T[i] + 52)) ** (r + x[i])) * p[i]
            assert e[i, 0] == pytest.approx(float(ref), rel=1e-9 if a < 1e5 else 1e-5)


def _no_dropout_rfm(n=3000, seed=3):
    rng = np.random.default_rng(seed)
    T = rng.uniform(20, 78, n)
    lam = rng.gamma(0.8, 1 / 4.0, n)
    x = rng.poisson(lam * T).astype(float)
    tx = np.where(x > 0, T * rng.beta(np.maximum(x, 1), 1), 0.0)   # last of x uniform times
    return pd.DataFrame({"frequency": x, "recency": tx, "T": T})


def test_no_dropout_is_said_and_predictions_stay_finite():
    rfm = _no_dropout_rfm()
    for model in (value.BetaGeo(), value.ParetoNBD()):
        with pytest.warns(value.ModelDiagnosticWarning, match="no dropout|no spread"):
            model.fit(rfm)
        assert model.diagnostics_
        assert all(abs(np.log(v)) <= 15 + 1e-9 for v in model.params_.values())   # polishing stays in bounds
        e = model.expected_purchases(rfm, 52.0)
        assert np.all(np.isfinite(e)) and np.all(np.isfinite(model.p_alive(rfm)))
        assert model.p_alive(rfm).min() > 0.9
        rate = (rfm["frequency"] / rfm["T"]).mean() * 52
        assert e.mean() == pytest.approx(rate, rel=0.1)             # the NBD rate continues


def test_pareto_term_near_z_one_matches_reference():
    """beta >> alpha puts the 2F1 argument near 1, where the plain series needed 200,000 terms."""
    x, tx, T = np.array([0.0, 1, 3, 12]), np.array([0.0, 5, 20, 38]), np.array([40.0, 40, 40, 40])
    for par in [(0.55, 10.6, 0.6, 1e4), (1.0, 2.0, 0.3, 5e5), (0.3, 1.0, 2.0, 1e6)]:
        np.testing.assert_allclose(value.btyd.pareto_loglik(*par, x, tx, T),
                                   naive.pareto_ll_quad_ref(*par, x, tx, T), rtol=1e-10)


def test_time_unit_travels_with_the_rfm_table(cdnow):
    tx = datasets.read_cdnow(ROOT / "data" / "cdnow" / "CDNOW_sample.txt")
    days = value.rfm_summary(tx, calibration_end="1997-09-30", time_unit=1.0)
    assert days.attrs["time_unit_days"] == 1.0
    bg_d, bg_w = value.BetaGeo().fit(days), value.BetaGeo().fit(cdnow)
    gg = value.GammaGamma().fit(cdnow)
    c_days = value.clv(bg_d, gg, days, months=12)
    c_weeks = value.clv(bg_w, gg, cdnow, months=12)
    assert c_days.sum() == pytest.approx(c_weeks.sum(), rel=0.02)     # was 6.2x lower in days
    with pytest.raises(CrmlabError, match="units of 1 days"):
        value.clv(bg_d, gg, days, time_unit=7.0)


@pytest.mark.parametrize("col", ["customer_key", "order_date", "value"])
def test_missing_values_in_transactions_are_an_error(col):
    tx = datasets.read_cdnow(ROOT / "data" / "cdnow" / "CDNOW_sample.txt").head(500).copy()
    tx[col] = tx[col].astype(object)
    tx.loc[tx.index[[3, 7]], col] = None if col != "value" else np.inf
    with pytest.raises(CrmlabError, match=f"2 transactions have a missing or non-finite '{col}'"):
        value.rfm_summary(tx)


def _learned(est) -> dict:
    return {k: v for k, v in vars(est).items() if k.endswith("_") and not k.startswith("__")}


def test_refit_on_other_data_equals_a_fresh_fit(cdnow):
    """#16: a refit forgets what the first fit learned (a new covariate level, no covariates at all)."""
    rng = np.random.default_rng(5)
    rfm = cdnow.assign(channel=np.where(rng.random(len(cdnow)) < 0.5, "web", "store"))
    other = rfm.assign(channel=rng.choice(["web", "store", "phone"], len(rfm)))
    for make, first, second in ((lambda: value.BetaGeo(covariates=["channel"]), rfm, other),
                                (lambda: value.BetaGeo(), rfm, cdnow.iloc[::2]),
                                (lambda: value.ParetoNBD(), cdnow, cdnow.iloc[::2]),
                                (lambda: value.GammaGamma(), cdnow, cdnow.iloc[::2])):
        refit, fresh = make().fit(first).fit(second), make().fit(second)
        a, b = _learned(refit), _learned(fresh)
        assert a.keys() == b.keys(), (type(refit).__name__, a.keys() ^ b.keys())
        assert refit.params_ == pytest.approx(fresh.params_, rel=1e-9), type(refit).__name__
    assert value.BetaGeo(covariates=["channel"]).fit(rfm).fit(other).design_columns_ == ["channel_store", "channel_web"]
