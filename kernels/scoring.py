"""Bulk scoring of exported models: a linear (logistic) model and a tree ensemble.

Inputs are a numeric matrix ``X`` (n, p), float32 or float64, C-contiguous, and a categorical code
matrix ``codes`` (n, q) int32 (``-1``: unknown or missing). Output is one probability per row,
after the model's link and an optional calibration:

* link 0: logistic, ``1 / (1 + exp(-raw))``;
* calibration 1 (sigmoid, Platt): ``1 / (1 + exp(a * raw + b))``;
* calibration 2 (isotonic): piecewise-linear interpolation of ``raw`` through ``(xs, ys)``.

A row that holds a value the model cannot take (``inf``, or NaN where the model has no imputation)
scores NaN; the public wrappers in ``crmlab.propensity`` turn that into an error naming the column.
"""
from __future__ import annotations

import types

import numpy as np
from numba import carray, njit, prange, types as nbtypes
from numba.extending import intrinsic
from numba.cpython.unsafe.numbers import trailing_zeros

NUMERIC, CATEGORICAL, LEAF = 0, 1, 2
BLOCK = 256
SUPER = 16                                                # blocks per parallel task in _linear
GROUP = 16


_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e+00
_POW2 = np.ldexp(1.0, np.arange(-1022, 1024))              # 2**k for k in [-1022, 1023]
_EXP_COEF = 1.0 / np.cumprod(np.r_[1.0, np.arange(1.0, 14.0)])   # 1/k!, k = 0..13


@njit(cache=True, inline="always")
def _exp(x):
    """exp(x) to ~2e-16 relative (range reduction by ln 2, degree-13 Taylor): inlined, so loops of it
    vectorise, unlike calls into libm. Clamped to [-708, 709]; NaN in, NaN out."""
    x = min(max(x, -708.0), 709.0) if x == x else x
    k = np.floor(x * _INV_LN2 + 0.5)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = _EXP_COEF[13]
    for d in range(12, -1, -1):
        p = p * r + _EXP_COEF[d]
    ki = np.int64(k) + 1022 if x == x else 0
    return p * _POW2[ki]


@njit(cache=True, inline="always")
def _link(raw, calib, a, b, xs, ys):
    if calib == 1:
        return 1.0 / (1.0 + _exp(a * raw + b))
    if calib == 2:
        if raw != raw:
            return raw
        m = xs.shape[0]
        if raw <= xs[0]:
            return ys[0]
        if raw >= xs[m - 1]:
            return ys[m - 1]
        lo, hi = 0, m - 1
        while hi - lo > 1:
            mid = (lo + hi) >> 1
            if xs[mid] <= raw:
                lo = mid
            else:
                hi = mid
        if xs[hi] == xs[lo]:
            return ys[hi]
        return ys[lo] + (raw - xs[lo]) * (ys[hi] - ys[lo]) / (xs[hi] - xs[lo])
    return 1.0 / (1.0 + _exp(-raw))


_MAGIC = 6755399441055744.0                               # 1.5 * 2**52: adding it rounds to an integer
_MAGIC_BITS = np.int64(0x4338000000000000)                # ... held in the low bits of the sum


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def _logistic_block(z, out, lo, m, calib, a, b, poly, kbuf):
    """out[lo + r] = 1 / (1 + exp(t_r)), t = -z (or a z + b: Platt), for r < m, in loops the
    compiler vectorises (AVX2 has no double -> int64 conversion, so k is rounded by adding 1.5 *
    2**52 and 2**k built from the bits of that sum); degree-11 polynomial on |r| <= ln2 / 2
    (relative error < 1e-14). Not inlined: the caller's reassociation would fold the rounding
    away. NaN in, NaN out."""
    for r in range(m):
        t = a * z[r] + b if calib == 1 else -z[r]
        t = t if t > -708.0 else -708.0
        t = t if t < 709.0 else 709.0
        y = t * _INV_LN2 + _MAGIC
        k = y - _MAGIC
        rr = (t - k * _LN2_HI) - k * _LN2_LO
        pp = _EXP_COEF[11]
        for d in range(10, -1, -1):
            pp = pp * rr + _EXP_COEF[d]
        poly[r] = pp
        kbuf[r] = y
    kint = kbuf.view(np.int64)
    for r in range(m):
        kint[r] = (kint[r] - _MAGIC_BITS + 1023) << 52        # now kbuf[r] == 2**k
    for r in range(m):
        v = 1.0 / (1.0 + poly[r] * kbuf[r])
        out[lo + r] = v if z[r] == z[r] else np.nan


