"""Affinity: kernels vs brute force, identical results to mlxtend, Groceries figures, guards, recommendations."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlxtend.frequent_patterns import association_rules as mlx_rules
from mlxtend.frequent_patterns import fpgrowth

from crmlab import affinity, datasets
from crmlab.affinity import Baskets
from crmlab.errors import CrmlabError
from crmlab.kernels import baskets as K

import naive

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def groceries() -> Baskets:
    return datasets.read_groceries(ROOT / "data" / "groceries" / "groceries.csv")


def _random_baskets(seed, n=600, m=25):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.4, m)
    lists = [set(np.flatnonzero(rng.random(m) < p).tolist()) for _ in range(n)]
    lists[0] = set()                                            # an empty basket counts in the denominator
    return lists


@pytest.mark.parametrize("seed,min_count,max_len,bits", [(0, 30, 6, True), (1, 12, 4, True), (2, 60, 2, True),
                                                          (4, 12, 8, False)])
def test_itemset_kernel_matches_brute_force(seed, min_count, max_len, bits, monkeypatch):
    if not bits:                                                # the list-merge path of large inputs
        monkeypatch.setattr(K, "BITSET_BYTES", 0)
    lists = _random_baskets(seed)
    indptr = np.r_[0, np.cumsum([len(b) for b in lists])]
    indices = np.array([i for b in lists for i in sorted(b)], dtype=np.int32)
    flat, lens, counts = K.frequent_itemsets(indptr, indices, 25, min_count, max_len)
    starts = np.r_[0, np.cumsum(lens)[:-1]]
    got = {frozenset(flat[s:s + n].tolist()): int(c) for s, n, c in zip(starts, lens, counts)}
    assert got == naive.itemsets_ref(lists, min_count, max_len)
    assert np.all(np.diff(lens) >= 0)


@pytest.mark.parametrize("parallel", [False, True])
def test_pair_counts_on_long_baskets(parallel, monkeypatch):
    """Finding #14: baskets with more than 64 frequent items crashed the parallel pair count
    ("Sizes of ... do not match"); both paths must equal brute force on long, skewed baskets."""
    monkeypatch.setattr(K, "SERIAL_PAIRS", 0 if parallel else 10**12)
    rng = np.random.default_rng(14)
    n_items = 384
    p = rng.zipf(1.6, n_items).astype(float)
    p /= p.sum()
    sizes = rng.integers(1, 121, 3000)
    sizes[:5] = [384, 300, 200, 150, 121]                        # a few very long baskets
    lists = [set(rng.choice(n_items, size=min(s, n_items), replace=False, p=p).tolist()) for s in sizes]
    indptr = np.r_[0, np.cumsum([len(b) for b in lists])]
    indices = np.array([i for b in lists for i in sorted(b)], dtype=np.int32)
    a, b, c = K.pair_counts(indptr, indices, n_items, 5)
    assert dict(zip(zip(a.tolist(), b.tolist()), c.tolist())) == naive.pair_counts_ref(lists, 5)
    assert np.array_equal(K.item_counts(indptr, indices, n_items), naive.item_counts_ref(lists, n_items))


def test_same_itemsets_and_rules_as_mlxtend():
    lists = _random_baskets(3, n=800, m=20)
    b = Baskets.from_lists(lists)
    onehot = b.to_onehot()
    ours = affinity.frequent_itemsets(b, min_support=0.03, use_colnames=True)
    ref = fpgrowth(onehot, min_support=0.03, use_colnames=True)
    assert dict(zip(ours["itemsets"], ours["support"].round(12))) == dict(zip(ref["itemsets"], ref["support"].round(12)))
    r_ours = affinity.association_rules(ours, metric="confidence", min_threshold=0.3)
    r_ref = mlx_rules(ref, num_itemsets=len(onehot), metric="confidence", min_threshold=0.3)
    key = ["antecedents", "consequents"]
    merged = r_ours.merge(r_ref, on=key, suffixes=("", "_mlx"))
    assert len(merged) == len(r_ours) == len(r_ref)
    for col in affinity.MLXTEND_COLUMNS[2:]:
        np.testing.assert_allclose(merged[col].to_numpy(float), merged[f"{col}_mlx"].to_numpy(float), rtol=1e-9,
                                   err_msg=col)
    # the one-hot (mlxtend) input gives the same result
    again = affinity.frequent_itemsets(onehot, min_support=0.03, use_colnames=True)
    assert set(again["itemsets"]) == set(ours["itemsets"])


@pytest.mark.parametrize("support,expected", [(0.01, 333), (0.005, 1001), (0.001, 13492)])
def test_groceries_itemset_counts(groceries, support, expected):
    assert groceries.n_baskets == 9835 and groceries.n_items == 169
    assert len(affinity.frequent_itemsets(groceries, min_support=support)) == expected


def test_groceries_rules_as_arules_and_mlxtend(groceries):
    fi = affinity.frequent_itemsets(groceries, min_support=0.001, use_colnames=True)
    single = affinity.association_rules(fi, metric="confidence", min_threshold=0.5, max_consequent_len=1)
    anysize = affinity.association_rules(fi, metric="confidence", min_threshold=0.5)
    assert len(single) == 5668 and len(anysize) == 5829
    assert single["significant"].all()                          # confident rules here are all significant
    every = affinity.association_rules(fi, metric="support", min_threshold=0.001, max_consequent_len=1)
    weak = every[~every["significant"]]
    assert len(weak) > 1000                                     # frequent but not significant: marked
    assert weak["lift"].median() < every.loc[every["significant"], "lift"].median()


def test_groceries_identical_to_mlxtend_at_0005(groceries):
    onehot = groceries.to_onehot()
    ref = fpgrowth(onehot, min_support=0.005, use_colnames=True)
    ours = affinity.frequent_itemsets(groceries, min_support=0.005, use_colnames=True)
    assert set(ref["itemsets"]) == set(ours["itemsets"])
    rr = mlx_rules(ref, num_itemsets=len(onehot), metric="lift", min_threshold=1.2)
    ro = affinity.association_rules(ours, metric="lift", min_threshold=1.2)
    assert set(zip(rr["antecedents"], rr["consequents"])) == set(zip(ro["antecedents"], ro["consequents"]))


def test_significance_and_fdr():
    p = np.array([0.001, 0.02, 0.04, 0.5])
    np.testing.assert_allclose(affinity.benjamini_hochberg(p), [0.004, 0.04, 0.05333333, 0.5])
    from scipy.stats import fisher_exact

    lists = _random_baskets(4, n=300, m=10)
    fi = affinity.frequent_itemsets(Baskets.from_lists(lists), min_support=0.05)
    rules = affinity.association_rules(fi, metric="support", min_threshold=0.05)
    for _, r in rules.head(20).iterrows():
        a, c, ac, n = r["n_antecedent"], r["n_consequent"], r["n_both"], 300
        table = [[ac, a - ac], [c - ac, n - a - c + ac]]
        assert r["p_value"] == pytest.approx(fisher_exact(table, alternative="greater")[1], rel=1e-9)


def test_guards():
    lists = [{"quilt", "bra"}] * 30 + [{"quilt"}] * 10 + [{"bread", "butter"}] * 40 + [{"bread"}] * 20 + [{"milk"}] * 100
    fi = affinity.frequent_itemsets(Baskets.from_lists(lists), min_support=0.01, use_colnames=True)
    rules = affinity.association_rules(fi, metric="confidence", min_threshold=0.1)
    g = affinity.guard_rules(rules, sensitive_items={"bra"}, min_lift=1.0)
    quilt_bra = g[(g["antecedents"] == frozenset({"quilt"})) & (g["consequents"] == frozenset({"bra"}))].iloc[0]
    assert not quilt_bra["customer_facing"] and quilt_bra["guard"] == "sensitive item in consequent"
    bread = g[(g["antecedents"] == frozenset({"bread"})) & (g["consequents"] == frozenset({"butter"}))].iloc[0]
    assert bread["customer_facing"]
    capped = affinity.guard_rules(rules, sensitive_items={"bra"}, max_rules=1)
    assert capped["customer_facing"].sum() == 1


def test_recommender_kernel_matches_reference():
    lists = _random_baskets(5, n=300, m=30)
    b = Baskets.from_lists(lists)
    rec = affinity.ItemRecommender(k=4, neighbours=8, min_co=3).fit(b)
    sim = {}
    for i in range(b.n_items):
        for q in range(rec.nbr_ptr_[i], rec.nbr_ptr_[i + 1]):
            sim.setdefault(int(b.items[i]), {})[int(b.items[rec.nbr_idx_[q]])] = rec.nbr_sim_[q]
    banned = {3, 7}
    out = rec.recommend(b, exclude_items=banned)
    pop = {int(b.items[j]): rec.popularity_[j] for j in range(b.n_items)}
    ref = naive.top_k_ref(lists, sim, banned, 4, [pop.get(j, 0) for j in range(30)])
    got = out.groupby("customer")["item"].agg(list)
    for c, items in enumerate(ref):
        assert got.get(c, []) == items, c
    assert not out["item"].isin(banned).any()


@pytest.mark.parametrize("k", [1, 4, 40])
def test_popularity_baseline_kernel_matches_reference(k):
    """top_k_popular against its plain reference, including k above the items a basket can get (-1 padding)."""
    from crmlab.kernels import recommend as R

    lists = _random_baskets(9, n=200, m=30)
    b = Baskets.from_lists(lists)
    rng = np.random.default_rng(9)
    popularity = rng.integers(0, 5, b.n_items).astype(float)        # many ties
    banned = np.zeros(b.n_items, bool)
    banned[[2, 5]] = True
    items, scores = R.top_k_popular(b.indptr, b.indices, popularity, banned, k)
    baskets = [set(b.indices[b.indptr[i]:b.indptr[i + 1]].tolist()) for i in range(b.n_baskets)]
    ref = naive.top_k_popular_ref(baskets, popularity, {2, 5}, k)
    for i, want in enumerate(ref):
        got = [(int(j), float(s)) for j, s in zip(items[i], scores[i]) if j >= 0]
        assert got == want, i
        assert (items[i][len(want):] == -1).all()


def test_synthetic_planted_affinities_and_sensitive_pair(world):
    from crmlab import sources

    src = sources.load(world)
    names = src["products"].set_index("product_id")["product_name"]
    b = Baskets.from_frame(src["order_lines"], "order_id", "product_id", items=src["products"]["product_id"])
    fi = affinity.frequent_itemsets(b, min_support=0.002, max_len=3, use_colnames=True)
    rules = affinity.association_rules(fi, metric="lift", min_threshold=1.0)
    sensitive = set(src["products"].loc[src["products"]["sensitive"], "product_id"])
    g = affinity.guard_rules(rules, sensitive_items=sensitive, min_lift=2.0)
    t = affinity.rules_table(g, names)
    pairs = t[(t["antecedents"].str.count(r"\|") == 0) & (t["consequents"].str.count(r"\|") == 0)]
    top = pairs.sort_values("lift", ascending=False).head(25)["rule"].tolist()
    for rule in ("Printer -> Ink Cartridge", "Tent -> Sleeping Bag", "Tortilla Chips -> Salsa Dip",
                 "Charcoal -> Firelighters", "Spaghetti -> Tomato Pasta Sauce"):
        assert rule in top, rule
    bra = t[t["rule"] == "Duvet Quilt -> Push-up Bra"].iloc[0]
    assert bra["lift"] > 5 and bra["significant"] and not bra["customer_facing"]
    assert bra["guard"] == "sensitive item in consequent"


def test_bad_input():
    with pytest.raises(ValueError, match="min_support"):
        affinity.frequent_itemsets(Baskets.from_lists([{1, 2}]), min_support=0)
    with pytest.raises(ValueError, match="min_support"):
        affinity.frequent_itemsets(Baskets.from_lists([{1, 2}]), min_support=1.5)
    with pytest.raises(CrmlabError, match="not in the item table"):
        Baskets.from_frame(pd.DataFrame({"o": [1, 1], "p": ["A", "Z"]}), "o", "p", items=["A", "B"])
    with pytest.raises(CrmlabError, match="no items"):
        Baskets.from_lists([set(), set()])
    with pytest.raises(CrmlabError, match="no frequent itemsets"):
        affinity.association_rules(pd.DataFrame(columns=["support", "itemsets"]))


def test_mining_work_split_covers_every_first_item_once_and_balances():
    est = np.random.default_rng(0).pareto(1.5, 157)
    parts = K._balanced(est, 2)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(157))
    loads = [est[p].sum() for p in parts]
    assert abs(loads[0] - loads[1]) <= est.max()                # greedy largest-first bound


def test_recommendation_evaluation_equals_the_set_reference():
    """Integer-coded evaluation = the sets-of-tuples reference: repeats, items bought before, customers
    without recommendations or without new items, ranks past k."""
    rng = np.random.default_rng(3)
    cust = [f"K{i}" for i in range(300)]
    items = [f"P{i}" for i in range(60)]
    frame = lambda n: pd.DataFrame({"customer": rng.choice(cust, n), "item": rng.choice(items, n)})   # noqa: E731
    before, after = frame(3000), frame(900)
    recs = frame(2500).assign(rank=rng.integers(1, 15, 2500))
    recs = recs[recs["customer"] != "K7"]                       # K7 has no list
    for k in (1, 5, 10):
        got = affinity.evaluate_recommendations(recs, before, after, k)
        want = naive.evaluate_recommendations_ref(recs, before, after, k)
        assert got["customers"] == want["customers"] > 0
        assert all(abs(got[m] - want[m]) < 1e-12 for m in want), (got, want)


def test_take_selects_baskets_and_sampled_evaluation_is_an_estimate():
    lists = _random_baskets(11, n=400, m=30)
    b = Baskets.from_lists(lists)
    rows = [5, 0, 399, 17]
    t = b.take(rows)
    assert t.n_baskets == 4 and t.items.equals(b.items)
    for k, r in enumerate(rows):
        assert set(t.items[t.indices[t.indptr[k]:t.indptr[k + 1]]]) == set(b.items[b.indices[b.indptr[r]:b.indptr[r + 1]]])
    # evaluation on a sample of customers: the same as on all when the sample is everyone, close otherwise
    rng = np.random.default_rng(2)
    n = 3000
    lines = pd.DataFrame({"customer_key": rng.integers(0, n, 60_000), "product_id": rng.zipf(1.5, 60_000) % 40,
                          "order_date": pd.Timestamp("2025-01-01") + pd.to_timedelta(rng.integers(0, 365, 60_000), "D")})
    cut = pd.Timestamp("2025-10-01")
    full = affinity.holdout_evaluation(lines, cut, 5)
    pd.testing.assert_frame_equal(affinity.holdout_evaluation(lines, cut, 5, max_customers=n), full)
    part = affinity.holdout_evaluation(lines, cut, 5, max_customers=1500, random_state=1)
    assert part["customers"].max() < full["customers"].min()
    np.testing.assert_allclose(part["hit_rate@5"], full["hit_rate@5"], atol=0.05)


def test_deep_itemsets_come_out_in_item_order_whatever_the_split():
    """Local mining with 1 or 2 threads and mining by 1 or 7 first-item groups list itemsets of each
    size in the same (item) order, so rule tables do not depend on how the search was split."""
    import numba

    rng = np.random.default_rng(9)
    lists = [rng.choice(40, size=rng.integers(2, 15), replace=False).tolist() for _ in range(1500)]
    b = affinity.Baskets.from_lists(lists)
    runs = []
    for t in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
        numba.set_num_threads(t)
        its = affinity.frequent_itemsets(b, min_support=0.01, columnar=True)
        runs.append((its.flat.tolist(), its.lens.tolist(), its.counts.tolist()))
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    deep = np.flatnonzero(its.lens >= 3)
    assert len(deep) > 50 and runs[0] == runs[1]
    ptr = np.r_[0, np.cumsum(its.lens)]
    sets = [tuple(its.flat[ptr[i]:ptr[i + 1]]) for i in deep]
    assert sets == sorted(sets, key=lambda s: (len(s), s))


def test_roll_up_by_codes_equals_the_baskets_of_the_coarse_labels():
    """Baskets rolled up to categories (long, skewed baskets; an empty basket; a category only an unused
    item has; unmapped items outside the baskets) equal the baskets built from the (basket, category)
    rows, the plain way: same vocabulary, baskets, ids; empty baskets kept."""
    rng = np.random.default_rng(5)
    n, m = 3000, 400
    sizes = np.minimum(rng.zipf(1.6, n), 150)
    sizes[17] = 0
    rows = pd.DataFrame({"basket": np.repeat(np.arange(n), sizes),
                         "item": [f"p{i:03d}" for i in rng.integers(0, m - 1, sizes.sum())]})
    b = Baskets.from_frame(rows, "basket", "item", items=[f"p{i:03d}" for i in range(m)])._padded(n, np.arange(n))
    assert b.n_baskets == n and b.indptr[18] == b.indptr[17]
    cats = pd.Series([f"c{i % 37:02d}" for i in range(m)], index=b.items)
    cats.iloc[-1] = "only_unused"                      # p399 is never bought
    got = b.roll_up(cats)
    pairs = pd.DataFrame({"b": np.repeat(np.arange(b.n_baskets), np.diff(b.indptr)),
                          "cat": cats.to_numpy()[b.indices]})
    want = Baskets.from_frame(pairs, "b", "cat")._padded(b.n_baskets, b.ids)
    assert list(got.items) == list(want.items) and "only_unused" not in set(got.items)
    np.testing.assert_array_equal(got.indptr, want.indptr)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.ids, want.ids)
    assert got.indptr[18] == got.indptr[17]                             # basket 17 stays, empty
    nan = cats.copy()
    nan.iloc[int(b.indices[0])] = None
    with pytest.raises(CrmlabError, match="map to a missing value"):
        b.roll_up(nan)
