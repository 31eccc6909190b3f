"""Plain NumPy/SciPy reference versions of every compiled kernel (slow, obvious, trusted).

Each kernel in ``kernels/`` has a test comparing it with the function here.
"""
from __future__ import annotations

import numpy as np
from scipy.special import betaln, digamma, gammaln, hyp2f1


# --- special functions: mpmath (arbitrary precision) for 2F1, SciPy for digamma
def hyp2f1_ref(a, b, c, z):
    import mpmath

    a, b, c, z = np.broadcast_arrays(*(np.asarray(v, float) for v in (a, b, c, z)))
    return np.array([float(mpmath.hyp2f1(*args)) for args in zip(a.ravel(), b.ravel(), c.ravel(), z.ravel())])


def digamma_ref(x):
    return digamma(x)


# --- BG/NBD (Fader, Hardie & Lee 2005, eq. 6) and MBG/NBD (Batislam et al. 2007)
def bgnbd_ll_ref(r, alpha, a, b, x, tx, T, modified=False):
    x, tx, T = (np.asarray(v, float) for v in (x, tx, T))
    out = np.empty(len(x))
    for i in range(len(x)):
        al = np.broadcast_to(alpha, x.shape)[i]
        ai = np.broadcast_to(a, x.shape)[i]
        bi = np.broadcast_to(b, x.shape)[i]
        lam_part = gammaln(r + x[i]) - gammaln(r) + r * np.log(al)
        if modified:
            beta_part = betaln(ai, bi + x[i] + 1) - betaln(ai, bi)
            alive = (al + T[i]) ** -(r + x[i])
            died = ai / (bi + x[i]) * (al + tx[i]) ** -(r + x[i])
            out[i] = lam_part + beta_part + np.log(alive + died)
        else:
            beta_part = betaln(ai, bi + x[i]) - betaln(ai, bi)
            alive = (al + T[i]) ** -(r + x[i])
            died = (ai / (bi + x[i] - 1) * (al + tx[i]) ** -(r + x[i])) if x[i] > 0 else 0.0
            out[i] = lam_part + beta_part + np.log(alive + died)
    return out


def bgnbd_predict_ref(r, alpha, a, b, x, tx, T, t, modified=False):
    """(P(alive), E[X(t) | x, t_x, T]) from the published closed forms with SciPy's 2F1."""
    x, tx, T = (np.asarray(v, float) for v in (x, tx, T))
    s = 1.0 if modified else 0.0
    odds = a / (b + x - 1 + s) * ((alpha + T) / (alpha + tx)) ** (r + x)
    p_alive = 1.0 / (1.0 + np.where((x > 0) | modified, odds, 0.0))
    hyp = hyp2f1(r + x, b + x + s, a + b + x - 1 + s, t / (alpha + T + t))
    e = (a + b + x - 1 + s) / (a - 1) * (1 - hyp * ((alpha + T) / (alpha + T + t)) ** (r + x)) * p_alive
    return p_alive, e


def bgnbd_alive_at_ref(r, alpha, a, b, x, tx, T, t):
    """P(alive at T + t): P(alive) times E[exp(-lambda p t)] over the posterior given alive
    (lambda ~ Gamma(r + x, alpha + T), p ~ Beta(a, b + x)), integrated numerically."""
    from scipy.integrate import quad

    p_alive, _ = bgnbd_predict_ref(r, alpha, a, b, x, tx, T, 1.0)
    out = np.empty(len(x))
    for i in range(len(x)):
        def f(u, i=i):
            return np.exp((a - 1) * np.log(u) + (b + x[i] - 1) * np.log1p(-u) - betaln(a, b + x[i])
                          + (r + x[i]) * np.log((alpha + T[i]) / (alpha + T[i] + u * t)))
        out[i] = p_alive[i] * quad(f, 0, 1, epsabs=0, epsrel=1e-11, limit=200)[0]
    return out


