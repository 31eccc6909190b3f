"""String comparison kernels over a code-point arena.

A column of strings is stored once as an arena: ``chars`` (uint32 Unicode code points, so accents
and non-Latin names compare as characters, not bytes) and ``offsets`` (n + 1); a missing value has
``offsets[i] == offsets[i + 1]`` and ``null[i]`` set. Pair kernels take the arenas of two columns
and the candidate pairs (left row, right row) and return one float per pair, NaN where either side
is missing. All run in parallel over pairs.
"""
from __future__ import annotations

import numpy as np
from numba import get_num_threads, njit, prange


def to_arena(values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Strings (list, array or Series; None/NaN = missing) -> (chars uint32, offsets int64, null bool)."""
    if isinstance(values, list) and len(values) < 1000:      # one record's candidates: no Series
        from pandas import NA as _NA

        null = np.array([v is None or v is _NA or v != v for v in values], dtype=bool)
        texts = ["" if n else str(v) for v, n in zip(values, null)]
    else:
        utf8 = arrow_text(values)
        if utf8 is not None:                               # text: decoded where it lies, no Python strings
            data, offsets, null = utf8
            chars, offsets = _code_points(data, offsets, null)
            return chars, offsets, null
        import pandas as pd

        s = pd.Series(values, dtype="object")
        null = s.isna().to_numpy()
        texts = ["" if n else str(v) for v, n in zip(s.tolist(), null)]
    joined = "".join(texts)
    chars = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32).copy() if joined else np.zeros(0, np.uint32)
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    offsets = np.zeros(len(texts) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return chars, offsets, null


def arrow_text(values):
    """A column of text as Arrow holds it: (UTF-8 bytes, offsets int64 into them, null bool), or None
    when the values are not all text (numbers, mixed objects: the caller's slower path decides)."""
    import pyarrow as pa

    try:
        arr = pa.array(values, type=pa.large_string(), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError):
        return None
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], np.int64, count=n + 1, offset=8 * arr.offset) if n else np.zeros(1, np.int64)
    data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    null = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else np.zeros(n, bool)
    return data, offsets, null


@njit(cache=True)
def _decode(data, offsets, null):
    """UTF-8 values (``data[offsets[i]:offsets[i+1]]``; null ones empty) -> code points and their offsets."""
    n = offsets.shape[0] - 1
    out = np.empty(offsets[n] - offsets[0], np.uint32)
    starts = np.zeros(n + 1, np.int64)
    k = 0
    for i in range(n):
        if not null[i]:
            p, end = offsets[i], offsets[i + 1]
            while p < end:
                b = np.uint32(data[p])
                if b < 0x80:
                    cp, w = b, 1
                elif b < 0xE0:
                    cp, w = b & 0x1F, 2
                elif b < 0xF0:
                    cp, w = b & 0x0F, 3
                else:
                    cp, w = b & 0x07, 4
                for j in range(1, w):
                    cp = (cp << 6) | (np.uint32(data[p + j]) & 0x3F)
                out[k] = cp
                k += 1
                p += w
        starts[i + 1] = k
    return out[:k], starts


def _code_points(data: np.ndarray, offsets: np.ndarray, null: np.ndarray):
    """Arena chars and offsets of Arrow's UTF-8 text (ASCII without a decoding loop)."""
    lo, hi = int(offsets[0]), int(offsets[-1])
    if not null.any() and (hi == lo or int(data[lo:hi].max()) < 0x80):
        return data[lo:hi].astype(np.uint32), offsets - lo
    return _decode(data, offsets, null)


@njit(cache=True)
def _text_hash(data, offsets, seed):
    """FNV-1a 64 of each value's bytes (and its length), from ``seed``: the same text, the same hash
    in every process and every chunk of a table."""
    n = offsets.shape[0] - 1
    out = np.empty(n, np.uint64)
    for i in range(n):
        h = seed[i]
        for p in range(offsets[i], offsets[i + 1]):
            h = (h ^ np.uint64(data[p])) * np.uint64(1099511628211)
        out[i] = (h ^ np.uint64(offsets[i + 1] - offsets[i])) * np.uint64(1099511628211)
    return out


