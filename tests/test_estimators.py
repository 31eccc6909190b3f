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
