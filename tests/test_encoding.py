"""Frames to scoring arrays: the vocabulary kernel against a dict lookup, every column type the
encoder reads, chunked scoring equal to one pass."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from crmlab.encoding import FrameEncoder, member_of
from crmlab.kernels import vocab
from naive import vocab_lookup_ref

VOCAB = ["No", "Yes", "", "No internet service", "Bank transfer (automatic)", "exactly-16-bytes",
         "exactly-8", "a much longer category value that runs past thirty-two bytes", "émigré ☂", "No"]


def _values(rng, n):
    """Real-shaped values: vocabulary entries, near misses (prefixes, one byte longer or changed
    past byte 16 or 32), unseen values and missing ones."""
    near = ["N", "Noo", "Yes ", "No internet servicE", "Bank transfer (automatiC)", "exactly-16-bytez",
            "a much longer category value that runs past thirty-two byteS", "émigré", "unseen", "(missing)"]
    pool = VOCAB + near + [None]
    return [pool[k] for k in rng.integers(len(pool), size=n)]


@pytest.mark.parametrize("large", [False, True])
def test_vocab_lookup_matches_dict(large):
    rng = np.random.default_rng(0)
    vals = _values(rng, 5000)
    arr = pa.array(vals, type=pa.large_string() if large else pa.string())
    V = vocab.Vocabulary(VOCAB)
    for lo, n in ((0, len(vals)), (123, 4000), (4990, 10)):           # slices start inside the buffers
        part = arr.slice(lo, n)
        _, off, data = part.buffers()
        out = np.empty(n, np.int32)
        nulls = part.is_null().to_numpy(zero_copy_only=False)
        vocab.lookup(np.frombuffer(off, np.int64 if large else np.int32), np.frombuffer(data, np.uint8),
                     part.offset, n, V, out, nulls, unknown=-7, missing=-3)
        np.testing.assert_array_equal(out, vocab_lookup_ref(vals[lo:lo + n], VOCAB, -7, -3))


def test_vocab_lookup_at_the_end_of_an_unpadded_buffer():
    """The last strings of a buffer that ends exactly where they do (no padding to load past)."""
    vals = ["Yes", "No", "exactly-16-bytes", "a much longer category value that runs past thirty-two bytes",
            "No internet service", "Yes"]
    raw = [v.encode() for v in vals]
    data = np.frombuffer(b"".join(raw), np.uint8).copy()
    offsets = np.r_[0, np.cumsum([len(b) for b in raw])].astype(np.int64)
    out = np.empty(len(vals), np.int32)
    vocab.lookup(offsets, data, 0, len(vals), vocab.Vocabulary(VOCAB), out)
    np.testing.assert_array_equal(out, vocab_lookup_ref(vals, VOCAB))


def test_vocab_lookup_large_vocabulary_and_every_length():
    """3,000 entries (too many for one-probe placement: the probing path) of every length 0-70,
    against values that differ from an entry in one byte anywhere (first, last, middle words of
    long values) or by one byte of length, in a buffer that ends where its last value does."""
    rng = np.random.default_rng(5)
    letters = np.array(list("abcdefghij é"))
    voc = list(dict.fromkeys("".join(rng.choice(letters, size=rng.integers(0, 71))) for _ in range(3000)))
    near = []
    for v in rng.choice(np.array(voc, dtype=object), 2000):
        b = bytearray(v.encode())
        if b and rng.random() < 0.7:
            b[rng.integers(len(b))] ^= 1                           # one bit of one byte
        else:
            b += b"x"
        near.append(b.decode("utf-8", "replace"))
    vals = [voc[k] for k in rng.integers(len(voc), size=4000)] + near + [None] * 50
    vals = [vals[k] for k in rng.permutation(len(vals))]
    V = vocab.Vocabulary(voc)
    assert V.probes > 1
    raw = [b"" if v is None else v.encode() for v in vals]
    data = np.frombuffer(b"".join(raw), np.uint8).copy()
    offsets = np.r_[0, np.cumsum([len(b) for b in raw])].astype(np.int64)
    nulls = np.array([v is None for v in vals])
    out = np.empty(len(vals), np.int32)
    vocab.lookup(offsets, data, 0, len(vals), V, out, nulls, unknown=-7, missing=-3)
    np.testing.assert_array_equal(out, vocab_lookup_ref(vals, voc, -7, -3))
    small = vocab.Vocabulary(voc[:5])                               # one probe: unknown long values too
    assert small.probes == 1
    vocab.lookup(offsets, data, 0, len(vals), small, out, nulls, unknown=-7, missing=-3)
    np.testing.assert_array_equal(out, vocab_lookup_ref(vals, voc[:5], -7, -3))


def _frame(rng, n, kind):
    vals = _values(rng, n)
    s = pd.Series(vals, dtype=object)
    if kind == "str":
        s = s.astype("str")
    elif kind == "category":
        s = s.astype("category")
    elif kind == "arrow-dictionary":
        s = pd.Series(pd.arrays.ArrowExtensionArray(pa.array(vals).dictionary_encode()))
    elif kind == "arrow-large":
        s = pd.Series(pd.arrays.ArrowExtensionArray(pa.array(vals, type=pa.large_string())))
    x = rng.normal(size=n)
    x[rng.random(n) < 0.1] = np.nan
    return pd.DataFrame({"c": s, "x": x, "i": rng.integers(0, 5, n), "b": rng.random(n) < 0.5,
                         "f32": rng.normal(size=n).astype(np.float32),
                         "nullable": pd.array(np.where(rng.random(n) < 0.2, None, rng.integers(0, 9, n)), dtype="Int64")}), vals


@pytest.mark.parametrize("kind", ["object", "str", "category", "arrow-dictionary", "arrow-large"])
@pytest.mark.parametrize("threads", [1, 2])
def test_encoder_reads_every_column_type(kind, threads):
    rng = np.random.default_rng(1)
    df, vals = _frame(rng, 30_000, kind)
    enc = FrameEncoder(["x", "i", "b", "f32", "nullable"], ["c"], [VOCAB], [2], chunk_rows=8192)
    want_codes = vocab_lookup_ref(vals, VOCAB, -1, 2)
    want_num = np.column_stack([df["x"], df["i"], df["b"], df["f32"].astype(float),
                                df["nullable"].to_numpy(float, na_value=np.nan)])
    seen = []

    def check(lo, hi, M, codes):
        assert M.flags.f_contiguous and codes.flags.f_contiguous and M.dtype == np.float64
        np.testing.assert_array_equal(codes[:, 0], want_codes[lo:hi])
        np.testing.assert_array_equal(M, want_num[lo:hi])
        seen.append((lo, hi))

    for lo, hi, M, codes in enc.chunks(df):
        check(lo, hi, M, codes)
    assert seen == [(lo, min(lo + 8192, len(df))) for lo in range(0, len(df), 8192)]
    seen.clear()
    enc.map(df, check, threads=threads)                 # each chunk once, whichever thread takes it
    assert sorted(seen) == [(lo, min(lo + 8192, len(df))) for lo in range(0, len(df), 8192)]


def test_encoder_map_raises_the_first_error_and_stops():
    df = pd.DataFrame({"x": np.arange(100_000.0)})
    calls = []

    def fail(lo, hi, M, codes):
        calls.append(lo)
        if lo == 8192:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        FrameEncoder(["x"], [], [], [], chunk_rows=4096).map(df, fail, threads=2)
    assert len(calls) < 100_000 // 4096


def test_encoder_keeps_float32_when_every_numeric_column_is():
    df = pd.DataFrame({"a": np.arange(5, dtype=np.float32), "b": np.ones(5, np.float32)})
    (_, _, M, codes), = FrameEncoder(["a", "b"], [], [], []).chunks(df)
    assert M.dtype == np.float32 and codes.shape == (5, 0)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8])
def test_remap_matches_numpy(dtype):
    rng = np.random.default_rng(2)
    lut = np.array([7, 3, -1, 0, 2], np.int32)                     # lut[0]: the missing code
    lo = 0 if np.dtype(dtype).kind == "u" else -1
    codes = rng.integers(lo, 6, size=10_000).astype(dtype)         # 4 and 5 lie outside the table
    out = np.empty(len(codes), np.int32)
    vocab.remap(codes, lut, out, outside=-9)
    k = codes.astype(np.int64) + 1
    np.testing.assert_array_equal(out, np.where(k < len(lut), lut[np.minimum(k, len(lut) - 1)], -9))


def test_chunked_scoring_memory_is_bounded():
    """Scoring 1M rows allocates the result and a few MB of chunk buffers, not a copy of the frame's
    arrays (36 MB here in one pass)."""
    import tracemalloc

    from crmlab.propensity import PropensityModel

    rng = np.random.default_rng(4)
    n = 1_000_000
    small = pd.DataFrame({"a": rng.normal(size=2000), "b": rng.normal(size=2000), "c": rng.integers(0, 9, 2000),
                          "s": rng.choice(["x", "y", "z"], 2000), "t": rng.choice(["p", "q"], 2000),
                          "u": rng.choice(["k", "l", "m", "n"], 2000),
                          "v": pd.array(np.where(rng.random(2000) < 0.2, None, rng.integers(0, 9, 2000)), dtype="Int64")})
    y = (small["a"] + (small["s"] == "x") + rng.normal(size=2000) > 0.5).astype(int)
    big = small.iloc[np.resize(np.arange(2000), n)].reset_index(drop=True).astype({"s": "str", "t": "str", "u": "str"})
    for kind in ("logistic", "hgb"):
        cm = PropensityModel(kind=kind, calibration="none", max_iter=20).fit(small, y).compile()
        cm.predict_proba(big.iloc[:10])
        tracemalloc.start()
        p = cm.predict_proba(big, chunk_rows=65536)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak - p.nbytes < 8e6, kind                     # the nullable column too: a chunk at a time
        np.testing.assert_array_equal(p[:2000], cm.predict_proba(small))


@pytest.mark.parametrize("dtype", ["str", object, "category"])
def test_member_of_equals_isin(dtype):
    rng = np.random.default_rng(3)
    keys = pd.Series([f"C{i:05d}" for i in rng.integers(0, 5000, 20000)] + [None], dtype=dtype)
    members = pd.Series([f"C{i:05d}" for i in rng.integers(0, 5000, 3000)] + [None], dtype=dtype)
    assert np.array_equal(member_of(keys, members), keys.isin(members).to_numpy())
    assert np.array_equal(member_of(pd.Index(keys), members.unique()), pd.Index(keys).isin(members.unique()))
    assert not member_of(keys, []).any() and len(member_of([], members)) == 0
