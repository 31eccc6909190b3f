"""Every BTYD kernel against its plain reference in tests/naive.py."""
import numpy as np
import pytest

from crmlab.kernels import btyd, grouping, special

import naive


@pytest.fixture(scope="module")
def rfm():
    rng = np.random.default_rng(5)
    n = 400
    T = rng.uniform(0.5, 80, n)
    x = rng.poisson(rng.gamma(0.5, 4, n)).astype(float)
    x[:5] = [0, 0, 1, 40, 150]                                     # incl. heavy buyers
    tx = np.where(x > 0, T * rng.uniform(0, 1, n), 0.0)
    return x, tx, T


def test_special_functions_match_scipy():
    rng = np.random.default_rng(0)
    x = np.r_[rng.uniform(1e-3, 50, 500), [1e-6, 0.5, 1, 6, 1e4]]
    np.testing.assert_allclose(special.digamma_array(x), naive.digamma_ref(x), rtol=1e-12, atol=1e-12)
    a, b, c = rng.uniform(-2, 6, 300), rng.uniform(-2, 6, 300), rng.uniform(0.5, 20, 300)
    z = rng.uniform(-3, 0.9, 300)
    np.testing.assert_allclose(special.hyp2f1_array(a, b, c, z), naive.hyp2f1_ref(a, b, c, z), rtol=1e-12)
    with pytest.raises(ValueError):
        special.hyp2f1_array(1, 1, 2, 1.0)


