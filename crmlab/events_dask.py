"""Customer events split by customer over a Dask cluster, for features computed per partition.

Every per-customer computation over :class:`~crmlab.events.CustomerEvents` (features at a cut-off,
above all) can run on a part of the customers: :class:`PartitionedEvents` puts each customer's orders,
lines, contacts and profile row in one partition (a hash of the key picks it, the same for every
table), each table in its input order, and keeps the parts on the workers. Per-customer sums then add
the same rows in the same order as on the whole table, so the features are the local ones bit for bit,
in the local row order once the parts are put back together by customer key.

The events are also still held by the stage's process (the sources are not read by the workers yet):
on one machine Dask mode holds them twice. ``dask`` is imported inside the functions.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import engine
from .events import CustomerEvents


def part_of(keys, n: int) -> np.ndarray:
    """Partition of each customer key: a hash of the key's text, the same in every table."""
    return (pd.util.hash_array(np.asarray(keys, dtype=object)) % np.uint64(n)).astype(np.int64)


def split_rows(df: pd.DataFrame, part: np.ndarray, n: int) -> list[pd.DataFrame]:
    """``df``'s rows by ``part`` (0..n-1), each list entry in input order."""
    order = np.argsort(part, kind="stable")                 # stable: each part keeps the input order
    bounds = np.searchsorted(part[order], np.arange(n + 1))
    return [df.iloc[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]


def split(ev: CustomerEvents, n: int) -> list[CustomerEvents]:
    """``ev`` as ``n`` events objects over disjoint sets of customers (every table's rows of a customer
    in one of them, in input order)."""
    orders = split_rows(ev.orders, part_of(ev.orders["customer_key"], n), n)
    lines = split_rows(ev.lines, part_of(ev.lines["customer_key"], n), n)
    contacts = (split_rows(ev.contacts, part_of(ev.contacts["customer_key"], n), n) if ev.contacts is not None
                else [None] * n)
    profile = split_rows(ev.profile, part_of(ev.profile.index, n), n)
    return [CustomerEvents(o, ln, c, p) for o, ln, c, p in zip(orders, lines, contacts, profile)]


def _transform(ev: CustomerEvents, builder, cutoff) -> pd.DataFrame | None:
    return builder.transform(ev, cutoff) if (ev.orders["order_date"] < pd.Timestamp(cutoff)).any() else None


class PartitionedEvents:
    """``ev`` split by customer into parts of about ``partition_rows`` order lines, held by the workers
    of ``client``; :meth:`features` computes :meth:`FeatureBuilder.transform` on every part."""

    def __init__(self, client, ev: CustomerEvents, partition_rows: int):
        self.client, self.events = client, ev
        self.n = max(1, math.ceil(max(len(ev.lines), len(ev.orders)) / partition_rows))
        self.scatter()

    def scatter(self) -> None:
        """Send the parts to the workers (again, after a worker holding some was lost)."""
        self.parts = self.client.scatter(split(self.events, self.n))

    def map(self, fn, *args, what: str | None = None) -> list:
        """``fn(part_events, *args)`` on every part, on the workers; the results in part order. A worker
        lost on the way costs one more try on parts scattered anew (:func:`crmlab.engine.retry_lost`)."""
        def run():
            return self.client.gather(self.client.map(fn, self.parts, *[[a] * self.n for a in args], pure=False))

        return engine.retry_lost(run, f"{what or getattr(fn, '__name__', 'a function')} on {self.n} parts of the "
                                      "events", again=self.scatter)

    def features(self, builder, cutoff) -> pd.DataFrame:
        """``builder.transform(ev, cutoff)`` of the whole events, computed by parts: equal to it."""
        what = f"features at {pd.Timestamp(cutoff):%Y-%m-%d}"
        got = [f for f in self.map(_transform, builder, cutoff, what=what) if f is not None]
        if not got:                                       # no order before the cut-off: what the whole says
            return builder.transform(self.events, cutoff)
        return pd.concat(got).sort_index(kind="stable") if len(got) > 1 else got[0]


def features_on(client, ev: CustomerEvents, partition_rows: int):
    """``features(builder, cutoff)``: ``builder.transform(ev, cutoff)`` here when ``client`` is None, else
    by the parts of ``ev`` on the cluster (:class:`PartitionedEvents`, split once for all cut-offs)."""
    if client is None:
        return lambda builder, cutoff: builder.transform(ev, cutoff)
    return PartitionedEvents(client, ev, partition_rows).features
