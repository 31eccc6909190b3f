"""Segments: the assignment kernel against its reference, k chosen and stable on planted clusters,
names, the value x risk grid, saved segmenters, clear errors."""
import numpy as np
import pandas as pd
import pytest

from crmlab import segments
from crmlab.errors import CrmlabError
from crmlab.kernels.segments import nearest_center
from naive import nearest_center_ref


def test_kernel_matches_reference():
    rng = np.random.default_rng(1)
    X = rng.gamma(2.0, 3.0, size=(500, 4))
    X[rng.random(X.shape) < 0.1] = np.nan
    X[:5, 1] = -2.0                                         # negatives in a log column are clipped to 0
    fill, log_cols = np.array([1.0, 2.0, 3.0, 4.0]), np.array([True, True, False, False])
    centre, scale = rng.normal(size=4), rng.uniform(0.5, 2, 4)
    centers = rng.normal(size=(5, 4))
    weights, bias = rng.uniform(0.2, 3, (5, 4)), rng.normal(size=5)
    for w, b in ((None, None), (weights, bias)):
        lab, dist = nearest_center(X, fill, log_cols, centre, scale, centers, w, b)
        rlab, rdist = nearest_center_ref(X, fill, log_cols, centre, scale, centers, w, b)
        np.testing.assert_array_equal(lab, rlab)
        np.testing.assert_allclose(dist, rdist, rtol=1e-12, atol=1e-12)


def test_kernel_validates():
    with pytest.raises(ValueError, match="same d"):
        nearest_center(np.zeros((3, 2)), np.zeros(2), np.zeros(2, bool), np.zeros(2), np.ones(2), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="scale"):
        nearest_center(np.zeros((3, 2)), np.zeros(2), np.zeros(2, bool), np.zeros(2), np.zeros(2), np.zeros((2, 2)))


def _blobs(n=2000, k=4, seed=0):
    rng = np.random.default_rng(seed)
    centers = 6.0 * np.eye(4, 3)[:k] * np.array([1, -1, 1])             # well apart: 6 sd and more
    truth = rng.integers(k, size=n)
    X = pd.DataFrame(centers[truth] + rng.normal(size=(n, 3)), columns=["a", "b", "c"])
    X["spend"] = np.exp(truth + rng.normal(scale=0.6, size=n))          # skewed: log-transformed
    return X, truth


@pytest.mark.parametrize("method,criterion", [("kmeans", "silhouette"), ("gmm", "bic")])
def test_auto_k_recovers_planted_segments_and_is_stable(method, criterion):
    from sklearn.metrics import adjusted_rand_score

    X, truth = _blobs()
    seg = segments.Segmenter(method=method, criterion=criterion, k_range=(2, 5), bootstraps=2, random_state=0).fit(X)
    assert seg.k_ == 4
    assert seg.selection_.loc[4, "chosen"]
    assert seg.log_cols_.tolist() == [False, False, False, True]
    assert adjusted_rand_score(truth, seg.labels_) > 0.95
    stab = seg.stability(X, seeds=2)
    assert (stab["mean"] >= 0.9).all()
    sizes = np.bincount(seg.labels_)
    assert (np.diff(sizes) <= 0).all()                                  # segment 0 is the largest


def test_saved_segmenter_assigns_new_customers_identically(tmp_path):
    X, _ = _blobs(seed=2)
    seg = segments.Segmenter(k=4, bootstraps=0).fit(X.iloc[:1500])
    seg.names_ = ["a", "b", "c", "d"]
    loaded = segments.Segmenter.load(seg.save(tmp_path / "seg"))
    new = X.iloc[1500:].copy()
    new.iloc[::7, 0] = np.nan                                           # missing -> training median
    np.testing.assert_array_equal(loaded.predict(new), seg.predict(new))
    ref = segments.Segmenter._assign(seg.transform(new), seg.centers_, seg.weights_, seg.bias_)
    np.testing.assert_array_equal(seg.predict(new), ref)
    assert loaded.names_ == seg.names_


def test_names_follow_traits():
    X, truth = _blobs(seed=4)
    seg = segments.Segmenter(k=4, bootstraps=0).fit(X)
    hi = int(np.argmax(seg.centers_[:, 3]))
    lo = int(np.argmin(seg.centers_[:, 3]))
    names = segments.name_segments(seg, [{"name": "Big spenders", "traits": {"spend": "high"}},
                                         {"name": "Small spenders", "traits": {"spend": "low"}}])
    assert names[hi] == "Big spenders" and names[lo] == "Small spenders"
    assert all(n for n in names) and len(set(names)) == 4               # the others are named from traits
    with pytest.raises(CrmlabError, match="high or low"):
        segments.name_segments(seg, [{"name": "x", "traits": {"spend": "huge"}}])


