"""Propensity models: Telco churn figures, compiled scoring equal to scikit-learn, persistence, errors."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crmlab import config, propensity, propensity_report, targets, truth
from crmlab.errors import CrmlabError
from crmlab.events import CustomerEvents
from crmlab.propensity import CompiledModel, PropensityModel, ScoringError
from crmlab.sources import load

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def telco():
    df = pd.read_csv(ROOT / "data" / "telco" / "wa_churn.csv.gz")
    y = (df.pop("churn") == "Yes").astype(int).to_numpy()
    return df, y


def test_telco_cross_validated_auc_and_lift(telco):
    X, y = telco
    cv = propensity_report.cross_validate(X, y, folds=5, kind="logistic")
    assert cv.loc["mean", "roc_auc"] >= 0.845
    assert cv.loc["mean", "top_decile_lift"] >= 2.8
    assert 0.26 < cv.loc["mean", "base_rate"] < 0.27


def _scoring_frame(X, rng):
    """Held-out style rows with missing values, an unseen category and a float32 column."""
    Xs = X.sample(2000, random_state=1).copy()
    Xs.loc[Xs.sample(frac=0.1, random_state=2).index, "monthly_charges"] = np.nan
    Xs.loc[Xs.sample(frac=0.05, random_state=3).index, "contract"] = None
    Xs.loc[Xs.sample(frac=0.02, random_state=4).index, "payment_method"] = "Crypto"    # never seen
    Xs["tenure"] = Xs["tenure"].astype("float32")
    return Xs


@pytest.mark.parametrize("kind,calibration", [("logistic", "sigmoid"), ("logistic", "isotonic"),
                                              ("logistic", "none"), ("hgb", "sigmoid"), ("hgb", "isotonic")])
def test_compiled_model_equals_sklearn(telco, kind, calibration):
    X, y = telco
    X = X.copy()
    X.loc[X.sample(frac=0.05, random_state=0).index, "internet_service"] = None        # missing in training too
    m = PropensityModel(kind=kind, calibration=calibration, cv=3, max_iter=60).fit(X, y)
    cm = m.compile("churn")
    Xs = _scoring_frame(X, np.random.default_rng(0))
    want = m.predict_proba(Xs)[:, 1]
    got = cm.predict_proba(Xs)
    assert np.max(np.abs(got - want)) <= 1e-6
    if kind == "hgb":
        assert np.max(np.abs(got - want)) <= 1e-15               # same additions in the same order; exp differs by an ulp
    assert cm.info["categorical"] and set(cm.info["numeric"]) >= {"tenure", "monthly_charges"}


@pytest.mark.parametrize("kind", ["logistic", "hgb"])
def test_compiled_scoring_reads_every_category_type_in_chunks(telco, kind):
    """The same probabilities (to 1e-12 of scikit-learn) whether categories come as pyarrow strings,
    Python objects or pandas Categoricals (with unseen and missing values), and in chunks of any
    size or one pass."""
    X, y = telco
    m = PropensityModel(kind=kind, calibration="sigmoid", cv=3, max_iter=60).fit(X, y)
    cm = m.compile("churn")
    Xs = _scoring_frame(X, np.random.default_rng(0))
    want = m.predict_proba(Xs)[:, 1]
    cats = cm.info["categorical"]
    one = cm.predict_proba(Xs, chunk_rows=len(Xs))
    assert np.max(np.abs(one - want)) <= 1e-12
    for convert in (lambda s: s.astype("str"), lambda s: s.astype(object), lambda s: s.astype("category")):
        Xc = Xs.assign(**{c: convert(Xs[c]) for c in cats})
        np.testing.assert_array_equal(cm.predict_proba(Xc, chunk_rows=333), one)
    out = np.zeros(len(Xs))
    assert cm.predict_proba(Xs, out=out) is out and np.array_equal(out, one)


def test_compiled_logistic_reads_numeric_columns_of_every_type_in_place():
    """float64 with NaN, float32, int8, bool, uint16 and nullable Int64 columns beside a string one:
    the compiled logistic (columns read where they lie) equals scikit-learn and the matrix path."""
    rng = np.random.default_rng(3)
    n = 3000
    df = pd.DataFrame({"f64": rng.normal(size=n), "f32": rng.normal(size=n).astype(np.float32),
                       "i8": rng.integers(-3, 3, n).astype(np.int8), "b": rng.random(n) < 0.4,
                       "u16": rng.integers(0, 50, n).astype(np.uint16),
                       "nullable": pd.array(np.where(rng.random(n) < 0.2, None, rng.integers(0, 9, n)), dtype="Int64"),
                       "s": pd.Series(rng.choice(["a", "bb", "ccc"], n)).astype("str")})
    df.loc[rng.random(n) < 0.1, "f64"] = np.nan
    y = (df["f64"].fillna(0) + df["b"] + rng.normal(size=n) > 0.5).astype(int)
    m = PropensityModel(kind="logistic", calibration="sigmoid", cv=3).fit(df, y)
    cm = m.compile()
    assert cm.info["categorical"] == ["s"] and len(cm.info["numeric"]) == 6
    got = cm.predict_proba(df, chunk_rows=700)
    assert np.max(np.abs(got - m.predict_proba(df)[:, 1])) <= 1e-12
    np.testing.assert_array_equal(got, cm.predict_proba(df, dtype=np.float64))      # the copied matrix


def test_compiled_model_saves_loads_and_detects_tampering(telco, tmp_path):
    X, y = telco
    m = PropensityModel(kind="hgb", max_iter=30, cv=3).fit(X, y)
    cm = m.compile("churn", {"cutoff": "2026-01-01"})
    cm.save(tmp_path / "m")
    back = CompiledModel.load(tmp_path / "m")
    assert back.version == cm.version and back.info["cutoff"] == "2026-01-01"
    np.testing.assert_array_equal(back.predict_proba(X), cm.predict_proba(X))
    arrays = dict(np.load(tmp_path / "m" / "arrays.npz"))
    arrays["value"][3] += 1.0
    np.savez(tmp_path / "m" / "arrays.npz", **arrays)
    with pytest.raises(CrmlabError, match="does not match its recorded version"):
        CompiledModel.load(tmp_path / "m")
    with pytest.raises(CrmlabError, match="no compiled model"):
        CompiledModel.load(tmp_path / "nothing")


def test_scoring_errors_name_the_column(telco):
    X, y = telco
    cm = PropensityModel(calibration="none").fit(X, y).compile("churn")
    with pytest.raises(ScoringError, match="feature column\\(s\\) missing: tenure"):
        cm.predict_proba(X.drop(columns="tenure"))
    with pytest.raises(ScoringError, match="'monthly_charges' \\((str|object)\\)"):
        cm.predict_proba(X.astype({"monthly_charges": str}))
    bad = X.copy()
    bad.loc[bad.index[5], "total_charges"] = np.inf
    with pytest.raises(ScoringError, match="'total_charges' holds infinite values.*rows \\[5\\]"):
        cm.predict_proba(bad)
    strict = PropensityModel(calibration="none", impute=False).fit(X.dropna(), y[X.notna().all(axis=1).to_numpy()])
    with pytest.raises(ScoringError, match="'total_charges' holds missing values, which this model cannot impute"):
        strict.compile("strict").predict_proba(X)
    with pytest.raises(CrmlabError, match="both classes"):
        PropensityModel().fit(X, np.zeros(len(X)))
    with pytest.raises(CrmlabError, match="unknown model kind"):
        PropensityModel(kind="forest").fit(X, y)


@pytest.fixture(scope="module")
def events(world):
    return CustomerEvents.from_sources(load(world))


def test_stage_fits_evaluates_scores_and_reloads(events, world, tmp_path):
    P = {**config.DEFAULTS["propensity"], "cv": 3, "top_departments": 2}
    results, builder, cut = targets.fit_targets(events, P, progress=lambda *_: None)
    assert set(results) == {"attrition", "response"} | {t for t in results if t.startswith("buy_")}
    assert len([t for t in results if t.startswith("buy_")]) == 2
    assert results["attrition"].metrics["roc_auc"] > 0.7
    assert all(0.55 < r.metrics["roc_auc"] < 1 for r in results.values())
    X_now = builder.transform(events, cut["score"])
    models = {t: r.compiled for t, r in results.items()}
    scores = targets.score_customers(models, X_now)
    for t, r in results.items():
        col = {"attrition": "attrition_risk", "response": "response_propensity"}.get(t, t.replace("buy_", "propensity_"))
        np.testing.assert_allclose(scores[col], r.model.predict_proba(X_now)[:, 1], atol=1e-6)
    targets.save_models(models, builder, tmp_path / "models")
    loaded, fb = targets.load_models(tmp_path / "models")
    again = targets.score_customers(loaded, fb.transform(events, cut["score"]))
    pd.testing.assert_frame_equal(again, scores)


def test_attrition_model_is_beaten_only_by_the_true_process(events, world, tmp_path):

    P = {**config.DEFAULTS["propensity"], "cv": 3, "departments": [], "top_departments": 0, "response": False}
    results, _, cut = targets.fit_targets(events, P, progress=lambda *_: None)
    r = results["attrition"]
    rt = pd.read_parquet(world / "truth" / "record_truth.parquet")
    key_map = rt.assign(customer_key=rt["source_system"] + ":" + rt["source_id"].astype(str))  # records as customers
    oracle = truth.true_attrition_probability(world, key_map, cut["valid"], P["horizon_days"])
    y = pd.Series(r.holdout_y, index=r.holdout_X.index)
    both = y.index.intersection(oracle.index)
    auc_true = propensity_report.evaluate(y[both], oracle[both])["roc_auc"]
    assert len(both) > 0.9 * len(y)
    assert r.metrics["roc_auc"] < auc_true < 0.97
    some = y.index[::7]         # asked for some keys: only their records, truth and orders are read (Parquet filters)
    key_map.to_parquet(tmp_path / "key_map.parquet", index=False)
    for km in (key_map, tmp_path / "key_map.parquet"):
        pd.testing.assert_series_equal(truth.true_attrition_probability(world, km, cut["valid"], P["horizon_days"],
                                                                        keys=some), oracle[oracle.index.isin(some)])


# --- reliability findings (#14): bad targets and frames
@pytest.mark.parametrize("kind", ["logistic", "hgb"])
def test_all_missing_categorical_keeps_column_order(telco, kind):
    X, y = telco
    X = X.copy()
    cats = propensity._split_columns(X)[1]
    X.insert(0, "empty_cat", pd.Series([None] * len(X), dtype=object))
    m = PropensityModel(kind=kind, calibration="none", max_iter=30).fit(X, y)
    cm = m.compile("churn")
    Xs = _scoring_frame(X, np.random.default_rng(0))
    assert np.max(np.abs(cm.predict_proba(Xs) - m.predict_proba(Xs)[:, 1])) <= 1e-6
    assert len(cats) >= 2


def test_bad_targets_and_frames_are_clear_errors(telco):
    X, y = telco
    X = X.head(400).copy()
    y = y[:400]
    with pytest.raises(CrmlabError, match="must be 0/1 or true/false, got values like"):
        PropensityModel().fit(X, np.where(y == 1, "yes", "no"))
    with pytest.raises(CrmlabError, match="fractions are not truncated"):
        PropensityModel().fit(X, y * 0.7)
    assert PropensityModel(calibration="none").fit(X, y.astype(bool)).base_rate_ == pytest.approx(y.mean())
    dup = pd.concat([X, X[["tenure"]]], axis=1)
    with pytest.raises(CrmlabError, match=r"duplicate column name\(s\) \['tenure'\]"):
        PropensityModel().fit(dup, y)
    mixed = X.copy()
    mixed["contract"] = mixed["contract"].astype(object)
    mixed.loc[mixed.index[:5], "contract"] = 7
    with pytest.raises(CrmlabError, match="column 'contract' mixes value types"):
        PropensityModel().fit(mixed, y)


def test_permutation_importance_on_a_stated_sample(telco):
    """#15: importance on at most max_rows rows (seeded); all rows when the table is smaller."""
    from sklearn.inspection import permutation_importance

    X, y = telco
    m = PropensityModel(kind="logistic", calibration="none", random_state=5).fit(X, y)
    full = m.permutation_importance(X, y, n_repeats=1, max_rows=None)
    assert full.attrs["rows"] == len(X)
    assert m.permutation_importance(X, y, n_repeats=1, max_rows=len(X) + 1).equals(full)
    part = m.permutation_importance(X, y, n_repeats=1, max_rows=1000)
    assert part.attrs["rows"] == 1000
    rows = np.sort(np.random.default_rng(5).choice(len(X), 1000, replace=False))
    Xo = propensity._as_object(X.iloc[rows][m.numeric_ + m.categorical_], m.categorical_)
    want = permutation_importance(m.model_, Xo, y[rows], n_repeats=1, scoring="roc_auc", random_state=5)
    assert np.allclose(part["importance"].to_numpy(), pd.Series(want.importances_mean, index=Xo.columns)
                       .reindex(part.index).to_numpy())
    assert full.index[0] == part.index[0]                       # the leading driver is the same


