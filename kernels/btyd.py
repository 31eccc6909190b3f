"""Buy-till-you-die likelihoods and predictions (BG/NBD, MBG/NBD, Pareto/NBD, Gamma-Gamma).

Private kernels (``_name``) loop over customers or (x, t_x, T) patterns in parallel and take
per-row parameter arrays, so static covariates (a different alpha, a, b per row) cost nothing
extra. Public wrappers validate and broadcast. Every expression is computed in logs where powers
like ``(alpha + T) ** (r + x)`` would overflow for heavy buyers.

References: Fader, Hardie & Lee (2005) "Counting your customers the easy way" (BG/NBD);
Batislam et al. (2007) (MBG/NBD); Fader & Hardie (2005) "A note on deriving the Pareto/NBD model";
Fader & Hardie (2013) "The Gamma-Gamma model of monetary value".
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .special import _series_scaled, digamma, scaled_hyp2f1


def _f64(*arrays):
    return tuple(np.ascontiguousarray(a, dtype=np.float64) for a in arrays)


def _check_rfm(x, tx, T):
    if x.ndim != 1 or not (x.shape == tx.shape == T.shape):
        raise ValueError("x, t_x and T must be 1-d arrays of the same length")
    if np.any(x < 0) or np.any(tx < 0) or np.any(T < 0) or not np.all(np.isfinite(x + tx + T)):
        raise ValueError("frequency, recency and T must be finite and >= 0")
    if np.any(tx > T * (1 + 1e-12)):
        raise ValueError("recency (t_x) cannot exceed T")


# ----------------------------------------------------------------------------- BG/NBD and MBG/NBD

@njit(cache=True, parallel=True)
def _bgnbd_ll(r, alpha, a, b, x, tx, T, modified):
    """Log-likelihood per row and its partial derivatives (columns: r, alpha, a, b)."""
    n = x.shape[0]
    ll = np.empty(n)
    g = np.empty((n, 4))
    shift = 1.0 if modified else 0.0
    lg_r = math.lgamma(r)
    psi_r = digamma(r)
    for i in prange(n):
        al, ai, bi, xi = alpha[i], a[i], b[i], x[i]
        a1 = math.lgamma(r + xi) - lg_r + r * math.log(al)
        a2 = (math.lgamma(ai + bi) + math.lgamma(bi + xi + shift) - math.lgamma(bi)
              - math.lgamma(ai + bi + xi + shift))
        la_T = math.log(al + T[i])
        a3 = -(r + xi) * la_T
        has4 = xi > 0 or modified
        s4 = 0.0
        lse = a3
        la_t = 0.0
        if has4:
            la_t = math.log(al + tx[i])
            a4 = math.log(ai) - math.log(bi + xi - 1.0 + shift) - (r + xi) * la_t
            m = max(a3, a4)
            lse = m + math.log(math.exp(a3 - m) + math.exp(a4 - m))
            s4 = math.exp(a4 - lse)
        s3 = 1.0 - s4
        ll[i] = a1 + a2 + lse
        g[i, 0] = digamma(r + xi) - psi_r + math.log(al) - s3 * la_T - s4 * la_t
        g[i, 1] = r / al - s3 * (r + xi) / (al + T[i]) - s4 * (r + xi) / (al + tx[i])
        d_ab = digamma(ai + bi) - digamma(ai + bi + xi + shift)
        g[i, 2] = d_ab + s4 / ai
        g[i, 3] = d_ab + digamma(bi + xi + shift) - digamma(bi)
        if has4:
            g[i, 3] -= s4 / (bi + xi - 1.0 + shift)
    return ll, g


@njit(cache=True, inline="always")
def _bg_horizon(r, al, a, b, x, T, t, shift):
    """Given alive at T: (expected purchases in (T, T+t], P(alive at T+t)).

    Closed forms with Euler/Pfaff-transformed 2F1 summed with rescaling, so large a and b (a
    dropout probability with little spread) stay finite. Where the series would need more than
    ``special.MAX_TERMS`` terms (a, b in the millions: a fit at its bounds), the limiting model
    with the dropout probability fixed at its posterior value: E[X] = (1 - E[e^-lambda p t]) / p.
    """
    if t <= 0:
        return 0.0, 1.0
    c = a + b + x - 1.0 + shift
    z = t / (al + T + t)
    lz = math.log1p(-z)
    # Euler transform: (1-z)^(r+x) 2F1(r+x, b+x+s; c; z) = (1-z)^(a-1) 2F1(c-r-x, a-1; c; z)
    f, sf = scaled_hyp2f1(a + b - 1.0 + shift - r, a - 1.0, c, z)
    # survival to T+t given alive: E[exp(-lambda p t)] under the posterior, Pfaff-transformed
    g, sg = scaled_hyp2f1(a, a + b + shift - r, a + b + x + shift, z)
    if math.isfinite(f) and math.isfinite(g):
        return c / (a - 1.0) * (1.0 - f * math.exp(sf + (a - 1.0) * lz)), g * math.exp(sg + a * lz)
    pe = (a - 1.0) / c                                  # 1 / E[1/p]
    ps = a / (a + b + x + shift)                        # E[p]
    e = -math.expm1((r + x) * math.log((al + T) / (al + T + pe * t))) / pe
    return e, math.exp((r + x) * math.log((al + T) / (al + T + ps * t)))


@njit(cache=True, parallel=True)
def _bgnbd_predict(r, alpha, a, b, x, tx, T, horizons, modified):
    """P(alive now), expected purchases over each horizon, P(alive at T + horizon)."""
    n, h = x.shape[0], horizons.shape[0]
    p_alive = np.empty(n)
    expected = np.empty((n, h))
    alive_at = np.empty((n, h))
    shift = 1.0 if modified else 0.0
    for i in prange(n):
        al, ai, bi, xi = alpha[i], a[i], b[i], x[i]
        if xi > 0 or modified:
            lodds = math.log(ai / (bi + xi - 1.0 + shift)) + (r + xi) * math.log((al + T[i]) / (al + tx[i]))
            p = 1.0 / (1.0 + math.exp(lodds)) if lodds < 700 else 0.0
        else:
            p = 1.0
        p_alive[i] = p
        for j in range(h):
            e, s = _bg_horizon(r, al, ai, bi, xi, T[i], horizons[j], shift)
            expected[i, j] = e * p
            alive_at[i, j] = s * p
    return p_alive, expected, alive_at


def bgnbd_loglik(r, alpha, a, b, x, tx, T, modified=False):
    """BG/NBD (MBG/NBD with ``modified``) log-likelihood per customer and its gradient.

    ``alpha``, ``a`` and ``b`` may be scalars or per-row arrays. Returns ``(ll, grad)`` with
    grad columns (r, alpha, a, b).
    """
    x, tx, T = _f64(x, tx, T)
    _check_rfm(x, tx, T)
    alpha, a, b = (np.ascontiguousarray(np.broadcast_to(np.asarray(v, np.float64), x.shape)) for v in (alpha, a, b))
    if r <= 0 or np.any(alpha <= 0) or np.any(a <= 0) or np.any(b <= 0):
        raise ValueError("BG/NBD parameters must be > 0")
    return _bgnbd_ll(float(r), alpha, a, b, x, tx, T, bool(modified))


def bgnbd_predict(r, alpha, a, b, x, tx, T, horizons, modified=False):
    """P(alive), expected purchases within each horizon and P(alive at T + horizon), per customer."""
    x, tx, T = _f64(x, tx, T)
    _check_rfm(x, tx, T)
    horizons = np.atleast_1d(np.asarray(horizons, dtype=np.float64))
    alpha, a, b = (np.ascontiguousarray(np.broadcast_to(np.asarray(v, np.float64), x.shape)) for v in (alpha, a, b))
    if np.any(np.abs(a - 1.0) < 1e-8):
        a = np.where(np.abs(a - 1.0) < 1e-8, 1.0 + 1e-8, a)           # removable singularity at a = 1
    return _bgnbd_predict(float(r), alpha, a, b, x, tx, T, horizons, bool(modified))


# ----------------------------------------------------------------------------- Pareto/NBD

@njit(cache=True)
def _gamma_sign(x):
    if x > 0.0:
        return 1.0
    return 1.0 if int(math.floor(x)) % 2 == 0 else -1.0


@njit(cache=True)
def _log_h_near1(a, b, z):
    """log 2F1(a, b; a+1; z) by the z -> 1 - z connection formula (b not an integer >= 1):

    2F1(a, b; a+1; z) = a/(b-1) (1-z)^(1-b) 2F1(1, a+1-b; 2-b; 1-z) + z^-a G(a+1) G(1-b) / G(a+1-b)

    The series in 1 - z converges in a few dozen terms where the one in z needs ~40/(1-z).
    NaN when the two terms cancel to below 1e-4 of their size (the caller then sums the series).
    """
    w = 1.0 - z
    f, sc = _series_scaled(1.0, a + 1.0 - b, 2.0 - b, w)
    t1 = a / (b - 1.0) * f * math.exp(sc + (1.0 - b) * math.log(w))
    t2 = _gamma_sign(1.0 - b) * _gamma_sign(a + 1.0 - b) * math.exp(-a * math.log(z) + math.lgamma(a + 1.0) + math.lgamma(1.0 - b)
                                         - math.lgamma(a + 1.0 - b))
    h = t1 + t2
    if not (h > 0.0) or abs(t1) + abs(t2) > 1e4 * h:
        return np.nan
    return math.log(h)


@njit(cache=True)
def _log_h(a, b, z):
    """log 2F1(a, b; a+1; z) for 0 <= z < 1.

    Near z = 1 (where the series would need up to hundreds of thousands of terms: Pareto/NBD with
    beta >> alpha) the connection formula; at integer b, where its two terms have poles that
    cancel, a cubic through n +- 0.0005, +- 0.001. Elsewhere Euler's transform
    (1-z)^(1-b) 2F1(1, a+1-b; a+1; z), summed with rescaling.
    """
    if z > 0.9 and a * (1.0 - z) < 0.5:
        n = math.floor(b + 0.5)
        if n < 1.0 or abs(b - n) > 5e-4:
            v = _log_h_near1(a, b, z)
        else:                                   # Lagrange cubic on nodes n + d * (-2, -1, 1, 2)
            d = 5e-4
            u = (b - n) / d
            f_2 = _log_h_near1(a, n - 2 * d, z)
            f_1 = _log_h_near1(a, n - d, z)
            f1 = _log_h_near1(a, n + d, z)
            f2 = _log_h_near1(a, n + 2 * d, z)
            v = (-f_2 * (u + 1) * (u - 1) * (u - 2) / 12.0 + f_1 * (u + 2) * (u - 1) * (u - 2) / 6.0
                 - f1 * (u + 2) * (u + 1) * (u - 2) / 6.0 + f2 * (u + 2) * (u + 1) * (u - 1) / 12.0)
        if math.isfinite(v):
            return v
    total, scale = _series_scaled(1.0, a + 1.0 - b, a + 1.0, z)
    return (1.0 - b) * math.log1p(-z) + math.log(total) + scale


@njit(cache=True, inline="always")
def _pareto_terms(r, alpha, s, beta, x, tx, T):
    """(log of the 'alive throughout' term, log of the 'died in (t_x, T]' term) of the Pareto/NBD likelihood."""
    rsx = r + s + x
    if alpha >= beta:
        lf1 = _log_h(rsx, s + 1.0, (alpha - beta) / (alpha + tx)) - rsx * math.log(alpha + tx)
        lf2 = _log_h(rsx, s + 1.0, (alpha - beta) / (alpha + T)) - rsx * math.log(alpha + T)
    else:
        lf1 = _log_h(rsx, r + x, (beta - alpha) / (beta + tx)) - rsx * math.log(beta + tx)
        lf2 = _log_h(rsx, r + x, (beta - alpha) / (beta + T)) - rsx * math.log(beta + T)
    d = lf2 - lf1
    if d < 0.0:
        la0 = lf1 + math.log(-math.expm1(d))
    else:
        la0 = -np.inf
    t1 = -(r + x) * math.log(alpha + T) - s * math.log(beta + T)
    t2 = math.log(s / rsx) + la0
    return t1, t2


@njit(cache=True, parallel=True)
def _pareto_ll(r, alpha, s, beta, x, tx, T):
    n = x.shape[0]
    ll = np.empty(n)
    base = -math.lgamma(r) + r * math.log(alpha) + s * math.log(beta)
    for i in prange(n):
        t1, t2 = _pareto_terms(r, alpha, s, beta, x[i], tx[i], T[i])
        m = max(t1, t2)
        ll[i] = math.lgamma(r + x[i]) + base + m + math.log(math.exp(t1 - m) + math.exp(t2 - m))
    return ll


@njit(cache=True, parallel=True)
def _pareto_predict(r, alpha, s, beta, x, tx, T, horizons):
    n, h = x.shape[0], horizons.shape[0]
    p_alive = np.empty(n)
    expected = np.empty((n, h))
    alive_at = np.empty((n, h))
    for i in prange(n):
        t1, t2 = _pareto_terms(r, alpha, s, beta, x[i], tx[i], T[i])
        lodds = t2 - t1
        p = 1.0 / (1.0 + math.exp(lodds)) if lodds < 700 else 0.0
        p_alive[i] = p
        for j in range(h):
            t = horizons[j]
            ratio = (beta + T[i]) / (beta + T[i] + t)
            expected[i, j] = ((r + x[i]) * (beta + T[i]) / ((alpha + T[i]) * (s - 1.0))
                              * (1.0 - ratio ** (s - 1.0)) * p)
            alive_at[i, j] = p * ratio ** s        # posterior mu ~ Gamma(s, beta + T) given alive
    return p_alive, expected, alive_at


def pareto_loglik(r, alpha, s, beta, x, tx, T):
    """Pareto/NBD log-likelihood per customer (r, alpha, s, beta > 0)."""
    x, tx, T = _f64(x, tx, T)
    _check_rfm(x, tx, T)
    if min(r, alpha, s, beta) <= 0:
        raise ValueError("Pareto/NBD parameters must be > 0")
    return _pareto_ll(float(r), float(alpha), float(s), float(beta), x, tx, T)


def pareto_predict(r, alpha, s, beta, x, tx, T, horizons):
    """P(alive), expected purchases within each horizon and P(alive at T + horizon) (needs s != 1)."""
    x, tx, T = _f64(x, tx, T)
    _check_rfm(x, tx, T)
    horizons = np.atleast_1d(np.asarray(horizons, dtype=np.float64))
    return _pareto_predict(float(r), float(alpha), float(s), float(beta), x, tx, T, horizons)


# ----------------------------------------------------------------------------- Gamma-Gamma

@njit(cache=True, parallel=True)
def _gg_ll(p, q, gamma, x, m):
    """Gamma-Gamma log-likelihood of mean spend m over x > 0 transactions, and gradient (p, q, gamma)."""
    n = x.shape[0]
    ll = np.empty(n)
    g = np.empty((n, 3))
    lg_q = math.lgamma(q)
    psi_q = digamma(q)
    lgam = math.log(gamma)
    for i in prange(n):
        xi, mi = x[i], m[i]
        px = p * xi
        lgm = math.log(gamma + mi * xi)
        lm, lx = math.log(mi), math.log(xi)
        ll[i] = (math.lgamma(px + q) - math.lgamma(px) - lg_q + q * lgam + (px - 1.0) * lm
                 + px * lx - (px + q) * lgm)
        d = digamma(px + q)
        g[i, 0] = xi * (d - digamma(px) + lm + lx - lgm)
        g[i, 1] = d - psi_q + lgam - lgm
        g[i, 2] = q / gamma - (px + q) / (gamma + mi * xi)
    return ll, g


def gg_loglik(p, q, gamma, x, m):
    """Gamma-Gamma log-likelihood per customer with x > 0 repeat transactions of mean value m > 0."""
    x, m = _f64(x, m)
    if x.shape != m.shape or x.ndim != 1:
        raise ValueError("frequency and monetary value must be 1-d arrays of the same length")
    if np.any(x <= 0) or np.any(m <= 0):
        raise ValueError("Gamma-Gamma needs frequency > 0 and monetary value > 0 (repeat customers only)")
    return _gg_ll(float(p), float(q), float(gamma), x, m)


@njit(cache=True, parallel=True)
def _gg_spend(p, q, gamma, x, m):
    n = x.shape[0]
    out = np.empty(n)
    for i in prange(n):
        if x[i] > 0:
            out[i] = p * (gamma + x[i] * m[i]) / (p * x[i] + q - 1.0)
        else:
            out[i] = p * gamma / (q - 1.0)
    return out


def gg_expected_spend(p, q, gamma, x, m):
    """E[mean transaction value | x, m]: the population mean p*gamma/(q-1) where x = 0 (needs q > 1)."""
    x, m = _f64(x, m)
    if q <= 1:
        raise ValueError("Gamma-Gamma expected spend needs q > 1")
    return _gg_spend(float(p), float(q), float(gamma), x, m)


# ----------------------------------------------------------------------------- CLV

@njit(cache=True, parallel=True)
def _discounted(expected, spend, rate):
    """sum_k (E[X(t_k)] - E[X(t_{k-1})]) * spend / (1 + rate)^k over the horizon columns."""
    n, h = expected.shape
    out = np.empty(n)
    for i in prange(n):
        prev, acc = 0.0, 0.0
        for k in range(h):
            acc += (expected[i, k] - prev) / (1.0 + rate) ** (k + 1)
            prev = expected[i, k]
        out[i] = acc * spend[i]
    return out


def discounted_value(expected, spend, rate):
    """Discounted value of cumulative expected purchases at period ends (columns) times spend per purchase."""
    expected = np.ascontiguousarray(expected, dtype=np.float64)
    spend = np.ascontiguousarray(spend, dtype=np.float64)
    if expected.ndim != 2 or expected.shape[0] != spend.shape[0]:
        raise ValueError("expected must be (customers, periods) and spend (customers,)")
    if rate <= -1:
        raise ValueError("discount rate must be > -1")
    return _discounted(expected, spend, float(rate))


# ----------------------------------------------------------------------------- tabled fast paths
# Customers reduced to distinct (x, t_x, T) patterns whose values index small tables: terms that
# depend on x alone (log-gammas, digammas) or on one time value alone (logs) are computed once per
# distinct value, leaving a few exp/log per pattern.

@njit(cache=True, parallel=True)
def _bgnbd_ll_sum(r, alpha, a, b, modified, xu, txu, Tu, px, pt, pT, w):
    """Weighted total BG/NBD log-likelihood over patterns and its gradient (r, alpha, a, b)."""
    shift = 1.0 if modified else 0.0
    nx = xu.shape[0]
    c12 = np.empty(nx)
    d_r = np.empty(nx)
    d_a = np.empty(nx)
    d_b = np.empty(nx)
    lb4 = np.empty(nx)
    lg_r, psi_r, la = math.lgamma(r), digamma(r), math.log(alpha)
    for k in range(nx):
        xi = xu[k]
        c12[k] = (math.lgamma(r + xi) - lg_r + r * la + math.lgamma(a + b) + math.lgamma(b + xi + shift)
                  - math.lgamma(b) - math.lgamma(a + b + xi + shift))
        d_r[k] = digamma(r + xi) - psi_r + la
        d_ab = digamma(a + b) - digamma(a + b + xi + shift)
        d_a[k] = d_ab
        d_b[k] = d_ab + digamma(b + xi + shift) - digamma(b)
        lb4[k] = math.log(a) - math.log(b + xi - 1.0 + shift) if (xi > 0 or modified) else -np.inf
    lt = np.log(alpha + txu)
    lT = np.log(alpha + Tu)
    it = 1.0 / (alpha + txu)
    iT = 1.0 / (alpha + Tu)
    ll = 0.0
    g0 = 0.0
    g1 = 0.0
    g2 = 0.0
    g3 = 0.0
    for i in prange(px.shape[0]):
        k, j, m = px[i], pt[i], pT[i]
        rx = r + xu[k]
        a3 = -rx * lT[m]
        s4 = 0.0
        lse = a3
        if lb4[k] > -np.inf:
            a4 = lb4[k] - rx * lt[j]
            mx = max(a3, a4)
            lse = mx + math.log(math.exp(a3 - mx) + math.exp(a4 - mx))
            s4 = math.exp(a4 - lse)
        s3 = 1.0 - s4
        wi = w[i]
        ll += wi * (c12[k] + lse)
        g0 += wi * (d_r[k] - s3 * lT[m] - s4 * lt[j])
        g1 += wi * (r / alpha - rx * (s3 * iT[m] + s4 * it[j]))
        if s4 > 0.0:
            g2 += wi * (d_a[k] + s4 / a)
            g3 += wi * (d_b[k] - s4 / (b + xu[k] - 1.0 + shift))
        else:
            g2 += wi * d_a[k]
            g3 += wi * d_b[k]
    return ll, np.array([g0, g1, g2, g3])


@njit(cache=True, parallel=True)
def _bgnbd_predict_tab(r, alpha, a, b, modified, xu, txu, Tu, px, pt, pT, qx, qT, pq, horizons):
    """Per pattern: P(alive), cumulative expected purchases per horizon, P(alive at T + horizon).

    The hypergeometric terms depend on (x, T) only: they are computed once per distinct pair
    (``qx``, ``qT`` index the pairs, ``pq`` maps pattern -> pair).
    """
    shift = 1.0 if modified else 0.0
    h = horizons.shape[0]
    nq = qx.shape[0]
    hyp_e = np.empty((nq, h))
    hyp_s = np.empty((nq, h))
    for q in prange(nq):
        xi, Ti = xu[qx[q]], Tu[qT[q]]
        for j in range(h):
            hyp_e[q, j], hyp_s[q, j] = _bg_horizon(r, alpha, a, b, xi, Ti, horizons[j], shift)
    n = px.shape[0]
    p_alive = np.empty(n)
    expected = np.empty((n, h))
    alive_at = np.empty((n, h))
    for i in prange(n):
        xi = xu[px[i]]
        if xi > 0 or modified:
            lodds = (math.log(a / (b + xi - 1.0 + shift))
                     + (r + xi) * math.log((alpha + Tu[pT[i]]) / (alpha + txu[pt[i]])))
            p = 1.0 / (1.0 + math.exp(lodds)) if lodds < 700 else 0.0
        else:
            p = 1.0
        p_alive[i] = p
        for j in range(h):
            expected[i, j] = hyp_e[pq[i], j] * p
            alive_at[i, j] = hyp_s[pq[i], j] * p
    return p_alive, expected, alive_at


@njit(cache=True, parallel=True)
def _gg_ll_sum(p, q, gamma, xu, xk, m, logm, w):
    """Weighted total Gamma-Gamma log-likelihood and gradient (p, q, gamma); x via the table xu."""
    nx = xu.shape[0]
    c = np.empty(nx)
    dp = np.empty(nx)
    dq = np.empty(nx)
    lg_q, psi_q, lgam = math.lgamma(q), digamma(q), math.log(gamma)
    for k in range(nx):
        xi = xu[k]
        px = p * xi
        c[k] = math.lgamma(px + q) - math.lgamma(px) - lg_q + q * lgam + px * math.log(xi)
        d = digamma(px + q)
        dp[k] = xi * (d - digamma(px) + math.log(xi))
        dq[k] = d - psi_q + lgam
    ll = 0.0
    g0 = 0.0
    g1 = 0.0
    g2 = 0.0
    for i in prange(xk.shape[0]):
        k = xk[i]
        xi = xu[k]
        px = p * xi
        lgm = math.log(gamma + m[i] * xi)
        wi = w[i]
        ll += wi * (c[k] + (px - 1.0) * logm[i] - (px + q) * lgm)
        g0 += wi * (dp[k] + xi * (logm[i] - lgm))
        g1 += wi * (dq[k] - lgm)
        g2 += wi * (q / gamma - (px + q) / (gamma + m[i] * xi))
    return ll, np.array([g0, g1, g2])


# ----------------------------------------------------------------------------- validated objectives
# An optimiser evaluates a likelihood hundreds of times on the same data: these wrappers check the
# data once and return the objective, which then calls the kernel without checking again.

def _check_patterns(xu, txu, Tu, px, pt, pT):
    xu, txu, Tu = _f64(xu, txu, Tu)
    px, pt, pT = (np.ascontiguousarray(v, dtype=np.int64) for v in (px, pt, pT))
    if px.ndim != 1 or not (px.shape == pt.shape == pT.shape):
        raise ValueError("pattern codes px, pt and pT must be 1-d arrays of the same length")
    for codes, table, name in ((px, xu, "px"), (pt, txu, "pt"), (pT, Tu, "pT")):
        if len(codes) and (codes.min() < 0 or codes.max() >= len(table)):
            raise ValueError(f"pattern codes {name} out of range of their value table")
    _check_rfm(xu[px], txu[pt], Tu[pT])
    return xu, txu, Tu, px, pt, pT


def _check_weights(w, n):
    w = np.ascontiguousarray(w, dtype=np.float64)
    if w.shape != (n,) or np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite, >= 0 and one per pattern")
    return w


def bgnbd_tabled_objective(xu, txu, Tu, px, pt, pT, w, modified=False):
    """Weighted total BG/NBD log-likelihood over distinct RFM patterns (value tables ``xu, txu, Tu``,
    each pattern's codes ``px, pt, pT``, ``w`` customers per pattern; see ``crmlab.value.RFMIndex``)
    as ``f(r, alpha, a, b) -> (ll, grad (r, alpha, a, b))``."""
    xu, txu, Tu, px, pt, pT = _check_patterns(xu, txu, Tu, px, pt, pT)
    w, modified = _check_weights(w, len(px)), bool(modified)

    def f(r, alpha, a, b):
        return _bgnbd_ll_sum(float(r), float(alpha), float(a), float(b), modified, xu, txu, Tu, px, pt, pT, w)
    return f


def bgnbd_tabled_predict(r, alpha, a, b, xu, txu, Tu, px, pt, pT, qx, qT, pq, horizons, modified=False):
    """Per pattern: P(alive), expected purchases per horizon, P(alive at T + horizon); the hypergeometric
    terms once per distinct (x, T) pair (``qx, qT`` its codes, ``pq`` pattern -> pair)."""
    xu, txu, Tu, px, pt, pT = _check_patterns(xu, txu, Tu, px, pt, pT)
    qx, qT, pq = (np.ascontiguousarray(v, dtype=np.int64) for v in (qx, qT, pq))
    if pq.shape != px.shape or qx.shape != qT.shape or (len(pq) and (pq.min() < 0 or pq.max() >= len(qx))):
        raise ValueError("pair codes qx, qT and pattern -> pair pq do not match the patterns")
    if min(r, alpha, a, b) <= 0:
        raise ValueError("BG/NBD parameters must be > 0")
    a = a if abs(a - 1.0) > 1e-8 else 1.0 + 1e-8                      # removable singularity at a = 1
    horizons = np.atleast_1d(np.asarray(horizons, dtype=np.float64))
    return _bgnbd_predict_tab(float(r), float(alpha), float(a), float(b), bool(modified), xu, txu, Tu, px, pt, pT,
                              qx, qT, pq, horizons)


def bgnbd_objective(x, tx, T, modified=False):
    """BG/NBD log-likelihood per row with per-row alpha, a, b (covariates) as
    ``f(r, alpha, a, b) -> (ll, grad)``; the rows are checked once, here."""
    x, tx, T = _f64(x, tx, T)
    _check_rfm(x, tx, T)
    modified = bool(modified)

    def f(r, alpha, a, b):
        alpha, a, b = _f64(alpha, a, b)
        return _bgnbd_ll(float(r), alpha, a, b, x, tx, T, modified)
    return f


def pareto_objective(x, tx, T):
    """Pareto/NBD log-likelihood per row as ``f(r, alpha, s, beta) -> ll``; the rows are checked once, here."""
    x, tx, T = _f64(x, tx, T)
    _check_rfm(x, tx, T)

    def f(r, alpha, s, beta):
        return _pareto_ll(float(r), float(alpha), float(s), float(beta), x, tx, T)
    return f


def gg_tabled_objective(xu, xk, m, w):
    """Weighted total Gamma-Gamma log-likelihood as ``f(p, q, gamma) -> (ll, grad)``: ``xu`` distinct
    purchase counts (> 0), ``xk`` each customer's code into them, ``m`` mean spends (> 0), ``w`` weights."""
    xu, m = _f64(xu, m)
    xk = np.ascontiguousarray(xk, dtype=np.int64)
    if xk.shape != m.shape or xk.ndim != 1 or (len(xk) and (xk.min() < 0 or xk.max() >= len(xu))):
        raise ValueError("xk must give each customer's code into xu, one per spend")
    if np.any(xu <= 0) or np.any(m <= 0) or not np.all(np.isfinite(m)):
        raise ValueError("Gamma-Gamma needs purchase counts and mean spends > 0")
    w, logm = _check_weights(w, len(m)), np.log(m)

    def f(p, q, gamma):
        return _gg_ll_sum(float(p), float(q), float(gamma), xu, xk, m, logm, w)
    return f
