"""Stage 30: expected purchases, probability alive and lifetime value per customer (BG/NBD family + Gamma-Gamma)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import pandas as pd

from .. import engine, value, value_dask, value_report
from ..events import CustomerEvents


@dataclass
class ValueResult:
    """What stage 30 fitted, for its report: the transactions, the RFM table at ``observation_end``,
    the purchase and spend models, the ``customer_value`` table and the fit's warnings."""

    events: CustomerEvents
    transactions: pd.DataFrame
    observation_end: pd.Timestamp
    rfm: pd.DataFrame
    model: object
    spend: value.GammaGamma
    table: pd.DataFrame
    warnings: list = field(default_factory=list)


def rfm_at(tx: pd.DataFrame, P: dict, observation_end, calibration_end=None) -> pd.DataFrame:
    """The RFM table the ``value`` parameters ask for (time unit, first channel as covariate)."""
    rfm = value.rfm_summary(tx, calibration_end=calibration_end, observation_end=observation_end,
                            time_unit=P["time_unit_days"])
    return value.add_first(rfm, tx, "channel") if P["covariates"] else rfm


def run_value(ctx) -> ValueResult:
    """Fit the purchase model and Gamma-Gamma on all history, write ``customer_value``; with
    ``engine.kind: dask`` on the run's cluster (:mod:`crmlab.value_dask`, the same table)."""
    P = ctx.params["value"]
    ev = ctx.events()
    tx = ev.transactions()
    observation_end = tx["order_date"].max()
    client = engine.client(ctx.params["engine"])
    if client is not None:
        rfm, model, spend, table, said = engine.retry_lost(lambda: value_dask.fit_value(
            client, tx, P, observation_end, ctx.params["engine"]["partition_rows"], ev.parts), "customer value")
    else:
        rfm = rfm_at(tx, P, observation_end)
        with warnings.catch_warnings(record=True) as caught:
            model = value.make_model(P["model"], P["covariates"]).fit(rfm)
        said = [str(w.message) for w in caught]
        spend = value.GammaGamma().fit(rfm)
        table = value.customer_value(model, spend, rfm, months=P["clv_months"], discount_rate=P["discount_rate"],
                                     margin=P["margin"], time_unit=P["time_unit_days"])
    ctx.write_artifact("customer_value", table)
    return ValueResult(ev, tx, observation_end, rfm, model, spend, table, said)


def holdout_check(r: ValueResult, P: dict):
    """The model refitted on all but the last ``holdout_days`` and checked on them: (calibration end,
    calibration RFM, model, :class:`~crmlab.value_report.HoldoutReport`), or None when switched off."""
    if P["holdout_days"] <= 0:
        return None
    calibration_end = r.observation_end - pd.Timedelta(days=P["holdout_days"])
    rfm_cal = rfm_at(r.transactions, P, r.observation_end, calibration_end)
    model_cal = value.make_model(P["model"], P["covariates"]).fit(rfm_cal)
    return calibration_end, rfm_cal, model_cal, value_report.holdout_report(model_cal, rfm_cal)
