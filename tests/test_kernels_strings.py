"""String comparison kernels against textbook references (incl. unicode, empty strings, nulls)."""
import numpy as np
import pytest

from crmlab.kernels import strings as S

import naive

WORDS = ["martha", "marhta", "dwayne", "duane", "dixon", "dicksonx", "", "a", "ab", "ba", "jones", "johnson",
         "zoë", "zoe", "josé", "jose", "Renée", "renee", "smith-jones", "jones smith", "o'brien", "obrien",
         "ßtraße", "strasse", "王小明", "王晓明", "abcdefghij", "abcdfeghij", "kitten", "sitting", None]


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(0)
    n = len(WORDS)
    left = np.r_[np.repeat(np.arange(n), n), rng.integers(0, n, 200)]
    right = np.r_[np.tile(np.arange(n), n), rng.integers(0, n, 200)]
    return S.to_arena(WORDS), left, right


def _ref(fn, left, right):
    return np.array([np.nan if WORDS[i] is None or WORDS[j] is None else fn(WORDS[i], WORDS[j])
                     for i, j in zip(left, right)], dtype=float)


def test_arena_roundtrip_unicode_and_nulls():
    chars, off, null = S.to_arena(WORDS)
    back = [None if null[i] else "".join(map(chr, chars[off[i]:off[i + 1]])) for i in range(len(WORDS))]
    assert back == WORDS


@pytest.mark.parametrize("dtype", ["object", "string", "str", "ascii"])
def test_arena_from_arrow_equals_the_python_path(dtype):
    """Long columns are decoded from Arrow's UTF-8 (ASCII without the decoding loop): the same chars,
    offsets and nulls as the per-value path, from any pandas text dtype, sliced or not."""
    import pandas as pd

    words = [w for w in WORDS if dtype != "ascii" or (w is not None and w.isascii())] + ["😀x", np.nan] * (dtype != "ascii")
    values = pd.Series(np.random.default_rng(1).choice(np.array(words, dtype=object), 5000))
    values = values.iloc[7:] if dtype == "ascii" else values.astype(dtype if dtype != "ascii" else object)
    got = S.to_arena(values)
    want = S.to_arena(values.tolist()[:999])                # the per-value path (short lists)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
    np.testing.assert_array_equal(got[2][:999], want[2])
    np.testing.assert_array_equal(got[1][:1000], want[1])
    np.testing.assert_array_equal(got[0][:got[1][999]], want[0])
    assert len(got[2]) == len(values) and got[1][-1] == len(got[0])


def test_text_hash_is_the_same_for_the_same_text_in_any_dtype():
    import pandas as pd

    a = pd.Series(["smith", "", "zoë", "王小明", "smith"], dtype=object)
    h = S.text_hash([a, a.str.upper()])
    assert h[0] == h[4] and len(set(h[:4].tolist())) == 4
    for dtype in ("string", "str"):
        np.testing.assert_array_equal(S.text_hash([a.astype(dtype), a.str.upper().astype(dtype)]), h)
    assert not np.array_equal(S.text_hash([a.str.upper(), a]), h)   # the columns' order counts
    with pytest.raises(TypeError):
        S.text_hash([pd.Series([1, 2])])


def test_jaro_winkler(pairs):
    arena, left, right = pairs
    got = S.jaro_winkler(arena, arena, left, right)
    np.testing.assert_allclose(got, _ref(naive.jaro_winkler_ref, left, right), rtol=1e-12, equal_nan=True)
    i, j = WORDS.index("martha"), WORDS.index("marhta")
    assert S.jaro_winkler(arena, arena, [i], [j])[0] == pytest.approx(0.9611111, abs=1e-6)   # textbook value


@pytest.mark.parametrize("transpositions", [False, True])
@pytest.mark.parametrize("max_dist", [1, 3, 20])
def test_edit_distances(pairs, transpositions, max_dist):
    arena, left, right = pairs
    fn = S.damerau if transpositions else S.levenshtein
    got = fn(arena, arena, left, right, max_dist=max_dist)
    ref = _ref(lambda a, b: min(naive.edit_distance_ref(a, b, transpositions), max_dist + 1), left, right)
    np.testing.assert_array_equal(got, ref)


def test_bigram_dice_and_exact(pairs):
    arena, left, right = pairs
    np.testing.assert_allclose(S.bigram_dice(arena, arena, left, right), _ref(naive.bigram_dice_ref, left, right),
                               rtol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(S.exact(arena, arena, left, right), _ref(lambda a, b: float(a == b), left, right))


def test_two_different_arenas_and_validation():
    a = S.to_arena(["anne", None])
    b = S.to_arena(["ann", "anna", "x"])
    got = S.jaro_winkler(a, b, [0, 0, 1], [0, 1, 2])
    assert got[0] == pytest.approx(naive.jaro_winkler_ref("anne", "ann")) and np.isnan(got[2])
    with pytest.raises(ValueError, match="out of range"):
        S.exact(a, b, [0], [3])
    with pytest.raises(ValueError, match="same length"):
        S.exact(a, b, [0, 1], [0])
