"""Stage 60's decisions by parts of the customers on a Dask cluster: the local tables, row for row.

Every decision about a customer reads that customer's rows only (their segment, value, propensities,
recommendations, orders, contacts and profile row), except the media's overall response rates, which
are computed once over all contacts and given to every part. The events are split by customer
(:class:`crmlab.events_dask.PartitionedEvents`), the score tables by the same hash of the key, and
each part builds its ``customer_scores``, ``customer_offers`` and ``recent_contacts`` rows on a worker;
put back together they are the local tables in the local row order. ``dask`` is imported inside the
functions (by :mod:`crmlab.events_dask`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import decisions, engine, events_dask
from .events import CustomerEvents


def _split(df: pd.DataFrame | None, n: int) -> list:
    if df is None:
        return [None] * n
    return events_dask.split_rows(df, events_dask.part_of(df["customer_key"], n), n)


def decide_by_parts(client, partition_rows: int, ev: CustomerEvents, segments, value, propensity, recs, products,
                    D: dict, cutoff, do_not_contact, guarded, top: int):
    """:func:`crmlab.decisions.decide_tables` of every customer, computed by parts of the customers on
    ``client``'s workers (events split as for the features, about ``partition_rows`` order lines a
    part, or the parts already there: :func:`~crmlab.events_dask.on_cluster`); equal to it."""
    parts = events_dask.on_cluster(client, ev, partition_rows)
    n = parts.n
    segment_part = events_dask.part_of(segments["customer_key"], n)
    inputs = list(zip(events_dask.split_rows(segments, segment_part, n), _split(value, n), _split(propensity, n),
                      _split(recs, n)))
    fixed = (products, D, cutoff, do_not_contact, guarded, top, decisions.medium_rates(ev.contacts, cutoff))
    sent = {}

    def send():
        sent["inputs"], sent["fixed"] = engine.scatter(client, inputs), engine.scatter(client, [fixed])[0]

    def again():
        parts.scatter()
        send()

    def run():
        futures = [client.submit(_decide_part, p, i, sent["fixed"], pure=False)
                   for p, i in zip(parts.parts, sent["inputs"])]
        return client.gather(futures)

    send()
    got = engine.retry_lost(run, f"decisions on {n} parts of the customers", again=again)
    order = np.argsort(segment_part, kind="stable")        # the parts' segment rows laid end to end
    scores = pd.concat([g[0] for g in got], ignore_index=True)
    scores = scores.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)
    offers = pd.concat([g[1] for g in got], ignore_index=True).sort_values("customer_key", kind="stable")
    recent = pd.concat([g[2] for g in got], ignore_index=True).sort_values(["customer_key", "contact_date"],
                                                                          kind="stable")
    return scores, offers.reset_index(drop=True), recent.reset_index(drop=True)


def _decide_part(ev, inputs, fixed):
    return decisions.decide_tables(ev, *inputs, *fixed)
