"""Stage 70's measurement by parts of the customers on a Dask cluster.

Each part of the events (:class:`crmlab.events_dask.PartedEvents`) measures its own contacts on the
worker holding it: the counts of the lift tables (:func:`crmlab.measure.lift_counts`, added up in the
stage's process), the responses by attribution, the uplift model's sample. The contacts with their
responses stay there and are regrouped by ranges of their row numbers into the ``contact_responses``
table, whose parts laid end to end are the local table row for row. ``dask`` is imported by the caller.
"""
from __future__ import annotations

from operator import getitem

import numpy as np

from . import engine, events_dask, table_parts
from .events import ROW
from .table_parts import TableParts


def measure_by_parts(parts, fn, table, *args, rows: int) -> tuple[list, TableParts]:
    """``fn(part_events, its rows of table, *args)`` on every part of ``parts``
    (:class:`~crmlab.events_dask.PartitionedEvents`), returning (a summary, its contacts as a frame with
    their row numbers in the whole table, :data:`~crmlab.events.ROW`): the summaries in part order, and
    the ``rows`` contacts of every part as one table left on the workers in the local row order. A
    worker lost on the way costs one more try on parts scattered anew."""
    client, n = parts.client, parts.n
    bounds = np.linspace(0, rows, n + 1).astype(np.int64)[1:-1]

    def run():
        cut = events_dask.parts_on_workers(client, table, n)
        done = [client.submit(fn, p, t, *args, pure=False) for p, t in zip(parts.parts, cut)]
        summaries = client.gather([client.submit(getitem, d, 0, pure=False) for d in done])
        split = [client.submit(_by_row, d, bounds, pure=False) for d in done]
        return summaries, table_parts.regroup(client, split, [ROW])

    return engine.retry_lost(run, f"the contacts' responses on {n} parts of the customers", again=parts.scatter)


def _by_row(done: tuple, bounds: np.ndarray) -> list:
    return table_parts.by_range(done[1], bounds, ROW)
