"""Stage 60's decisions by parts of the customers on a Dask cluster: the local tables, row for row.

Every decision about a customer reads that customer's rows only (their segment, value, propensities,
recommendations, orders, contacts and profile row), except the media's overall response rates, which
are computed once over all contacts and given to every part. The events are split by customer
(:class:`crmlab.events_dask.PartitionedEvents`), the score tables by the same hash of the key, and
each part builds its ``customer_scores``, ``customer_offers`` and ``recent_contacts`` rows on a worker.
The scores come back here in the local row order. Offers and recent contacts (several rows a
customer) stay on the workers (:class:`~crmlab.table_parts.TableParts`): regrouped by ranges of the
customer key and sorted there, so that their parts, laid end to end, are the local tables row for row.
``dask`` is imported inside the functions (by :mod:`crmlab.events_dask`).
"""
from __future__ import annotations

from operator import getitem

import numpy as np
import pandas as pd

from . import decisions, engine, events_dask
from .events import CustomerEvents
from .table_parts import TableParts

#: the local tables' row orders (stable sorts): offers by customer, recent contacts by customer and date
OFFER_ORDER, RECENT_ORDER = ["customer_key"], ["customer_key", "contact_date"]


def _split(df: pd.DataFrame | None, n: int) -> list:
    if df is None:
        return [None] * n
    return events_dask.split_rows(df, events_dask.part_of(df["customer_key"], n), n)


def decide_by_parts(client, partition_rows: int, ev: CustomerEvents, segments, value, propensity, recs, products,
                    D: dict, cutoff, do_not_contact, guarded, top: int):
    """:func:`crmlab.decisions.decide_tables` of every customer, computed by parts of the customers on
    ``client``'s workers (events split as for the features, about ``partition_rows`` order lines a
    part, or the parts already there: :func:`~crmlab.events_dask.on_cluster`): the scores as a frame,
    offers and recent contacts as :class:`~crmlab.table_parts.TableParts`; equal to it, row for row."""
    parts = events_dask.on_cluster(client, ev, partition_rows)
    n = parts.n
    segment_part = events_dask.part_of(segments["customer_key"], n)
    fixed = (products, D, cutoff, do_not_contact, guarded, top, decisions.medium_rates(ev.contacts, cutoff))
    keys = np.sort(segments["customer_key"].to_numpy(dtype=object))
    # n ranges of about equal numbers of customers (n - 1 bounds, whatever the number of keys)
    bounds = keys[np.linspace(0, len(keys), n + 1).astype(np.int64)[1:-1]] if len(keys) else np.full(n - 1, "", object)
    sent = {}

    def send():                                     # split here, not kept: a retry splits them anew
        inputs = zip(events_dask.split_rows(segments, segment_part, n), _split(value, n), _split(propensity, n),
                     _split(recs, n))
        sent["inputs"], sent["fixed"] = engine.scatter(client, list(inputs)), engine.scatter(client, [fixed])[0]

    def again():
        parts.scatter()
        send()

    def run():
        decided = [client.submit(_decide_part, p, i, sent["fixed"], bounds, pure=False)
                   for p, i in zip(parts.parts, sent["inputs"])]
        scores = client.gather([client.submit(getitem, d, 0, pure=False) for d in decided])
        return scores, _regrouped(client, decided, 1, OFFER_ORDER), _regrouped(client, decided, 2, RECENT_ORDER)

    send()
    scores, offers, recent = engine.retry_lost(run, f"decisions on {n} parts of the customers", again=again)
    order = np.argsort(segment_part, kind="stable")        # the parts' segment rows laid end to end
    scores = pd.concat(scores, ignore_index=True)
    return scores.iloc[np.argsort(order, kind="stable")].reset_index(drop=True), offers, recent


def _decide_part(ev, inputs, fixed, bounds):
    """One part's (scores, offers by key range, recent contacts by key range)."""
    scores, offers, recent = decisions.decide_tables(ev, *inputs, *fixed)
    return scores, _by_range(offers, bounds), _by_range(recent, bounds)


def _by_range(df: pd.DataFrame, bounds: np.ndarray) -> list[pd.DataFrame]:
    at = np.searchsorted(bounds, df["customer_key"].to_numpy(dtype=object), side="right")
    return events_dask.split_rows(df, at, len(bounds) + 1)


def _regrouped(client, decided: list, table: int, order: list) -> TableParts:
    """Table ``table`` of every part's decisions, regrouped on the workers by range of the key."""
    return TableParts(client, [client.submit(_key_range, order, *[client.submit(_piece, d, table, r, pure=False)
                                                                   for d in decided], pure=False)
                               for r in range(len(decided))])


def _piece(decided, table: int, r: int) -> pd.DataFrame:
    return decided[table][r]


def _key_range(order: list, *pieces) -> pd.DataFrame:
    """One range of the customer keys: every part's rows there, in the local order (a stable sort of
    the parts' rows in part order, as the local table is sorted)."""
    return pd.concat(pieces, ignore_index=True).sort_values(order, kind="stable", ignore_index=True)
