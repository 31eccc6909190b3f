"""Association-rule kernels: rules equal to brute force on random itemset tables, p-values equal to
scipy's, the columnar and frozenset forms equal, bounded top-N equal to the full run."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import fisher_exact

from crmlab import affinity
from crmlab.affinity import Baskets, Itemsets, Rules
from crmlab.errors import CrmlabError
from crmlab.kernels import baskets as K
from crmlab.kernels import rules as RK

import naive


def _patterned_baskets(seed, n=400, m=30):
    """Baskets drawn from a few overlapping item groups plus noise: itemsets up to ~10 items long."""
    rng = np.random.default_rng(seed)
    groups = [rng.choice(m, size=rng.integers(4, 9), replace=False) for _ in range(5)]
    lists = []
    for _ in range(n):
        b = set(rng.choice(m, size=rng.integers(0, 4)).tolist())
        for g in groups:
            if rng.random() < 0.25:
                b |= set(g[rng.random(len(g)) < 0.85].tolist())
        lists.append(b)
    return lists


def _itemsets(lists, min_count, shuffle_seed=None):
    b = Baskets.from_lists(lists)
    flat, lens, counts = K.frequent_itemsets(b.indptr, b.indices, b.n_items, min_count)
    if shuffle_seed is not None:                                 # the kernels take itemsets in any order
        starts = np.r_[0, np.cumsum(lens)[:-1]]
        order = np.random.default_rng(shuffle_seed).permutation(len(lens))
        flat = np.concatenate([flat[starts[i]:starts[i] + lens[i]] for i in order])
        lens, counts = lens[order], counts[order]
    its = Itemsets(flat, lens, counts, b.items, b.n_baskets)
    ptr = np.r_[0, np.cumsum(lens)]
    table = {frozenset(b.items[flat[ptr[i]:ptr[i + 1]]].tolist()): int(counts[i]) for i in range(len(lens))}
    return its, table


def _as_dict(rules: Rules) -> dict:
    m = rules.measures
    return {(a, c): (int(x), int(y), int(z)) for a, c, x, y, z in
            zip(rules.antecedents(), rules.consequents(), m["n_antecedent"], m["n_consequent"], m["n_both"])}


@pytest.mark.parametrize("seed,min_count,metric,threshold,max_cons,parallel,chunk", [
    (0, 30, "confidence", 0.5, None, False, None),       # pruned level-wise consequents
    (1, 25, "confidence", 0.7, 1, True, None),           # single consequents, parallel measures
    (2, 40, "lift", 1.5, None, False, 500),              # no pruning; many small chunks
    (3, 30, "leverage", 0.01, 2, True, 7),
    (4, 30, "all_confidence", 0.3, None, False, None),
    (5, 40, "confidence", 0.0, None, True, 1),           # every split of every itemset
])
def test_rules_equal_brute_force(seed, min_count, metric, threshold, max_cons, parallel, chunk, monkeypatch):
    monkeypatch.setattr(RK, "PARALLEL_RULES", 0 if parallel else 10**12)
    if chunk is not None:
        monkeypatch.setattr(RK, "CHUNK_RULES", chunk)
    its, table = _itemsets(_patterned_baskets(seed), min_count, shuffle_seed=seed)
    assert its.lens.max() >= 7                                   # long itemsets: deep consequent levels
    rules = affinity.association_rules(its, metric=metric, min_threshold=threshold, max_consequent_len=max_cons)
    assert isinstance(rules, Rules)
    want = naive.rules_ref(table, its.n_baskets, metric, threshold, max_cons)
    assert len(want) > 50
    assert _as_dict(rules) == want
    assert len(rules) == len(want)                               # no rule twice


def test_measures_and_fdr_against_scipy_and_reference():
    its, table = _itemsets(_patterned_baskets(7), 60)
    rules = affinity.association_rules(its, metric="support", min_threshold=0.0, fdr=0.1)
    assert 1000 < len(rules) < 5000 and (~rules["significant"]).any() and rules["significant"].any()
    m = rules.measures
    n = its.n_baskets
    sA, sC, sAC = m["n_antecedent"] / n, m["n_consequent"] / n, m["n_both"] / n
    np.testing.assert_allclose(m["confidence"], sAC / sA, rtol=1e-15)
    np.testing.assert_allclose(m["lift"], sAC / sA / sC, rtol=1e-15)
    np.testing.assert_allclose(m["support"], sAC, rtol=1e-15)
    p = [fisher_exact([[ac, a - ac], [c - ac, n - a - c + ac]], alternative="greater")[1]
         for a, c, ac in zip(m["n_antecedent"], m["n_consequent"], m["n_both"])]
    np.testing.assert_allclose(m["p_value"], p, rtol=1e-9, atol=1e-300)
    p = m["p_value"].to_numpy()
    order = np.argsort(p)
    q = np.minimum.accumulate((p[order] * len(p) / np.arange(1, len(p) + 1))[::-1])[::-1]
    np.testing.assert_allclose(m["q_value"].to_numpy()[order], np.minimum(q, 1), rtol=1e-12)
    assert (m["significant"] == (m["q_value"] <= 0.1)).all()


@pytest.mark.parametrize("n", [50, 9835, 1_000_000])
def test_fisher_p_values_equal_scipy(n):
    rng = np.random.default_rng(n)
    rows = []
    for _ in range(300):
        a, c = rng.integers(1, n + 1, 2)
        lo, hi = max(0, a + c - n), min(a, c)
        rows.append((rng.integers(lo, hi + 1), a, c))
    mid = n // 2
    rows += [(0, 1, 1), (1, 1, 1), (min(mid, 7), mid, mid), (mid, mid, mid), (1, n, 1), (4, 5, n - 1), (5, 5, n - 1)]
    ab, a, c = map(np.array, zip(*rows))
    got = RK.fisher_greater(ab, a, c, n)
    want = [fisher_exact([[x, y - x], [z - x, n - y - z + x]], alternative="greater")[1] for x, y, z in rows]
    # the log-factorial terms carry ~1 ulp of log(n!) each: ~1e-9 relative up to 1e5 baskets, 3e-8 at 1e6
    rtol = max(1e-9, 10 * math.lgamma(n + 1) * np.finfo(float).eps)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-300)
    with pytest.raises(ValueError, match="inconsistent"):
        RK.fisher_greater([5], [3], [9], n)


def test_columnar_and_frozenset_forms_equal():
    lists = _patterned_baskets(11)
    b = Baskets.from_lists(lists)
    frame_in = affinity.frequent_itemsets(b, min_support=0.05, use_colnames=True)
    cols_in = affinity.frequent_itemsets(b, min_support=0.05, columnar=True)
    assert cols_in.to_frame().equals(frame_in)
    via_frame = affinity.association_rules(frame_in, metric="confidence", min_threshold=0.6)
    via_cols = affinity.association_rules(cols_in, metric="confidence", min_threshold=0.6)
    assert isinstance(via_frame, pd.DataFrame) and isinstance(via_cols, Rules)
    key = ["antecedents", "consequents"]
    a = via_frame.sort_values("lift", kind="stable").set_index(key).sort_index()
    c = via_cols.to_frame().sort_values("lift", kind="stable").set_index(key).sort_index()
    pd.testing.assert_frame_equal(a, c)
    # guards and the readable table, from either form
    sens = {int(lists[1].pop()) if lists[1] else 0}
    ga = affinity.rules_table(affinity.guard_rules(via_frame, sens, min_lift=1.2, max_rules=40))
    gc = affinity.rules_table(affinity.guard_rules(via_cols, sens, min_lift=1.2, max_rules=40))
    assert list(ga.columns) == list(gc.columns)
    pd.testing.assert_frame_equal(ga.sort_values("rule").reset_index(drop=True),
                                  gc.sort_values("rule").reset_index(drop=True))
    assert gc["guard"].eq("sensitive item in consequent").any() or gc["guard"].eq("sensitive item in antecedent").any()
    # take keeps rows and parts together
    sub = via_cols.take([3, 0, 5])
    assert sub.to_frame().reset_index(drop=True).equals(via_cols.to_frame().iloc[[3, 0, 5]].reset_index(drop=True))


@pytest.mark.parametrize("chunk", [None, 500])
def test_max_rules_keeps_the_strongest_with_full_q_values(chunk, monkeypatch):
    if chunk:
        monkeypatch.setattr(RK, "CHUNK_RULES", chunk)
    its, _ = _itemsets(_patterned_baskets(12), 30)
    full = affinity.association_rules(its, metric="confidence", min_threshold=0.4)
    top = affinity.association_rules(its, metric="confidence", min_threshold=0.4, max_rules=25)
    assert len(full) > 100 and len(top) == 25
    f = full.to_frame()
    want = f.iloc[np.sort(np.argsort(-f["lift"].to_numpy(), kind="stable")[:25])].reset_index(drop=True)
    pd.testing.assert_frame_equal(top.to_frame(), want)           # q-values over the whole family too


def test_not_downward_closed_is_a_clear_error():
    df = pd.DataFrame({"support": [0.5, 0.4, 0.3], "itemsets": [frozenset("a"), frozenset("b"), frozenset("abc")]})
    with pytest.raises(CrmlabError, match="not downward closed"):
        affinity.association_rules(df, num_itemsets=100, min_threshold=0.1)
    df = pd.DataFrame({"support": [0.5, 0.4, 0.2, 0.1], "itemsets": [frozenset("a"), frozenset("b"), frozenset("c"),
                                                                      frozenset("abc")]})
    with pytest.raises(CrmlabError, match="not downward closed"):                  # pairs missing
        affinity.association_rules(df, num_itemsets=100, min_threshold=0.1)
    with pytest.raises(CrmlabError, match="metric must be one of"):
        affinity.association_rules(df, num_itemsets=100, metric="lfit")
    with pytest.raises(CrmlabError, match="frozensets"):
        affinity.association_rules(pd.DataFrame({"support": [0.5], "itemsets": ["ab"]}), num_itemsets=10)


def test_groceries_columnar_counts(groceries_baskets=None):
    from pathlib import Path

    from crmlab import datasets

    g = datasets.read_groceries(Path(__file__).resolve().parents[1] / "data" / "groceries" / "groceries.csv")
    its = affinity.frequent_itemsets(g, min_support=0.001, columnar=True)
    assert len(its) == 13492
    single = affinity.association_rules(its, metric="confidence", min_threshold=0.5, max_consequent_len=1)
    anysize = affinity.association_rules(its, metric="confidence", min_threshold=0.5)
    assert len(single) == 5668 and len(anysize) == 5829
    t = affinity.rules_table(single)
    assert t["rule"].str.contains(" -> ").all() and not t["antecedents"].str.contains(",").any()
