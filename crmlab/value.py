"""Customer value: RFM summaries, BG/NBD / MBG/NBD / Pareto/NBD purchase models, Gamma-Gamma spend, CLV.

Estimators follow scikit-learn: hyper-parameters in ``__init__``, ``fit`` returns self, learned
state in attributes ending in ``_`` (``params_``, ``se_``, ``loglik_``, ...). Models are fitted by
maximum likelihood with exact gradients (BG/NBD, Gamma-Gamma; Pareto/NBD by finite differences) on
the distinct (x, t_x, T) patterns weighted by their counts, so fitting 10M customers costs what
their few hundred thousand distinct patterns cost. Likelihoods and predictions are Numba kernels
(:mod:`crmlab.kernels.btyd`).

Time is measured in ``time_unit`` days per unit (7 = weeks, the default).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from .encoding import member_of
from .errors import CrmlabError
from .estimator import Params, reset
from .events import customer_keys, order_values
from .kernels import btyd
from .kernels.grouping import grid_codes

DAYS_PER_MONTH = 365.25 / 12


class ConvergenceError(CrmlabError):
    """The likelihood maximisation did not converge from any starting point."""


# ----------------------------------------------------------------------------- RFM

def rfm_summary(transactions: pd.DataFrame, customer_col: str = "customer_key", date_col: str = "order_date",
                value_col: str | None = "value", calibration_end=None, observation_end=None,
                time_unit: float = 7.0) -> pd.DataFrame:
    """Per customer: ``frequency`` (repeat purchase days), ``recency`` (first to last purchase), ``T``
    (first purchase to calibration end), ``monetary_value`` (mean value of the repeat purchase days).

    Purchases on the same day are one transaction (as in Fader, Hardie & Lee 2005). With
    ``calibration_end`` before ``observation_end`` the holdout columns ``frequency_holdout``,
    ``monetary_holdout`` and ``duration_holdout`` are added. Customers first seen after
    ``calibration_end`` are left out.
    """
    for col in (customer_col, date_col) + ((value_col,) if value_col else ()):
        if col not in transactions:
            raise CrmlabError(f"rfm_summary: column '{col}' not found in transactions "
                              f"(columns: {', '.join(map(str, transactions.columns))})")
    if time_unit <= 0:
        raise ValueError("time_unit must be > 0 days")
    d = transactions[[customer_col, date_col] + ([value_col] if value_col else [])].copy()
    d[date_col] = pd.to_datetime(d[date_col]).dt.normalize()
    for col in d.columns:                                  # never drop rows silently
        bad = d[col].isna()
        if col == value_col:
            bad |= ~np.isfinite(pd.to_numeric(d[col], errors="coerce").astype("float64"))
        if bad.any():
            lost = d.loc[bad, customer_col].nunique() if col != customer_col else "?"
            raise CrmlabError(f"rfm_summary: {int(bad.sum()):,} transactions have a missing or non-finite "
                              f"'{col}' (customers affected: {lost}); fix or drop them explicitly first, e.g. "
                              f"rows {list(d.index[bad][:5])}")
    if value_col is None:
        d["_v"] = 0.0
        value_col = "_v"
    elif (d[value_col] < 0).any():
        raise CrmlabError(f"rfm_summary: negative values in '{value_col}'")
    observation_end = pd.Timestamp(observation_end) if observation_end is not None else d[date_col].max()
    calibration_end = pd.Timestamp(calibration_end) if calibration_end is not None else observation_end
    if calibration_end > observation_end:
        raise ValueError("calibration_end must not be after observation_end")
    d = d[d[date_col] <= observation_end]
    day = d.groupby([customer_col, date_col], sort=True, observed=True)[value_col].sum().reset_index()
    cal = day[day[date_col] <= calibration_end]
    if cal.empty:
        raise CrmlabError("rfm_summary: no transactions on or before the calibration end")
    g = cal.groupby(customer_col, sort=True, observed=True)
    first, last, n = g[date_col].min(), g[date_col].max(), g.size()
    repeat = cal[cal.groupby(customer_col, observed=True).cumcount() > 0]
    money = repeat.groupby(customer_col, observed=True)[value_col].mean()
    out = pd.DataFrame({
        "frequency": (n - 1).astype("int64"),
        "recency": (last - first).dt.days / time_unit,
        "T": (calibration_end - first).dt.days / time_unit,
        "monetary_value": money.reindex(n.index).fillna(0.0),
        "first_purchase": first,
    })
    if calibration_end < observation_end:
        hold = day[(day[date_col] > calibration_end) & member_of(day[customer_col], out.index)]
        hg = hold.groupby(customer_col, observed=True)
        out["frequency_holdout"] = hg.size().reindex(out.index).fillna(0).astype("int64")
        out["monetary_holdout"] = hg[value_col].mean().reindex(out.index).fillna(0.0)
        out["duration_holdout"] = (observation_end - calibration_end).days / time_unit
    out.index.name = customer_col
    out.attrs["time_unit_days"] = float(time_unit)       # travels with the table (clv reads it)
    return out


def _time_unit(X, time_unit) -> float:
    """The RFM table's own time unit (days), checked against an explicit ``time_unit``."""
    own = getattr(X, "attrs", {}).get("time_unit_days") if isinstance(X, pd.DataFrame) else None
    if time_unit is None:
        return float(own) if own is not None else 7.0
    if own is not None and not np.isclose(float(own), float(time_unit)):
        raise CrmlabError(f"the RFM table is in units of {own:g} days but time_unit={time_unit:g} was passed: "
                          "leave time_unit out (it travels with rfm_summary's table) or rebuild the table")
    return float(time_unit)


