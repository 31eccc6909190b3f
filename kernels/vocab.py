"""Looking up strings in a model's vocabulary, straight from Arrow's string buffers.

A string column in pandas (``str``, backed by pyarrow) is an offsets array and one byte buffer.
Scoring needs each value's position in the vocabulary the model was fitted with: hashing with
pyarrow (``index_in``) costs ~19 ns a value, 10 category columns at 2M rows 0.4 s against 0.04 s
for the model itself. Category values are short, so a value here is its length plus its first 16
bytes as two words (each loaded from the two aligned words that hold it and shifted into place,
without a branch on alignment or length); their hash points to one slot of a table in which every
vocabulary entry has its own slot, and the value is that entry exactly when length and both words
agree and, past 16 bytes, the rest too.
"""
from __future__ import annotations

import numpy as np
from numba import njit

_C1 = np.uint64(0x9E3779B97F4A7C15)
_C2 = np.uint64(0xC2B2AE3D27D4EB4F)
#: _MASKS[k]: the low k bytes of a word (k = 0..8).
_MASKS = np.array([0] + [(1 << (8 * k)) - 1 for k in range(1, 8)] + [0xFFFFFFFFFFFFFFFF], np.uint64)


@njit(cache=True, inline="always")
def _mix(head, tail, length):
    h = (head * _C1) ^ (tail * _C2) ^ np.uint64(length)
    return h ^ (h >> np.uint64(29))


@njit(cache=True, inline="always")
def _load(words, p):
    """The 8 bytes from byte ``p``: two aligned loads and shifts (the double shift keeps p % 8 == 0 defined)."""
    w = p >> 3
    sh = np.uint64(8 * (p & 7))
    return (words[w] >> sh) | ((words[w + 1] << (np.uint64(63) - sh)) << np.uint64(1))


@njit(cache=True, inline="always")
def _bytes_word(data, p, k):
    v = np.uint64(0)
    for j in range(k):
        v |= np.uint64(data[p + j]) << np.uint64(8 * j)
    return v


@njit(cache=True, nogil=True)
def _lookup(offsets, words, data, first, nulls, slots, v_len, v_key, v_off, v_words, unknown, missing, out):
    """out[i] = vocabulary position of string ``first + i`` (``unknown`` if absent, ``missing`` if null).

    Every vocabulary entry sits in its home slot (``Vocabulary`` sizes the table so), so one probe
    decides: a value is the entry there when length and first 16 bytes agree and, past 16 bytes,
    the rest, word by word."""
    mask = np.uint64(slots.shape[0] - 1)
    has_nulls = nulls.shape[0] > 0
    n_bytes = data.shape[0]
    for i in range(out.shape[0]):
        s, e = offsets[first + i], offsets[first + i + 1]
        length = e - s
        k1, k2 = min(8, length), min(8, max(0, length - 8))
        if s + 24 <= 8 * words.shape[0]:              # both words' loads stay inside the buffer
            head = _load(words, s) & _MASKS[k1]
            tail = _load(words, s + 8) & _MASKS[k2]
        else:                                         # the buffer's last bytes
            head = _bytes_word(data, s, min(k1, n_bytes - s))
            tail = _bytes_word(data, s + 8, k2)
        u = slots[_mix(head, tail, length) & mask]
        code = unknown
        if u >= 0 and v_len[u] == length and v_key[u, 0] == head and v_key[u, 1] == tail:
            code = u
            for j in range(16, length, 8):              # past 16 bytes: word by word
                k = min(8, length - j)
                got = _load(words, s + j) if s + j + 16 <= 8 * words.shape[0] else _bytes_word(data, s + j, k)
                if (got & _MASKS[k]) != v_words[v_off[u] + (j >> 3)]:
                    code = unknown
                    break
        out[i] = missing if has_nulls and nulls[i] else code