@njit(cache=True, inline="always")
def _finish_block(z, codes, table, lo, m, calib, a, b, xs, ys, out, poly, kbuf):
    """Rows lo .. lo + m of a linear pass: the category contributions added to the numeric sums
    ``z``, non-finite sums made NaN, then the link into ``out`` (inlined: the caller's loops)."""
    for c in range(codes.shape[0]):
        for r in range(m):
            k = codes[c, lo + r]
            z[r] += table[c, k] if k >= 0 else 0.0
    for r in range(m):
        s = z[r]
        z[r] = s if s - s == 0.0 else np.nan
    if calib == 2:
        for r in range(m):
            out[lo + r] = _link(z[r], calib, a, b, xs, ys)
    else:
        _logistic_block(z, out, lo, m, calib, a, b, poly, kbuf)


@njit(cache=True, parallel=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _linear(X, fill, w, codes, table, bias, calib, a, b, xs, ys, out):
    """out[i] = link(bias + sum_j w_j * x_ij (NaN -> fill_j) + sum_c table[c, codes[c, i]]).

    One pass per block of rows: dot products with missing values replaced as they are read (a
    select, so the loop stays vectorised; a NaN fill, i.e. no imputation, leaves the row NaN, as
    does an inf), then the link over the block. Row-major ``X`` is read row by row, column-major
    ``X`` (a DataFrame's columns) column by column, each contiguous. ``codes`` is column-major (q, n):
    each category column adds its contributions over the block in one gather. Each parallel task
    takes ``SUPER`` blocks and allocates its buffers once (an allocation per block cost 10% of the
    pass).
    """
    n, p = X.shape
    rowmajor = p < 2 or X.strides[1] == X.itemsize
    n_blocks = (n + BLOCK - 1) // BLOCK
    n_tasks = (n_blocks + SUPER - 1) // SUPER
    for task in prange(n_tasks):
        z = np.empty(BLOCK)
        poly = np.empty(BLOCK)
        kbuf = np.empty(BLOCK)
        for blk in range(task * SUPER, min(n_blocks, (task + 1) * SUPER)):
            lo = blk * BLOCK
            m = min(n, lo + BLOCK) - lo
            if rowmajor:
                for r in range(m):
                    s = bias
                    for j in range(p):
                        v = np.float64(X[lo + r, j])
                        s += w[j] * (v if v == v else fill[j])
                    z[r] = s
            else:
                for r in range(m):
                    z[r] = bias
                for j in range(p):
                    wj, fj = w[j], fill[j]
                    for r in range(m):
                        v = np.float64(X[lo + r, j])
                        z[r] += wj * (v if v == v else fj)
            _finish_block(z, codes, table, lo, m, calib, a, b, xs, ys, out, poly, kbuf)


#: Column types :func:`linear_proba_columns` reads in place, by code (bool as uint8).
COLUMN_TYPES = (np.float64, np.float32, np.int64, np.int32, np.int16, np.int8, np.uint8)


def _pointer_to(dtype):
    @intrinsic
    def cast(typingctx, address):
        sig = nbtypes.CPointer(dtype)(nbtypes.int64)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

        return sig, codegen

    return cast


_as_f8, _as_f4, _as_i8, _as_i4, _as_i2, _as_i1, _as_u1 = (_pointer_to(t) for t in (
    nbtypes.float64, nbtypes.float32, nbtypes.int64, nbtypes.int32, nbtypes.int16, nbtypes.int8, nbtypes.uint8))


@njit(cache=True, inline="always")
def _add_column(z, col, row, m, wj, fj):
    for r in range(m):
        v = np.float64(col[row + r])
        z[r] += wj * (v if v == v else fj)


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _linear_columns(addresses, kinds, fill, w, codes, table, bias, calib, a, b, xs, ys, out):
    """:func:`_linear` on separate column arrays of ``len(out)`` values each (``addresses``: where
    each one's values start, ``kinds``: their type, by ``COLUMN_TYPES``), in the calling thread:
    the same sums in the same order as ``_linear`` on a column-major copy."""
    n = out.shape[0]
    z = np.empty(BLOCK)
    poly = np.empty(BLOCK)
    kbuf = np.empty(BLOCK)
    for lo in range(0, n, BLOCK):
        m = min(n, lo + BLOCK) - lo
        for r in range(m):
            z[r] = bias
        for j in range(addresses.shape[0]):
            k, at = kinds[j], addresses[j]
            if k == 0:
                _add_column(z, carray(_as_f8(at), n), lo, m, w[j], fill[j])
            elif k == 1:
                _add_column(z, carray(_as_f4(at), n), lo, m, w[j], fill[j])
            elif k == 2:
                _add_column(z, carray(_as_i8(at), n), lo, m, w[j], fill[j])
            elif k == 3:
                _add_column(z, carray(_as_i4(at), n), lo, m, w[j], fill[j])
            elif k == 4:
                _add_column(z, carray(_as_i2(at), n), lo, m, w[j], fill[j])
            elif k == 5:
                _add_column(z, carray(_as_i1(at), n), lo, m, w[j], fill[j])
            else:
                _add_column(z, carray(_as_u1(at), n), lo, m, w[j], fill[j])
        _finish_block(z, codes, table, lo, m, calib, a, b, xs, ys, out, poly, kbuf)


@njit(cache=True, inline="always")
def _in_bitset(bitsets, row, v):
    return (bitsets[row, v >> 5] >> np.uint32(v & 31)) & np.uint32(1)


@njit(cache=True, inline="always")
def _cat_left(k, miss_left, cat_bitsets, bitset_row, known_bitsets, known_row):
    """scikit-learn's rule at a categorical node: missing (k < 0) or unknown categories follow
    the missing-value direction; known ones go left when in the node's bitset."""
    if k < 0:
        return miss_left != 0
    if _in_bitset(cat_bitsets, bitset_row, k):
        return True
    if _in_bitset(known_bitsets, known_row, k):
        return False
    return miss_left != 0


@njit(cache=True, parallel=True)
def _trees(X, codes, kind, feat, thr, child, miss_left, bitset, cat_bitsets, known_bitsets, known_row,
           value, roots, depth, baseline, calib, a, b, xs, ys, out):
    """Sum of tree outputs per row (trees added in order, from ``baseline``), then the link.

    Rows go through each tree in groups of ``GROUP``, level by level for the tree's full depth
    (leaves point to themselves), choosing the child without a branch: independent walks overlap
    in the pipeline instead of waiting on mispredicted jumps.
    """
    n = X.shape[0]
    n_trees = roots.shape[0]
    n_blocks = (n + BLOCK - 1) // BLOCK
    for blk in prange(n_blocks):
        lo = blk * BLOCK
        hi = min(n, lo + BLOCK)
        acc = np.full(hi - lo, baseline)
        nd = np.empty(GROUP, np.int64)
        for t in range(n_trees):
            root = roots[t]
            for g0 in range(lo, hi, GROUP):
                gn = min(GROUP, hi - g0)
                for r in range(gn):
                    nd[r] = root
                for _ in range(depth[t]):
                    for r in range(gn):
                        node = nd[r]
                        f = feat[node]
                        if kind[node] == CATEGORICAL:
                            go_left = _cat_left(codes[f, g0 + r], miss_left[node], cat_bitsets, bitset[node],
                                                known_bitsets, known_row[f])
                            nd[r] = child[2 * node + (0 if go_left else 1)]
                        else:
                            v = np.float64(X[g0 + r, f])
                            right = (v > thr[node]) | ((v != v) & (miss_left[node] == 0))
                            nd[r] = child[2 * node + np.int64(right)]
                for r in range(gn):
                    acc[g0 - lo + r] += value[nd[r]]
        for i in range(lo, hi):
            bad = False
            for j in range(X.shape[1]):
                v = X[i, j]
                if v - v != 0.0 and v == v:      # +-inf
                    bad = True
            out[i] = np.nan if bad else _link(acc[i - lo], calib, a, b, xs, ys)


@njit(cache=True, parallel=True)
def _quickscorer(X, codes, q_thr, q_tree, q_mask, q_off, n_tree, n_mask, n_off, c_tree, c_base, c_off, c_width,
                 c_tab, leaf_val, leaf_off, lanes, baseline, calib, a, b, xs, ys, full, lowest, out):
    """QuickScorer over ``lanes`` rows at a time (Lucchese et al. 2015, vectorised across rows).

    Per tree a set of reachable leaves (one bit each, ``full`` at the start: 32-bit masks when every
    tree has at most 32 leaves, else 64-bit) starts full. For each numeric column the nodes testing
    it are visited in ascending threshold while some row's value exceeds the threshold; every row
    that goes right there loses the leaves of the node's left subtree (a branch-free AND over the
    lanes, which the compiler vectorises). Values and thresholds are compared in X's own type
    (``lowest`` is its -inf), so float32 rows with 32-bit masks fill whole vectors. NaN goes through
    the nodes that send missing values right (over all lanes at once where many rows miss the
    value, as customer features often do: no purchase, no contact). Categorical columns take one gather per (column,
    tree) pair: ``c_tab`` holds, per pair and category code (slot 0: missing or unknown), the AND of
    the masks of that tree's nodes on the column where the code goes right. Each row's leaf in a
    tree is then the lowest leaf still reachable; leaf values are summed in tree order from
    ``baseline``.
    """
    n, p = X.shape
    qn = codes.shape[0]
    T = leaf_off.shape[0] - 1
    R = lanes
    n_groups = (n + R - 1) // R
    per = max(1, 2048 // R)
    n_blocks = (n_groups + per - 1) // per
    for blk in prange(n_blocks):
        v = np.empty((T, R), q_mask.dtype)
        xr = np.empty(R, X.dtype)
        kr = np.empty(R, np.int64)
        isnan_r = np.zeros(R, np.bool_)
        s = np.empty(R)
        bad = np.zeros(R, np.bool_)
        for g in range(blk * per, min(n_groups, (blk + 1) * per)):
            i0 = g * R
            m = min(R, n - i0)
            v[:, :] = full
            bad[:] = False
            for f in range(p):
                xmax = lowest
                n_nan = 0
                for r in range(R):
                    x = X[i0 + r, f] if r < m else lowest
                    isnan = x != x
                    n_nan += isnan
                    isnan_r[r] = isnan
                    if isnan:
                        x = lowest                   # no threshold is below it; NaN masks come below
                    elif x - x != 0.0:
                        bad[r] = True                # +-inf
                    xr[r] = x
                    xmax = max(xmax, x)
                j = q_off[f]
                end = q_off[f + 1]
                while j < end and q_thr[j] < xmax:
                    vt = v[q_tree[j]]
                    mk = q_mask[j]
                    th = q_thr[j]
                    for r in range(R):
                        vt[r] &= mk if th < xr[r] else full
                    j += 1
                if n_nan * 8 > R:                    # many missing: each node over all lanes, branch-free
                    for jj in range(n_off[f], n_off[f + 1]):
                        vt = v[n_tree[jj]]
                        mk = n_mask[jj]
                        for r in range(R):
                            vt[r] &= mk if isnan_r[r] else full
                elif n_nan:
                    for r in range(m):
                        if isnan_r[r]:
                            for jj in range(n_off[f], n_off[f + 1]):
                                v[n_tree[jj], r] &= n_mask[jj]
            for f in range(qn):
                if c_off[f] == c_off[f + 1]:
                    continue
                width = c_width[f]
                for r in range(R):
                    k = codes[f, i0 + r] if r < m else -1
                    kr[r] = k + 1 if k >= 0 and k < width else 0
                for j in range(c_off[f], c_off[f + 1]):
                    vt = v[c_tree[j]]
                    base = c_base[j]
                    for r in range(R):
                        vt[r] &= c_tab[base + kr[r]]
            s[:] = baseline
            for t in range(T):
                base = leaf_off[t]
                vt = v[t]
                for r in range(R):
                    s[r] += leaf_val[base + trailing_zeros(vt[r])]
            for r in range(m):
                out[i0 + r] = np.nan if bad[r] else _link(s[r], calib, a, b, xs, ys)


def _serial(kernel, **options):
    """The same kernel compiled without ``parallel`` and releasing the GIL, under a name of its own
    (its own on-disk cache entry): for callers that spread chunks of rows over their own threads,
    where Numba's pool and theirs would share the cores (``prange`` runs as ``range``)."""
    f = kernel.py_func
    name = f.__name__ + "_serial"
    g = types.FunctionType(f.__code__, f.__globals__, name, f.__defaults__, f.__closure__)
    g.__qualname__, g.__doc__ = name, f.__doc__
    return njit(cache=True, nogil=True, **options)(g)


_linear_serial = _serial(_linear, fastmath={"reassoc", "contract"}, error_model="numpy")
_trees_serial = _serial(_trees)
_quickscorer_serial = _serial(_quickscorer)


def _bits(row) -> np.ndarray:
    """The 256 membership bits of a bitset row (8 uint32 words) as booleans, category k at index k."""
    return np.unpackbits(np.ascontiguousarray(row, np.uint32).astype("<u4").view(np.uint8),
                         bitorder="little").astype(bool)


def _category_tables(t, cat, mask, tree_of, q, full):
    """Per (categorical column, tree) pair, the AND of the masks of the tree's nodes on that column
    where each code goes right: slot 0 for a missing or unknown code, slot k + 1 for code k < width.
    Codes at or past a column's width are in no node's bitset and unknown, so they take slot 0: the
    same decision as scikit-learn's rule (``_cat_left``) for every code."""
    feat = t["feat"][cat]
    pair_tree, pair_base, pair_off, width, tab = [], [], [0], np.zeros(max(q, 1), np.int64), []
    size = 0
    for f in range(q):
        nodes = cat[feat == f]
        if len(nodes):
            known = _bits(t["known_bitsets"][t["known_row"][f]])
            left = np.array([_bits(t["cat_bitsets"][t["bitset"][k]]) for k in nodes])
            used = np.flatnonzero(known | left.any(axis=0))
            w = int(used[-1]) + 1 if len(used) else 0
            width[f] = w
            miss = t["miss_left"][nodes].astype(bool)
            go_left = np.concatenate([miss[:, None], left[:, :w] | (~known[:w] & miss[:, None])], axis=1)
            for tr in np.unique(tree_of[nodes]):
                sel = tree_of[nodes] == tr
                entry = np.full(w + 1, full, mask.dtype)
                for k, gl in zip(nodes[sel], go_left[sel]):
                    entry[~gl] &= mask[k]
                pair_tree.append(int(tr))
                pair_base.append(size)
                tab.append(entry)
                size += w + 1
        pair_off.append(len(pair_tree))
    return dict(c_tree=np.asarray(pair_tree, np.int64), c_base=np.asarray(pair_base, np.int64),
                c_off=np.asarray(pair_off, np.int64), c_width=width,
                c_tab=np.concatenate(tab) if tab else np.full(1, full, mask.dtype))


def quickscorer_tables(t, p: int, q: int, dtype=np.float64) -> dict | None:
    """QuickScorer tables of a tree ensemble with at most 64 leaves per tree (else None).

    Leaves are numbered left to right per tree; a node's mask clears the leaves of its left
    subtree (a row going right there can end in none of them), so the leaf a row reaches is the
    lowest one left after the masks of every node where it goes right. Masks are 32-bit when every
    tree has at most 32 leaves. For float32 input (``dtype``) thresholds are rounded down to
    float32, which keeps every decision: for a float32 x, ``x > t`` exactly when ``x >
    round_down_f32(t)``. Categorical nodes become per-code mask tables (``_category_tables``).
    """
    kind, left, right, roots = t["kind"], t["left"], t["right"], t["roots"]
    n = kind.shape[0]
    lo, hi, tree_of = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
    leaf_val, leaf_off = [], [0]
    for ti, root in enumerate(roots):
        order, stack, cnt = [], [int(root)], 0
        while stack:                               # pre-order, left first: leaves come out left to right
            k = stack.pop()
            order.append(k)
            tree_of[k] = ti
            if kind[k] == LEAF:
                lo[k] = hi[k] = cnt
                cnt += 1
                leaf_val.append(float(t["value"][k]))
            else:
                stack.append(int(right[k]))
                stack.append(int(left[k]))
        if cnt > 64:
            return None
        for k in reversed(order):                  # children before parents
            if kind[k] != LEAF:
                lo[k], hi[k] = lo[left[k]], hi[right[k]]
        leaf_off.append(leaf_off[-1] + cnt)
    inner = np.flatnonzero(kind != LEAF)
    mask = np.full(n, np.uint64(0xFFFFFFFFFFFFFFFF))
    for k in inner:
        a, width = int(lo[left[k]]), int(hi[left[k]] - lo[left[k]] + 1)
        mask[k] = ~np.uint64((((1 << width) - 1) << a) & 0xFFFFFFFFFFFFFFFF)
    if max(np.diff(leaf_off)) <= 32:
        mask = mask.astype(np.uint32)                          # the high bits are all set: dropped
    full = mask.dtype.type(np.iinfo(mask.dtype).max)
    num = inner[kind[inner] == NUMERIC]
    num = num[np.lexsort((t["thr"][num], t["feat"][num]))]
    nanr = num[t["miss_left"][num] == 0]                       # NaN goes right at these
    nanr = nanr[np.argsort(t["feat"][nanr], kind="stable")]
    cat = inner[kind[inner] == CATEGORICAL]
    offsets = lambda nodes, m: np.searchsorted(t["feat"][nodes], np.arange(m + 1)).astype(np.int64)  # noqa: E731
    thr = t["thr"][num].astype(np.float64)
    if np.dtype(dtype) == np.float32:
        t32 = thr.astype(np.float32)
        thr = np.where(t32 > thr, np.nextafter(t32, np.float32(-np.inf)), t32)
    return dict(
        q_thr=np.ascontiguousarray(thr), q_tree=tree_of[num].astype(np.int64), q_mask=mask[num],
        q_off=offsets(num, p), n_tree=tree_of[nanr].astype(np.int64), n_mask=mask[nanr], n_off=offsets(nanr, p),
        **_category_tables(t, cat, mask, tree_of, q, full),
        leaf_val=np.asarray(leaf_val, np.float64), leaf_off=np.asarray(leaf_off, np.int64), full=full)


_QS_CACHE: dict = {}


def _cached_tables(t, p, q, dtype):
    """Tables are built once per ensemble (keyed by its node array) and shape and type of input."""
    key = (id(t["kind"]), id(t["value"]), p, q, np.dtype(dtype).str)
    hit = _QS_CACHE.get(key)
    if hit is not None and hit[0] is t["kind"] and hit[1] is t["value"]:
        return hit[2]
    tables = quickscorer_tables(t, p, q, dtype)
    if len(_QS_CACHE) > 32:
        _QS_CACHE.clear()
    _QS_CACHE[key] = (t["kind"], t["value"], tables)
    return tables


@njit(cache=True)
def _layout(kind, left, right, roots):
    """Children as pairs (leaves point to themselves) and each tree's depth."""
    n = kind.shape[0]
    child = np.empty(2 * n, np.int64)
    for k in range(n):
        if kind[k] == LEAF:
            child[2 * k] = k
            child[2 * k + 1] = k
        else:
            child[2 * k] = left[k]
            child[2 * k + 1] = right[k]
    depth = np.zeros(roots.shape[0], np.int64)
    stack = np.empty(n, np.int64)
    level = np.empty(n, np.int64)
    for t in range(roots.shape[0]):
        top = 0
        stack[0] = roots[t]
        level[0] = 0
        top = 1
        while top > 0:
            top -= 1
            k = stack[top]
            d = level[top]
            if kind[k] == LEAF:
                depth[t] = max(depth[t], d)
            else:
                stack[top] = left[k]
                level[top] = d + 1
                stack[top + 1] = right[k]
                level[top + 1] = d + 1
                top += 2
    return child, depth


def _matrices(X, codes):
    """X as a float32/float64 matrix in either row or column order (no copy when it is already one),
    and the category codes column-major, (q, n): free for a Fortran-ordered (n, q) array."""
    X = np.asarray(X)
    if X.ndim != 2 or X.dtype not in (np.float32, np.float64):
        raise TypeError(f"X must be a 2-d float32 or float64 array, got {X.dtype} with shape {X.shape}")
    if not (X.flags.c_contiguous or X.flags.f_contiguous):
        X = np.ascontiguousarray(X)
    if codes is None:
        codes = np.zeros((X.shape[0], 0), np.int32)
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[0] != X.shape[0]:
        raise ValueError(f"codes must have shape ({X.shape[0]}, q), got {codes.shape}")
    return X, np.ascontiguousarray(codes.T, dtype=np.int32)


def _output(n: int, out=None) -> np.ndarray:
    """The kernels' output array, allocated by NumPy rather than inside the kernel: NumPy advises
    the kernel to back large arrays with huge pages, so writing 10M probabilities costs ~9 ms of
    page faults instead of ~38 ms (a quarter of the logistic pass at 10M x 30). A caller's ``out``
    (float64, contiguous, n long: e.g. a slice of a larger result) is written in place."""
    if out is None:
        return np.empty(n)
    if not isinstance(out, np.ndarray) or out.dtype != np.float64 or out.shape != (n,) or not out.flags.c_contiguous:
        raise ValueError(f"out must be a contiguous float64 array of {n} values")
    return out


def _calibration(calib):
    """(kind, a, b, xs, ys) from None, ('sigmoid', a, b) or ('isotonic', xs, ys)."""
    empty = np.zeros(1)
    if calib is None:
        return 0, 0.0, 0.0, empty, empty
    if calib[0] == "sigmoid":
        return 1, float(calib[1]), float(calib[2]), empty, empty
    if calib[0] == "isotonic":
        xs = np.ascontiguousarray(calib[1], dtype=np.float64)
        ys = np.ascontiguousarray(calib[2], dtype=np.float64)
        if xs.shape != ys.shape or xs.size == 0:
            raise ValueError("isotonic calibration needs equally long, non-empty xs and ys")
        return 2, 0.0, 0.0, xs, ys
    raise ValueError(f"unknown calibration {calib[0]!r}")


def _linear_model(p: int, codes, w, fill, table):
    """A linear model's weights, NaN fills and category table as the kernels read them, checked
    against ``p`` numeric columns and the (q, n) ``codes``."""
    q = codes.shape[0]
    w = np.ascontiguousarray(w, dtype=np.float64)
    fill = np.full(p, np.nan) if fill is None else np.ascontiguousarray(fill, dtype=np.float64)
    table = np.zeros((q, 1)) if table is None else np.ascontiguousarray(table, dtype=np.float64)
    if w.shape != (p,) or fill.shape != (p,) or table.shape[0] != q:
        raise ValueError(f"weights {w.shape}, fill {fill.shape} and table {table.shape} do not fit {p} numeric "
                         f"columns and codes {codes.shape[::-1]}")
    if q and codes.size and codes.max() >= table.shape[1]:
        raise ValueError("a category code exceeds the contribution table")
    return w, fill, table


def linear_proba(X, w, bias, fill=None, codes=None, table=None, calib=None, out=None, parallel: bool = True):
    """Probabilities of a logistic model: ``link(bias + X w + table[codes])``.

    ``X`` (n, p) in row or column order; ``fill`` (p,) replaces NaN per column (NaN there: the
    column takes no missing values, and such rows score NaN); ``codes`` (n, q) int (column order
    saves a transpose); ``table`` (q, k) holds each category's contribution (codes < 0 add nothing).
    ``out``: written in place when given. ``parallel=False``: in the calling thread only, without
    the GIL (the same numbers), for callers that split the rows over threads of their own.
    """
    X, codes = _matrices(X, codes)
    w, fill, table = _linear_model(X.shape[1], codes, w, fill, table)
    out = _output(X.shape[0], out)
    (_linear if parallel else _linear_serial)(X, fill, w, codes, table, float(bias), *_calibration(calib), out)
    return out


def linear_proba_columns(columns, w, bias, fill=None, codes=None, table=None, calib=None, out=None):
    """:func:`linear_proba` on separate numeric columns (a list of equally long 1-d arrays, e.g. a
    frame's own, or views of them) where they lie, without building a matrix. Columns of
    ``COLUMN_TYPES`` (and bool) are read in place, others through a float64 copy. Runs in the
    calling thread without the GIL; equal to :func:`linear_proba` on the same values as a float64
    matrix."""
    arrays, kinds = [], []
    for col in columns:
        col = np.asarray(col)
        if col.dtype == np.bool_:
            col = col.view(np.uint8)
        if col.dtype.type not in COLUMN_TYPES:
            col = col.astype(np.float64)
        arrays.append(np.ascontiguousarray(col))
        kinds.append(COLUMN_TYPES.index(col.dtype.type))
    n = len(arrays[0]) if arrays else (0 if codes is None else len(codes))
    if any(c.ndim != 1 or len(c) != n for c in arrays):
        raise ValueError(f"the columns must be 1-d and equally long ({[c.shape for c in arrays]})")
    _, codes = _matrices(np.empty((n, 0)), codes)
    w, fill, table = _linear_model(len(arrays), codes, w, fill, table)
    out = _output(n, out)
    addresses = np.array([c.ctypes.data for c in arrays], np.int64)
    _linear_columns(addresses, np.array(kinds, np.int64), fill, w, codes, table, float(bias), *_calibration(calib),
                    out)
    return out


def tree_proba(X, trees, codes=None, calib=None, method: str = "auto", out=None, parallel: bool = True):
    """Probabilities of a binary tree ensemble (sum of leaf values from ``trees['baseline']``, logistic link).

    ``method``: ``"quickscorer"`` (vectorised across rows; trees of at most 64 leaves), ``"walk"``
    (node by node, any tree) or ``"auto"`` (QuickScorer when every tree fits). Both give the same
    sums in the same order.

    ``trees`` holds flat node arrays: ``kind`` (0 numeric, 1 categorical, 2 leaf), ``feat`` (column of X,
    or of ``codes`` for categorical nodes), ``thr``, ``left``, ``right``, ``miss_left``, ``bitset``
    (row of ``cat_bitsets`` going left), ``known_row`` (row of ``known_bitsets`` per categorical column),
    ``value`` and ``roots`` (first node of each tree). ``X`` and ``codes`` as in :func:`linear_proba`
    (codes < 0: missing); ``out``: written in place when given; ``parallel`` as in :func:`linear_proba`.
    """
    X, codes = _matrices(X, codes)
    t = trees
    n_nodes = t["kind"].shape[0]
    for name in ("feat", "thr", "left", "right", "miss_left", "bitset", "value"):
        if t[name].shape[0] != n_nodes:
            raise ValueError(f"tree array '{name}' has {t[name].shape[0]} entries, expected {n_nodes}")
    inner = t["kind"] != LEAF
    num = t["kind"] == NUMERIC
    if (num & (t["feat"] >= X.shape[1])).any() or ((t["kind"] == CATEGORICAL) & (t["feat"] >= codes.shape[0])).any():
        raise ValueError(f"the trees use more columns than X ({X.shape[1]}) and codes ({codes.shape[0]}) have")
    if codes.size and codes.max() > 255:
        raise ValueError(f"category codes go up to {int(codes.max())}; tree ensembles take at most 256 categories")
    if inner.any() and (t["left"][inner].max() >= n_nodes or t["right"][inner].max() >= n_nodes):
        raise ValueError("a child index points outside the node arrays")
    if method not in ("auto", "quickscorer", "walk"):
        raise ValueError(f"method must be 'auto', 'quickscorer' or 'walk', got {method!r}")
    if method != "walk":
        qs = _cached_tables(t, X.shape[1], codes.shape[0], X.dtype)
        if qs is None and method == "quickscorer":
            raise ValueError("QuickScorer needs trees of at most 64 leaves")
        if qs is not None:
            # lanes: the leaf sets of all trees for a group of rows stay within ~256 KiB (L2)
            width = qs["q_mask"].dtype.itemsize
            cap = 256 if width == 4 else 64
            lanes = int(min(cap, max(8, 2 ** int(np.log2(max(8, 262144 // (width * max(1, len(t["roots"])))))))))
            out = _output(X.shape[0], out)
            kernel = _quickscorer if parallel else _quickscorer_serial
            kernel(X, codes, qs["q_thr"], qs["q_tree"], qs["q_mask"], qs["q_off"], qs["n_tree"], qs["n_mask"],
                   qs["n_off"], qs["c_tree"], qs["c_base"], qs["c_off"], qs["c_width"], qs["c_tab"], qs["leaf_val"],
                   qs["leaf_off"], lanes, float(t["baseline"]), *_calibration(calib), qs["full"],
                   X.dtype.type(-np.inf), out)
            return out
    child, depth = _layout(t["kind"], t["left"], t["right"], t["roots"])
    out = _output(X.shape[0], out)
    kernel = _trees if parallel else _trees_serial
    kernel(X, codes, t["kind"], t["feat"], t["thr"], child, t["miss_left"], t["bitset"],
           t["cat_bitsets"], t["known_bitsets"], t["known_row"], t["value"], t["roots"], depth,
           float(t["baseline"]), *_calibration(calib), out)
    return out
