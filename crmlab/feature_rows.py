"""Feature rows that stay where they were computed: on the workers of a Dask cluster.

A model is fitted on a sample of the customers, evaluated and scored on all of them, row by row.
Neither needs every customer's features in one process: :class:`FeatureRows` keeps the frames
(one per customer part and cut-off) on the workers and knows which frame row is each of its rows.
Rows asked by position (``iloc``: a fitting sample, a report's sample) are fetched; functions of the
rows (predictions, scores) run where the frames lie and only their results come back, in row order.

Code that works on either form uses :func:`take`, :func:`concat` and :func:`apply`, which do the
same on a DataFrame here.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import engine


def _keys_and_columns(frame: pd.DataFrame | None):
    return None if frame is None else (frame.index, frame.columns)


def _rows(frame: pd.DataFrame, at: np.ndarray, columns) -> pd.DataFrame:
    return frame.iloc[at] if columns is None else frame.iloc[at][columns]


def _apply(frame: pd.DataFrame, at: np.ndarray, columns, fn, args: tuple, *values):
    return fn(_rows(frame, at, columns), *args, *values)


def _same(rows: pd.DataFrame) -> pd.DataFrame:
    return rows


class _ILoc:
    def __init__(self, rows: "FeatureRows"):
        self.rows = rows

    def __getitem__(self, positions) -> pd.DataFrame:
        return self.rows.rows(positions).fetch()


class FeatureRows:
    """Rows of feature frames held by the workers of ``client``: row ``i`` is row ``at[i]`` of frame
    ``of[i]`` (``frames``: futures; ``recipes``: per frame, ``(partitioned events, builder, cutoff,
    part)``, to compute it again after a worker holding it was lost). Read like a DataFrame by
    position: ``len``, ``index``, ``columns``, ``iloc[positions]`` (the rows fetched, a DataFrame),
    ``X[list of columns]`` (those columns, still on the workers)."""

    def __init__(self, client, frames: list, recipes: list, of: np.ndarray, at: np.ndarray, index: pd.Index,
                 columns: pd.Index, selected: bool = False):
        self.client, self.frames, self.recipes = client, frames, recipes
        self.of, self.at, self.index, self.columns = of, at, index, columns
        self.selected = selected                # a subset of the frames' columns (selected on the workers)

    @classmethod
    def compute(cls, parts, builder, cutoff) -> "FeatureRows | None":
        """``builder.transform`` at ``cutoff`` on every part of ``parts`` (a
        :class:`~crmlab.events_dask.PartitionedEvents`), left on the workers: the rows in customer-key
        order, as the whole events' features are. None when no part has an order before the cut-off."""
        recipes = [(parts, builder, cutoff, p) for p in range(parts.n)]
        frames = _frames(recipes)
        what = f"features at {pd.Timestamp(cutoff):%Y-%m-%d}"

        def run():
            return parts.client.gather(parts.client.map(_keys_and_columns, frames))

        def again():
            frames[:] = _recomputed(recipes)

        got = engine.retry_lost(run, f"{what} on {parts.n} parts of the events", again=again)
        kept = [i for i, g in enumerate(got) if g is not None]
        if not kept:
            return None
        keys = [got[i][0] for i in kept]
        sizes = np.array([len(k) for k in keys])
        index = keys[0].append(keys[1:]) if len(keys) > 1 else keys[0]
        order = index.argsort()                  # a customer is in one part: the order sort_index gives
        of = np.repeat(np.arange(len(kept)), sizes)[order]
        at = np.concatenate([np.arange(s) for s in sizes])[order]
        return cls(parts.client, [frames[i] for i in kept], [recipes[i] for i in kept], of, at, index[order],
                   got[kept[0]][1])

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        return f"FeatureRows({len(self):,} rows x {len(self.columns)} columns in {len(self.frames)} frames on the workers)"

    @property
    def iloc(self) -> _ILoc:
        """``iloc[positions]``: those rows fetched into this process, a DataFrame (as ``DataFrame.iloc``)."""
        return _ILoc(self)

    def rows(self, positions) -> "FeatureRows":
        """The rows at ``positions`` (an integer array or a slice), left where they are."""
        return FeatureRows(self.client, self.frames, self.recipes, self.of[positions], self.at[positions],
                           self.index[positions], self.columns, self.selected)

    def __getitem__(self, columns: list) -> "FeatureRows":
        missing = [c for c in columns if c not in self.columns]
        if missing:
            raise KeyError(f"not among the feature columns: {missing}")
        return FeatureRows(self.client, self.frames, self.recipes, self.of, self.at, self.index, pd.Index(columns),
                           True)

    @staticmethod
    def concat(rows: list["FeatureRows"]) -> "FeatureRows":
        """The rows of every entry of ``rows``, one after the other (as ``pd.concat``)."""
        if any(not r.columns.equals(rows[0].columns) for r in rows):
            raise ValueError("FeatureRows.concat: the rows have different columns")
        start = np.cumsum([0] + [len(r.frames) for r in rows])
        return FeatureRows(rows[0].client, [f for r in rows for f in r.frames], [c for r in rows for c in r.recipes],
                           np.concatenate([r.of + s for r, s in zip(rows, start)]),
                           np.concatenate([r.at for r in rows]),
                           rows[0].index.append([r.index for r in rows[1:]]), rows[0].columns,
                           any(r.selected for r in rows))

    def _by_frame(self, fn, args: tuple, values: tuple = ()) -> tuple[list, np.ndarray]:
        """``fn(rows of one frame, *args, *their entries of each of values)`` on the workers for each frame
        with rows; the results in frame order and the row positions they cover, in that order."""
        order = np.argsort(self.of, kind="stable")
        bounds = np.searchsorted(self.of[order], np.arange(len(self.frames) + 1))
        used = [f for f in range(len(self.frames)) if bounds[f + 1] > bounds[f]] or [0]
        columns = list(self.columns) if self.selected else None

        def run():
            tasks = []
            for f in used:
                mine = order[bounds[f]:bounds[f + 1]]           # sent as data, not inside the task graph
                at, *vals = engine.scatter(self.client, [self.at[mine], *[np.asarray(v)[mine] for v in values]])
                tasks.append(self.client.submit(_apply, self.frames[f], at, columns, fn, args, *vals, pure=False))
            return self.client.gather(tasks)

        def again():
            self.frames = _recomputed(self.recipes)

        return engine.retry_lost(run, f"{len(self):,} rows of features", again=again), order

    def fetch(self) -> pd.DataFrame:
        """These rows as a DataFrame, in their order (indexed by customer key)."""
        got, order = self._by_frame(_same, ())
        df = pd.concat(got) if len(got) > 1 else got[0]
        back = np.empty(len(order), np.int64)
        back[order] = np.arange(len(order))
        return df.iloc[back]

    def apply(self, fn, *args) -> np.ndarray:
        """``fn(rows, *args)`` (an array with one entry or row per row) computed where the rows lie;
        the results in row order."""
        got, order = self._by_frame(fn, args)
        if not len(self):
            return got[0]
        out = np.concatenate(got)
        back = np.empty_like(out)
        back[order] = out
        return back

    def map_frames(self, fn, *values) -> list:
        """``[fn(rows, *their entries of each of values)]`` for the rows in each frame, computed where
        they lie (partial sums and counts, say, to be combined by the caller)."""
        return self._by_frame(fn, (), values)[0]


def _frames(recipes: list) -> list:
    """The frames of ``recipes`` computed (futures)."""
    return [parts.frame(builder, cutoff, p) for parts, builder, cutoff, p in recipes]


def _recomputed(recipes: list) -> list:
    """The frames of ``recipes`` computed anew after a worker was lost: their events' parts sent (or
    read) again first."""
    for parts in {id(r[0]): r[0] for r in recipes}.values():
        parts.scatter()
    return _frames(recipes)


def take(X, positions):
    """The rows of ``X`` (a DataFrame or :class:`FeatureRows`) at ``positions``, left where they are."""
    return X.iloc[positions] if isinstance(X, pd.DataFrame) else X.rows(positions)


def concat(Xs: list):
    """The rows of every entry of ``Xs`` (DataFrames, or :class:`FeatureRows`) one after the other."""
    return pd.concat(Xs) if isinstance(Xs[0], pd.DataFrame) else FeatureRows.concat(Xs)


def apply(X, fn, *args) -> np.ndarray:
    """``fn(X, *args)``: here for a DataFrame, by frames where the rows lie for :class:`FeatureRows`."""
    return fn(X, *args) if isinstance(X, pd.DataFrame) else X.apply(fn, *args)