def _words(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``data`` (uint8) and its whole 8-byte words as uint64, both over one 8-byte-aligned buffer
    (Arrow's buffers are 64-byte aligned: no copy; anything else is copied once)."""
    if data.ctypes.data % 8:
        data = np.frombuffer(data.tobytes(), np.uint8)
    return data, data[: data.shape[0] // 8 * 8].view(np.uint64)


class Vocabulary:
    """A vocabulary's strings (UTF-8) with their open-addressing table, for :func:`lookup`.
    Of equal strings the first keeps its position."""

    def __init__(self, values):
        raw = [str(v).encode("utf-8") for v in values]
        self.size = len(raw)
        self.length = np.array([len(b) for b in raw], np.int64)
        padded = [b + bytes(-len(b) % 8 + 32) for b in raw]           # whole words, at least four
        self.key = np.array([[int.from_bytes(b[j:j + 8], "little") for j in (0, 8, 16, 24)] for b in padded],
                            np.uint64).reshape(-1, 4)
        self.offsets = np.zeros(len(raw) + 1, np.int64)
        self.offsets[1:] = np.cumsum([len(b) // 8 for b in padded])
        self.words = np.frombuffer(b"".join(padded) + bytes(8), np.uint64)
        first = {}
        for v, b in enumerate(raw):
            first.setdefault(b, v)
        homes = {v: int(_mix(self.key[v, 0], self.key[v, 1], int(self.length[v]))) for v in first.values()}
        size = 1 << max(3, int(np.ceil(np.log2(4 * max(1, len(first))))))
        while len({h & (size - 1) for h in homes.values()}) < len(homes):
            size *= 2                                  # every entry in its home slot: one probe decides
            if size > 1 << 30:
                raise ValueError("vocabulary strings collide in the hash table")
        self.slots = np.full(size, -1, np.int64)
        for v, h in homes.items():
            self.slots[h & (size - 1)] = v


def lookup(offsets, data, first: int, n: int, vocabulary: Vocabulary, out, nulls=None,
           unknown: int = -1, missing: int = -1):
    """Vocabulary positions of ``n`` strings of an Arrow string array into ``out`` (int32, n).

    ``offsets`` (int32 or int64) and ``data`` (uint8) are the array's buffers, ``first`` its offset
    (a slice's first string); ``nulls`` (bool, n) marks missing values. Releases the GIL.
    """
    offsets = np.asarray(offsets)
    if offsets.ndim != 1 or offsets.dtype not in (np.int32, np.int64) or offsets.shape[0] < first + n + 1:
        raise ValueError(f"offsets must be int32/int64 with at least {first + n + 1} entries")
    if not isinstance(out, np.ndarray) or out.shape != (n,) or out.dtype != np.int32:
        raise ValueError(f"out must be int32 of length {n}")
    nulls = np.zeros(0, np.bool_) if nulls is None else np.asarray(nulls, np.bool_)
    if nulls.shape[0] not in (0, n):
        raise ValueError(f"nulls must have {n} entries")
    data = np.asarray(data, np.uint8)
    if data.ndim != 1 or (n and data.shape[0] < offsets[first + n]):
        raise ValueError("data must be the uint8 buffer the offsets point into")
    data, words = _words(data)
    v = vocabulary
    _lookup(offsets, words, data, int(first), nulls, v.slots, v.length, v.key, v.offsets, v.words,
            int(unknown), int(missing), out)
    return out


@njit(cache=True, nogil=True)
def _remap(codes, lut, outside, out):
    n = lut.shape[0]
    for i in range(codes.shape[0]):
        k = np.int64(codes[i]) + 1
        out[i] = lut[k] if k >= 0 and k < n else outside       # a select: the loop stays vectorised


def remap(codes, lut, out, outside: int = -1):
    """``out[i] = lut[codes[i] + 1]``: codes of one vocabulary (-1: missing) into another's, through
    ``lut`` (int32; ``lut[0]`` is the missing code); codes outside the table take ``outside``. Six
    times ``np.take``'s speed at 2M rows, and releases the GIL."""
    codes = np.asarray(codes)
    if codes.ndim != 1 or codes.dtype.kind not in "iu" or out.shape != codes.shape or out.dtype != np.int32:
        raise ValueError("codes must be 1-d integers and out int32 of the same length")
    _remap(codes, np.ascontiguousarray(lut, np.int32), int(outside), out)
    return out
