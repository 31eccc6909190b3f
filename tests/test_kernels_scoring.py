"""Scoring kernels against the row-by-row references in tests/naive.py."""
import numpy as np
import pytest

from crmlab.kernels import scoring
from naive import linear_proba_ref, tree_proba_ref

CALIBS = [None, ("sigmoid", -1.3, 0.2), ("isotonic", np.array([-2.0, -0.5, 0.0, 0.0, 1.5]),
                                          np.array([0.05, 0.2, 0.3, 0.4, 0.9]))]


@pytest.mark.parametrize("calib", CALIBS, ids=["logistic", "sigmoid", "isotonic"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", ["C", "F"])
def test_linear_matches_reference(calib, dtype, order):
    rng = np.random.default_rng(1)
    n, p, q = 500, 7, 3
    X = rng.normal(size=(n, p)).astype(dtype)
    X[rng.random((n, p)) < 0.1] = np.nan
    X[3, 2] = np.inf
    fill = rng.normal(size=p)
    fill[5] = np.nan                                # column 5 takes no missing values
    codes = rng.integers(-1, 4, size=(n, q)).astype(np.int32)
    table = rng.normal(size=(q, 4))
    w = rng.normal(size=p)
    got = scoring.linear_proba(np.asarray(X, order=order), w, 0.3, fill, np.asarray(codes, order=order), table, calib)
    want = linear_proba_ref(X.astype(float), w, 0.3, fill, codes, table, calib)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[3]) and np.isnan(got).sum() > 10
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    serial = scoring.linear_proba(np.asarray(X, order=order), w, 0.3, fill, np.asarray(codes, order=order), table,
                                  calib, parallel=False)
    np.testing.assert_array_equal(serial, got)                     # the same numbers in one thread


def _random_trees(rng, n_trees, p, q, n_cats=6, depth=5):
    """Random trees both as nested dicts (reference) and as the kernel's flat arrays."""
    flat = {k: [] for k in ("kind", "feat", "thr", "left", "right", "miss_left", "bitset", "value")}
    bitsets, roots, nested = [], [], []
    known = np.zeros((max(q, 1), 8), np.uint32)
    known_sets = [set(rng.choice(n_cats, size=n_cats - 1, replace=False).tolist()) for _ in range(q)]
    for c, s in enumerate(known_sets):
        for k in s:
            known[c, k >> 5] |= np.uint32(1 << (k & 31))

    def grow(depth):
        idx = len(flat["kind"])
        for k in flat:
            flat[k].append(0)
        if depth == 0 or rng.random() < 0.15:
            v = float(rng.normal())
            flat["kind"][idx], flat["value"][idx] = scoring.LEAF, v
            return idx, {"value": v}
        miss = bool(rng.random() < 0.5)
        if q and rng.random() < 0.3:
            f = int(rng.integers(q))
            left_cats = set(rng.choice(sorted(known_sets[f]), size=int(rng.integers(1, max(2, n_cats // 2))),
                                       replace=False).tolist())
            b = np.zeros(8, np.uint32)
            for k in left_cats:
                b[k >> 5] |= np.uint32(1 << (k & 31))
            flat["kind"][idx], flat["bitset"][idx] = scoring.CATEGORICAL, len(bitsets)
            bitsets.append(b)
            node = {"kind": "cat", "feature": f, "left_cats": left_cats, "known_cats": known_sets[f]}
        else:
            f = int(rng.integers(p))
            thr = float(rng.normal())
            flat["kind"][idx], flat["thr"][idx] = scoring.NUMERIC, thr
            node = {"kind": "num", "feature": f, "thr": thr}
        flat["feat"][idx], flat["miss_left"][idx] = f, miss
        li, ln = grow(depth - 1)
        ri, rn = grow(depth - 1)
        flat["left"][idx], flat["right"][idx] = li, ri
        return idx, {**node, "missing_left": miss, "left": ln, "right": rn}

    for _ in range(n_trees):
        root, tree = grow(depth)
        roots.append(root)
        nested.append(tree)
    arrays = {"kind": np.array(flat["kind"], np.uint8), "feat": np.array(flat["feat"], np.int32),
              "thr": np.array(flat["thr"], float), "left": np.array(flat["left"], np.int32),
              "right": np.array(flat["right"], np.int32), "miss_left": np.array(flat["miss_left"], np.uint8),
              "bitset": np.array(flat["bitset"], np.int32), "value": np.array(flat["value"], float),
              "roots": np.array(roots, np.int32), "cat_bitsets": np.array(bitsets or [np.zeros(8, np.uint32)]),
              "known_bitsets": known, "known_row": np.arange(max(q, 1), dtype=np.int32), "baseline": -0.4}
    return arrays, {"baseline": -0.4, "trees": nested}


@pytest.mark.parametrize("calib", CALIBS, ids=["logistic", "sigmoid", "isotonic"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method,depth", [("quickscorer", 5), ("quickscorer", 6), ("walk", 5), ("auto", 8)])
def test_trees_match_reference(calib, dtype, method, depth):
    rng = np.random.default_rng(2)
    n, p, q = 900, 5, 2
    arrays, nested = _random_trees(rng, 25, p, q, depth=depth)
    if depth > 6:                                                  # some tree too big for QuickScorer
        assert scoring.quickscorer_tables(arrays, p, q) is None
    elif method == "quickscorer":                                  # <= 32 leaves: 32-bit masks, else 64-bit
        assert scoring.quickscorer_tables(arrays, p, q)["q_mask"].dtype == (np.uint32 if depth == 5 else np.uint64)
    X = rng.normal(size=(n, p)).astype(dtype)
    X[rng.random((n, p)) < 0.1] = np.nan
    X[7, 1] = -np.inf
    codes = rng.integers(-1, 6, size=(n, q)).astype(np.int32)      # includes unknown category 5 sometimes
    num = np.flatnonzero(arrays["kind"] == scoring.NUMERIC)[:40]
    X[100 + np.arange(len(num)), arrays["feat"][num]] = arrays["thr"][num]   # a value equal to a threshold goes left
    below = np.nextafter(arrays["thr"][num].astype(dtype), dtype(-np.inf))      # the nearest values of X's type
    above = np.nextafter(arrays["thr"][num].astype(dtype), dtype(np.inf))       # on both sides of each threshold
    X[300 + np.arange(len(num)), arrays["feat"][num]] = below
    X[500 + np.arange(len(num)), arrays["feat"][num]] = above
    got = scoring.tree_proba(X, arrays, codes, calib, method=method)
    want = tree_proba_ref(X, nested, codes, calib)
    assert np.isnan(got[7])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    got_f = scoring.tree_proba(np.asfortranarray(X), arrays, np.asfortranarray(codes), calib, method=method)
    np.testing.assert_array_equal(got_f, got)                      # a DataFrame's column order: same sums
    serial = scoring.tree_proba(np.asfortranarray(X), arrays, np.asfortranarray(codes), calib, method=method,
                                parallel=False)
    np.testing.assert_array_equal(serial, got)                     # the same numbers in one thread


@pytest.mark.parametrize("method", ["quickscorer", "walk"])
def test_categorical_trees_with_many_categories(method):
    """Mostly categorical nodes over up to 200 known categories: codes missing, known, in no node's
    bitset, unknown past the known ones, and out of the trees' range altogether."""
    rng = np.random.default_rng(5)
    n, p, q = 3000, 2, 3
    arrays, nested = _random_trees(rng, 40, p, q, n_cats=200, depth=5)
    cat = arrays["kind"] == scoring.CATEGORICAL
    assert cat.sum() > 0.2 * (arrays["kind"] != scoring.LEAF).sum()
    X = rng.normal(size=(n, p))
    codes = rng.integers(-1, 240, size=(n, q)).astype(np.int32)
    codes[:50] = 255
    got = scoring.tree_proba(X, arrays, codes, method=method)
    np.testing.assert_allclose(got, tree_proba_ref(X, nested, codes), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("calib", CALIBS)
def test_linear_on_columns_in_place_matches_reference(calib):
    """Columns of every type a frame holds (float64 with NaN, float32, int64/32/16/8, bool, and
    uint16, which is copied) read where they lie: equal to the matrix kernel bit for bit and to
    the reference, also on views into the middle of the columns."""
    rng = np.random.default_rng(7)
    n = 5000
    cols = [rng.normal(size=n), rng.normal(size=n).astype(np.float32), rng.integers(-5, 5, n),
            rng.integers(0, 9, n).astype(np.int32), rng.integers(0, 9, n).astype(np.int16),
            rng.integers(-3, 3, n).astype(np.int8), rng.random(n) < 0.5, rng.integers(0, 9, n).astype(np.uint16)]
    cols[0][rng.random(n) < 0.1] = np.nan
    cols[1][:5] = np.inf                                            # rows that cannot be scored: NaN
    X = np.column_stack([c.astype(float) for c in cols])
    w, fill = rng.normal(size=8), rng.normal(size=8)
    codes = rng.integers(-1, 4, (n, 3)).astype(np.int32)
    table = rng.normal(size=(3, 4))
    got = scoring.linear_proba_columns(cols, w, 0.3, fill, codes, table, calib)
    np.testing.assert_array_equal(got, scoring.linear_proba(np.asfortranarray(X), w, 0.3, fill, codes, table, calib))
    np.testing.assert_allclose(got, linear_proba_ref(X, w, 0.3, fill, codes, table, calib), rtol=1e-12, atol=1e-14)
    assert np.isnan(got[:5]).all()
    part = scoring.linear_proba_columns([c[1234:4321] for c in cols], w, 0.3, fill, codes[1234:4321], table, calib)
    np.testing.assert_array_equal(part, got[1234:4321])           # views into the middle of the columns
    with pytest.raises(ValueError, match="equally long"):
        scoring.linear_proba_columns([cols[0], cols[1][:10]], w[:2], 0.3)


def test_scores_go_into_a_given_output():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(1000, 4))
    out = np.full(3000, -1.0)
    scoring.linear_proba(X, np.ones(4), 0.1, out=out[1000:2000])
    np.testing.assert_array_equal(out[1000:2000], scoring.linear_proba(X, np.ones(4), 0.1))
    assert (out[:1000] == -1).all() and (out[2000:] == -1).all()
    with pytest.raises(ValueError, match="contiguous float64"):
        scoring.linear_proba(X, np.ones(4), 0.1, out=out[::3][:1000])


def test_wrappers_reject_bad_shapes():
    with pytest.raises(TypeError, match="float32 or float64"):
        scoring.linear_proba(np.zeros((3, 2), np.int64), np.zeros(2), 0.0)
    with pytest.raises(ValueError, match="do not fit"):
        scoring.linear_proba(np.zeros((3, 2)), np.zeros(3), 0.0)
    rng = np.random.default_rng(0)
    arrays, _ = _random_trees(rng, 2, 5, 0)
    with pytest.raises(ValueError, match="more columns"):
        scoring.tree_proba(np.zeros((3, 2)), arrays)
    arrays, _ = _random_trees(rng, 2, 2, 1)
    with pytest.raises(ValueError, match="at most 256 categories"):
        scoring.tree_proba(np.zeros((3, 2)), arrays, np.full((3, 1), 300))
