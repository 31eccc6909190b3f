"""Segment design: a value x attrition-risk grid and behavioural segments that are profiled,
named and checked for stability; new customers are assigned by a compiled kernel, no refit.

``Segmenter`` (k-means, or a diagonal Gaussian mixture) standardises the chosen features (missing
values -> training median, ``log1p`` of skewed non-negative columns), picks k by a stated criterion
and stores what assignment needs; ``stability`` reports the adjusted Rand index across seeds and
bootstrap refits; ``profile`` and ``name_segments`` turn clusters into something people can use.
"""
from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import feature_rows
from .errors import CrmlabError
from .estimator import Params, reset
from .kernels.segments import nearest_center
from .progress import bar
from .labels import label

BANDS = ("low", "medium", "high")


def _nearest(X: pd.DataFrame, seg: "Segmenter") -> np.ndarray:
    lab, _ = nearest_center(seg._validate(X, fitting=False), seg.fill_, seg.log_cols_, seg.centre_, seg.scale_,
                            seg.centers_, seg.weights_, seg.bias_)
    return lab


def _reference(X: pd.DataFrame, seg: "Segmenter") -> np.ndarray:
    return seg._assign(seg.transform(X), seg.centers_, seg.weights_, seg.bias_)


# ----------------------------------------------------------------------------- value x risk grid

def _bands(x: pd.Series, quantiles) -> pd.Series:
    q = sorted(float(v) for v in quantiles)
    if len(q) != 2 or not 0 < q[0] < q[1] < 1:
        raise CrmlabError(f"band quantiles must be two increasing numbers in (0, 1), got {list(quantiles)}")
    cuts = x.quantile(q).to_numpy()
    codes = np.searchsorted(cuts, x.to_numpy(), side="right")
    return pd.Series(np.asarray(BANDS, dtype=object)[codes], index=x.index)


def value_risk_grid(value: pd.DataFrame, risk: pd.DataFrame, value_col: str | None = None,
                    risk_col: str = "attrition_risk", value_quantiles=(0.5, 0.8),
                    risk_quantiles=(0.5, 0.8)) -> pd.DataFrame:
    """Place each customer in a 3 x 3 grid of value band x attrition-risk band.

    Bands cut at the given quantiles (default: bottom half, next 30%, top 20%). Customers with a
    value but no risk score (too new to have features) take the risk ``1 - p_alive`` when the value
    table has it. Returns customer_key, value, attrition_risk, value_band, risk_band, value_risk_cell.
    """
    value_col = value_col or next((c for c in value.columns if c.startswith("clv_")), None)
    for name, df, col in (("value", value, value_col), ("risk", risk, risk_col)):
        if col is None or col not in df or "customer_key" not in df:
            raise CrmlabError(f"value_risk_grid: the {name} table needs customer_key and "
                              f"'{col or 'clv_<months>m'}'; it has {', '.join(map(str, df.columns))}")
    t = value[["customer_key", value_col]].merge(risk[["customer_key", risk_col]], on="customer_key", how="left")
    if t[risk_col].isna().any() and "p_alive" in value:
        alive = value.set_index("customer_key")["p_alive"].reindex(t["customer_key"]).to_numpy()
        t[risk_col] = t[risk_col].fillna(pd.Series(1.0 - alive, index=t.index))
    t = t.rename(columns={value_col: "value", risk_col: "attrition_risk"}).dropna(subset=["value", "attrition_risk"])
    t["value_band"] = _bands(t["value"], value_quantiles)
    t["risk_band"] = _bands(t["attrition_risk"], risk_quantiles)
    t["value_risk_cell"] = t["value_band"] + " value / " + t["risk_band"] + " risk"
    return t.reset_index(drop=True)