def test_large_training_sets_are_fitted_on_a_stratified_sample(telco):
    """#15: max_fit_rows caps the rows a model is fitted on (stratified, seeded); all rows are scored."""
    X, y = telco
    m = PropensityModel(kind="logistic", calibration="sigmoid", cv=3, random_state=2, max_fit_rows=2000).fit(X, y)
    assert m.fit_rows_ == 2000
    assert abs(m.base_rate_ - y.mean()) < 0.002                # stratified: the sample keeps the churn rate
    assert m.predict_proba(X).shape == (len(X), 2)
    full = PropensityModel(kind="logistic", calibration="sigmoid", cv=3, random_state=2).fit(X, y)
    assert full.fit_rows_ == len(X)
    auc = lambda model: propensity_report.evaluate(y, model.predict_proba(X)[:, 1])["roc_auc"]   # noqa: E731
    assert auc(m) > auc(full) - 0.02                            # a fifth of the rows, about the same ranking
    again = PropensityModel(kind="logistic", calibration="sigmoid", cv=3, random_state=2, max_fit_rows=2000).fit(X, y)
    assert np.array_equal(again.predict_proba(X), m.predict_proba(X))


@pytest.mark.parametrize("kind,calibration", [("logistic", "isotonic"), ("hgb", "sigmoid")])
def test_fast_permutation_importance_equals_sklearn(telco, kind, calibration):
    """The importance computed on the prepared matrix gives scikit-learn's numbers (same shuffles)."""
    from sklearn.inspection import permutation_importance

    X, y = telco
    X, y = X.iloc[:1500], y[:1500]
    m = PropensityModel(kind=kind, calibration=calibration, cv=3, max_iter=30, random_state=4).fit(X, y)
    got = m.permutation_importance(X, y, n_repeats=2, max_rows=None)
    Xo = propensity._as_object(X[m.numeric_ + m.categorical_], m.categorical_)
    want = permutation_importance(m.model_, Xo, y, n_repeats=2, scoring="roc_auc", random_state=4)
    want = pd.DataFrame({"importance": want.importances_mean, "sd": want.importances_std}, index=Xo.columns)
    pd.testing.assert_frame_equal(got.sort_index(), want.sort_index(), atol=1e-12, rtol=0, check_exact=False)


