"""Feature frames to the arrays the scoring kernels read, chunk by chunk, at memory speed.

A model's categorical columns become int32 codes against its vocabulary (the categories it was
fitted with), by the cheapest route the column's type allows:

* pandas ``Categorical``: its few categories are looked up once, then its codes go through that
  small map (``kernels.vocab.remap``; no string is touched);
* pyarrow strings (pandas' default ``str``) and pyarrow dictionaries: ``pyarrow.compute.index_in``
  against the vocabulary, in C++;
* anything else (Python objects): factorised per chunk, the distinct values looked up once.

An unseen value takes the ``unknown`` code, a missing one the ``missing`` code. Numeric columns are
read from the frame's own arrays (no conversion of the whole column) and copied per chunk into a
column-major buffer that stays in cache while the kernel reads it. Buffers are reused between
chunks, so memory stays bounded by the chunk size whatever the number of rows.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .kernels import vocab

#: Rows per chunk: the buffers of a chunk (numeric columns and codes) stay within a few MB.
CHUNK_ROWS = 65536


def member_of(values, members) -> np.ndarray:
    """``values.isin(members)`` as a bool array, through a hash index of the distinct members.

    pandas' ``isin`` on pyarrow strings (its default ``str``) walks a Python list of the members:
    2.2 s for 1M customer keys, against 0.75 s here. Missing values match missing members, as in
    ``isin``."""
    uniq = pd.Index(pd.unique(pd.Series(members)))
    if len(values) == 0 or len(uniq) == 0:
        return np.zeros(len(values), dtype=bool)
    out = uniq.dropna().get_indexer(values) >= 0
    if uniq.hasnans:
        out |= np.asarray(pd.isna(values), dtype=bool)
    return out


def _vocabulary_lut(values, vocabulary: pd.Index, unknown: int, missing: int) -> np.ndarray:
    """``missing``, then the codes of ``values`` in ``vocabulary`` (int32: first position; ``unknown``
    where absent): the table of :func:`crmlab.kernels.vocab.remap` for codes into ``values``."""
    firsts = ~vocabulary.duplicated()
    idx = vocabulary[firsts].get_indexer(pd.Index(values).astype(str)) if len(values) else np.zeros(0, np.int64)
    lut = np.where(idx < 0, unknown, np.flatnonzero(firsts)[idx]).astype(np.int32)
    return np.r_[np.int32(missing), lut].astype(np.int32)


class _Categorical:
    """A pandas Categorical column: its codes (no copy) through a lookup of its categories."""

    def __init__(self, s: pd.Series, vocabulary, unknown, missing):
        self.codes = np.asarray(s.array.codes)                         # no copy (s.cat.codes copies)
        self.lut = _vocabulary_lut(s.cat.categories, vocabulary, unknown, missing)

    def into(self, lo, hi, out):
        vocab.remap(self.codes[lo:hi], self.lut, out)


class _Arrow:
    """A pyarrow-backed column: plain strings through the vocabulary kernel (``kernels.vocab``) on
    Arrow's own buffers, dictionaries through a lookup of their dictionary, other types through
    ``pyarrow.compute.index_in``. The buffers of each Arrow chunk are taken once, so a chunk of rows
    costs one kernel call per Arrow chunk it overlaps."""

    def __init__(self, s: pd.Series, vocabulary, unknown, missing):
        import pyarrow as pa

        arr = pa.chunked_array(s.array.__arrow_array__())
        self.dictionary = pa.types.is_dictionary(arr.type)
        self.large = pa.types.is_large_string(arr.type)                # int64 offsets
        self.strings = self.large or pa.types.is_string(arr.type)
        if self.dictionary:
            arr = arr.unify_dictionaries()
            values = arr.chunks[0].dictionary.to_pylist() if arr.num_chunks else []
            self.lut = _vocabulary_lut(values, vocabulary, unknown, missing)
        elif self.strings:
            self.vocab = vocab.Vocabulary(vocabulary)
        else:
            arr = arr.cast(pa.string())
            self.value_set = pa.array(vocabulary.astype(str).tolist(), type=arr.type)
        self.arr, self.unknown, self.missing = arr, unknown, missing
        self.starts = np.r_[0, np.cumsum([len(c) for c in arr.chunks])].astype(np.int64)
        self.parts = [self._part(c) for c in arr.chunks]

    def _part(self, chunk):
        """What a lookup in one Arrow chunk needs, taken once: nulls, and the buffers or the codes."""
        nulls = chunk.is_null().to_numpy(zero_copy_only=False) if chunk.null_count else None
        if self.dictionary:
            return nulls, chunk.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        if self.strings:
            _, off, data = chunk.buffers()
            offsets = np.frombuffer(off, np.int64 if self.large else np.int32)
            data = np.frombuffer(data, np.uint8) if data is not None and data.size else np.zeros(1, np.uint8)
            return nulls, (offsets, data, chunk.offset)
        return nulls, chunk

    def into(self, lo, hi, out):
        import pyarrow.compute as pc

        first = int(np.searchsorted(self.starts, lo, side="right")) - 1
        for k in range(max(first, 0), len(self.parts)):
            a, b = max(lo, self.starts[k]), min(hi, self.starts[k + 1])
            if a >= hi:
                break
            if b <= a:
                continue
            nulls, part = self.parts[k]
            i, j = a - self.starts[k], b - self.starts[k]
            dest = out[a - lo:b - lo]
            nulls = None if nulls is None else nulls[i:j]
            if self.dictionary:
                vocab.remap(part[i:j], self.lut, dest)
            elif self.strings:
                offsets, data, offset = part
                vocab.lookup(offsets, data, offset + i, j - i, self.vocab, dest, nulls, self.unknown, self.missing)
            else:
                dest[:] = pc.index_in(part.slice(i, j - i), value_set=self.value_set).fill_null(
                    self.unknown).to_numpy(zero_copy_only=False)
                if nulls is not None:
                    dest[nulls] = self.missing


class _Objects:
    """Python objects (or anything else): factorised per chunk, the distinct values looked up once each."""

    def __init__(self, s: pd.Series, vocabulary, unknown, missing):
        self.values = s.array
        self.vocabulary, self.unknown, self.missing = vocabulary, unknown, missing

    def into(self, lo, hi, out):
        codes, uniques = pd.factorize(self.values[lo:hi], use_na_sentinel=True)
        lut = _vocabulary_lut(uniques, self.vocabulary, self.unknown, self.missing)
        vocab.remap(codes, lut, out)


def _category_column(s: pd.Series, vocabulary: pd.Index, unknown: int, missing: int):
    if isinstance(s.dtype, pd.CategoricalDtype):
        return _Categorical(s, vocabulary, unknown, missing)
    if hasattr(s.array, "__arrow_array__") and not isinstance(s.array, np.ndarray):
        try:
            return _Arrow(s, vocabulary, unknown, missing)
        except (TypeError, ValueError, NotImplementedError):     # not backed by pyarrow after all
            pass
    return _Objects(s, vocabulary, unknown, missing)


class _Converted:
    """A nullable or pyarrow number column, converted a slice at a time (float64, NaN for missing)."""

    dtype = np.dtype(np.float64)

    def __init__(self, array):
        self.array = array

    def __len__(self):
        return len(self.array)

    def __getitem__(self, rows: slice) -> np.ndarray:
        return np.asarray(self.array[rows].to_numpy(dtype=np.float64, na_value=np.nan))


def _numeric_source(s: pd.Series):
    """A column's values without converting the whole column: NumPy float/int/bool columns as the
    frame's own array; nullable and pyarrow numbers as float64 with NaN, a chunk at a time."""
    if isinstance(s.dtype, np.dtype) and s.dtype.kind in "fiub":
        return s.to_numpy(copy=False)
    return _Converted(s.array)


