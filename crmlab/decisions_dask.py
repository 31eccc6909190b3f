"""Stage 60's decisions by parts of the customers on a Dask cluster: the local tables, row for row.

Every decision about a customer reads that customer's rows only (their segment, value, propensities,
recommendations, orders, contacts and profile row), except the media's overall response rates, which
are added up from every part's counts and given to every part. The events are split by customer
(:class:`crmlab.events_dask.PartitionedEvents`), the score tables by the same hash of the key, and
each part builds its ``customer_scores``, ``customer_offers`` and ``recent_contacts`` rows on a worker.
The three tables stay on the workers (:class:`~crmlab.table_parts.TableParts`), regrouped there by
ranges (the scores by the segments' row numbers, offers and recent contacts by the customer key) and
sorted, so that their parts, laid end to end, are the local tables row for row.
``dask`` is imported inside the functions (by :mod:`crmlab.events_dask`).
"""
from __future__ import annotations

from operator import getitem

import numpy as np
import pandas as pd

from . import decisions, engine, events_dask, table_parts
from .events import ROW, CustomerEvents
from .table_parts import TableParts

#: the local tables' row orders (stable sorts): scores as the segments (:data:`ROW`, their row number),
#: offers by customer, recent contacts by customer and date
SCORE_ORDER, OFFER_ORDER, RECENT_ORDER = [ROW], ["customer_key"], ["customer_key", "contact_date"]


def decide_by_parts(client, partition_rows: int, ev: CustomerEvents, segments, value, propensity, recs, products,
                    D: dict, cutoff, do_not_contact, guarded, top: int) -> tuple[TableParts, TableParts, TableParts]:
    """:func:`crmlab.decisions.decide_tables` of every customer, computed by parts of the customers on
    ``client``'s workers (events split as for the features, about ``partition_rows`` order lines a
    part, or the parts already there: :func:`~crmlab.events_dask.on_cluster`) and left there as
    :class:`~crmlab.table_parts.TableParts` whose parts, laid end to end, are its tables row for row.
    ``segments``, ``value``, ``propensity`` and ``recs``: frames, or the paths of Parquet artifacts
    that the workers read themselves (:func:`~crmlab.events_dask.parts_on_workers`)."""
    parts = events_dask.on_cluster(client, ev, partition_rows)
    n = parts.n
    rates = decisions.rates_of(parts.map(_medium_counts, cutoff, what="contacts and answers by medium"))
    fixed = (products, D, cutoff, do_not_contact, guarded, top, rates)
    sent = {}

    def send():                                     # split here or read there, not kept: a retry does it anew
        inputs = [events_dask.parts_on_workers(client, t, n) for t in (segments, value, propensity, recs)]
        sent["inputs"], sent["fixed"] = list(zip(*inputs)), engine.scatter(client, [fixed])[0]
        sizes = client.gather([client.submit(_key_sample, i[0], pure=False) for i in sent["inputs"]])
        rows = sum(k for k, _ in sizes)                                              # segment rows in all
        sent["rows"] = np.linspace(0, rows, n + 1).astype(np.int64)[1:-1]
        sent["keys"] = table_parts.bounds(np.sort(np.concatenate([s for _, s in sizes])), n)

    def again():
        parts.scatter()
        send()

    def run():
        decided = [client.submit(_decide_part, p, i, sent["fixed"], sent["rows"], sent["keys"], pure=False)
                   for p, i in zip(parts.parts, sent["inputs"])]
        return tuple(table_parts.regroup(client, [client.submit(getitem, d, t, pure=False) for d in decided], order)
                     for t, order in enumerate((SCORE_ORDER, OFFER_ORDER, RECENT_ORDER)))

    send()
    return engine.retry_lost(run, f"decisions on {n} parts of the customers", again=again)


def _medium_counts(ev: CustomerEvents, cutoff) -> dict:
    return decisions.medium_counts(ev.contacts, cutoff)


def _key_sample(segments: pd.DataFrame, every: int = 1000) -> tuple[int, np.ndarray]:
    """A part's number of segment rows and every ``every``-th of its keys, sorted."""
    return len(segments), np.sort(segments["customer_key"].to_numpy(dtype=object))[::every]


def _decide_part(ev, inputs, fixed, rows, keys):
    """One part's (scores by range of row numbers, offers and recent contacts by range of the key)."""
    scores, offers, recent = decisions.decide_tables(ev, *inputs, *fixed)
    scores[ROW] = inputs[0].index.to_numpy()               # one score row per segment row, in order
    return (table_parts.by_range(scores, rows, ROW), table_parts.by_range(offers, keys),
            table_parts.by_range(recent, keys))
