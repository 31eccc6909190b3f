"""Every propensity target of a run, fitted and evaluated honestly on time cut-offs: attrition, a
purchase per department and campaign response; scoring and saving the compiled models."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import feature_rows
from .errors import CrmlabError
from .events import campaign_starts
from .features import FeatureBuilder, _slug, labels
from .progress import bar
from .propensity import CompiledModel, PropensityModel, fit_sample
from .propensity_report import evaluate


@dataclass
class TargetResult:
    """One target: the model evaluated on the time holdout (with its data) and the final model."""

    name: str
    holdout_model: PropensityModel
    holdout_X: "pd.DataFrame | feature_rows.FeatureRows"
    holdout_y: np.ndarray
    holdout_p: np.ndarray
    metrics: dict
    model: PropensityModel
    compiled: CompiledModel


def cutoffs(last_date, horizon_days: int) -> dict:
    """Training, validation and scoring cut-offs: each label window is the ``horizon_days`` after its cut-off."""
    score = pd.Timestamp(last_date).normalize() + pd.Timedelta(days=1)
    valid = score - pd.Timedelta(days=horizon_days)
    return {"train": valid - pd.Timedelta(days=horizon_days), "valid": valid, "score": score}


def _model(P: dict, seed: int) -> PropensityModel:
    return PropensityModel(kind=P["model"], calibration=P["calibration"], cv=P["cv"], max_iter=P["max_iter"],
                           random_state=seed, max_fit_rows=P["fit_rows"], calibration_holdout=P["calibration_holdout"])


def _fit(P: dict, seed: int, X, y) -> PropensityModel:
    """``_model(P, seed)`` fitted on ``X``, ``y``, on the stratified sample it would draw itself
    (:func:`~crmlab.propensity.fit_sample`): drawn from the labels first, so that only those rows of ``X``
    are fetched where they lie on Dask workers."""
    y = np.asarray(y)
    keep = fit_sample(y, P["fit_rows"], seed)
    return _model(P, seed).fit(X.iloc[keep], y[keep])


def _positive(X: pd.DataFrame, model: PropensityModel) -> np.ndarray:
    return model.predict_proba(X)[:, 1]


def _rows(n: int, P: dict) -> str:
    """'50,000 (a stratified sample) of 160,000' or '12,000': the rows a model is fitted on."""
    cap = P["fit_rows"]
    return f"{cap:,} (a stratified sample) of {n:,}" if cap is not None and n > cap else f"{n:,}"


def purchase_departments(ev, P: dict, before) -> list[str]:
    """The departments with purchase targets: from params, else the most bought before ``before``."""
    if P["departments"]:
        known = set(ev.departments())
        unknown = [d for d in P["departments"] if d not in known]
        if unknown:
            raise CrmlabError(f"propensity.departments: unknown department(s) {unknown}; known: {sorted(known)}")
        return list(P["departments"])
    return ev.department_buyers(before).nlargest(P["top_departments"]).index.tolist()


def _training_builder(ev, cut: dict):
    return FeatureBuilder().fit(ev, cut["train"])


def fit_targets(ev, P: dict, seed: int = 0, progress=print, features=None) -> tuple[dict, "FeatureBuilder", dict]:
    """Fit, evaluate on a time holdout and refit every target.

    Each target is evaluated honestly: a model fitted on features at the training cut-off (labels
    from the window after it) scores the customers at the validation cut-off, whose labels are the
    last ``horizon_days`` of data. The model kept for scoring is then refitted at the validation
    cut-off. Campaign response is fitted on treated contacts (features at each campaign's start)
    and evaluated on the latest campaign. Returns (results by target, the scoring feature builder,
    cut-offs). ``features(builder, cutoff)``: how features are computed (default ``ev.feature_rows``,
    ``builder.transform(ev, cutoff)`` here; on a Dask cluster :func:`crmlab.events_dask.rows_on`, the same
    rows left on the workers: models are then fitted on fetched samples and evaluated where the rows lie).
    """
    features = features or ev.feature_rows
    cut = cutoffs(ev.last_date, P["horizon_days"])
    depts = purchase_departments(ev, P, cut["valid"])
    fb_train = _training_builder(ev, cut)
    fb_final = FeatureBuilder().fit(ev, cut["valid"])
    X_tr, X_va = features(fb_train, cut["train"]), features(fb_train, cut["valid"])
    y_tr = labels(ev, X_tr.index, cut["train"], P["horizon_days"], depts)
    y_va = labels(ev, X_va.index, cut["valid"], P["horizon_days"], depts)
    X_fin = features(fb_final, cut["valid"])
    targets = (["attrition"] if P["attrition"] else []) + [c for c in y_tr.columns if c.startswith("buy_")]
    out = {}
    for t in bar(targets, "propensity models", unit="target"):
        progress(f"{t}: fitting on {_rows(len(X_tr), P)} customers at {cut['train']:%Y-%m-%d}, "
                 f"validating on {len(X_va):,} at {cut['valid']:%Y-%m-%d}")
        m = _fit(P, seed, X_tr, y_tr[t])
        p = feature_rows.apply(X_va, _positive, m)
        final = _fit(P, seed, X_fin, y_va[t])
        meta = {"target": t, "cutoff": f"{cut['valid']:%Y-%m-%d}", "horizon_days": P["horizon_days"]}
        out[t] = TargetResult(t, m, X_va, y_va[t].to_numpy(), p, evaluate(y_va[t], p), final, final.compile(t, meta))
    del X_tr, X_fin                 # on Dask workers: their frames go before the response model's come
    if P["response"] and ev.has_contacts:
        r = _fit_response(ev, P, seed, fb_train, fb_final, progress, features)
        if r is not None:
            out["response"] = r
    return out, fb_final, cut


def _treated(ev, columns: list[str]) -> tuple[pd.DataFrame, pd.Series]:
    c = ev.contacts
    return c.loc[c["group"] == "treatment", columns], campaign_starts(c)


def treated_contacts(ev) -> tuple[pd.DataFrame, pd.Series]:
    """(every treated contact's campaign, date, customer and response, in the contacts' order; each
    campaign's first contact date, earliest first): by parts where the events are parts, so that only
    these columns of the treated contacts come to this process."""
    got = ev.map_parts(_treated, ["campaign_id", "contact_date", "customer_key", "responded"], what="treated contacts")
    treated = got[0][0] if len(got) == 1 else pd.concat([g[0] for g in got]).sort_index(kind="stable")  # by row number
    starts = pd.concat([g[1] for g in got])
    return treated, starts.groupby(level=0).min().sort_values()


def _response_frame(treated, fb, campaigns, features) -> tuple[pd.DataFrame, np.ndarray]:
    c = treated[treated["campaign_id"].isin(campaigns)]
    Xs, ys = [], []
    for camp, grp in c.groupby("campaign_id", sort=False):
        start = grp["contact_date"].min()
        X = features(fb, start)
        keys = grp.drop_duplicates("customer_key").set_index("customer_key")
        pos = X.index.get_indexer(keys.index)               # hash lookup (isin on str keys walks a list)
        keys = keys[pos >= 0]
        Xs.append(feature_rows.take(X, pos[pos >= 0]))
        ys.append(keys["responded"].to_numpy().astype(int))
    return feature_rows.concat(Xs), np.concatenate(ys)


def _fit_response(ev, P, seed, fb_train, fb_final, progress, features):
    treated, order = treated_contacts(ev)
    if len(order) < 2:
        progress("response: fewer than two campaigns, no honest holdout: skipped")
        return None
    first, last = list(order.index[:-1]), [order.index[-1]]
    X_tr, y_tr = _response_frame(treated, fb_train, first, features)
    X_va, y_va = _response_frame(treated, fb_train, last, features)
    if len(set(y_tr)) < 2 or len(set(y_va)) < 2:
        progress("response: a campaign without both responders and non-responders: skipped")
        return None
    progress(f"response: fitting on {_rows(len(X_tr), P)} treated contacts of {', '.join(first)}, "
             f"validating on {len(X_va):,} of {last[0]}")
    m = _fit(P, seed, X_tr, y_tr)
    p = feature_rows.apply(X_va, _positive, m)
    X_all, y_all = _response_frame(treated, fb_final, list(order.index), features)
    final = _fit(P, seed, X_all, y_all)
    meta = {"target": "response", "campaigns": list(order.index)}
    return TargetResult("response", m, X_va, y_va, p, evaluate(y_va, p), final, final.compile("response", meta))


def _probabilities(X: pd.DataFrame, models: dict) -> np.ndarray:
    return np.column_stack([cm.predict_proba(X) for cm in models.values()]) if models else np.empty((len(X), 0))


def score_customers(models: dict, X) -> pd.DataFrame:
    """The ``customer_propensity`` table: one probability column per model, and the models' version.
    ``X``: the features, a frame or rows left on Dask workers (scored there by the compiled kernels)."""
    names = {"attrition": "attrition_risk", "response": "response_propensity"}
    out = pd.DataFrame(feature_rows.apply(X, _probabilities, models), index=X.index,
                       columns=[names.get(t, t.replace("buy_", "propensity_")) for t in models])
    version = hashlib.sha256(",".join(f"{t}:{cm.version}" for t, cm in sorted(models.items())).encode())
    out["model_version"] = version.hexdigest()[:12]
    return out.reset_index()


def save_models(models: dict, builder, folder) -> Path:
    """Compiled models (one sub-folder each) and the feature vocabulary, for scoring without refitting."""
    folder = Path(folder)
    for t, cm in models.items():
        cm.save(folder / t)
    vocab = {"channels": builder.channels_, "departments": list(builder.departments_), "media": builder.media_,
             "windows": list(builder.windows), "targets": list(models)}
    (folder / "features.json").write_text(json.dumps(vocab, indent=1))
    return folder


def load_models(folder):
    """(models by target, feature builder) saved by :func:`save_models`."""
    folder = Path(folder)
    spec = folder / "features.json"
    if not spec.is_file():
        raise CrmlabError(f"no saved propensity models in {folder} (features.json missing); "
                          f"point propensity.models at a run's artifacts/models folder")
    vocab = json.loads(spec.read_text())
    fb = FeatureBuilder(tuple(vocab["windows"]))
    fb.channels_, fb.departments_, fb.media_ = vocab["channels"], vocab["departments"], vocab["media"]
    fb.categorical_ = ["first_channel", "top_department"]
    return {t: CompiledModel.load(folder / t) for t in vocab["targets"]}, fb


def refit_as(result: TargetResult, ev, cut: dict, P: dict, kind: str, seed: int = 0) -> PropensityModel:
    """The holdout model of ``result`` fitted again as another model ``kind`` (same features and labels)."""
    if result.name == "response":
        raise CrmlabError("refit_as covers customer-level targets (attrition, buy_*), not campaign response")
    X_tr = ev.feature_rows(_training_builder(ev, cut), cut["train"])     # the holdout model's columns
    depts = [result.name[4:]] if result.name.startswith("buy_") else []
    y = labels(ev, X_tr.index, cut["train"], P["horizon_days"],
               [d for d in ev.departments() if _slug(d) in depts])
    return _fit({**P, "model": kind}, seed, X_tr, y[result.name])
