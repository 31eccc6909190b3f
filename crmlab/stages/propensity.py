"""Stage 40: who will buy what and who is leaving; calibrated models evaluated on a time holdout."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import engine, events_dask, targets
from ..errors import CrmlabError
from ..events import CustomerEvents
from ..feature_rows import FeatureRows

#: customers on which the compiled models are checked against scikit-learn before scoring
CHECK_ROWS = 20_000


@dataclass
class PropensityResult:
    """What stage 40 fitted and scored, for its report. ``results``: per target the holdout model,
    its evaluation and the refitted model (None when scoring with saved models); ``check``: max
    |compiled - scikit-learn| per target on ``checked_rows`` customers (None without a refit).
    ``scores``: a row per customer with an order (the scoring cut-off is the day after the last one)."""

    events: CustomerEvents
    cutoffs: dict
    results: dict | None
    builder: object
    models: dict
    features_now: "pd.DataFrame | FeatureRows"
    scores: pd.DataFrame
    check: dict | None = None
    checked_rows: int = 0


def run_propensity(ctx) -> PropensityResult:
    """Fit and evaluate every target (or load saved models: ``propensity.models``), check the compiled
    scorers against scikit-learn, score every customer at the scoring cut-off; write
    ``customer_propensity`` and, after a refit, the models."""
    P, E = ctx.params["propensity"], ctx.params["engine"]
    ev = ctx.events()
    features = events_dask.rows_on(engine.client(E), ev, E["partition_rows"])   # Dask: left on the workers
    cut = targets.cutoffs(ev.last_date, P["horizon_days"])
    results, check, n_check = None, None, 0
    if P["models"] is None:
        results, builder, _ = targets.fit_targets(ev, P, seed=ctx.params["seed"], features=features)
        models = {t: r.compiled for t, r in results.items()}
    else:
        models, builder = targets.load_models(P["models"])
    X_now = features(builder, cut["score"])
    if results is not None:
        at = np.random.default_rng(ctx.params["seed"]).choice(len(X_now), min(len(X_now), CHECK_ROWS), replace=False)
        rows = X_now.iloc[np.sort(at)]
        check = {t: float(np.max(np.abs(r.model.predict_proba(rows)[:, 1] - models[t].predict_proba(rows))))
                 for t, r in results.items()}
        n_check = len(rows)
        if max(check.values()) > 1e-6:
            raise CrmlabError(f"propensity: compiled scores differ from scikit-learn's by up to {max(check.values()):.2g} "
                              f"({check}); nothing written")
    scores = targets.score_customers(models, X_now)
    ctx.write_artifact("customer_propensity", scores)
    if results is not None:
        targets.save_models(models, builder, ctx.run_dir / "artifacts" / "models")
    return PropensityResult(ev, cut, results, builder, models, X_now, scores, check, n_check)
