"""scikit-learn conventions across crmlab's estimators (#16): parameters only stored, the parameter
protocol, random_state as the one seed name, Pareto/NBD on its own."""
import inspect

import pytest
from sklearn.base import clone

from crmlab import affinity, features, identity, measure, propensity, segments, value

ESTIMATORS = [identity.RecordMatcher, value.BetaGeo, value.ParetoNBD, value.GammaGamma, propensity.PropensityModel,
              segments.Segmenter, affinity.ItemRecommender, features.FeatureBuilder, measure.TwoModelUplift]


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_parameter_protocol(cls):
    est = cls()
    names = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    assert list(est.get_params()) == names
    assert not [k for k in vars(est) if k.endswith("_")], "a constructor learned something"
    assert set(vars(est)) == set(names), "the constructor stores something that is not a parameter"
    twin = clone(est)
    assert twin is not est and twin.get_params() == est.get_params()
    assert "seed" not in names, "the seed is called random_state everywhere"
    with pytest.raises(ValueError, match="invalid parameter"):
        est.set_params(no_such_parameter=1)
    assert repr(est).startswith(cls.__name__ + "(")


def test_pareto_nbd_stands_on_its_own():
    assert not issubclass(value.ParetoNBD, value.BetaGeo)
    assert set(value.ParetoNBD().get_params()) == {"tol", "max_iter"}


def _learned(est) -> dict:
    return {k: v for k, v in vars(est).items() if k.endswith("_")}


def test_refit_equals_a_fresh_fit_for_the_other_estimators():
    """#16: PropensityModel (another kind in between), ItemRecommender, FeatureBuilder and TwoModelUplift
    forget their previous fit (the BTYD models, RecordMatcher and Segmenter have their own tests)."""
    import numpy as np
    import pandas as pd

    from crmlab.events import CustomerEvents
    from crmlab.sources import load

    from conftest import SAMPLE

    rng = np.random.default_rng(4)
    X = pd.DataFrame({"a": rng.normal(size=600), "b": rng.normal(size=600), "c": rng.choice(["x", "y"], 600)})
    y = (X["a"] + rng.normal(size=600) > 0).astype(int)
    first = propensity.PropensityModel(kind="hgb", calibration="isotonic", cv=3).fit(X, y)
    refit = first.set_params(kind="logistic", calibration="sigmoid").fit(X.iloc[::2], y.iloc[::2])
    fresh = propensity.PropensityModel(kind="logistic", calibration="sigmoid", cv=3).fit(X.iloc[::2], y.iloc[::2])
    assert _learned(refit).keys() == _learned(fresh).keys()
    np.testing.assert_allclose(refit.predict_proba(X), fresh.predict_proba(X), rtol=1e-12)

    lists = [set(rng.choice(20, rng.integers(1, 6), replace=False).tolist()) for _ in range(300)]
    b1, b2 = affinity.Baskets.from_lists(lists), affinity.Baskets.from_lists(lists[::2])
    r = affinity.ItemRecommender(k=3).fit(b1).fit(b2)
    f = affinity.ItemRecommender(k=3).fit(b2)
    assert _learned(r).keys() == _learned(f).keys()
    pd.testing.assert_frame_equal(r.recommend(b2), f.recommend(b2))

    ev = CustomerEvents.from_sources(load(SAMPLE))
    fb_r = features.FeatureBuilder().fit(ev, "2025-06-01").fit(ev, "2025-01-01")
    fb_f = features.FeatureBuilder().fit(ev, "2025-01-01")
    assert _learned(fb_r) == _learned(fb_f)

    treated = rng.random(600) < 0.5
    u_r = measure.TwoModelUplift().fit(X[["a", "b"]], treated, y).fit(X[["a", "b"]].iloc[::2], treated[::2], y.iloc[::2])
    u_f = measure.TwoModelUplift().fit(X[["a", "b"]].iloc[::2], treated[::2], y.iloc[::2])
    np.testing.assert_allclose(u_r.predict(X[["a", "b"]]), u_f.predict(X[["a", "b"]]), rtol=1e-12)