def transactions(src, key_map: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per order keyed by customer: ``customer_key``, ``order_date``, ``value``, ``channel``.

    ``key_map`` (source_system, source_id -> customer_key) comes from record matching; without it
    every source record counts as its own customer (key ``<system>:<source id>``). A run reads the
    same table from its events (:meth:`crmlab.events.CustomerEvents.transactions`).
    """
    o = order_values(src["orders"], src["order_lines"])
    o = o.assign(customer_key=customer_keys(o, key_map, "orders"))
    cols = ["customer_key", "order_date", "value"] + (["channel"] if "channel" in o else [])
    return o[cols]


def _rfm_arrays(X) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(X, pd.DataFrame):
        missing = [c for c in ("frequency", "recency", "T") if c not in X]
        if missing:
            raise CrmlabError(f"RFM table lacks column(s) {missing}: make it with crmlab.value.rfm_summary")
        x, tx, T = (X[c].to_numpy(dtype=np.float64) for c in ("frequency", "recency", "T"))
    else:
        x, tx, T = (np.asarray(v, dtype=np.float64) for v in X)
    bad = ~np.isfinite(x + tx + T) | (x < 0) | (tx < 0) | (T < 0) | (tx > T + 1e-9)
    if bad.any():
        i = np.flatnonzero(bad)[:5]
        raise CrmlabError(f"invalid RFM rows {i.tolist()}: need finite frequency >= 0 and 0 <= recency <= T "
                          f"(got frequency {x[i].tolist()}, recency {tx[i].tolist()}, T {T[i].tolist()})")
    if np.any(x % 1 != 0):
        raise CrmlabError("frequency must be a whole number of repeat purchases")
    return x, tx, T


def _codes(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of ``v`` (sorted) and each element's code; O(n) when values lie on a day grid."""
    return grid_codes(v)


_INDEX_CACHE: dict = {}


@dataclass
class RFMIndex:
    """Customers reduced to distinct (x, t_x, T) patterns over small value tables.

    ``xu, txu, Tu``: distinct values; ``px, pt, pT``: each pattern's codes into them, patterns in
    value order (whatever the customers' order, so that a fit on patterns reduced elsewhere, e.g.
    across Dask partitions, sums the same terms in the same order); ``w``: customers per pattern;
    ``inverse``: customer -> pattern.
    """

    xu: np.ndarray
    txu: np.ndarray
    Tu: np.ndarray
    px: np.ndarray
    pt: np.ndarray
    pT: np.ndarray
    w: np.ndarray
    inverse: np.ndarray

    @classmethod
    def build(cls, x, tx, T) -> "RFMIndex":
        """Index of the patterns (memoised on the arrays' content: fit, then score, builds it once)."""
        key = tuple(hash(np.ascontiguousarray(v).data.tobytes()) for v in (x, tx, T))
        hit = _INDEX_CACHE.get(key)
        if hit is None:
            hit = cls._build(x, tx, T)
            _INDEX_CACHE.clear()
            _INDEX_CACHE[key] = hit
        return hit

    @classmethod
    def _build(cls, x, tx, T) -> "RFMIndex":
        xu, cx = _codes(x)
        txu, ct = _codes(tx)
        Tu, cT = _codes(T)
        key = (cx * len(txu) + ct) * len(Tu) + cT
        inverse, uniq = pd.factorize(key, sort=True)
        w = np.bincount(inverse, minlength=len(uniq)).astype(np.float64)
        uniq = np.asarray(uniq, dtype=np.int64)
        pT = uniq % len(Tu)
        rest = uniq // len(Tu)
        return cls(xu, txu, Tu, rest // len(txu), rest % len(txu), pT, w, inverse.astype(np.int64))

    def pairs(self):
        """Distinct (x, T) pairs: (pair x codes, pair T codes, pattern -> pair)."""
        key = self.px * len(self.Tu) + self.pT
        pq, uniq = pd.factorize(key, sort=False)
        uniq = np.asarray(uniq, dtype=np.int64)
        return uniq // len(self.Tu), uniq % len(self.Tu), pq.astype(np.int64)


def _patterns(*cols: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Distinct rows of the given columns in value order: (unique columns, counts, inverse index)."""
    codes = [_codes(c) for c in cols]
    if np.prod([float(len(u)) for u, _ in codes]) > 2.0 ** 62:
        uniq, inverse, counts = np.unique(np.column_stack(cols), axis=0, return_inverse=True, return_counts=True)
        return list(uniq.T), counts.astype(np.float64), inverse.ravel().astype(np.int64)
    key = np.zeros(len(cols[0]), np.int64)
    for uniq, code in codes:
        key = key * len(uniq) + code
    inverse, first = pd.factorize(key, sort=True)
    rows = np.zeros(len(first), np.int64)
    rows[inverse] = np.arange(len(inverse))
    counts = np.bincount(inverse, minlength=len(first)).astype(np.float64)
    return [c[rows] for c in cols], counts, inverse.astype(np.int64)


def _weights(sample_weight, x: np.ndarray, model: str) -> np.ndarray | None:
    """``sample_weight`` checked (None, or one finite weight >= 0 per row: customers per pattern), and
    at least one (weighted) customer with a repeat purchase, without which ``model`` has no dropout."""
    w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).ravel()
    if w is not None and (len(w) != len(x) or not np.all(np.isfinite(w)) or np.any(w < 0)):
        raise CrmlabError(f"sample_weight must hold one finite weight >= 0 per row ({len(x)}), got {len(w)} "
                          "values" + ("" if len(w) != len(x) else " with negative or non-finite ones"))
    if not np.any((x > 0) if w is None else (x > 0) & (w > 0)):
        raise CrmlabError(f"no customer made a repeat purchase: {model} cannot estimate dropout")
    return w


def _pattern_weights(counts: np.ndarray, inverse: np.ndarray, sample_weight: np.ndarray | None) -> np.ndarray:
    """Customers per pattern: the rows' counts, or the sum of their ``sample_weight``."""
    return counts if sample_weight is None else np.bincount(inverse, weights=sample_weight, minlength=len(counts))


# ----------------------------------------------------------------------------- fitting helpers

def _maximise(negll, theta0s, bounds, jac=True, tol=1e-10, max_iter=1000):
    """Minimise from several starting points; the best converged result, else ConvergenceError."""
    best, tried = None, []
    for th0 in theta0s:                                  # further starts only if the first fails
        with np.errstate(all="ignore"):
            res = minimize(negll, th0, jac=jac, method="L-BFGS-B", bounds=bounds,
                           options=dict(maxiter=max_iter, ftol=tol, gtol=1e-9, maxcor=20))
        tried.append(res)
        ok = np.isfinite(res.fun) and res.fun < 1e299 and (
            res.success or np.max(np.abs(res.jac if jac else 0)) < 1e-5)
        if ok:
            best = res
            break
    if best is None:
        msgs = "; ".join(f"start {i + 1}: {r.message}" for i, r in enumerate(tried))
        raise ConvergenceError(f"maximum likelihood did not converge ({msgs}). Check the data (enough repeat "
                               "customers? consistent time unit?) or pass other start values.")
    return best


class ModelDiagnosticWarning(UserWarning):
    """A fitted value model whose data do not identify every parameter (e.g. no dropout)."""


def _bound_diagnostics(names, theta, bounds, no_dropout: bool, flat_dropout: bool = False) -> list[str]:
    """Plain-language diagnostics for parameters that ended at their (log-scale) bounds; warned once."""
    at = [n for n, v, (lo, hi) in zip(names, theta, bounds) if v <= lo + 1e-3 or v >= hi - 1e-3]
    out = []
    if no_dropout:
        out.append("the data show no dropout (the fitted dropout is below 1 in 10,000 customers over the "
                   "observed period): predictions are those of the limiting no-dropout (NBD) model and "
                   "P(alive) is ~1 for everyone")
    elif flat_dropout:
        out.append("the dropout probability shows no spread across customers (a and b ran to their bounds): "
                   "predictions use the limiting model with a fixed dropout probability a/(a+b)")
    if at and not out:
        out.append(f"parameters {', '.join(at)} ended at their bounds: the data do not identify them")
    for msg in out:
        warnings.warn(msg, ModelDiagnosticWarning, stacklevel=3)
    return out


def _hessian(grad_fn, phi, rel=1e-5):
    """Numerical Hessian of a log-likelihood from its gradient (central differences)."""
    k = len(phi)
    H = np.empty((k, k))
    for j in range(k):
        h = rel * max(abs(phi[j]), 1e-3)
        up, dn = phi.copy(), phi.copy()
        up[j] += h
        dn[j] -= h
        H[:, j] = (grad_fn(up) - grad_fn(dn)) / (2 * h)
    return (H + H.T) / 2


def _std_errors(H) -> np.ndarray:
    try:
        cov = np.linalg.inv(-H)
        se = np.sqrt(np.diag(cov))
    except np.linalg.LinAlgError:
        se = np.full(H.shape[0], np.nan)
    return np.where(np.isfinite(se), se, np.nan)


def _param_table(names, values, se) -> pd.DataFrame:
    t = pd.DataFrame({"estimate": values, "se": se}, index=pd.Index(names, name="parameter"))
    t["ci_low"], t["ci_high"] = t["estimate"] - 1.96 * t["se"], t["estimate"] + 1.96 * t["se"]
    return t


# ----------------------------------------------------------------------------- BG/NBD

class _PurchaseModel(Params):
    """What BG/NBD-family and Pareto/NBD models share: predictions from per-pattern results
    (``_predict_patterns``), so that customers with the same history are computed once."""

    def _check_fitted(self):
        if not hasattr(self, "params_"):
            raise CrmlabError(f"{type(self).__name__} is not fitted yet: call fit() first")

    def _predict_all(self, X, horizons):
        inv, p, e, s = self._predict_patterns(X, horizons)
        return p[inv], e[inv], s[inv]

    def discounted_purchases(self, X, horizons, rate: float) -> np.ndarray:
        """Sum over periods of the expected purchases in each period discounted by ``(1 + rate)^k``."""
        inv, _, e, _ = self._predict_patterns(X, horizons)
        return btyd.discounted_value(e, np.ones(len(e)), rate)[inv]

    def p_alive(self, X) -> np.ndarray:
        """Probability that each customer is still active at the end of calibration (T)."""
        return self._predict_all(X, [0.0])[0]

    def p_alive_at(self, X, t: float) -> np.ndarray:
        """Probability that each customer is still active ``t`` time units after T."""
        return self._predict_all(X, [t])[2][:, 0]

    def expected_purchases(self, X, t) -> np.ndarray:
        """Expected purchases in (T, T + t]; ``t`` scalar -> (n,), sequence -> (n, len(t))."""
        e = self._predict_all(X, np.atleast_1d(t))[1]
        return e[:, 0] if np.ndim(t) == 0 else e

    predict = expected_purchases


class BetaGeo(_PurchaseModel):
    """BG/NBD purchase and dropout model (``modified=True``: MBG/NBD, dropout also possible at once).

    Parameters
    ----------
    modified : bool
        MBG/NBD (Batislam et al. 2007) instead of BG/NBD (Fader, Hardie & Lee 2005).
    covariates : list of str, optional
        Static customer columns of the RFM table (numeric, or categorical: one-hot with the first
        level as reference). They scale alpha, a and b: ``alpha_i = alpha * exp(z_i . g_alpha)``, likewise a, b.
    tol, max_iter : optimiser settings.

    Attributes
    ----------
    params_ : dict of r, alpha, a, b (reference customer when covariates are used)
    coef_ : DataFrame of covariate coefficients (alpha, a, b columns), when covariates are used
    se_ : dict of standard errors; ``summary_`` : table with estimates, SEs and 95% intervals
    loglik_ : total log-likelihood; n_customers_, n_patterns_
    """

    def __init__(self, modified: bool = False, covariates: list[str] | None = None, tol: float = 1e-10,
                 max_iter: int = 1000):
        self.modified = modified
        self.covariates = covariates
        self.tol = tol
        self.max_iter = max_iter

    # -- design
    def _design(self, X, fitting: bool = False) -> np.ndarray:
        if not self.covariates:
            return np.zeros((len(X), 0))
        if not isinstance(X, pd.DataFrame):
            raise CrmlabError("covariates need the RFM table as a DataFrame")
        missing = [c for c in self.covariates if c not in X]
        if missing:
            raise CrmlabError(f"covariate column(s) {missing} not in the RFM table")
        Z = pd.get_dummies(X[self.covariates], drop_first=False, dtype=float)
        if not fitting:
            Z = Z.reindex(columns=self.design_columns_, fill_value=0.0)
        else:
            drop = []
            for c in self.covariates:
                if not pd.api.types.is_numeric_dtype(X[c]):
                    levels = [k for k in Z.columns if k.startswith(f"{c}_")]
                    drop.append(sorted(levels)[0])
            Z = Z.drop(columns=drop)
            self.design_columns_ = list(Z.columns)
        if Z.isna().any().any():
            raise CrmlabError("covariates contain missing values")
        return Z.to_numpy(dtype=np.float64)

    def _unpack(self, theta, Z):
        k = Z.shape[1]
        r, alpha, a, b = np.exp(theta[:4])
        ga, gA, gB = theta[4:4 + k], theta[4 + k:4 + 2 * k], theta[4 + 2 * k:4 + 3 * k]
        return r, alpha * np.exp(Z @ ga), a * np.exp(Z @ gA), b * np.exp(Z @ gB)

    def fit(self, X, y=None, sample_weight=None):
        """Fit to an RFM table (columns frequency, recency, T [+ covariates]) or a tuple (x, t_x, T).

        ``sample_weight``: customers per row, when the rows are distinct patterns reduced elsewhere
        (:func:`crmlab.value_dask.fit_value`): the likelihood, parameters and standard errors are
        those of the customers' table, bit for bit."""
        x, tx, T = _rfm_arrays(X)
        sw = _weights(sample_weight, x, "BG/NBD")
        reset(self)                                         # a refit learns everything anew
        Z = self._design(X, fitting=True)
        k = Z.shape[1]
        if k == 0:                                           # tabled fast path
            idx = RFMIndex.build(x, tx, T)
            w, n_pat = _pattern_weights(idx.w, idx.inverse, sw), len(idx.w)
            sum_x, sum_T = np.dot(w, idx.xu[idx.px]), np.dot(w, idx.Tu[idx.pT])
            objective = btyd.bgnbd_tabled_objective(idx.xu, idx.txu, idx.Tu, idx.px, idx.pt, idx.pT, w, self.modified)

            def negll(theta):
                ll, g = objective(*np.exp(theta))
                return (-ll / N if np.isfinite(ll) else 1e300), -g * np.exp(theta) / N
        else:
            cols, counts, inv = _patterns(x, tx, T, *Z.T)
            w = _pattern_weights(counts, inv, sw)
            ux, utx, uT = cols[:3]
            sum_x, sum_T = np.dot(w, ux), np.dot(w, uT)
            uZ = np.column_stack(cols[3:])
            n_pat = len(ux)
            objective = btyd.bgnbd_objective(ux, utx, uT, self.modified)

            def negll(theta):
                r, al, a, b = self._unpack(theta, uZ)
                ll, g = objective(r, al, a, b)
                f = -np.dot(w, ll) / N
                wg = w[:, None] * g
                grad = np.empty_like(theta)
                grad[0] = wg[:, 0].sum() * r
                grad[1] = np.dot(wg[:, 1], al)
                grad[2] = np.dot(wg[:, 2], a)
                grad[3] = np.dot(wg[:, 3], b)
                grad[4:4 + k] = uZ.T @ (wg[:, 1] * al)
                grad[4 + k:4 + 2 * k] = uZ.T @ (wg[:, 2] * a)
                grad[4 + 2 * k:] = uZ.T @ (wg[:, 3] * b)
                return (f if np.isfinite(f) else 1e300), -grad / N
        N = w.sum()

        scale = max(float(sum_T / N) / (float(sum_x / N) + 1.0), 1e-6)   # from the patterns: any order, same start
        starts = [np.r_[np.log([1.0, scale, 1.0, 1.0]), np.zeros(3 * k)],
                  np.r_[np.log([0.3, scale / 3, 0.5, 2.0]), np.zeros(3 * k)],
                  np.r_[np.log([3.0, scale * 3, 2.0, 5.0]), np.zeros(3 * k)]]
        bounds = [(-15.0, 15.0)] * 4 + [(-20.0, 20.0)] * (3 * k)
        res = _maximise(negll, starts, bounds, tol=self.tol, max_iter=self.max_iter)
        theta = res.x
        r, alpha, a, b = np.exp(theta[:4])
        hi = bounds[2][1] - 1e-3
        self.diagnostics_ = _bound_diagnostics(["r", "alpha", "a", "b"], theta[:4], bounds[:4],
                                               no_dropout=a / (a + b) < 1e-4 or (theta[3] >= hi and theta[2] < hi),
                                               flat_dropout=theta[2] >= hi and theta[3] >= hi)
        self.params_ = {"r": r, "alpha": alpha, "a": a, "b": b}
        self.theta_ = theta
        self.loglik_ = float(-res.fun * N)
        self.n_customers_, self.n_patterns_, self.n_iter_ = int(N), n_pat, int(res.nit)

        def grad_nat(phi):                                   # gradient of total LL in natural parameters
            th = np.r_[np.log(phi[:4]), phi[4:]]
            _, gl = negll(th)
            gl = -gl * N
            return np.r_[gl[:4] / phi[:4], gl[4:]]

        phi = np.r_[r, alpha, a, b, theta[4:]]
        se = _std_errors(_hessian(grad_nat, phi))
        names = ["r", "alpha", "a", "b"] + [f"{p}:{c}" for p in ("alpha", "a", "b") for c in getattr(
            self, "design_columns_", [])]
        self.summary_ = _param_table(names, phi, se)
        self.se_ = dict(zip(names, se))
        if k:
            self.coef_ = pd.DataFrame(theta[4:].reshape(3, k).T, index=self.design_columns_,
                                      columns=["alpha", "a", "b"])
        return self

    def _predict_patterns(self, X, horizons):
        """(customer -> pattern index, P(alive), expected purchases, P(alive at T+h)) per pattern."""
        self._check_fitted()
        x, tx, T = _rfm_arrays(X)
        horizons = np.atleast_1d(np.asarray(horizons, dtype=np.float64))
        if not self.covariates:
            idx = RFMIndex.build(x, tx, T)
            qx, qT, pq = idx.pairs()
            p = self.params_
            out = btyd.bgnbd_tabled_predict(p["r"], p["alpha"], p["a"], p["b"], idx.xu, idx.txu, idx.Tu,
                                            idx.px, idx.pt, idx.pT, qx, qT, pq, horizons, self.modified)
            return (idx.inverse, *out)
        Z = self._design(X)
        cols, _, inv = _patterns(x, tx, T, *Z.T)
        r, al, a, b = self._unpack(self.theta_, np.column_stack(cols[3:]))
        return (inv, *btyd.bgnbd_predict(r, al, a, b, cols[0], cols[1], cols[2], horizons, self.modified))

    def expected_purchases_new(self, t) -> np.ndarray:
        """Unconditional expected repeat purchases of a just-acquired customer within t (array)."""
        self._check_fitted()
        t = np.atleast_1d(np.asarray(t, dtype=np.float64))
        zeros = np.zeros(1)
        _, e, _ = btyd.bgnbd_predict(self.params_["r"], self.params_["alpha"], self.params_["a"],
                                     self.params_["b"], zeros, zeros, zeros, t, self.modified)
        return e[0]


# ----------------------------------------------------------------------------- Pareto/NBD

class ParetoNBD(_PurchaseModel):
    """Pareto/NBD (Schmittlein, Morrison & Colombo 1987): exponential lifetimes, Gamma(s, beta) dropout rates.

    Attributes: ``params_`` (r, alpha, s, beta), ``se_``, ``summary_``, ``loglik_``.
    """

    def __init__(self, tol: float = 1e-12, max_iter: int = 2000):
        self.tol = tol
        self.max_iter = max_iter

    def fit(self, X, y=None, sample_weight=None):
        """Fit to an RFM table or a tuple (x, t_x, T); ``sample_weight`` as in :meth:`BetaGeo.fit`."""
        x, tx, T = _rfm_arrays(X)
        sw = _weights(sample_weight, x, "Pareto/NBD")
        reset(self)
        (ux, utx, uT), counts, inv = _patterns(x, tx, T)
        w = _pattern_weights(counts, inv, sw)
        N = w.sum()
        mean_T = float(np.dot(w, uT) / N)

        objective = btyd.pareto_objective(ux, utx, uT)

        def ll_total(phi):
            return float(np.dot(w, objective(*phi)))

        def negll(theta):
            v = -ll_total(np.exp(theta)) / N
            return v if np.isfinite(v) else 1e300

        scale = max(mean_T / (float(np.dot(w, ux) / N) + 1.0), 1e-6)
        starts = [np.log([1.0, scale, 1.0, scale]), np.log([0.5, scale / 2, 0.5, 2 * scale]),
                  np.log([2.0, 2 * scale, 2.0, scale / 2])]
        bounds = [(-15.0, 15.0)] * 4
        res = _maximise(negll, starts, bounds, jac=False, tol=self.tol, max_iter=self.max_iter)
        # polish: a few Newton-free Nelder-Mead steps tighten the finite-difference optimum (inside
        # the same bounds: unbounded, it once walked s to 5e-261)
        with np.errstate(all="ignore"):
            nm = minimize(negll, res.x, method="Nelder-Mead", bounds=bounds,
                          options=dict(xatol=1e-9, fatol=1e-13, maxiter=4000))
        theta = nm.x if nm.fun <= res.fun else res.x
        self.diagnostics_ = _bound_diagnostics(["r", "alpha", "s", "beta"], theta, bounds,
                                               no_dropout=(np.exp(theta[2] - theta[3]) * mean_T < 1e-4
                                                           or theta[2] <= -15 + 1e-3 or theta[3] >= 15 - 1e-3))
        phi = np.exp(theta)
        self.params_ = dict(zip(("r", "alpha", "s", "beta"), phi))
        self.theta_ = theta
        self.loglik_ = ll_total(phi)
        self.n_customers_, self.n_patterns_ = int(N), len(ux)

        def grad_nat(p):
            g = np.empty(4)
            for j in range(4):
                h = 1e-6 * max(abs(p[j]), 1e-3)
                up, dn = p.copy(), p.copy()
                up[j] += h
                dn[j] -= h
                g[j] = (ll_total(up) - ll_total(dn)) / (2 * h)
            return g

        se = _std_errors(_hessian(grad_nat, phi, rel=1e-4))
        self.summary_ = _param_table(["r", "alpha", "s", "beta"], phi, se)
        self.se_ = dict(zip(["r", "alpha", "s", "beta"], se))
        return self

    def _predict_patterns(self, X, horizons):
        self._check_fitted()
        x, tx, T = _rfm_arrays(X)
        (ux, utx, uT), _, inv = _patterns(x, tx, T)
        return (inv, *btyd.pareto_predict(*self.params_.values(), ux, utx, uT, horizons))

    def expected_purchases_new(self, t) -> np.ndarray:
        self._check_fitted()
        t = np.atleast_1d(np.asarray(t, dtype=np.float64))
        zeros = np.zeros(1)
        return btyd.pareto_predict(*self.params_.values(), zeros, zeros, zeros, t)[1][0]


# ----------------------------------------------------------------------------- Gamma-Gamma

class GammaGamma(Params):
    """Gamma-Gamma model of mean transaction value (Fader & Hardie 2013), fitted on repeat customers.

    Attributes: ``params_`` (p, q, gamma), ``se_``, ``summary_``, ``loglik_``, ``n_customers_``,
    ``freq_monetary_corr_`` (the model assumes spend independent of frequency; check it is small).
    """

    def __init__(self, tol: float = 1e-12, max_iter: int = 1000):
        self.tol = tol
        self.max_iter = max_iter

    @staticmethod
    def _arrays(X):
        if isinstance(X, pd.DataFrame):
            if "frequency" not in X or "monetary_value" not in X:
                raise CrmlabError("Gamma-Gamma needs columns frequency and monetary_value (rfm_summary)")
            return X["frequency"].to_numpy(np.float64), X["monetary_value"].to_numpy(np.float64)
        x, m = X
        return np.asarray(x, np.float64), np.asarray(m, np.float64)

    def fit(self, X, y=None):
        x, m = self._arrays(X)
        reset(self)
        keep = (x > 0) & (m > 0)
        if keep.sum() < 3:
            raise CrmlabError(f"Gamma-Gamma needs repeat customers with positive spend; found {int(keep.sum())}")
        order = np.lexsort((m[keep], x[keep]))              # value order: any customer order, same sums
        x, m = x[keep][order], m[keep][order]
        xu, xk = _codes(x)
        w = np.ones(len(m))
        N = w.sum()
        objective = btyd.gg_tabled_objective(xu, xk, m, w)

        def negll(theta):
            ll, gr = objective(*np.exp(theta))
            return (-ll / N if np.isfinite(ll) else 1e300), -gr * np.exp(theta) / N

        mean_m = float(np.mean(m))
        starts = [np.log([1.0, 2.0, mean_m]), np.log([5.0, 3.0, mean_m * 2]), np.log([0.5, 5.0, mean_m / 2])]
        res = _maximise(negll, starts, [(-15.0, 15.0)] * 3, tol=self.tol, max_iter=self.max_iter)
        phi = np.exp(res.x)
        self.params_ = dict(zip(("p", "q", "gamma"), phi))
        self.loglik_ = float(-res.fun * N)
        self.n_customers_ = int(N)
        self.freq_monetary_corr_ = float(np.corrcoef(x, m)[0, 1]) if len(x) > 2 else np.nan

        def grad_nat(ph):
            _, g = negll(np.log(ph))
            return -g * N / ph

        se = _std_errors(_hessian(grad_nat, phi))
        self.summary_ = _param_table(["p", "q", "gamma"], phi, se)
        self.se_ = dict(zip(["p", "q", "gamma"], se))
        return self

    def expected_spend(self, X) -> np.ndarray:
        """Expected mean transaction value per customer (population mean for non-repeaters)."""
        if not hasattr(self, "params_"):
            raise CrmlabError("GammaGamma is not fitted yet: call fit() first")
        x, m = self._arrays(X)
        return btyd.gg_expected_spend(*self.params_.values(), x, m)

    predict = expected_spend


# ----------------------------------------------------------------------------- CLV and the scored table

def clv(purchase_model, spend_model, X, months: int = 12, discount_rate: float = 0.01, margin: float = 1.0,
        time_unit: float | None = None, month: float | None = None) -> np.ndarray:
    """Customer lifetime value over ``months``: discounted (monthly ``discount_rate``) expected purchases
    per month times expected spend times ``margin`` (the lifetimes convention).

    ``month``: length of a month in model time units (default 30.44 days / ``time_unit``; lifetimes
    uses 4.345 weeks). ``time_unit`` (days) defaults to the one :func:`rfm_summary` stored on the
    table; a different explicit value is an error.
    """
    time_unit = _time_unit(X, time_unit)
    if months < 1:
        raise ValueError("months must be >= 1")
    horizons = np.arange(1, months + 1) * (month or DAYS_PER_MONTH / time_unit)
    return margin * spend_model.expected_spend(X) * purchase_model.discounted_purchases(X, horizons, discount_rate)


def customer_value(purchase_model, spend_model, rfm: pd.DataFrame, months: int = 12,
                   discount_rate: float = 0.01, margin: float = 1.0, time_unit: float | None = None) -> pd.DataFrame:
    """The ``customer_value`` artifact: p_alive, expected purchases (90 / 365 days), expected spend,
    CLV and value decile (10 = most valuable) per customer."""
    out = customer_scores(purchase_model, spend_model, rfm, months, discount_rate, margin, time_unit)
    out["value_decile"] = value_deciles(out[f"clv_{months}m"].to_numpy())
    return out


def value_deciles(clv_values: np.ndarray) -> np.ndarray:
    """Value decile per customer (10 = most valuable; ties by position), over the whole table."""
    ranks = pd.Series(clv_values).rank(method="first")
    return np.ceil(ranks / len(clv_values) * 10).astype("int64").clip(1, 10).to_numpy()


def customer_scores(purchase_model, spend_model, rfm: pd.DataFrame, months: int = 12,
                    discount_rate: float = 0.01, margin: float = 1.0, time_unit: float | None = None) -> pd.DataFrame:
    """:func:`customer_value` without the decile: every column is the customer's own (one partition at a time)."""
    time_unit = _time_unit(rfm, time_unit)
    h = np.array([90.0, 365.0]) / time_unit
    p_alive = purchase_model.p_alive(rfm)
    e = purchase_model.expected_purchases(rfm, h)
    value = clv(purchase_model, spend_model, rfm, months, discount_rate, margin, time_unit)
    out = pd.DataFrame({
        "customer_key": rfm.index.to_numpy(), "frequency": rfm["frequency"].to_numpy(),
        "recency": rfm["recency"].to_numpy(), "T": rfm["T"].to_numpy(),
        "monetary_value": rfm["monetary_value"].to_numpy(), "p_alive": p_alive,
        "expected_purchases_90d": e[:, 0], "expected_purchases_365d": e[:, 1],
        "expected_spend": spend_model.expected_spend(rfm), f"clv_{months}m": value})
    return out


# ----------------------------------------------------------------------------- simulation

def simulate_bgnbd(n: int, r: float, alpha: float, a: float, b: float, T, seed: int = 0,
                   day_resolution: float | None = 7.0):
    """Draw (x, t_x, T) from a BG/NBD process (for tests and benchmarks).

    ``T`` is a scalar or an array of observation lengths; with ``day_resolution`` (units per day
    reciprocal, 7 for weeks) purchase times are floored to whole days, as real data are.
    """
    rng = np.random.default_rng(seed)
    T = np.broadcast_to(np.asarray(T, dtype=np.float64), (n,)).copy()
    lam = rng.gamma(r, 1.0 / alpha, n)
    p = rng.beta(a, b, n)
    N = rng.poisson(lam * T)
    K = rng.geometric(p)
    x = np.minimum(N, K)
    # time of the x-th of N uniform arrivals = the x-th order statistic of N uniforms on [0, T]
    tx = np.where(x > 0, T * rng.beta(np.maximum(x, 1), np.maximum(N - x + 1, 1)), 0.0)
    if day_resolution:
        tx = np.floor(tx * day_resolution) / day_resolution
        T = np.floor(T * day_resolution) / day_resolution
    return x.astype(np.float64), tx, T


def add_first(rfm: pd.DataFrame, transactions: pd.DataFrame, column: str, customer_col: str = "customer_key",
              date_col: str = "order_date") -> pd.DataFrame:
    """Add the value of ``column`` at each customer's first purchase (e.g. acquisition channel)."""
    first = transactions.sort_values(date_col, kind="stable").drop_duplicates(customer_col)
    return rfm.join(first.set_index(customer_col)[column].rename(f"first_{column}"))


def pattern_counts(rfm: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Distinct rows of ``columns`` of an RFM table with their customer counts (``customers``); counts
    of disjoint sets of customers add up with :func:`sum_patterns`. A purchase model fitted on them
    (``sample_weight=customers``) equals the fit on the customers' rows."""
    _rfm_arrays(rfm)                                     # the checks a fit on the rows makes
    return rfm.groupby(columns, sort=False, dropna=False).size().rename("customers").reset_index()


def sum_patterns(counts: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    """:func:`pattern_counts` of disjoint sets of customers added up (patterns in value order)."""
    got = pd.concat(counts, ignore_index=True)
    return got.groupby(columns, sort=True, dropna=False)["customers"].sum().reset_index()


def pattern_columns(covariates: list[str] | None = None) -> list[str]:
    """The columns a purchase model with ``covariates`` reads: its customers' patterns."""
    return ["frequency", "recency", "T"] + list(covariates or [])


def fit_patterns(name: str, covariates: list[str] | None, counts: pd.DataFrame):
    """``make_model(name, covariates)`` fitted on :func:`sum_patterns` counts of
    :func:`pattern_columns` (its warnings raised as usual)."""
    if counts.empty:
        raise CrmlabError("rfm_summary: no transactions on or before the calibration end")
    return make_model(name, covariates).fit(counts[pattern_columns(covariates)], sample_weight=counts["customers"])


def make_model(name: str, covariates: list[str] | None = None):
    """A purchase model by its parameter-file name: bgnbd, mbgnbd or pareto."""
    if name == "bgnbd":
        return BetaGeo(covariates=covariates or None)
    if name == "mbgnbd":
        return BetaGeo(modified=True, covariates=covariates or None)
    if name == "pareto":
        if covariates:
            raise CrmlabError("covariates are supported for bgnbd and mbgnbd, not pareto")
        return ParetoNBD()
    raise CrmlabError(f"unknown value model '{name}' (choose bgnbd, mbgnbd or pareto)")
