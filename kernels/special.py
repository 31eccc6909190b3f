"""Special functions usable inside Numba kernels (SciPy's are not callable from nopython code).

Each is checked against SciPy in tests/test_kernels_special.py.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def digamma(x: float) -> float:
    """psi(x) for x > 0: recurrence up to x >= 10, then the asymptotic series (abs. error < 1e-14)."""
    res = 0.0
    while x < 10.0:
        res -= 1.0 / x
        x += 1.0
    f = 1.0 / (x * x)
    res += math.log(x) - 0.5 / x - f * (1.0 / 12 - f * (1.0 / 120 - f * (1.0 / 252 - f * (
        1.0 / 240 - f * (1.0 / 132)))))
    return res


MAX_TERMS = 200000.0
_LOG_1E250 = 575.6462732485115


@njit(cache=True)
def _series_scaled(a, b, c, z):
    """The 2F1 power series as ``(total, log_scale)`` with value ``total * exp(log_scale)``.

    Partial sums are rescaled by 1e-250 whenever they pass 1e250, so large parameters (terms that
    peak far above the float range before they decay) neither overflow nor turn into inf * 0 = NaN.
    ``total`` is NaN when the series has not converged within ``MAX_TERMS`` terms.
    """
    term = 1.0
    total = 1.0
    scale = 0.0
    k = 0.0
    while k < MAX_TERMS:
        term *= (a + k) * (b + k) / ((c + k) * (k + 1.0)) * z
        total += term
        if abs(term) <= 1e-16 * abs(total):
            return total, scale
        if abs(total) > 1e250:
            total *= 1e-250
            term *= 1e-250
            scale += _LOG_1E250
        k += 1.0
    return np.nan, scale


@njit(cache=True)
def _series(a, b, c, z):
    total, scale = _series_scaled(a, b, c, z)
    return total * math.exp(scale) if scale > 0.0 else total


@njit(cache=True)
def scaled_hyp2f1(a: float, b: float, c: float, z: float):
    """2F1(a, b; c; z) for 0 <= z < 1 as ``(total, log_scale)``: value = total * exp(log_scale).

    Finite for parameters whose series would overflow (terms far above 1e308); ``total`` is NaN
    when the series needs more than ``MAX_TERMS`` terms (callers then use a limiting form).
    """
    return _series_scaled(a, b, c, z)


@njit(cache=True)
def hyp2f1(a: float, b: float, c: float, z: float) -> float:
    """Gauss hypergeometric 2F1(a, b; c; z) for z < 1 (c not a non-positive integer).

    The power series for 0 <= z < 1; for z < 0 the Pfaff transform
    ``(1-z)^-a 2F1(a, c-b; c; z/(z-1))`` keeps the series positive-argument (no cancellation).
    Callers transform their arguments so z stays away from 1; up to 200,000 terms are summed
    (NaN if that is not enough; see :func:`scaled_hyp2f1` for parameters beyond the float range).
    """
    if z < 0.0:
        return (1.0 - z) ** (-a) * _series(a, c - b, c, z / (z - 1.0))
    return _series(a, b, c, z)


@njit(cache=True, parallel=True)
def _hyp2f1_vec(a, b, c, z):
    out = np.empty(z.shape[0])
    for i in prange(z.shape[0]):
        out[i] = hyp2f1(a[i], b[i], c[i], z[i])
    return out


@njit(cache=True, parallel=True)
def _digamma_vec(x):
    out = np.empty(x.shape[0])
    for i in prange(x.shape[0]):
        out[i] = digamma(x[i])
    return out


def hyp2f1_array(a, b, c, z) -> np.ndarray:
    """Vectorised :func:`hyp2f1` over float arrays (broadcast to a common shape); z < 1 required."""
    a, b, c, z = (np.ascontiguousarray(v, dtype=np.float64) for v in np.broadcast_arrays(a, b, c, z))
    if np.any(~(z < 1)):
        raise ValueError("hyp2f1_array: needs z < 1")
    return _hyp2f1_vec(a.ravel(), b.ravel(), c.ravel(), z.ravel()).reshape(z.shape)


def digamma_array(x) -> np.ndarray:
    """Vectorised :func:`digamma` for x > 0."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    if np.any(~(x > 0)):
        raise ValueError("digamma_array: x must be > 0")
    return _digamma_vec(x.ravel()).reshape(x.shape)
