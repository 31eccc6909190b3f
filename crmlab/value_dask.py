"""Customer value on a Dask cluster (``engine.kind: dask``), with the local results bit for bit.

* the RFM table by partitions: transactions split by ``customer_key`` (every customer's rows in one
  partition), each partition in the rows' original order and summarised by
  :func:`crmlab.value.rfm_summary` itself, so validation, day sums and first channels are the local ones;
* the purchase model fitted on the distinct (frequency, recency, T [, covariates]) patterns counted per
  partition and summed across them: one row per pattern reaches the client (595k for 1M simulated
  customers with day-level dates, benchmarks/results/dask_bench.txt), and since the models sum
  their likelihood over patterns in value order, the likelihood, parameters and standard errors equal
  the local fit's;
* Gamma-Gamma on the (frequency, spend) pairs of repeat customers (continuous spend does not reduce);
* scores by ``map_partitions`` with the compiled kernels (:func:`crmlab.value.customer_scores`); the
  value decile, a rank over all customers, on the collected table.

``dask`` is imported inside the functions: the core install runs without the ``dask`` extra.
"""
from __future__ import annotations

import math
import warnings

import pandas as pd

from . import engine, events_dask, value

def _transactions(ev) -> pd.DataFrame:
    return ev.transactions()


def _head(ev, n: int) -> pd.DataFrame:
    return ev.transactions().head(n)


def head_of(parts, n: int = 1000) -> pd.DataFrame:
    """Up to ``n`` transactions of the first part of ``parts`` that has any (its columns and types)."""
    for p in parts.parts:
        got = parts.client.submit(_head, p, n, pure=False).result()
        if len(got):
            return got
    return got


def partitioned(client, transactions: pd.DataFrame | None, partition_rows: int, parts=None, meta=None):
    """``transactions`` sent to the workers of ``client`` (scattered, not inside the task graph) as a Dask
    DataFrame of ~``partition_rows`` rows per partition, every customer's rows in one partition and in
    their input order (so per-customer day sums add in the local order). With ``parts`` (the events'
    :class:`~crmlab.events_dask.PartitionedEvents` already on the workers) each partition is a part's
    transactions, taken where it lies: nothing is sent (``transactions`` may then be None, ``meta``:
    their columns).

    The table is in this process already, so it is split by customer here (one pass, no shuffle across
    the workers: that took 7.2 of 13 s at 1M customers)."""
    import dask.dataframe as dd

    if parts is not None:
        futures = [client.submit(_transactions, p, pure=False) for p in parts.parts]
        return dd.from_delayed(futures, meta=meta if meta is not None else transactions.iloc[:0], verify_meta=False)
    n = max(1, math.ceil(len(transactions) / partition_rows))
    parts = events_dask.split_rows(transactions, events_dask.part_of(transactions["customer_key"], n), n)
    return dd.from_delayed(engine.scatter(client, parts), meta=transactions.iloc[:0], verify_meta=False)


def _rfm_part(part: pd.DataFrame, observation_end, time_unit: float, covariates: bool, meta) -> pd.DataFrame:
    """One partition's RFM rows, as :func:`crmlab.stages.value.rfm_at` makes them for the whole table."""
    if part.empty:
        return meta
    rfm = value.rfm_summary(part, observation_end=observation_end, time_unit=time_unit)
    return value.add_first(rfm, part, "channel") if covariates else rfm


def rfm_summary(ddf, sample: pd.DataFrame, observation_end, time_unit: float = 7.0, covariates: bool = False):
    """The RFM table of :func:`partitioned` transactions as a Dask DataFrame indexed by customer_key
    (partitions in no particular key order); ``sample``: a few of the transactions, for the schema."""
    meta = _rfm_part(sample, observation_end, time_unit, covariates, None).iloc[:0]
    return ddf.map_partitions(_rfm_part, observation_end, time_unit, covariates, meta, meta=meta)


def patterns(rfm, columns: list[str]) -> pd.DataFrame:
    """Distinct rows of ``columns`` of a Dask RFM table with their customer counts (``customers``)."""
    meta = value.pattern_counts(rfm._meta, columns)
    return value.sum_patterns([rfm.map_partitions(value.pattern_counts, columns, meta=meta).compute()], columns)


def _scores_part(rfm: pd.DataFrame, model, spend, months, discount_rate, margin, time_unit, meta) -> pd.DataFrame:
    if rfm.empty:
        return meta
    return value.customer_scores(model, spend, rfm, months, discount_rate, margin, time_unit)


def fit_value(client, transactions: pd.DataFrame | None, P: dict, observation_end, partition_rows: int, parts=None):
    """Stage 30 on the cluster of ``client``: (RFM table, purchase model, Gamma-Gamma, ``customer_value``,
    the model fit's warnings), equal to the local stage's. ``P``: the ``value`` parameters; ``parts``:
    the events' parts on the workers, whose transactions are read there (:func:`partitioned`; then
    ``transactions`` may be None: nothing is read here)."""
    import dask

    covariates = bool(P["covariates"])
    with dask.config.set({"scheduler": client, "dataframe.convert-string": False}):   # the local dtypes
        head = transactions.head(1000) if transactions is not None else head_of(parts)
        ddf = partitioned(client, transactions, partition_rows, parts, head.iloc[:0])
        rfm = rfm_summary(ddf, head, observation_end, P["time_unit_days"], covariates).persist()
        counts = patterns(rfm, value.pattern_columns(P["covariates"]))
        with warnings.catch_warnings(record=True) as caught:
            model = value.fit_patterns(P["model"], P["covariates"], counts)
        spend = value.GammaGamma().fit(rfm[["frequency", "monetary_value"]][
            (rfm["frequency"] > 0) & (rfm["monetary_value"] > 0)].compute())
        months = P["clv_months"]
        args = (model, spend, months, P["discount_rate"], P["margin"], P["time_unit_days"])
        meta = value.customer_scores(args[0], args[1], rfm.head(5, npartitions=-1), *args[2:]).iloc[:0]
        scored = rfm.map_partitions(_scores_part, *args, meta, meta=meta)
        table, rfm_local = dask.compute(scored, rfm)
    table = table.sort_values("customer_key", kind="stable").reset_index(drop=True)
    table["value_decile"] = value.value_deciles(table[f"clv_{months}m"].to_numpy())
    rfm_local = rfm_local.sort_index(kind="stable")
    rfm_local.attrs["time_unit_days"] = float(P["time_unit_days"])
    return rfm_local, model, spend, table, [str(w.message) for w in caught]