@pytest.mark.parametrize("modified", [False, True])
def test_bgnbd_loglik_and_gradient(rfm, modified):
    x, tx, T = rfm
    par = (0.6, 5.0, 0.8, 2.5)
    ll, g = btyd.bgnbd_loglik(*par, x, tx, T, modified=modified)
    np.testing.assert_allclose(ll, naive.bgnbd_ll_ref(*par, x, tx, T, modified), rtol=1e-10)
    eps = 1e-6
    for k in range(4):
        up, dn = list(par), list(par)
        up[k] += eps
        dn[k] -= eps
        num = (naive.bgnbd_ll_ref(*up, x, tx, T, modified) - naive.bgnbd_ll_ref(*dn, x, tx, T, modified)) / (2 * eps)
        np.testing.assert_allclose(g[:, k], num, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("modified", [False, True])
def test_tabled_loglik_equals_per_row(rfm, modified):
    from crmlab.value import RFMIndex

    x, tx, T = rfm
    x, tx, T = np.r_[x, x], np.r_[tx, tx], np.r_[T, T]                # repeated patterns get weights
    idx = RFMIndex._build(x, tx, T)
    assert idx.w.sum() == len(x) and len(idx.w) == len(x) // 2
    f = btyd.bgnbd_tabled_objective(idx.xu, idx.txu, idx.Tu, idx.px, idx.pt, idx.pT, idx.w, modified)
    ll, g = f(0.6, 5.0, 0.8, 2.5)
    ll_row, g_row = btyd.bgnbd_loglik(0.6, 5.0, 0.8, 2.5, x, tx, T, modified=modified)
    assert ll == pytest.approx(ll_row.sum(), rel=1e-12)
    np.testing.assert_allclose(g, g_row.sum(0), rtol=1e-10)
    per_row = btyd.bgnbd_objective(x, tx, T, modified)(0.6, np.full(len(x), 5.0), np.full(len(x), 0.8), np.full(len(x), 2.5))
    np.testing.assert_array_equal(per_row[0], ll_row)
    np.testing.assert_allclose(ll_row, naive.bgnbd_ll_ref(0.6, 5.0, 0.8, 2.5, x, tx, T, modified), rtol=1e-9)


@pytest.mark.parametrize("modified", [False, True])
def test_bgnbd_predictions(rfm, modified):
    from crmlab.value import RFMIndex

    x, tx, T = rfm
    par = (0.6, 5.0, 0.8, 2.5)
    t = np.array([4.0, 26.0, 52.0])
    p, e, s = btyd.bgnbd_predict(*par, x, tx, T, t, modified=modified)
    for j, tj in enumerate(t):
        p_ref, e_ref = naive.bgnbd_predict_ref(*par, x, tx, T, tj, modified)
        np.testing.assert_allclose(p, p_ref, rtol=1e-10)
        np.testing.assert_allclose(e[:, j], e_ref, rtol=1e-8, atol=1e-12)
    if not modified:
        sel = slice(0, 40)
        np.testing.assert_allclose(s[sel, 2], naive.bgnbd_alive_at_ref(*par, x[sel], tx[sel], T[sel], 52.0),
                                   rtol=1e-6)
    idx = RFMIndex._build(x, tx, T)
    qx, qT, pq = idx.pairs()
    pt_, et_, st_ = btyd.bgnbd_tabled_predict(*par, idx.xu, idx.txu, idx.Tu, idx.px, idx.pt, idx.pT,
                                              qx, qT, pq, t, modified)
    np.testing.assert_allclose(pt_[idx.inverse], p, rtol=1e-12)
    np.testing.assert_allclose(et_[idx.inverse], e, rtol=1e-10)
    np.testing.assert_allclose(st_[idx.inverse], s, rtol=1e-10)


@pytest.mark.parametrize("par", [(0.55, 10.6, 0.61, 11.7), (0.55, 12.0, 0.8, 3.0), (1.2, 4.0, 2.0, 4.0)])
def test_pareto_loglik_and_predictions(rfm, par):
    x, tx, T = rfm
    sel = x < 60                                               # SciPy's raw-power reference overflows beyond
    x, tx, T = x[sel], tx[sel], T[sel]
    np.testing.assert_allclose(btyd.pareto_loglik(*par, x, tx, T), naive.pareto_ll_ref(*par, x, tx, T), rtol=1e-9)
    np.testing.assert_array_equal(btyd.pareto_objective(x, tx, T)(*par), btyd.pareto_loglik(*par, x, tx, T))
    p, e, _ = btyd.pareto_predict(*par, x, tx, T, [30.0])
    p_ref, e_ref = naive.pareto_predict_ref(*par, x, tx, T, 30.0)
    np.testing.assert_allclose(p, p_ref, rtol=1e-8)
    np.testing.assert_allclose(e[:, 0], e_ref, rtol=1e-8)


def test_pareto_no_overflow_for_heavy_buyers():
    ll = btyd.pareto_loglik(0.55, 10.6, 0.61, 11.7, np.array([2000.0]), np.array([70.0]), np.array([80.0]))
    assert np.isfinite(ll).all()
    ll, _ = btyd.bgnbd_loglik(0.24, 4.4, 0.79, 2.4, np.array([5000.0]), np.array([70.0]), np.array([80.0]))
    assert np.isfinite(ll).all()


def test_gamma_gamma(rfm):
    rng = np.random.default_rng(1)
    x = rng.integers(1, 30, 300).astype(float)
    m = rng.gamma(3, 10, 300)
    ll, g = btyd.gg_loglik(6.25, 3.74, 15.44, x, m)
    np.testing.assert_allclose(ll, naive.gg_ll_ref(6.25, 3.74, 15.44, x, m), rtol=1e-11)
    eps = 1e-6
    par = [6.25, 3.74, 15.44]
    for k in range(3):
        up, dn = list(par), list(par)
        up[k] += eps
        dn[k] -= eps
        num = (naive.gg_ll_ref(*up, x, m) - naive.gg_ll_ref(*dn, x, m)) / (2 * eps)
        np.testing.assert_allclose(g[:, k], num, rtol=1e-5, atol=1e-6)
    xu, xk = grouping.grid_codes(x)
    ll_sum, g_sum = btyd.gg_tabled_objective(xu, xk, m, np.ones(len(m)))(6.25, 3.74, 15.44)
    assert ll_sum == pytest.approx(ll.sum(), rel=1e-12)
    np.testing.assert_allclose(g_sum, g.sum(0), rtol=1e-10)
    x0 = np.r_[0.0, x]
    np.testing.assert_allclose(btyd.gg_expected_spend(6.25, 3.74, 15.44, x0, np.r_[0.0, m]),
                               naive.gg_spend_ref(6.25, 3.74, 15.44, x0, np.r_[0.0, m]), rtol=1e-12)
    with pytest.raises(ValueError, match="repeat customers"):
        btyd.gg_loglik(6.25, 3.74, 15.44, np.array([0.0]), np.array([3.0]))


def test_discounting():
    rng = np.random.default_rng(2)
    e = np.cumsum(rng.uniform(0, 1, (50, 12)), axis=1)
    spend = rng.uniform(1, 100, 50)
    np.testing.assert_allclose(btyd.discounted_value(e, spend, 0.01), naive.discounted_ref(e, spend, 0.01), rtol=1e-12)


@pytest.mark.parametrize("scale", [1.0, 7.0])
def test_grid_codes(scale):
    rng = np.random.default_rng(3)
    v = rng.integers(0, 500, 5000) / scale
    values, codes = grouping.grid_codes(v)
    ref_v, ref_c = naive.grid_codes_ref(v)
    np.testing.assert_allclose(values, ref_v, rtol=1e-15)
    np.testing.assert_array_equal(codes, ref_c)
    off = rng.uniform(0, 1, 100)                                     # not on a grid: falls back
    values, codes = grouping.grid_codes(off)
    np.testing.assert_array_equal(values[codes], off)


def test_objectives_check_their_data_once():
    """#16: value.py reaches the kernels through these; bad tables fail here, not inside an optimiser."""
    x, tx, T = np.array([1.0, 2.0]), np.array([1.0, 3.0]), np.array([4.0, 4.0])
    with pytest.raises(ValueError, match="cannot exceed T"):
        btyd.bgnbd_objective(x, np.array([1.0, 5.0]), T)
    with pytest.raises(ValueError, match="out of range"):
        btyd.bgnbd_tabled_objective(x, tx, T, np.array([0, 2]), np.array([0, 1]), np.array([0, 1]), np.ones(2))
    with pytest.raises(ValueError, match="one per pattern"):
        btyd.bgnbd_tabled_objective(x, tx, T, np.array([0, 1]), np.array([0, 1]), np.array([0, 1]), np.ones(3))
    with pytest.raises(ValueError, match="> 0"):
        btyd.gg_tabled_objective(np.array([1.0]), np.array([0]), np.array([-2.0]), np.ones(1))
    with pytest.raises(ValueError, match="same length"):
        btyd.pareto_objective(x, tx[:1], T)


def test_wrappers_validate():
    with pytest.raises(ValueError, match="cannot exceed T"):
        btyd.bgnbd_loglik(1, 1, 1, 1, np.array([1.0]), np.array([5.0]), np.array([4.0]))
    with pytest.raises(ValueError, match="same length"):
        btyd.bgnbd_loglik(1, 1, 1, 1, np.array([1.0, 2.0]), np.array([1.0]), np.array([4.0]))
    with pytest.raises(ValueError, match="> 0"):
        btyd.bgnbd_loglik(-1, 1, 1, 1, np.array([1.0]), np.array([1.0]), np.array([4.0]))