# --- Pareto/NBD (Fader & Hardie 2005 note, eq. 22 with 2F1 from SciPy)
def pareto_ll_ref(r, alpha, s, beta, x, tx, T):
    x, tx, T = (np.asarray(v, float) for v in (x, tx, T))
    out = np.empty(len(x))
    for i in range(len(x)):
        rsx = r + s + x[i]
        if alpha >= beta:
            f = lambda t: hyp2f1(rsx, s + 1, rsx + 1, (alpha - beta) / (alpha + t)) / (alpha + t) ** rsx  # noqa: E731
        else:
            f = lambda t: hyp2f1(rsx, r + x[i], rsx + 1, (beta - alpha) / (beta + t)) / (beta + t) ** rsx  # noqa: E731
        a0 = f(tx[i]) - f(T[i])
        like = (np.exp(gammaln(r + x[i]) - gammaln(r)) * alpha ** r * beta ** s
                * (1 / ((alpha + T[i]) ** (r + x[i]) * (beta + T[i]) ** s) + s / rsx * a0))
        out[i] = np.log(like)
    return out


def pareto_ll_quad_ref(r, alpha, s, beta, x, tx, T):
    """Pareto/NBD log-likelihood from its defining integral over the death time, in 40-digit
    arithmetic (no 2F1: SciPy's loses digits near z = 1, where beta >> alpha puts it)."""
    import mpmath

    mpmath.mp.dps = 40
    out = []
    for xi, ti, Ti in zip(np.asarray(x, float), np.asarray(tx, float), np.asarray(T, float)):
        integral = mpmath.quad(lambda u: (alpha + u) ** -(r + xi) * (beta + u) ** -(s + 1), [ti, Ti])
        like = (mpmath.gamma(r + xi) / mpmath.gamma(r) * mpmath.mpf(alpha) ** r * mpmath.mpf(beta) ** s
                * ((alpha + Ti) ** -(r + xi) * (beta + Ti) ** -s + s * integral))
        out.append(float(mpmath.log(like)))
    return np.array(out)


def pareto_predict_ref(r, alpha, s, beta, x, tx, T, t):
    x, tx, T = (np.asarray(v, float) for v in (x, tx, T))
    like = np.exp(pareto_ll_ref(r, alpha, s, beta, x, tx, T))
    alive_part = (np.exp(gammaln(r + x) - gammaln(r)) * alpha ** r * beta ** s
                  / ((alpha + T) ** (r + x) * (beta + T) ** s))
    p_alive = alive_part / like
    e = (r + x) * (beta + T) / ((alpha + T) * (s - 1)) * (1 - ((beta + T) / (beta + T + t)) ** (s - 1)) * p_alive
    return p_alive, e


# --- Gamma-Gamma (Fader & Hardie 2013, eq. 5)
def gg_ll_ref(p, q, gamma, x, m):
    x, m = np.asarray(x, float), np.asarray(m, float)
    return (gammaln(p * x + q) - gammaln(p * x) - gammaln(q) + q * np.log(gamma) + (p * x - 1) * np.log(m)
            + p * x * np.log(x) - (p * x + q) * np.log(gamma + m * x))


def gg_spend_ref(p, q, gamma, x, m):
    x, m = np.asarray(x, float), np.asarray(m, float)
    return np.where(x > 0, (p * (gamma + x * m)) / (p * x + q - 1), p * gamma / (q - 1))


def discounted_ref(expected, spend, rate):
    out = np.zeros(expected.shape[0])
    for i in range(expected.shape[0]):
        prev = 0.0
        for k in range(expected.shape[1]):
            out[i] += (expected[i, k] - prev) / (1 + rate) ** (k + 1)
            prev = expected[i, k]
    return out * spend


def grid_codes_ref(v):
    values, codes = np.unique(v, return_inverse=True)
    return values, codes.ravel()