def test_segmenter_errors():
    X, _ = _blobs(n=300)
    with pytest.raises(CrmlabError, match="numeric"):
        segments.Segmenter(k=3).fit(X.assign(a=X["a"].astype(str)))
    with pytest.raises(CrmlabError, match="infinite"):
        segments.Segmenter(k=3).fit(X.assign(b=np.inf))
    seg = segments.Segmenter(k=3, bootstraps=0).fit(X)
    with pytest.raises(CrmlabError, match="missing from the input: c"):
        seg.predict(X.drop(columns="c"))
    with pytest.raises(CrmlabError, match="not fitted"):
        segments.Segmenter().predict(X)
    with pytest.raises(CrmlabError, match="match no feature"):
        segments.select_features(X.columns, ["a", "share_*"])


def test_value_risk_grid_bands():
    n = 1000
    keys = [f"K{i}" for i in range(n)]
    value = pd.DataFrame({"customer_key": keys, "clv_12m": np.arange(n, dtype=float), "p_alive": 0.5})
    risk = pd.DataFrame({"customer_key": keys[:-10], "attrition_risk": np.linspace(0, 1, n - 10)})
    g = segments.value_risk_grid(value, risk)
    assert len(g) == n                                                  # missing risk -> 1 - p_alive
    assert g["value_band"].value_counts().to_dict() == {"low": 500, "medium": 300, "high": 200}
    assert g.loc[g["customer_key"] == "K999", "value_risk_cell"].item() == "high value / medium risk"
    t = segments.grid_table(g)
    assert t["customers"].sum() == n and abs(t["value_share"].sum() - 1) < 1e-12
    with pytest.raises(CrmlabError, match="increasing"):
        segments.value_risk_grid(value, risk, value_quantiles=(0.8, 0.8))


def test_large_inputs_are_fitted_on_a_sample_and_all_rows_assigned():
    from sklearn.metrics import adjusted_rand_score

    X, truth = _blobs(n=3000, seed=5)
    seg = segments.Segmenter(k=4, bootstraps=0, max_fit_rows=500).fit(X)
    assert len(seg.labels_) == 3000
    assert adjusted_rand_score(truth, seg.labels_) > 0.95
    assert (seg.stability(X, seeds=1)["mean"] > 0.9).all()


def test_k_is_chosen_on_a_stated_sample():
    """select_rows: the choice of k and the stability check run on a sample; the fit sees every row."""
    from sklearn.metrics import adjusted_rand_score

    X, truth = _blobs(n=3000, seed=6)
    seg = segments.Segmenter(k_range=(2, 5), bootstraps=2, select_rows=600, random_state=1).fit(X)
    assert seg.select_rows_ == 600 and seg.k_ == 4 and len(seg.labels_) == 3000
    assert adjusted_rand_score(truth, seg.labels_) > 0.95
    assert (seg.stability(X, seeds=1)["mean"] > 0.9).all()
    full = segments.Segmenter(k_range=(2, 5), bootstraps=2, select_rows=10_000, random_state=1).fit(X)
    assert full.select_rows_ == 3000 and full.k_ == seg.k_


def test_refit_equals_a_fresh_fit_and_params_protocol():
    """#16: fit forgets the previous fit; get_params/set_params as in scikit-learn (clone works)."""
    from sklearn.base import clone

    X, _ = _blobs(n=1500, k=3, seed=8)
    auto = segments.Segmenter(k_range=(2, 4), bootstraps=2, random_state=3)
    refit = clone(auto).fit(X).set_params(k=3).fit(X)
    fresh = segments.Segmenter(k=3, k_range=(2, 4), bootstraps=2, random_state=3).fit(X)
    assert {k for k in vars(refit) if k.endswith("_")} == {k for k in vars(fresh) if k.endswith("_")}
    assert refit.selection_ is None and not hasattr(refit, "select_rows_")   # nothing left from the auto fit
    np.testing.assert_array_equal(refit.predict(X), fresh.predict(X))
    assert clone(fresh).get_params() == fresh.get_params() and "random_state" in fresh.get_params()
    with pytest.raises(ValueError, match="invalid parameter 'seed'"):
        fresh.set_params(seed=1)