def test_fast_auc_equals_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 3000)
    for p in (rng.random(3000), np.round(rng.random(3000), 1), np.zeros(3000)):     # ties, all tied
        assert abs(propensity._auc(y, p) - roc_auc_score(y, p)) < 1e-12


@pytest.mark.parametrize("kind", ["logistic", "hgb"])
def test_calibration_on_a_holdout_fits_once(telco, kind, monkeypatch):
    """calibration_holdout: one fit on the rest (not cv + 1), calibrated on the held-out share; the
    compiled model still equals scikit-learn's, and discrimination stays close to cross-fitting."""
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline

    X, y = telco
    tr, te = train_test_split(np.arange(len(X)), test_size=0.3, stratify=y, random_state=0)
    fits = []
    real_fit = Pipeline.fit
    monkeypatch.setattr(Pipeline, "fit", lambda self, *a, **k: fits.append(len(a[0])) or real_fit(self, *a, **k))
    m = PropensityModel(kind=kind, calibration="sigmoid", calibration_holdout=0.25, max_iter=60).fit(X.iloc[tr], y[tr])
    assert len(fits) == 1 and abs(fits[0] - 0.75 * len(tr)) <= 1
    p = m.compile("churn").predict_proba(X.iloc[te])
    assert np.max(np.abs(p - m.predict_proba(X.iloc[te])[:, 1])) <= 1e-12
    fits.clear()
    cross = PropensityModel(kind=kind, calibration="sigmoid", cv=3, max_iter=60).fit(X.iloc[tr], y[tr])
    assert len(fits) == 4
    auc = propensity_report.evaluate(y[te], p)["roc_auc"]
    assert auc > propensity_report.evaluate(y[te], cross.predict_proba(X.iloc[te])[:, 1])["roc_auc"] - 0.02
    with pytest.raises(CrmlabError, match="calibration_holdout"):
        PropensityModel(calibration_holdout=1.0).fit(X, y)