def text_hash(columns) -> np.ndarray:
    """One uint64 per row for the values of several text columns together (rows with a missing value
    hash as empty text: leave them out first); deterministic across processes, for hash partitioning."""
    h = None
    for values in columns:
        utf8 = arrow_text(values)
        if utf8 is None:
            raise TypeError("text_hash reads text columns only")
        data, offsets, _ = utf8
        if h is None:
            h = np.full(len(offsets) - 1, np.uint64(14695981039346656037))
        h = _text_hash(data, offsets, h)
    return h if h is not None else np.zeros(0, np.uint64)


@njit(cache=True, inline="always")
def _jaro_winkler(a, b, prefix_scale, ma, mb):
    """Jaro-Winkler of two code-point arrays; ``ma``/``mb`` are scratch flags at least as long."""
    la, lb = a.shape[0], b.shape[0]
    if la == 0 and lb == 0:
        return 1.0
    if la == 0 or lb == 0:
        return 0.0
    window = max(la, lb) // 2 - 1
    if window < 0:
        window = 0
    ma[:la] = False
    mb[:lb] = False
    m = 0
    for i in range(la):
        lo = max(0, i - window)
        hi = min(lb, i + window + 1)
        for j in range(lo, hi):
            if not mb[j] and a[i] == b[j]:
                ma[i] = True
                mb[j] = True
                m += 1
                break
    if m == 0:
        return 0.0
    t = 0
    k = 0
    for i in range(la):
        if ma[i]:
            while not mb[k]:
                k += 1
            if a[i] != b[k]:
                t += 1
            k += 1
    jaro = (m / la + m / lb + (m - t / 2.0) / m) / 3.0
    if jaro <= 0.7:                                  # Winkler's boost only for already similar strings
        return jaro
    p = 0
    for i in range(min(4, la, lb)):
        if a[i] == b[i]:
            p += 1
        else:
            break
    return jaro + p * prefix_scale * (1.0 - jaro)


@njit(cache=True, parallel=True)
def _jaro_winkler_pairs(ca, oa, na, cb, ob, nb, left, right, prefix_scale, nt):
    n = left.shape[0]
    out = np.empty(n)
    longest = 1
    for i in range(oa.shape[0] - 1):
        longest = max(longest, oa[i + 1] - oa[i])
    for j in range(ob.shape[0] - 1):
        longest = max(longest, ob[j + 1] - ob[j])
    chunk = (n + nt - 1) // nt
    for t in prange(nt):
        ma = np.empty(longest, np.bool_)              # scratch reused across this thread's pairs
        mb = np.empty(longest, np.bool_)
        for p in range(t * chunk, min(n, (t + 1) * chunk)):
            i, j = left[p], right[p]
            if na[i] or nb[j]:
                out[p] = np.nan
            else:
                out[p] = _jaro_winkler(ca[oa[i]:oa[i + 1]], cb[ob[j]:ob[j + 1]], prefix_scale, ma, mb)
    return out


