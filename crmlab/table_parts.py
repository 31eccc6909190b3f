"""A table whose rows stay on the Dask workers, one frame a part: what stage 60 publishes in Dask mode
without gathering it into the stage's process.

:func:`crmlab.publish.publish` takes a :class:`TableParts` where it takes a DataFrame: it checks and
prepares the parts where they lie (:meth:`TableParts.map`, :meth:`TableParts.transform`) and writes
them one part at a time (:meth:`TableParts.frames`), so the publishing process holds one part, or one
per writer, never the table. The parts together are the table's rows, in part order.
"""
from __future__ import annotations

from operator import getitem
from pathlib import Path

import numpy as np
import pandas as pd

from . import engine
from .events import ROW
from .events_dask import split_rows


def _rows(frame: pd.DataFrame) -> int:
    return len(frame)


def _write(frame: pd.DataFrame, path: str) -> int:
    frame.to_parquet(path, index=False)
    return len(frame)


def _empty(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.iloc[:0]


class TableParts:
    """The rows of one table as frames on ``client``'s workers (``parts``: futures, in order). Made, it
    waits for the parts (their row counts are known), so a lost worker shows where it was made."""

    def __init__(self, client, parts: list):
        self.client, self.parts = client, list(parts)
        self.rows = self.map(_rows)
        self._meta = None

    def __len__(self) -> int:
        return int(sum(self.rows))

    @property
    def n(self) -> int:
        return len(self.parts)

    @property
    def meta(self) -> pd.DataFrame:
        """No rows, the parts' columns and dtypes (the first part's)."""
        if self._meta is None:
            self._meta = self.client.submit(_empty, self.parts[0], pure=False).result() if self.parts else pd.DataFrame()
        return self._meta

    def map(self, fn, *args) -> list:
        """``fn(part, *args)`` for every part, on the workers; the results in part order."""
        return self.client.gather([self.client.submit(fn, p, *args, pure=False) for p in self.parts])

    def transform(self, fn, *args) -> "TableParts":
        """The table of ``fn(part, *args)`` (a frame) for every part, left on the workers."""
        return TableParts(self.client, [self.client.submit(fn, p, *args, pure=False) for p in self.parts])

    def astype(self, dtypes) -> "TableParts":
        """As :meth:`pandas.DataFrame.astype`, on every part."""
        return self.transform(pd.DataFrame.astype, dtypes)

    def frame(self, i: int) -> pd.DataFrame:
        """Part ``i``, fetched."""
        return self.parts[i].result()

    def frames(self):
        """The parts fetched one at a time, in order."""
        for i in range(self.n):
            yield self.frame(i)

    def write(self, folder) -> list[int]:
        """Each part written by the worker holding it to ``folder`` (which exists) as
        ``part-<i>.parquet``: a table left on the workers saved as a folder of parts; the rows per part."""
        return self.client.gather([self.client.submit(_write, p, str(Path(folder) / f"part-{i:05d}.parquet"), pure=False)
                                   for i, p in enumerate(self.parts)])

    def compute(self) -> pd.DataFrame:
        """The whole table in this process (small tables, tests)."""
        return pd.concat(list(self.frames()), ignore_index=True) if self.parts else self.meta

    @classmethod
    def scatter(cls, client, frames: list) -> "TableParts":
        """Frames of this process sent to the workers as parts (tests, small tables)."""
        return cls(client, engine.scatter(client, frames))


def bounds(keys: np.ndarray, n: int) -> np.ndarray:
    """``n - 1`` bounds cutting sorted ``keys`` into ``n`` ranges of about equal size (for :func:`by_range`)."""
    if not len(keys):
        return np.full(n - 1, "", object)
    return keys[np.linspace(0, len(keys), n + 1).astype(np.int64)[1:-1]]


def by_range(df: pd.DataFrame, bounds: np.ndarray, column: str = "customer_key") -> list[pd.DataFrame]:
    """``df``'s rows by the range of sorted ``bounds`` their ``column`` falls in (``len(bounds) + 1``
    ranges), each range's rows in ``df``'s order: what :func:`regroup` puts together."""
    at = np.searchsorted(bounds, df[column].to_numpy(dtype=bounds.dtype), side="right")
    return split_rows(df, at, len(bounds) + 1)


def regroup(client, split: list, order: list) -> TableParts:
    """One table from frames cut into as many ranges as there are frames, on ``client``'s workers
    (``split``: futures of :func:`by_range`'s lists, one per part): range ``r`` gets every part's rows
    of ``r``, sorted stably by ``order`` (ties keep the parts' order), so that the ranges laid end to
    end are the rows of every part in the local order; the row numbers (:data:`~crmlab.events.ROW`)
    dropped."""
    def piece(r):
        return [client.submit(getitem, s, r, pure=False) for s in split]
    return TableParts(client, [client.submit(_in_range, order, *piece(r), pure=False) for r in range(len(split))])


def _in_range(order: list, *pieces) -> pd.DataFrame:
    df = pd.concat(pieces, ignore_index=True).sort_values(order, kind="stable", ignore_index=True)
    return df.drop(columns=ROW) if ROW in df else df