def grid_table(grid: pd.DataFrame) -> pd.DataFrame:
    """Customers, value share and mean risk per grid cell, as a 3 x 3 table per measure."""
    g = grid.groupby(["value_band", "risk_band"])
    t = pd.DataFrame({"customers": g.size(), "value_share": g["value"].sum() / grid["value"].sum(),
                      "mean_value": g["value"].mean(), "mean_risk": g["attrition_risk"].mean()})
    return t.reindex(pd.MultiIndex.from_product([BANDS[::-1], BANDS], names=["value_band", "risk_band"]))


# ----------------------------------------------------------------------------- behavioural segments

def select_features(columns, patterns) -> list[str]:
    """Columns matching any of ``patterns`` (shell-style, e.g. ``share_channel_*``), in column order."""
    cols = [c for c in columns if any(fnmatch.fnmatchcase(c, p) for p in patterns)]
    missing = [p for p in patterns if not any(fnmatch.fnmatchcase(c, p) for c in columns)]
    if missing:
        raise CrmlabError(f"segment features {missing} match no feature column; available: {', '.join(columns)}")
    return cols


class Segmenter(Params):
    """Behavioural segments from numeric customer features.

    Parameters
    ----------
    k : number of segments, or ``"auto"`` to choose from ``k_range`` by ``criterion``.
    method : ``"kmeans"`` or ``"gmm"`` (Gaussian mixture with diagonal covariances).
    criterion : ``"silhouette"`` (highest mean silhouette on a sample) or ``"bic"`` (lowest; gmm only).
    min_stability : with k auto, only k whose mean bootstrap adjusted Rand index reaches this are
        eligible (the most stable k is taken when none does); 0 turns the check off. The default
        0.95 keeps a margin over a 0.9 goal: a 10-bootstrap mean varies by a few hundredths.
    n_init, bootstraps, sample, random_state : restarts per fit, bootstrap refits for stability, rows
        used for silhouettes, random seed.
    max_fit_rows : larger inputs are fitted on a random sample of this many rows (every row is
        then assigned by the kernel): millions of customers fit in seconds.
    select_rows : choosing k (a fit, silhouette and ``bootstraps`` refits per candidate) and
        :meth:`stability` use a random sample of at most this many rows (``select_rows_``): 66 k-means
        fits on 200,000 rows took 912 s, on 20,000 a tenth of it, and the bootstrap spread is what is read.

    Attributes
    ----------
    features_, log_cols_, fill_, centre_, scale_ : preparation learned in ``fit``.
    k_, centers_, weights_, bias_ : the chosen model in standardised space (segments ordered by size).
    selection_ : per candidate k, the criterion and stability (with k auto).
    select_rows_ : rows the choice of k was made on (with k auto).
    labels_ : segment of each training row.
    """

    def __init__(self, k="auto", method: str = "kmeans", k_range=(3, 8), criterion: str = "silhouette",
                 min_stability: float = 0.95, n_init: int = 10, bootstraps: int = 10, sample: int = 5000,
                 max_fit_rows: int = 200_000, select_rows: int = 20_000, random_state: int = 0):
        self.k, self.method, self.k_range, self.criterion = k, method, k_range, criterion
        self.min_stability, self.n_init, self.bootstraps, self.sample, self.random_state = (
            min_stability, n_init, bootstraps, sample, random_state)
        self.max_fit_rows, self.select_rows = max_fit_rows, select_rows

    # -- preparation
    def _validate(self, X: pd.DataFrame, fitting: bool) -> np.ndarray:
        if not isinstance(X, pd.DataFrame):
            raise CrmlabError("Segmenter needs a DataFrame of features")
        cols = list(X.columns) if fitting else self.features_
        missing = [c for c in cols if c not in X]
        if missing:
            raise CrmlabError(f"segment features missing from the input: {', '.join(missing)}")
        bad = [c for c in cols if not pd.api.types.is_numeric_dtype(X[c])]
        if bad:
            raise CrmlabError(f"segment features must be numeric; not numeric: {', '.join(bad)}")
        A = X[cols].to_numpy(np.float64)
        if np.isinf(A).any():
            c = cols[int(np.where(np.isinf(A).any(axis=0))[0][0])]
            raise CrmlabError(f"segment feature '{c}' has infinite values")
        return A

    def _prepare(self, A: np.ndarray) -> np.ndarray:
        Z = np.where(np.isnan(A), self.fill_, A)
        Z[:, self.log_cols_] = np.log1p(np.maximum(Z[:, self.log_cols_], 0.0))
        return (Z - self.centre_) / self.scale_

    def _learn_preparation(self, A: np.ndarray) -> None:
        fill = np.nanmedian(A, axis=0)
        if np.isnan(fill).any():
            raise CrmlabError("segment feature(s) with no values at all: "
                              + ", ".join(np.asarray(self.features_)[np.isnan(fill)]))
        self.fill_ = fill
        Z = np.where(np.isnan(A), fill, A)
        skew = pd.DataFrame(Z).skew().to_numpy()
        self.log_cols_ = (Z.min(axis=0) >= 0) & (skew > 1.0)
        Z[:, self.log_cols_] = np.log1p(Z[:, self.log_cols_])
        self.centre_ = Z.mean(axis=0)
        sd = Z.std(axis=0)
        self.scale_ = np.where(sd > 0, sd, 1.0)

    # -- fitting
    def _fit_k(self, Z: np.ndarray, k: int, seed: int):
        if self.method == "kmeans":
            from sklearn.cluster import KMeans

            m = KMeans(k, n_init=self.n_init, random_state=seed).fit(Z)
            return m.cluster_centers_, np.ones_like(m.cluster_centers_), np.zeros(k), m
        from sklearn.mixture import GaussianMixture

        m = GaussianMixture(k, covariance_type="diag", n_init=max(1, self.n_init // 3), random_state=seed,
                            reg_covar=1e-4).fit(Z)
        var = m.covariances_
        # -2 log(w p(z|c)) up to a constant: sum (z-mu)^2/var + sum log var - 2 log w
        return m.means_, 1.0 / var, np.log(var).sum(axis=1) - 2.0 * np.log(m.weights_), m

    @staticmethod
    def _assign(Z, centers, weights, bias) -> np.ndarray:
        d = ((Z[:, None, :] - centers[None]) ** 2 * weights[None]).sum(axis=2) + bias[None]
        return d.argmin(axis=1)

    def _sample(self, n: int, rng, size: int | None = None) -> np.ndarray:
        size = self.sample if size is None else size
        return np.sort(rng.choice(n, size, replace=False)) if n > size else np.arange(n)

    def _candidate(self, Z: np.ndarray, k: int, rng) -> dict:
        from sklearn.metrics import silhouette_score

        c, w, b, m = self._fit_k(Z, k, self.random_state)
        lab = self._assign(Z, c, w, b)
        s = self._sample(len(Z), rng)
        row = {"k": k, "silhouette": float(silhouette_score(Z[s], lab[s])) if len(np.unique(lab[s])) > 1 else np.nan}
        if self.method == "gmm":
            row["bic"] = float(m.bic(Z))
        row["stability_ari"] = float(np.mean(self._bootstrap_aris(Z, lab, k, rng, self.bootstraps))) if self.bootstraps else np.nan
        return row

    def _bootstrap_aris(self, Z: np.ndarray, ref: np.ndarray, k: int, rng, n: int) -> list[float]:
        """Adjusted Rand index of ``ref`` against ``n`` refits on bootstrap samples (each assigns every row)."""
        from sklearn.metrics import adjusted_rand_score

        out = []
        for _ in range(n):
            idx = rng.choice(len(Z), len(Z), replace=True)
            c, w, b, _ = self._fit_k(Z[idx], k, int(rng.integers(2**31)))
            out.append(adjusted_rand_score(ref, self._assign(Z, c, w, b)))
        return out

    def fit(self, X: pd.DataFrame, y=None) -> "Segmenter":
        if self.method not in ("kmeans", "gmm"):
            raise CrmlabError(f"segment method must be 'kmeans' or 'gmm', got {self.method!r}")
        if self.criterion not in ("silhouette", "bic") or (self.criterion == "bic" and self.method != "gmm"):
            raise CrmlabError(f"segment criterion must be 'silhouette' (or 'bic' with gmm), got {self.criterion!r}")
        reset(self)                                   # a refit learns everything anew (selection_ too)
        self.features_ = list(X.columns)
        self._validate(X.iloc[:0] if hasattr(X, "iloc") else X, fitting=True)     # the columns
        ks = list(range(int(self.k_range[0]), int(self.k_range[1]) + 1)) if self.k == "auto" else [int(self.k)]
        if min(ks) < 2 or len(X) < 10 * max(ks):
            raise CrmlabError(f"need k >= 2 and at least 10 customers per segment: {len(X):,} rows for k up to {max(ks)}")
        rng = np.random.default_rng(self.random_state)
        # the rows fitted on (X may be rows left on Dask workers: only these are fetched); every row is
        # checked for infinite values when assigned (predict)
        A = self._validate(X.iloc[self._sample(len(X), rng, self.max_fit_rows)], fitting=True)
        self._learn_preparation(A)
        Z = self._prepare(A)
        if self.k == "auto":
            Zs = Z[self._sample(len(Z), rng, self.select_rows)]
            self.select_rows_ = len(Zs)
            sel = pd.DataFrame([self._candidate(Zs, k, rng) for k in bar(ks, "choosing k", unit="k")]).set_index("k")
            score = sel["silhouette"] if self.criterion == "silhouette" else -sel["bic"]
            ok = sel["stability_ari"] >= self.min_stability if self.min_stability and self.bootstraps else score.notna()
            sel["eligible"] = ok
            k = int(score[ok].idxmax()) if ok.any() else int(sel["stability_ari"].idxmax())
            sel["chosen"] = sel.index == k
            self.selection_ = sel
        else:
            k, self.selection_ = ks[0], None
        c, w, b, _ = self._fit_k(Z, k, self.random_state)
        lab = self._assign(Z, c, w, b)
        order = np.argsort(-np.bincount(lab, minlength=k), kind="stable")     # segment 0 = largest
        self.k_, self.centers_, self.weights_, self.bias_ = k, c[order], w[order], b[order]
        self.labels_ = self.predict(X)
        return self

    def _check_fitted(self):
        if not hasattr(self, "centers_"):
            raise CrmlabError("Segmenter is not fitted: call fit(features) first or load a saved one")

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Segment of each row, by the compiled kernel (no refit); where the rows lie for rows left on
        Dask workers (:class:`~crmlab.feature_rows.FeatureRows`)."""
        self._check_fitted()
        return feature_rows.apply(X, _nearest, self)

    def reference_predict(self, X: pd.DataFrame) -> np.ndarray:
        """:meth:`predict` by NumPy (the reference the compiled kernel is checked against)."""
        self._check_fitted()
        return feature_rows.apply(X, _reference, self)

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        """The standardised features (the space segments live in)."""
        self._check_fitted()
        return self._prepare(self._validate(X, fitting=False))

    def stability(self, X: pd.DataFrame, seeds: int = 5) -> pd.DataFrame:
        """Adjusted Rand index of the fitted labelling against refits with other seeds and on
        bootstrap samples (each refit assigns every row), on at most ``select_rows`` rows; 1 = identical
        partitions."""
        from sklearn.metrics import adjusted_rand_score

        self._check_fitted()
        rng = np.random.default_rng(self.random_state + 1)
        X = X.iloc[self._sample(len(X), rng, min(self.max_fit_rows, self.select_rows))]
        Z = self.transform(X)
        ref = self._assign(Z, self.centers_, self.weights_, self.bias_)
        rows = []
        for s in bar(range(seeds), "stability: refits with other seeds", unit="fit"):
            c, w, b, _ = self._fit_k(Z, self.k_, self.random_state + 1000 + s)
            rows.append(("seed", adjusted_rand_score(ref, self._assign(Z, c, w, b))))
        rows += [("bootstrap", a) for a in self._bootstrap_aris(Z, ref, self.k_, rng, max(self.bootstraps, 1))]
        t = pd.DataFrame(rows, columns=["refit", "ari"])
        return t.groupby("refit")["ari"].agg(["count", "mean", "min"]).rename(columns={"count": "refits"})

    # -- persistence
    _ARRAYS = ("fill_", "log_cols_", "centre_", "scale_", "centers_", "weights_", "bias_")

    def save(self, folder) -> Path:
        self._check_fitted()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "segmenter.npz", **{a: getattr(self, a) for a in self._ARRAYS})
        meta = {"features": self.features_, "k": self.k_, "method": self.method,
                "names": getattr(self, "names_", None)}
        (folder / "segmenter.json").write_text(json.dumps(meta, indent=1))
        return folder

    @classmethod
    def load(cls, folder) -> "Segmenter":
        folder = Path(folder)
        try:
            meta = json.loads((folder / "segmenter.json").read_text())
            arrays = np.load(folder / "segmenter.npz")
        except (OSError, ValueError) as exc:
            raise CrmlabError(f"cannot read a saved segmenter from {folder}: {exc}") from None
        m = cls(k=meta["k"], method=meta["method"])
        m.features_, m.k_ = meta["features"], meta["k"]
        if meta.get("names"):
            m.names_ = meta["names"]
        for a in cls._ARRAYS:
            setattr(m, a, arrays[a])
        return m


# ----------------------------------------------------------------------------- profiles and names

def traits(seg: Segmenter, top: int = 3, min_sd: float = 0.3) -> list[list[tuple[str, float]]]:
    """Per segment, its most distinctive features: (feature, centre in standard deviations)."""
    seg._check_fitted()
    out = []
    for c in seg.centers_:
        order = np.argsort(-np.abs(c))[:top]
        out.append([(seg.features_[j], float(c[j])) for j in order if abs(c[j]) >= min_sd])
    return out


def name_segments(seg: Segmenter, names: list[dict], min_score: float = 0.25) -> list[str]:
    """Give segments the names from params that fit them best (each name used at most once).

    Each name is ``{name: ..., traits: {feature: high | low}}``; a segment's fit to a name is the mean
    of its centre's standardised values on those features (sign flipped for ``low``). Pairs are
    taken greedily, best fit first, each segment and name once; a segment left without a name
    fitting at least ``min_score`` is named after its distinctive traits instead.
    """
    auto = [" / ".join(f"{'high' if z > 0 else 'low'} {label(f).lower()}" for f, z in t[:2]) or "average"
            for t in traits(seg)]
    if not names:
        return auto
    fit = np.full((seg.k_, len(names)), -np.inf)
    for j, spec in enumerate(names):
        if not isinstance(spec, dict) or "name" not in spec or not isinstance(spec.get("traits"), dict):
            raise CrmlabError(f"segment name #{j + 1} must look like {{name: ..., traits: {{feature: high|low}}}}, got {spec!r}")
        cols, signs = [], []
        for f, d in spec["traits"].items():
            if d not in ("high", "low"):
                raise CrmlabError(f"segment name '{spec['name']}': trait '{f}' must be high or low, got {d!r}")
            if f in seg.features_:
                cols.append(seg.features_.index(f))
                signs.append(1.0 if d == "high" else -1.0)
        if cols:
            fit[:, j] = (seg.centers_[:, cols] * np.asarray(signs)).mean(axis=1)
    out, used_seg, used_name = list(auto), set(), set()
    for flat in np.argsort(-fit, axis=None, kind="stable"):
        r, c = divmod(int(flat), len(names))
        if fit[r, c] < min_score:
            break
        if r not in used_seg and c not in used_name:
            out[r] = names[c]["name"]
            used_seg.add(r)
            used_name.add(c)
    return out


def profile(features: pd.DataFrame, labels: np.ndarray, names: list[str], value: pd.Series | None = None,
            risk: pd.Series | None = None, seg: Segmenter | None = None) -> pd.DataFrame:
    """One row per segment: size, share, value share, mean value and risk, preferred channel,
    distinctive traits and the mean of each feature. ``features``: a frame, or rows left on Dask
    workers (:class:`~crmlab.feature_rows.FeatureRows`: the means from sums and counts made there)."""
    labels = np.asarray(labels)
    sizes = pd.Series(labels).groupby(labels).size().rename_axis("segment_id")
    t = pd.DataFrame({"segment": [names[i] for i in sizes.index], "customers": sizes})
    t["share"] = t["customers"] / len(labels)
    if value is not None:
        v = value.reindex(features.index)
        t["value_share"] = v.groupby(labels).sum() / v.sum()
        t["mean_value"] = v.groupby(labels).mean()
    if risk is not None:
        t["mean_attrition_risk"] = risk.reindex(features.index).groupby(labels).mean()
    empty = features.iloc[:0]
    means = segment_means(features, labels, [c for c in empty.columns if pd.api.types.is_numeric_dtype(empty[c])])
    ch = [c for c in empty.columns if c.startswith("share_channel_")]
    if ch:
        t["preferred_channel"] = means[ch].idxmax(axis=1).str.removeprefix("share_channel_")
    if seg is not None:
        tr = traits(seg)
        t["traits"] = [", ".join(f"{'high' if z > 0 else 'low'} {label(n).lower()} ({z:+.1f} sd)" for n, z in tr[i])
                       for i in t.index]
    return t.join(means.add_prefix("mean_"))


def _sums(rows: pd.DataFrame, labels: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    g = rows.groupby(labels)
    return g.sum(), g.count()


def segment_means(features, labels: np.ndarray, columns: list) -> pd.DataFrame:
    """Mean of each of ``columns`` per segment (missing values skipped), indexed by segment_id. On
    rows left on Dask workers: from the sums and counts of each frame's rows, added here (equal to the
    frame's means to the last bits: the additions come in another order)."""
    if isinstance(features, pd.DataFrame):
        return features[columns].groupby(labels).mean().rename_axis("segment_id")
    got = features[columns].map_frames(_sums, labels)
    total = pd.concat([s for s, _ in got]).groupby(level=0).sum()
    count = pd.concat([c for _, c in got]).groupby(level=0).sum()
    return (total / count.where(count > 0)).rename_axis("segment_id")


def plot_profiles(seg: Segmenter, names: list[str], sizes=None):
    """Heatmap of segment centres (standard deviations from the average customer)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(min(11.5, 3.5 + 0.7 * len(seg.features_)), 2.2 + 0.45 * seg.k_))
    lim = max(1.0, float(np.abs(seg.centers_).max()))
    im = ax.imshow(seg.centers_, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(seg.features_)), [label(f) for f in seg.features_], rotation=60, ha="right", fontsize=8)
    lab = [f"{i}: {n}" + (f" ({sizes[i]:,})" if sizes is not None else "") for i, n in enumerate(names)]
    ax.set_yticks(range(seg.k_), lab, fontsize=8)
    for i in range(seg.k_):
        for j in range(len(seg.features_)):
            ax.text(j, i, f"{seg.centers_[i, j]:+.1f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label="sd from average")
    ax.set_title("What sets each segment apart\n(standard deviations from the average customer; red above, blue below)")
    fig.tight_layout()
    return fig


def plot_grid(table: pd.DataFrame):
    """The value x risk grid: customers and value share per cell."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, col, fmt in ((axes[0], "customers", "{:,.0f}"), (axes[1], "value_share", "{:.0%}")):
        m = table[col].unstack().reindex(index=list(BANDS[::-1]), columns=list(BANDS))
        im = ax.imshow(m.to_numpy(float), cmap="Blues")
        bar = fig.colorbar(im, ax=ax, label=label(col).lower())
        if col == "value_share":
            bar.ax.yaxis.set_major_formatter(PercentFormatter(1))
        ax.set_xticks(range(3), [f"{b} risk" for b in BANDS])
        ax.set_yticks(range(3), [f"{b} value" for b in BANDS[::-1]])
        for i in range(3):
            for j in range(3):
                v = m.iat[i, j]
                ax.text(j, i, "" if pd.isna(v) else fmt.format(v), ha="center", va="center",
                        color="white" if not pd.isna(v) and v > np.nanmax(m.to_numpy(float)) * 0.6 else "black")
        ax.set_title(label(col))
    fig.tight_layout()
    return fig




# ----------------------------------------------------------------------------- stage outputs

PROSPECT = "Prospects (no orders yet)"


def assignments(all_keys, features: pd.DataFrame, labels: np.ndarray, names: list[str],
                grid: pd.DataFrame) -> pd.DataFrame:
    """The ``customer_segments`` artifact: every recognised customer with segment and grid cell.

    Customers without features (no order before the cut-off) get segment_id -1, ``PROSPECT``.
    """
    seg = pd.DataFrame({"segment_id": np.asarray(labels, dtype=np.int64)}, index=features.index)
    out = pd.DataFrame(index=pd.Index(all_keys).unique().rename("customer_key"))
    out = out.join(seg)
    out["segment_id"] = out["segment_id"].fillna(-1).astype(np.int64)
    lookup = np.asarray(list(names) + [PROSPECT], dtype=object)
    out["segment"] = lookup[out["segment_id"].to_numpy()]            # -1 -> the last entry
    g = grid.set_index("customer_key")[["value", "attrition_risk", "value_band", "risk_band", "value_risk_cell"]]
    return out.join(g).reset_index()


def profiles_table(prof: pd.DataFrame, grid: pd.DataFrame) -> pd.DataFrame:
    """The published ``segment_profiles``: behavioural segments and value x risk cells, one row each."""
    cols = ["segment_id", "segment", "customers", "share", "value_share", "mean_value", "mean_attrition_risk",
            "preferred_channel", "traits"]
    beh = prof.reset_index().reindex(columns=cols).assign(kind="behaviour")
    g = grid.groupby("value_risk_cell")
    cells = pd.DataFrame({"segment": g.size().index, "customers": g.size().to_numpy(),
                          "share": (g.size() / len(grid)).to_numpy(),
                          "value_share": (g["value"].sum() / grid["value"].sum()).to_numpy(),
                          "mean_value": g["value"].mean().to_numpy(),
                          "mean_attrition_risk": g["attrition_risk"].mean().to_numpy(), "kind": "value_risk"})
    out = pd.concat([beh, cells.reindex(columns=cols + ["kind"])], ignore_index=True)
    out["segment_id"] = out["segment_id"].astype("Int64")
    out["customers"] = out["customers"].astype(np.int64)
    for c in ("segment", "preferred_channel", "traits", "kind"):
        out[c] = out[c].astype(object)
    return out[["kind"] + cols]


def plot_selection(selection: pd.DataFrame, goal: float = 0.9):
    """Silhouette (or BIC) and bootstrap stability per candidate k, the chosen k marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    crit = "silhouette" if "bic" not in selection else "bic"
    ax.plot(selection.index, selection[crit], "o-", color="tab:blue", label=crit)
    ax.set(xlabel="number of segments (k)", ylabel=crit)
    ax2 = ax.twinx()
    ax2.plot(selection.index, selection["stability_ari"], "s--", color="tab:orange", label="bootstrap ARI")
    ax2.axhline(goal, color="tab:orange", lw=0.8, ls=":")
    ax2.set_ylabel("stability (adjusted Rand index)")
    k = selection.index[selection["chosen"]][0]
    ax.axvline(k, color="grey", lw=0.8)
    ax.set_title(f"Choosing k: {k} segments")
    fig.legend(loc="lower left", bbox_to_anchor=(0.12, 0.15), fontsize=8)
    fig.tight_layout()
    return fig
