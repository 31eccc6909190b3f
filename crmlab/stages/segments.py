"""Stage 50: behavioural segments (chosen for homogeneity and stability) and the value x risk grid."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import engine, events_dask, segments, targets
from ..errors import CrmlabError
from ..events import CustomerEvents
from ..feature_rows import FeatureRows
from ..features import FeatureBuilder


@dataclass
class SegmentsResult:
    """What stage 50 decided, for its report."""

    events: CustomerEvents
    cutoff: pd.Timestamp
    value: pd.DataFrame
    risk: pd.DataFrame
    features_all: "pd.DataFrame | FeatureRows"
    features: "pd.DataFrame | FeatureRows"
    grid: pd.DataFrame
    segmenter: segments.Segmenter
    names: list
    labels: np.ndarray
    profile: pd.DataFrame
    table: pd.DataFrame
    profiles: pd.DataFrame


def run_segments(ctx) -> SegmentsResult:
    """Fit (or load) the segmenter on features at the scoring cut-off, name the segments, place every
    customer in the value x risk grid; write ``customer_segments`` and ``segment_profiles``."""
    S = ctx.params["segments"]
    key_map = ctx.optional_artifact("customer_key_map", columns=["customer_key"])
    ev = ctx.events()
    cutoff = targets.cutoffs(ev.last_date, ctx.params["propensity"]["horizon_days"])["score"]
    clv = f"clv_{ctx.params['value']['clv_months']}m"
    value = ctx.read_artifact("customer_value", columns=["customer_key", clv, "p_alive"])    # what the grid reads
    risk = ctx.read_artifact("customer_propensity", columns=["customer_key", "attrition_risk"])
    E = ctx.params["engine"]
    # Dask: the features stay on the workers; the segmenter fetches its sample and assigns them there
    X_all = events_dask.rows_on(engine.client(E), ev, E["partition_rows"])(FeatureBuilder().fit(ev, cutoff), cutoff)
    grid = segments.value_risk_grid(value, risk, clv, value_quantiles=S["value_quantiles"],
                                    risk_quantiles=S["risk_quantiles"])
    X = X_all[segments.select_features(X_all.columns, S["features"])]
    if S["model"] is None:
        seg = segments.Segmenter(k=S["k"] or "auto", method=S["method"], k_range=(S["k_min"], S["k_max"]),
                                 criterion=S["criterion"], min_stability=S["min_stability"],
                                 bootstraps=S["bootstraps"], select_rows=S["select_rows"], random_state=ctx.params["seed"]).fit(X)
        names = segments.name_segments(seg, S["names"])
        seg.names_ = names
    else:
        seg = segments.Segmenter.load(S["model"])
        names = seg.names_ or segments.name_segments(seg, S["names"])
    labels = seg.labels_ if S["model"] is None else seg.predict(X)
    if not np.array_equal(labels, seg.reference_predict(X)):
        raise CrmlabError("segments: the compiled assignment differs from the NumPy reference; nothing written")
    prof = segments.profile(X_all, labels, names, value.set_index("customer_key")[clv],
                            risk.set_index("customer_key")["attrition_risk"], seg)
    table = segments.assignments(key_map["customer_key"] if key_map is not None else X.index, X, labels, names, grid)
    profiles = segments.profiles_table(prof, grid)
    ctx.write_artifact("customer_segments", table)
    ctx.write_artifact("segment_profiles", profiles)
    if S["model"] is None:
        seg.save(ctx.run_dir / "artifacts" / "models" / "segmenter")
    return SegmentsResult(ev, cutoff, value, risk, X_all, X, grid, seg, names, labels, prof, table, profiles)