# --- baskets: brute force counting over Python sets
def itemsets_ref(baskets: list[set], min_count: int, max_len: int) -> dict:
    """Apriori by brute force: {frozenset: count} of every itemset in >= min_count baskets."""
    from collections import Counter
    from itertools import combinations

    out = {}
    level = Counter(frozenset([i]) for b in baskets for i in b)
    level = {k: v for k, v in level.items() if v >= min_count}
    size = 1
    while level and size <= max_len:
        out.update(level)
        size += 1
        items = sorted({i for s in level for i in s})
        cands = Counter()
        for b in baskets:
            bi = sorted(set(b) & set(items))
            for c in combinations(bi, size):
                fc = frozenset(c)
                if all(fc - {x} in level for x in fc):
                    cands[fc] += 1
        level = {k: v for k, v in cands.items() if v >= min_count}
    return out


def pair_counts_ref(baskets: list[set], min_count: int) -> dict:
    """{(a, b): count} of every pair a < b of items in >= min_count baskets, by brute force."""
    from collections import Counter
    from itertools import combinations

    single = Counter(i for b in baskets for i in b)
    pairs = Counter(c for b in baskets for c in combinations(sorted(i for i in b if single[i] >= min_count), 2))
    return {k: v for k, v in pairs.items() if v >= min_count}


def item_counts_ref(baskets: list[set], n_items: int) -> np.ndarray:
    out = np.zeros(n_items, np.int64)
    for b in baskets:
        for i in b:
            out[i] += 1
    return out


def top_k_ref(baskets: list[set], sim: dict, banned: set, k: int, popularity):
    """Per basket: unseen, not banned items ranked by summed similarity to owned items, then popularity."""
    out = []
    pop_order = sorted(range(len(popularity)), key=lambda j: (-popularity[j], j))
    for b in baskets:
        score = {}
        for i in b:
            for j, s in sim.get(i, {}).items():
                if j not in b and j not in banned:
                    score[j] = score.get(j, 0.0) + s
        ranked = sorted(score, key=lambda j: (-score[j], -popularity[j], j))[:k]
        for j in pop_order:
            if len(ranked) >= k:
                break
            if j not in b and j not in banned and j not in ranked:
                ranked.append(j)
        out.append(ranked)
    return out


def top_k_popular_ref(baskets: list[set], popularity, banned: set, k: int):
    """Per basket: the k most popular items it does not hold and that are not banned (ties: lower id),
    with their popularity as score."""
    order = sorted(range(len(popularity)), key=lambda j: (-popularity[j], j))
    return [[(j, float(popularity[j])) for j in [j for j in order if j not in b and j not in banned][:k]]
            for b in baskets]