@njit(cache=True, inline="always")
def _osa(a, b, max_dist, transpositions):
    """Levenshtein (or optimal string alignment with transpositions) distance, capped at max_dist + 1."""
    la, lb = a.shape[0], b.shape[0]
    if abs(la - lb) > max_dist:
        return max_dist + 1
    prev2 = np.empty(lb + 1, np.int64)
    prev = np.arange(lb + 1).astype(np.int64)
    cur = np.empty(lb + 1, np.int64)
    for i in range(1, la + 1):
        cur[0] = i
        row_min = cur[0]
        for j in range(1, lb + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            v = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if transpositions and i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                v = min(v, prev2[j - 2] + 1)
            cur[j] = v
            if v < row_min:
                row_min = v
        if row_min > max_dist:
            return max_dist + 1
        prev2, prev, cur = prev, cur, prev2
    return min(prev[lb], max_dist + 1)


@njit(cache=True, parallel=True)
def _edit_pairs(ca, oa, na, cb, ob, nb, left, right, max_dist, transpositions):
    out = np.empty(left.shape[0])
    for p in prange(left.shape[0]):
        i, j = left[p], right[p]
        if na[i] or nb[j]:
            out[p] = np.nan
        else:
            out[p] = _osa(ca[oa[i]:oa[i + 1]], cb[ob[j]:ob[j + 1]], max_dist, transpositions)
    return out


@njit(cache=True, inline="always")
def _bigram_dice(a, b):
    """Dice coefficient of the multisets of character bigrams (single characters as unigrams)."""
    la, lb = a.shape[0], b.shape[0]
    if la < 2 or lb < 2:
        if la == lb and (la == 0 or a[0] == b[0]):
            return 1.0
        return 0.0
    na, nb = la - 1, lb - 1
    used = np.zeros(nb, np.bool_)
    common = 0
    for i in range(na):
        for j in range(nb):
            if not used[j] and a[i] == b[j] and a[i + 1] == b[j + 1]:
                used[j] = True
                common += 1
                break
    return 2.0 * common / (na + nb)


@njit(cache=True, parallel=True)
def _dice_pairs(ca, oa, na, cb, ob, nb, left, right):
    out = np.empty(left.shape[0])
    for p in prange(left.shape[0]):
        i, j = left[p], right[p]
        if na[i] or nb[j]:
            out[p] = np.nan
        else:
            out[p] = _bigram_dice(ca[oa[i]:oa[i + 1]], cb[ob[j]:ob[j + 1]])
    return out


@njit(cache=True, parallel=True)
def _exact_pairs(ca, oa, na, cb, ob, nb, left, right):
    out = np.empty(left.shape[0])
    for p in prange(left.shape[0]):
        i, j = left[p], right[p]
        if na[i] or nb[j]:
            out[p] = np.nan
            continue
        la, lb = oa[i + 1] - oa[i], ob[j + 1] - ob[j]
        same = la == lb
        if same:
            for k in range(la):
                if ca[oa[i] + k] != cb[ob[j] + k]:
                    same = False
                    break
        out[p] = 1.0 if same else 0.0
    return out


def _pairs_args(a, b, left, right):
    ca, oa, na = a
    cb, ob, nb = b
    left = np.ascontiguousarray(left, dtype=np.int64)
    right = np.ascontiguousarray(right, dtype=np.int64)
    if left.shape != right.shape or left.ndim != 1:
        raise ValueError("left and right must be 1-d arrays of the same length")
    if len(left) and (left.min() < 0 or left.max() >= len(na) or right.min() < 0 or right.max() >= len(nb)):
        raise ValueError("pair indices out of range of the arenas")
    return ca, oa, na, cb, ob, nb, left, right


def jaro_winkler(a, b, left, right, prefix_scale: float = 0.1) -> np.ndarray:
    """Jaro-Winkler similarity of pairs (arena ``a`` rows ``left`` vs arena ``b`` rows ``right``)."""
    if not 0 <= prefix_scale <= 0.25:
        raise ValueError("prefix_scale must be in [0, 0.25]")
    return _jaro_winkler_pairs(*_pairs_args(a, b, left, right), float(prefix_scale), get_num_threads())


def levenshtein(a, b, left, right, max_dist: int = 3) -> np.ndarray:
    """Levenshtein distance of pairs, capped at ``max_dist + 1`` (the computation stops there)."""
    return _edit_pairs(*_pairs_args(a, b, left, right), int(max_dist), False)


def damerau(a, b, left, right, max_dist: int = 3) -> np.ndarray:
    """Damerau (optimal string alignment) distance of pairs, capped at ``max_dist + 1``."""
    return _edit_pairs(*_pairs_args(a, b, left, right), int(max_dist), True)


def bigram_dice(a, b, left, right) -> np.ndarray:
    """Dice similarity of character bigrams of pairs (token/q-gram similarity, robust to word order)."""
    return _dice_pairs(*_pairs_args(a, b, left, right))


def exact(a, b, left, right) -> np.ndarray:
    """1.0 where the two strings are identical, 0.0 where not, NaN where either is missing."""
    return _exact_pairs(*_pairs_args(a, b, left, right))
