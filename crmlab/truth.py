"""The planted truth of a synthetic world (``crmlab generate`` writes it to ``<world>/truth/``) and
the checks of each stage against it. Every function returns None for real data (no truth folder).

One module for every truth check, so that a stage's results and the world's truth meet in one place:
record matching (:func:`record_truth`), planted rules (:func:`planted_rule_ranks`), BG/NBD
parameters (:func:`btyd_check`), attrition (:func:`attrition_check`) and campaign increments
(:func:`uplift_check`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import targets, value
from .encoding import member_of
from .events import CustomerEvents, customer_keys
from .sources import load


def _read_truth(world_dir: Path, name: str, where: tuple[str, object] | None = None,
                columns: list[str] | None = None) -> pd.DataFrame | None:
    """Truth table ``name`` of a world (None where it has none); ``where``: (column, values), only the rows
    whose column holds one of the values (read filtered from Parquet: a sample's rows of a large world);
    ``columns``: only those (None: all)."""
    for ext in ("parquet", "csv"):
        p = Path(world_dir) / "truth" / f"{name}.{ext}"
        if not p.exists():
            continue
        if ext == "csv":
            df = pd.read_csv(p, dtype={"source_id": str}, usecols=columns)
            return df if where is None else df[member_of(df[where[0]].astype(str), pd.Index(where[1]).astype(str))]
        return _read_parquet_where(p, where, columns)
    return None


def _read_parquet_where(path, where: tuple[str, object] | None, columns: list[str] | None = None) -> pd.DataFrame:
    if where is None:
        return pd.read_parquet(path, columns=columns)
    import pyarrow as pa
    import pyarrow.parquet as pq

    col, values = where
    kind = pq.read_schema(path).field(col).type
    values = pd.unique(np.asarray(values))
    values = [str(v) for v in values] if (pa.types.is_string(kind) or pa.types.is_large_string(kind)) else values.tolist()
    return pd.read_parquet(path, columns=columns, filters=[(col, "in", values)])


def _key_rows(key_map, keys=None) -> pd.DataFrame:
    """The key map's records (a frame, or its Parquet file read filtered) of ``keys`` (None: all)."""
    cols = ["source_system", "source_id", "customer_key"]
    if isinstance(key_map, (str, Path)):
        return _read_parquet_where(key_map, None if keys is None else ("customer_key", keys), cols)
    return key_map[cols] if keys is None else key_map.loc[member_of(key_map["customer_key"], pd.Index(keys)), cols]


#: true customers a check against the planted truth fits on: a seeded random sample beyond this many
#: (the orders are then scanned in pieces and only the sample's are kept: bounded memory at any size)
TRUE_CUSTOMERS = 200_000


def true_customer_transactions(world_dir, src=None, events=None, customers=None) -> pd.DataFrame:
    """Transactions of a synthetic world keyed by the true customer (for checks against planted truth).

    ``src``: the run's validated :class:`~crmlab.sources.Sources` of that world (else read and
    validated again from ``world_dir``, which costs as much as the run's own loading step);
    ``events``: the run's :class:`~crmlab.events.CustomerEvents` of the same sources, whose order
    values are then reused (else built from ``src``); the orders' source records are read a file at a
    time, the events' orders a part at a time; ``customers``: the true customers to keep (None: all).
    Rows in the orders' order, labelled with their row numbers."""
    rt = _read_truth(Path(world_dir), "record_truth", None if customers is None else ("customer_id", customers))
    rt = rt.rename(columns={"customer_id": "customer_key"})
    src = src if src is not None else load(world_dir)
    events = events if events is not None else CustomerEvents.from_sources(src)      # orders with their values
    rows, owner, ids, n = [], [], [], 0
    for piece in src.pieces("orders", ["order_id", "source_system", "source_id"]):
        if customers is None:
            key, at = customer_keys(piece, rt, "orders"), np.arange(len(piece))
        else:
            key = _owners(piece, rt)
            at = np.flatnonzero(key >= 0)
            key = key[at]
        rows.append(at + n)
        owner.append(key)
        ids.append(piece["order_id"].to_numpy()[at])
        n += len(piece)
    rows, owner, ids = np.concatenate(rows), np.concatenate(owner), np.concatenate(ids)
    got, total = [], 0
    for r, df in events.order_pieces(["order_id", "order_date", "value", "channel"]):
        total += len(df)
        pos = np.searchsorted(rows, r)
        hit = (pos < len(rows)) & (rows[np.minimum(pos, len(rows) - 1)] == r)
        got.append(df[hit].assign(customer_key=owner[pos[hit]], _row=r[hit], _id=ids[pos[hit]]))
    tx = pd.concat(got).sort_values("_row", kind="stable")
    if total != n or not (tx["order_id"].to_numpy() == tx["_id"].to_numpy()).all():
        raise ValueError("events and sources describe different orders")
    return tx.set_index(pd.Index(tx["_row"].to_numpy()))[["customer_key", "order_date", "value", "channel"]]


def _owners(records: pd.DataFrame, rt: pd.DataFrame) -> np.ndarray:
    """The true customer of each of ``records`` (source_system, source_id) in ``rt``; -1 where not there."""
    left = pd.DataFrame({"source_system": records["source_system"].to_numpy(),
                         "source_id": records["source_id"].astype("string").to_numpy()})
    right = rt[["source_system", "source_id", "customer_key"]].astype({"source_id": "string"})
    return left.merge(right, on=["source_system", "source_id"], how="left")["customer_key"].fillna(-1).to_numpy(np.int64)


def true_customers(world_dir, most: int | None = TRUE_CUSTOMERS, seed: int = 0) -> tuple[np.ndarray | None, int]:
    """(the true customers a check fits on: None for all of them, else a seeded random sample of
    ``most``; how many the world has)."""
    ct = _read_truth(Path(world_dir), "customer_truth")
    ids = ct["customer_id"].to_numpy() if ct is not None else \
        _read_truth(Path(world_dir), "record_truth")["customer_id"].unique()
    if most is None or len(ids) <= most:
        return None, len(ids)
    return np.sort(np.random.default_rng(seed).choice(ids, most, replace=False)), len(ids)


def record_truth(world_dir, records: pd.DataFrame) -> np.ndarray | None:
    """The planted customer of each of ``records`` (source_system, source_id), in row order; None
    when ``world_dir`` has no truth files (real data). A record the world did not plant (a person a
    touchpoint identified) is a person of its own (a negative id)."""
    rt = _read_truth(Path(world_dir), "record_truth", columns=["source_system", "source_id", "customer_id"])
    if rt is None:
        return None
    keys = records[["source_system", "source_id"]].astype({"source_id": "string"})
    got = keys.merge(rt.astype({"source_id": "string"}), on=["source_system", "source_id"], how="left")["customer_id"]
    miss = got.isna().to_numpy()
    if miss.any():          # records the world did not plant (persons identified at a touchpoint): each its own
        got = got.to_numpy(dtype="float64", copy=True)
        got[miss] = -np.arange(1, miss.sum() + 1)
        return got.astype(np.int64)
    return got.to_numpy()


def true_customer_of(world_dir, key_map: pd.DataFrame, sample: bool = False) -> pd.Series | None:
    """customer_key -> the true customer most of its source records belong to (None without truth);
    ``sample``: ``key_map`` holds a sample's records, so only their truth is read (Parquet filters)."""
    rt = _read_truth(Path(world_dir), "record_truth", ("source_id", key_map["source_id"]) if sample else None)
    if rt is None:
        return None
    m = key_map[["source_system", "source_id", "customer_key"]].astype({"source_id": "string"}).merge(
        rt.astype({"source_id": "string"}), on=["source_system", "source_id"])
    top = m.groupby(["customer_key", "customer_id"]).size().rename("n").reset_index()
    top = top.sort_values("n", ascending=False).drop_duplicates("customer_key")
    return top.set_index("customer_key")["customer_id"]


def true_attrition_probability(world_dir, key_map, cutoff, horizon_days: int,
                               src=None, events=None, keys=None) -> pd.Series | None:
    """P(no order in ``[cutoff, cutoff + horizon)``) under the true process, per customer_key.

    Uses each true customer's own purchase rate and dropout probability and their purchases before
    the cut-off: P(alive) = 1 without repeat purchases, else
    (1 - p) e^(-lambda (T - t_x)) / ((1 - p) e^(-lambda (T - t_x)) + p); then
    P(attrition) = 1 - P(alive) (1 - e^(-lambda h)). The best any model of the history can do
    (campaign-driven orders aside). None when the world has no truth files. ``src``, ``events``:
    see :func:`true_customer_transactions`; ``key_map``: a frame or its Parquet file; ``keys``: the
    customer keys asked for (None: all; else only their records, truth and orders are read).
    """
    world_dir = Path(world_dir)
    got = _keyed_truth(world_dir, key_map, keys)
    if got is None:
        return None
    owner, ct = got
    cutoff = pd.Timestamp(cutoff)
    tx = true_customer_transactions(world_dir, src, events, None if keys is None else owner.unique())
    tx = tx[tx["order_date"] < cutoff]
    g = tx.groupby("customer_key")["order_date"]
    first, last, n = g.min(), g.max(), g.size()
    ct = ct.set_index("customer_id").reindex(first.index)
    week = pd.Timedelta(days=7)
    lam, p = ct["lambda_per_week"].to_numpy(), ct["p_dropout"].to_numpy()
    gap = ((cutoff - last) / week).to_numpy()
    stay = (1 - p) * np.exp(-lam * gap)
    alive = np.where(n.to_numpy() > 1, stay / (stay + p), 1.0)
    p_attr = pd.Series(1 - alive * (1 - np.exp(-lam * horizon_days / 7.0)), index=first.index)
    return owner.map(p_attr).dropna()


def true_life_stage(world_dir, key_map, most: int | None = None, seed: int = 0) -> tuple[pd.Series | None, int]:
    """(customer_key -> true life stage, None without truth files; how many customer keys the key map
    has). ``key_map``: a frame or its Parquet file; ``most``: at most this many keys, a seeded random
    sample of them (only their records and truth are read)."""
    if not (Path(world_dir) / "truth").is_dir():
        return None, 0
    keys, total = key_sample(key_map, most, seed)
    got = _keyed_truth(world_dir, key_map, keys)
    if got is None:
        return None, total
    owner, ct = got
    return owner.map(ct.set_index("customer_id")["life_stage"]).dropna(), total


def _keyed_truth(world_dir, key_map, keys=None) -> tuple[pd.Series, pd.DataFrame] | None:
    """(customer_key -> its true customer, those customers' truth) for ``keys`` (None: all; else only
    their records and truth are read), or None without truth files."""
    if not (Path(world_dir) / "truth").is_dir():
        return None
    owner = true_customer_of(world_dir, _key_rows(key_map, keys), sample=keys is not None)
    if owner is None:
        return None
    ct = _read_truth(Path(world_dir), "customer_truth", None if keys is None else ("customer_id", owner.unique()))
    return None if ct is None else (owner, ct)


def key_sample(key_map, most: int | None, seed: int = 0) -> tuple[pd.Index | None, int]:
    """(a seeded random sample of ``most`` of the key map's customer keys, None for all of them; how many
    there are). ``key_map``: a frame or its Parquet file (then only its key column is read, as Arrow)."""
    if isinstance(key_map, (str, Path)):
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        keys = pc.unique(pq.read_table(key_map, columns=["customer_key"]).column(0))
    else:
        keys = pd.unique(key_map["customer_key"])
    if most is None or len(keys) <= most:
        return None, len(keys)
    pick = np.sort(np.random.default_rng(seed).choice(len(keys), most, replace=False))
    got = keys.take(pick).to_pandas() if hasattr(keys, "to_pandas") else keys[pick]
    return pd.Index(got, dtype=object), len(keys)


def true_uplift(world_dir) -> pd.DataFrame | None:
    """Planted incremental response per campaign and life stage (None without truth files)."""
    return _read_truth(Path(world_dir), "uplift_truth")


def planted_rule_ranks(world_dir, rules: pd.DataFrame) -> pd.DataFrame | None:
    """Each planted association (``affinity_truth``) with its rank by lift among the mined ``rules``,
    its lift, whether it is customer-facing and the guard that held it back."""
    truth = _read_truth(Path(world_dir), "affinity_truth")
    if truth is None:
        return None
    ranked = rules.sort_values("lift", ascending=False).reset_index(drop=True)
    rows = []
    for _, t in truth.iterrows():
        rule = f"{t['antecedents']} -> {t['consequent']}"
        hit = ranked.index[ranked["rule"] == rule]
        r = ranked.loc[hit[0]] if len(hit) else None
        rows.append({"planted": rule, "kind": t["kind"],
                     f"rank by lift (of {len(ranked):,})": int(hit[0]) + 1 if len(hit) else None,
                     "lift": None if r is None else round(r["lift"], 1),
                     "customer-facing": None if r is None else bool(r["customer_facing"]),
                     "guard": None if r is None else r["guard"]})
    return pd.DataFrame(rows)


def btyd_check(world_dir, src, observation_end, events=None, most: int | None = TRUE_CUSTOMERS,
               seed: int = 0) -> pd.DataFrame | None:
    """BG/NBD fitted on the true customers' transactions (weeks) against the planted parameters:
    estimate, interval and whether the truth lies inside it; on a seeded random sample of ``most`` true
    customers when the world has more (``attrs``: ``customers`` fitted, ``of`` the world's). ``src``: the
    run's sources or a function returning them."""
    path = Path(world_dir) / "truth" / "truth.json"
    if not path.exists():
        return None
    meta = json.loads(path.read_text())
    src = src() if callable(src) else src                 # a function: the sources are read only with truth
    keep, total = true_customers(world_dir, most, seed)
    tx = true_customer_transactions(world_dir, src, events, keep)
    rfm = value.rfm_summary(tx, observation_end=observation_end)
    fit = value.BetaGeo().fit(rfm)
    check = fit.summary_.assign(truth=[meta["btyd"][k] for k in fit.summary_.index])
    check["inside 95% CI"] = (check["ci_low"] <= check["truth"]) & (check["truth"] <= check["ci_high"])
    check.attrs.update(customers=len(rfm), of=total)
    return check


def uplift_check(world_dir, by_life_stage: pd.DataFrame):
    """Measured increments per campaign and true life stage (``by_life_stage``: the lift table by
    :func:`true_life_stage`) against the planted ones.

    Returns (table with ``inside_ci``, the campaigns planted with no effect), or None without truth files.
    """
    truth = true_uplift(world_dir)
    if truth is None:
        return None
    j = by_life_stage.merge(truth[["campaign_id", "life_stage", "true_incremental_rate"]], on=["campaign_id", "life_stage"])
    j["inside_ci"] = (j["ci_low"] <= j["true_incremental_rate"]) & (j["true_incremental_rate"] <= j["ci_high"])
    null = truth.groupby("campaign_id")["uplift_if_alive"].apply(lambda s: (s == 0).all())
    return j, list(null.index[null])


#: holdout customers the attrition check scores (a random sample beyond this many)
CHECK_ROWS = 100_000


def attrition_check(world_dir, key_map, result, ev, cut: dict, P: dict, seed: int = 0, src=None) -> dict | None:
    """The attrition holdout scored three ways: this run's model, the other model kind refitted on the
    same features, and the true process (:func:`true_attrition_probability`, the best any model can
    do), on at most ``CHECK_ROWS`` holdout customers (a seeded random sample). Returns
    ``{name: (y, p)}`` for :func:`crmlab.propensity_report.plot_evaluation`, or None. ``key_map``: a
    frame, its Parquet file (only the sample's records are read) or None; ``src``: the run's sources,
    or a function returning them (called only when there is truth)."""
    if key_map is None or not (Path(world_dir) / "truth").is_dir():
        return None
    rows = np.arange(len(result.holdout_y))
    if len(rows) > CHECK_ROWS:                      # an evaluation on 100,000 customers is exact enough
        rows = np.sort(np.random.default_rng(seed).choice(rows, CHECK_ROWS, replace=False))
    oracle = true_attrition_probability(world_dir, key_map, cut["valid"], P["horizon_days"],
                                        src() if callable(src) else src, ev, keys=result.holdout_X.index[rows])
    if oracle is None:
        return None
    X = result.holdout_X.iloc[rows]
    y = pd.Series(result.holdout_y[rows], index=X.index)
    other = "hgb" if P["model"] == "logistic" else "logistic"
    alt = targets.refit_as(result, ev, cut, P, kind=other, seed=seed)
    both = {f"{P['model']} (this run)": (y, result.holdout_p[rows]), other: (y, alt.predict_proba(X)[:, 1])}
    known = member_of(y.index, oracle.index)
    both["true process"] = (y[known], oracle.reindex(y.index[known]).to_numpy())
    return both


def uplift_summary(check: pd.DataFrame, null_campaigns: list, lift: pd.DataFrame,
                   customers: tuple[int, int] | None = None) -> str:
    """For reviewers: planted increments inside their intervals, and whether each campaign planted with
    no effect was (wrongly) declared significant; ``customers``: (sampled, of all) where the increments
    were measured on the contacts of a random sample of the customers."""
    sig = lift.set_index("campaign_id")["significant"]
    verdicts = ", ".join(f"{c} ({'declared significant: WRONG' if sig.get(c) else 'not significant: right'})"
                         for c in null_campaigns) or "none"
    sample = ("" if customers is None else f" (measured on the contacts of a random sample of {customers[0]:,} of the "
              f"{customers[1]:,} customers: intervals wider than on all of them)")
    return (f"**{int(check['inside_ci'].sum())} of {len(check)}** planted increments inside their 95% intervals{sample}. "
            f"Campaigns planted with no effect (judged on all contacts): {verdicts}.")