# --- strings: textbook definitions over Python str (code points)
def jaro_winkler_ref(a: str, b: str, p: float = 0.1) -> float:
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    window = max(0, max(len(a), len(b)) // 2 - 1)
    ma, mb = [False] * len(a), [False] * len(b)
    m = 0
    for i, ch in enumerate(a):
        for j in range(max(0, i - window), min(len(b), i + window + 1)):
            if not mb[j] and b[j] == ch:
                ma[i] = mb[j] = True
                m += 1
                break
    if m == 0:
        return 0.0
    sa = [c for c, f in zip(a, ma) if f]
    sb = [c for c, f in zip(b, mb) if f]
    t = sum(x != y for x, y in zip(sa, sb)) / 2
    jaro = (m / len(a) + m / len(b) + (m - t) / m) / 3
    if jaro <= 0.7:
        return jaro
    prefix = 0
    for x, y in zip(a[:4], b[:4]):
        if x != y:
            break
        prefix += 1
    return jaro + prefix * p * (1 - jaro)


def edit_distance_ref(a: str, b: str, transpositions: bool = False) -> int:
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if transpositions and i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def bigram_dice_ref(a: str, b: str) -> float:
    from collections import Counter

    if len(a) < 2 or len(b) < 2:
        return 1.0 if (len(a) == len(b) and a[:1] == b[:1]) else 0.0
    ga = Counter(a[i:i + 2] for i in range(len(a) - 1))
    gb = Counter(b[i:i + 2] for i in range(len(b) - 1))
    return 2 * sum((ga & gb).values()) / (len(a) - 1 + len(b) - 1)


# --- scoring: a logistic model and a tree ensemble, row by row
def _link_ref(raw, calib):
    if calib is None:
        return 1.0 / (1.0 + np.exp(-raw))
    if calib[0] == "sigmoid":
        return 1.0 / (1.0 + np.exp(calib[1] * raw + calib[2]))
    return float(np.interp(raw, calib[1], calib[2]))


def linear_proba_ref(X, w, bias, fill, codes, table, calib=None):
    out = np.empty(len(X))
    for i in range(len(X)):
        x = np.where(np.isnan(X[i]), fill, X[i]).astype(float)
        z = bias + float(x @ w) + sum(table[c, k] for c, k in enumerate(codes[i]) if k >= 0)
        out[i] = np.nan if np.isnan(z) or np.isinf(X[i]).any() else _link_ref(z, calib)
    return out


def tree_proba_ref(X, trees, codes, calib=None):
    """Walk every tree for every row; trees as nested dicts {'feature', 'kind', 'thr', 'left', 'right',
    'missing_left', 'left_cats', 'known_cats'} or {'value'} for leaves."""
    out = np.empty(len(X))
    for i in range(len(X)):
        raw = trees["baseline"]
        for tree in trees["trees"]:
            node = tree
            while "value" not in node:
                if node["kind"] == "num":
                    v = float(X[i, node["feature"]])          # compared in float64, as scikit-learn does
                    go_left = node["missing_left"] if np.isnan(v) else v <= node["thr"]
                else:
                    k = codes[i, node["feature"]]
                    if k < 0 or (k not in node["left_cats"] and k not in node["known_cats"]):
                        go_left = node["missing_left"]
                    else:
                        go_left = k in node["left_cats"]
                node = node["left"] if go_left else node["right"]
            raw += node["value"]
        out[i] = np.nan if np.isinf(X[i]).any() else _link_ref(raw, calib)
    return out


# --- segment assignment: prepare each value, then the nearest centre by (weighted) distance
def nearest_center_ref(X, fill, log_cols, centre, scale, centers, weights=None, bias=None):
    X = np.array(X, float)
    k, d = centers.shape
    weights = np.ones((k, d)) if weights is None else weights
    bias = np.zeros(k) if bias is None else bias
    labels, dist = np.empty(len(X), np.int64), np.empty(len(X))
    for i, row in enumerate(X):
        z = []
        for j, v in enumerate(row):
            v = fill[j] if np.isnan(v) else v
            v = np.log1p(max(v, 0.0)) if log_cols[j] else v
            z.append((v - centre[j]) / scale[j])
        ds = [bias[c] + sum(weights[c, j] * (z[j] - centers[c, j]) ** 2 for j in range(d)) for c in range(k)]
        labels[i] = int(np.argmin(ds))
        dist[i] = min(ds)
    return labels, dist


# --- customer features: FeatureBuilder.transform written as one pandas groupby per feature
def _features_imports():
    import pandas as pd

    from crmlab.features import DAY, _slug
    return pd, DAY, _slug


def features_ref(self, ev, cutoff):
    """FeatureBuilder.transform as plain pandas groupbys (the first-wave implementation)."""
    pd, DAY, _slug = _features_imports()
    cutoff = pd.Timestamp(cutoff)
    o = ev.orders[ev.orders["order_date"] < cutoff]
    g = o.groupby("customer_key", sort=True)
    first, last, n = g["order_date"].min(), g["order_date"].max(), g.size()
    f = pd.DataFrame(index=n.index)
    f["recency_days"] = (cutoff - last) / DAY
    f["tenure_days"] = (cutoff - first) / DAY
    f["orders"] = n.astype("float64")
    f["spend"] = g["value"].sum()
    f["order_value"] = f["spend"] / f["orders"]
    span = (last - first) / DAY
    f["interpurchase_days"] = (span / (n - 1)).where(n > 1).clip(lower=1.0)
    f["overdue"] = f["recency_days"] / f["interpurchase_days"]
    for w in self.windows:
        recent = o["order_date"] >= cutoff - w * DAY
        before = ~recent & (o["order_date"] >= cutoff - 2 * w * DAY)
        f[f"orders_{w}d"] = recent.groupby(o["customer_key"]).sum().reindex(f.index, fill_value=0).astype("float64")
        prev = before.groupby(o["customer_key"]).sum().reindex(f.index, fill_value=0)
        f[f"trend_{w}d"] = f[f"orders_{w}d"] - prev
        f[f"spend_{w}d"] = o["value"].where(recent, 0.0).groupby(o["customer_key"]).sum().reindex(f.index)
    ch = pd.crosstab(o["customer_key"], pd.Categorical(o["channel"].where(o["channel"].isin(self.channels_)),
                                                       categories=self.channels_),
                     normalize="index", dropna=False)
    for c in self.channels_:
        f[f"share_channel_{_slug(c)}"] = ch[c].reindex(f.index, fill_value=0.0) if c in ch else 0.0
    ln = ev.lines[ev.lines["order_date"] < cutoff]
    dcat = pd.Categorical(ln["department"].where(ln["department"].isin(self.departments_)), categories=self.departments_)
    dv = ln["value"].groupby([ln["customer_key"].to_numpy(), dcat], observed=False).sum().unstack(fill_value=0.0)
    dv = dv.reindex(index=f.index, columns=self.departments_, fill_value=0.0)
    tot = dv.sum(axis=1).replace(0.0, np.nan)
    for d in self.departments_:
        f[f"share_dept_{_slug(d)}"] = (dv[d] / tot).fillna(0.0)
    if ev.contacts is not None:
        _contact_features_ref(self, f, ev.contacts, cutoff)
    prof = ev.profile.reindex(f.index)
    f["age"] = ((cutoff - prof["dob"]) / DAY / 365.25).where(prof["dob"] < cutoff)
    for col in ("n_systems", "email_opt_in", "mail_opt_in", "sms_opt_in", "has_email", "has_phone"):
        f[col] = prof[col].astype("float64") if col in prof else np.nan
    first_ch = o.sort_values(["order_date", "order_id"]).drop_duplicates("customer_key").set_index("customer_key")
    f["first_channel"] = first_ch["channel"].reindex(f.index).astype(object)
    f["top_department"] = dv.idxmax(axis=1).where(dv.max(axis=1) > 0).astype(object) if len(dv.columns) else None
    f.index.name = "customer_key"
    return f

def _contact_features_ref(self, f, contacts, cutoff):
    pd, DAY, _slug = _features_imports()
    c = contacts[contacts["contact_date"] < cutoff]
    key = c["customer_key"]
    answered = c["responded"] & (c["response_date"] < cutoff).fillna(False)
    f["contacts"] = c.groupby(key).size().reindex(f.index, fill_value=0).astype("float64")
    f["responses"] = answered.groupby(key).sum().reindex(f.index, fill_value=0).astype("float64")
    f["response_rate"] = (f["responses"] / f["contacts"]).where(f["contacts"] > 0)
    recent = c["contact_date"] >= cutoff - 365 * DAY
    f["contacts_365d"] = recent.groupby(key).sum().reindex(f.index, fill_value=0).astype("float64")
    for m in self.media_:
        hit = c["medium"] == m
        f[f"contacts_{_slug(m)}"] = hit.groupby(key).sum().reindex(f.index, fill_value=0).astype("float64")
    last = c.groupby(key)["contact_date"].max().reindex(f.index)
    f["days_since_contact"] = (cutoff - last) / DAY


# --- recommendation evaluation: sets of (customer, item) tuples
def evaluate_recommendations_ref(recs, bought_before, bought_after, k: int) -> dict:
    before = set(zip(bought_before["customer"], bought_before["item"]))
    new = {}
    for c, i in zip(bought_after["customer"], bought_after["item"]):
        if (c, i) not in before:
            new.setdefault(c, set()).add(i)
    listed = set(recs["customer"])
    targets = {c: items for c, items in new.items() if c in listed}
    hits = dict.fromkeys(targets, 0)
    for c, i, rank in zip(recs["customer"], recs["item"], recs["rank"]):
        if rank <= k and c in targets and i in targets[c]:
            hits[c] += 1
    h = np.array([hits[c] for c in targets], float)
    n = np.array([len(targets[c]) for c in targets], float)
    return {"customers": len(targets), f"hit_rate@{k}": float((h > 0).mean()), f"precision@{k}": float((h / k).mean()),
            f"recall@{k}": float((h / n).mean())}


def block_pairs_ref(codes, max_block: int) -> list[tuple[int, int]]:
    """Pairs (i < j) of rows sharing a code >= 0 in blocks of at most ``max_block`` rows, enumerated
    block by block (ascending code), then by the rows' order within the block."""
    out = []
    for c in sorted(set(int(v) for v in codes if v >= 0)):
        rows = [i for i, v in enumerate(codes) if v == c]
        if len(rows) > max_block:
            continue
        for x in range(len(rows)):
            for y in range(x + 1, len(rows)):
                out.append((min(rows[x], rows[y]), max(rows[x], rows[y])))
    return out


def components_ref(n: int, a, b) -> list[int]:
    """Component labels (smallest node of the component) by relabelling until stable."""
    parent = list(range(n))
    changed = True
    while changed:
        changed = False
        for x, y in zip(a, b):
            m = min(parent[x], parent[y])
            if parent[x] != m or parent[y] != m:
                parent[x] = parent[y] = m
                changed = True
        for i in range(n):
            if parent[parent[i]] != parent[i]:
                parent[i] = parent[parent[i]]
                changed = True
    return parent


# --- vocabulary lookup: each value's first position in the vocabulary
def vocab_lookup_ref(values, vocabulary, unknown=-1, missing=-1) -> np.ndarray:
    pos = {}
    for k, v in enumerate(vocabulary):
        pos.setdefault(str(v), k)
    return np.array([missing if v is None else pos.get(v, unknown) for v in values], np.int32)


def rules_ref(itemsets: dict, n: int, metric: str, threshold: float, max_consequent_len=None) -> dict:
    """{(antecedent, consequent): (n_a, n_c, n_ac)} of every split of every itemset (size >= 2) whose
    ``metric`` (computed from supports as mlxtend does) is >= ``threshold``, by brute force."""
    from itertools import combinations

    single = {next(iter(k)): v for k, v in itemsets.items() if len(k) == 1}
    out = {}
    for s, n_ac in itemsets.items():
        for size in range(1, len(s)):
            if max_consequent_len is not None and size > max_consequent_len:
                continue
            for c in combinations(sorted(s), size):
                c = frozenset(c)
                a = s - c
                n_a, n_c = itemsets[a], itemsets[c]
                sA, sC, sAC = n_a / n, n_c / n, n_ac / n
                conf = sAC / sA
                lev = sAC - sA * sC
                den = max(sAC * (1 - sA), sA * (sC - sAC))
                value = {"support": sAC, "confidence": conf, "lift": conf / sC, "leverage": lev,
                         "conviction": (1 - sC) / (1 - conf) if conf < 1 else float("inf"),
                         "zhangs_metric": 0.0 if den == 0 else lev / den,
                         "jaccard": sAC / (sA + sC - sAC),
                         "all_confidence": sAC / max(single[i] / n for i in s)}[metric]
                if value >= threshold:
                    out[(a, c)] = (n_a, n_c, n_ac)
    return out
