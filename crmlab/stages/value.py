"""Stage 30: expected purchases, probability alive and lifetime value per customer (BG/NBD family + Gamma-Gamma)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import pandas as pd

from .. import engine, value, value_dask, value_report
from ..errors import CrmlabError
from ..events import CustomerEvents


@dataclass
class ValueResult:
    """What stage 30 fitted, for its report: the events and how many orders they hold, the RFM table at
    ``observation_end``, the purchase and spend models, the ``customer_value`` table and the fit's warnings."""

    events: CustomerEvents
    orders: int
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
    observation_end = ev.last_date
    client = engine.client(ctx.params["engine"])
    if client is not None:              # events built by the workers: their transactions are read there
        tx = ev.transactions() if ev.parts is None else None
        rfm, model, spend, table, said = engine.retry_lost(lambda: value_dask.fit_value(
            client, tx, P, observation_end, ctx.params["engine"]["partition_rows"], ev.parts), "customer value")
    else:
        tx = ev.transactions()
        rfm = rfm_at(tx, P, observation_end)
        with warnings.catch_warnings(record=True) as caught:
            model = value.make_model(P["model"], P["covariates"]).fit(rfm)
        said = [str(w.message) for w in caught]
        spend = value.GammaGamma().fit(rfm)
        table = value.customer_value(model, spend, rfm, months=P["clv_months"], discount_rate=P["discount_rate"],
                                     margin=P["margin"], time_unit=P["time_unit_days"])
    ctx.write_artifact("customer_value", table)
    orders = sum(ev.map_parts(_orders, what="orders"))
    return ValueResult(ev, orders, observation_end, rfm, model, spend, table, said)


def _orders(ev: CustomerEvents) -> int:
    return len(ev.orders)


@dataclass
class HoldoutCheck:
    """The purchase model refitted on the history up to ``calibration_end`` (``model``, on ``customers``
    customers) against what they bought after it (``report``), and the weekly counts it is tracked on."""

    calibration_end: pd.Timestamp
    customers: int
    model: object
    report: value_report.HoldoutReport
    tracking: value_report.TrackingCounts


def _calibration_rfm(ev: CustomerEvents, P: dict, observation_end, calibration_end):
    """(RFM table with a holdout period, transactions) of the customers of ``ev`` first seen by
    ``calibration_end``; None when there are none."""
    tx = ev.transactions()
    if not (tx["order_date"] <= calibration_end).any():
        return None
    return rfm_at(tx, P, observation_end, calibration_end), tx


def _calibration_counts(ev: CustomerEvents, P: dict, observation_end, calibration_end):
    got = _calibration_rfm(ev, P, observation_end, calibration_end)
    if got is None:
        return None
    rfm, tx = got
    return value.pattern_counts(rfm, value.pattern_columns(P["covariates"])), value_report.tracking_counts(rfm, tx)


def _holdout_counts(ev: CustomerEvents, P: dict, observation_end, calibration_end, model):
    got = _calibration_rfm(ev, P, observation_end, calibration_end)
    return None if got is None else value_report.holdout_counts(model, got[0])


def holdout_check(r: ValueResult, P: dict) -> HoldoutCheck | None:
    """The model refitted on all but the last ``holdout_days`` and checked on them (None when switched
    off). Counted by disjoint sets of customers (:meth:`~crmlab.events.CustomerEvents.map_parts`: where
    the events are parts on Dask workers, there), so only patterns and sums reach this process; the model
    is fitted on the calibration patterns, as the full-history model is in Dask mode (the same fit)."""
    if P["holdout_days"] <= 0:
        return None
    end = r.observation_end
    calibration_end = end - pd.Timedelta(days=P["holdout_days"])
    got = [g for g in r.events.map_parts(_calibration_counts, P, end, calibration_end, what="calibration patterns")
           if g is not None]
    if not got:
        raise CrmlabError("rfm_summary: no transactions on or before the calibration end")
    counts = value.sum_patterns([g[0] for g in got], value.pattern_columns(P["covariates"]))
    model = value.fit_patterns(P["model"], P["covariates"], counts)
    held = [h for h in r.events.map_parts(_holdout_counts, P, end, calibration_end, model, what="holdout purchases")
            if h is not None]
    return HoldoutCheck(calibration_end, int(counts["customers"].sum()), model, sum(held[1:], held[0]).report(),
                        sum((g[1] for g in got[1:]), got[0][1]))