class FrameEncoder:
    """Turns a DataFrame into (numeric matrix, category codes) chunks for one model.

    Parameters
    ----------
    numeric, categorical : the model's feature columns, in model order.
    vocabularies : per categorical column, the categories the model knows (code = position).
    missing : per categorical column, the code of a missing value (-1: none).
    dtype : float type of the numeric matrix; None: float32 when every numeric column is float32,
        else float64.
    chunk_rows : rows per chunk.
    threads : threads of :meth:`map`, each taking whole chunks (None: Numba's thread count, i.e.
        ``engine.threads``).
    """

    def __init__(self, numeric, categorical, vocabularies, missing, dtype=None, chunk_rows: int = CHUNK_ROWS,
                 threads: int | None = None):
        self.numeric, self.categorical = list(numeric), list(categorical)
        self.vocabularies = [pd.Index(list(map(str, v)), dtype=object) for v in vocabularies]
        self.missing = [int(m) for m in missing]
        self.dtype, self.chunk_rows, self.threads = dtype, int(chunk_rows), threads

    def _sources(self, X: pd.DataFrame):
        nums = [_numeric_source(X[c]) for c in self.numeric]
        dtype = self.dtype
        if dtype is None:
            dtype = np.float32 if nums and all(a.dtype == np.float32 for a in nums) else np.float64
        cats = [_category_column(X[c], v, -1, m) for c, v, m in zip(self.categorical, self.vocabularies, self.missing)]
        return nums, cats, dtype

    @staticmethod
    def _fill(nums, cats, lo, hi, M, codes):
        """Rows lo..hi of the frame into the buffers ((p, m) and (q, m): the chunk's columns, each contiguous)."""
        for j, arr in enumerate(nums):
            M[j] = arr[lo:hi]
        for j, col in enumerate(cats):
            col.into(lo, hi, codes[j])

    @classmethod
    def _encoded(cls, nums, cats, dtype, n, size, first=0, step=1):
        """Chunks ``first, first + step, ...`` of ``n`` rows in ``size`` rows each: ``(lo, hi, M,
        codes)`` filled into buffers of this generator's own ((p, m) and (q, m)), reused from chunk
        to chunk (the last, shorter chunk gets buffers of its own length, so both stay contiguous)."""
        M, codes = np.empty((len(nums), size), dtype), np.empty((len(cats), size), np.int32)
        for lo in range(first * size, n, step * size):
            hi = min(n, lo + size)
            if hi - lo < size:
                M, codes = np.empty((len(nums), hi - lo), dtype), np.empty((len(cats), hi - lo), np.int32)
            cls._fill(nums, cats, lo, hi, M, codes)
            yield lo, hi, M, codes

    def chunks(self, X: pd.DataFrame):
        """Yield ``(lo, hi, M, codes)`` per chunk of rows, in order, in this thread: ``M`` (hi - lo, p)
        column-major float, ``codes`` (hi - lo, q) column-major int32. Both are reused by the next chunk."""
        nums, cats, dtype = self._sources(X)
        for lo, hi, M, codes in self._encoded(nums, cats, dtype, len(X), min(self.chunk_rows, max(len(X), 1))):
            yield lo, hi, M.T, codes.T

    def map(self, X: pd.DataFrame, fn, threads: int | None = None, numeric: str = "matrix") -> None:
        """Call ``fn(lo, hi, M, codes)`` for every chunk (as :meth:`chunks` gives them), the chunks
        shared among ``threads`` threads (None: the encoder's setting), each encoding its chunks
        into buffers of its own and scoring them; ``fn`` must release the GIL to gain (the string
        kernel and the serial scoring kernels do). The first error stops the rest and is raised.

        ``numeric="columns"``: ``M`` is instead the list of the chunk's numeric columns, each a view
        of the frame's own array where it is a NumPy one (nothing copied), else converted into a
        buffer of the thread's."""
        import numba

        if numeric not in ("matrix", "columns"):
            raise ValueError(f"numeric must be 'matrix' or 'columns', got {numeric!r}")
        n = len(X)
        nums, cats, dtype = self._sources(X)
        size = min(self.chunk_rows, max(n, 1))
        n_chunks = -(-n // size)
        threads = threads or self.threads or numba.get_num_threads()
        threads = max(1, min(int(threads), n_chunks))
        in_place = [isinstance(a, np.ndarray) for a in nums] if numeric == "columns" else [False] * len(nums)
        copied = [a for a, keep in zip(nums, in_place) if not keep]

        def work(first):
            for lo, hi, M, codes in self._encoded(copied, cats, dtype, n, size, first, threads):
                if stop:
                    return
                if numeric == "columns":
                    rows = iter(M)
                    arg = [a[lo:hi] if keep else next(rows) for a, keep in zip(nums, in_place)]
                else:
                    arg = M.T
                try:
                    fn(lo, hi, arg, codes.T)
                except BaseException:
                    stop.append(True)
                    raise

        stop: list = []
        if threads == 1:
            work(0)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            for f in [pool.submit(work, t) for t in range(threads)]:
                f.result()
