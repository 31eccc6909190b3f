"""Record matching: FEBRL 4 without labels, the synthetic world, stable keys, incremental matching."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crmlab import datasets, identity, matching_report, sources
from crmlab.errors import CrmlabError
from crmlab.kernels import graph
from crmlab.kernels import strings as S

import naive

ROOT = Path(__file__).resolve().parents[1]


def test_block_pairs_and_components_match_brute_force():
    rng = np.random.default_rng(0)
    codes = rng.integers(-1, 30, 400)
    left, right, skipped = graph.block_pairs(codes, max_block=20)
    ref = naive.block_pairs_ref(codes, 20)
    assert list(zip(left.tolist(), right.tolist())) == ref                  # same pairs, same order
    assert skipped == int(np.sum(np.bincount(codes[codes >= 0]) > 20))
    assert graph.sample_block_pairs(codes, 20, 1, np.random.default_rng(1))[3] == len(ref)   # counted, not made
    a, b = rng.integers(0, 300, 200), rng.integers(0, 300, 200)
    assert graph.connected_components(300, a, b).tolist() == naive.components_ref(300, a, b)


@pytest.mark.parametrize("n_levels", [[3, 4, 2, 5], [400] * 4], ids=["counted", "sorted"])
def test_level_patterns_number_each_pair(n_levels):
    """The distinct level rows with their counts, and each pair's number among them (the Dask parts
    keep that number instead of a byte per comparison): by counting codes, or by sorting them when
    there are too many possible patterns to count."""
    rng = np.random.default_rng(3)
    L = np.column_stack([rng.integers(-1, min(n, 6), 5_000) for n in n_levels]).astype(np.int8)
    L[::7, 1] = -1                                                      # missing levels
    rows, counts, index = identity._patterns(L, n_levels, inverse=True)
    ref = sorted({tuple(r) for r in L.tolist()})
    assert [tuple(r) for r in rows.tolist()] == ref                     # distinct, in code order
    assert (rows[index] == L).all()
    assert counts.tolist() == [int((L == r).all(axis=1).sum()) for r in rows]
    assert np.array_equal(identity._patterns(L, n_levels)[1], counts)
    empty = identity._patterns(L[:0], n_levels, inverse=True)
    assert empty[0].shape == (0, len(n_levels)) and len(empty[2]) == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_block_pairs_are_the_numbered_pairs(seed):
    """Training samples pairs without making them all (283M pairs at 1M customers, #15)."""
    rng = np.random.default_rng(seed)
    codes = np.where(rng.random(3000) < 0.1, -1, rng.zipf(1.6, 3000) % 97)     # skewed: a few large blocks
    ref = naive.block_pairs_ref(codes, 400)
    k = len(ref) // 7
    left, right, skipped, total = graph.sample_block_pairs(codes, 400, k, np.random.default_rng(seed))
    picks = np.sort(np.random.default_rng(seed).choice(len(ref), k, replace=False))
    assert total == len(ref) and list(zip(left.tolist(), right.tolist())) == [ref[i] for i in picks]
    every = graph.sample_block_pairs(codes, 400, len(ref), rng)            # k >= all: every pair, as block_pairs
    assert list(zip(every[0].tolist(), every[1].tolist())) == ref


@pytest.mark.parametrize("seed", [0, 1])
def test_numbered_pairs_of_blocks_held_elsewhere(seed):
    """Dask's training samples: the pair-making blocks (pair_blocks) laid end to end and numbered by
    nth_block_pairs name the pairs sample_block_pairs draws with the same picks."""
    rng = np.random.default_rng(seed)
    codes = np.where(rng.random(3000) < 0.1, -1, rng.zipf(1.6, 3000) % 97)
    ref = naive.block_pairs_ref(codes, 400)
    order, starts, kept, skipped = graph.pair_blocks(codes, 400)
    assert skipped == graph.block_pairs(codes, 400)[2]
    size = starts[kept + 1] - starts[kept]
    assert (size > 1).all() and (size <= 400).all()
    flat = np.r_[0, np.cumsum(size)]
    picks = np.sort(rng.choice(len(ref), len(ref) // 5, replace=False))
    a, b = graph.nth_block_pairs(flat, 400, picks)
    g = np.searchsorted(flat, a, side="right") - 1
    ra, rb = order[starts[kept[g]] + a - flat[g]], order[starts[kept[g]] + b - flat[g]]
    got = list(zip(np.minimum(ra, rb).tolist(), np.maximum(ra, rb).tolist()))
    assert got == [ref[i] for i in picks]
    with pytest.raises(ValueError, match="ascending"):
        graph.nth_block_pairs(flat, 400, picks[::-1])


def test_soundex():
    s = identity.soundex(pd.Series(["robert", "rupert", "tymczak", "pfister", "honeyman", None]))
    assert s.tolist() == ["R163", "R163", "T522", "P236", "H555", pd.NA]


@pytest.fixture(scope="module")
def febrl():
    return datasets.read_febrl4(ROOT / "data" / "febrl")


def test_febrl4_unsupervised_without_ssn(febrl):
    records, truth = febrl
    assert "soc_sec_id" not in records and len(records) == 10000
    m = datasets.febrl_matcher()
    km = m.fit_predict(records)
    scores = matching_report.pairwise_scores(km["customer_key"].to_numpy(), truth)
    assert scores["f1"] >= 0.998, scores
    stats = m.candidate_pairs(identity.add_keys(records), truth)[2]
    assert stats.iloc[-1]["pairs_completeness"] >= 0.998 and stats.iloc[-1]["reduction_ratio"] > 0.9997
    # explanation: the waterfall adds up to the pair's match weight
    p = m.score_pairs(records)
    k = int(np.argmax(p.weight))
    ex = m.explain(records, p, k)
    assert ex["cumulative"].iloc[-1] == pytest.approx(p.weight[k])


def test_refit_on_other_records_equals_a_fresh_fit(febrl):
    """#16: fit forgets the previous fit (m, u, blocking statistics, term frequencies); predict learns nothing."""
    records, _ = febrl
    part = records.iloc[::2]
    refit, fresh = datasets.febrl_matcher().fit(records).fit(part), datasets.febrl_matcher().fit(part)
    learned = lambda m: {k for k in vars(m) if k.endswith("_")}          # noqa: E731
    assert learned(refit) == learned(fresh)
    for a, b in zip(refit.m_ + refit.u_, fresh.m_ + fresh.u_):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert refit.lambda_ == pytest.approx(fresh.lambda_, rel=1e-12) and refit.tf_ == fresh.tf_
    before = learned(fresh)
    fresh.predict(part)
    assert learned(fresh) - before <= {"n_oversized_"}      # the clustering's own count, reported by cluster()


@pytest.fixture(scope="module")
def world_records(world):
    src = sources.load(world)
    rt = pd.read_parquet(world / "truth" / "record_truth.parquet")
    rec = src.customers
    truth = rec.merge(rt, on=["source_system", "source_id"], how="left")["customer_id"].to_numpy()
    return rec, truth


def _levels_by_brute_force(comp, arenas, left, right):
    """Every similarity on every pair, then the level rules in order (the definition, without shortcuts)."""
    a = arenas[comp.column]
    null = a[2][left] | a[2][right]
    exact = S.exact(a, a, left, right) == 1.0
    lv = np.zeros(len(left), np.int8)
    if comp.kind in ("name", "string"):
        jw = S.jaro_winkler(a, a, left, right)
        base = 1
        if comp.swap_with:
            b = arenas[comp.swap_with]
            lv[(S.exact(a, b, left, right) == 1.0) & (S.exact(b, a, left, right) == 1.0)] = 1
            base = 2
        for n, t in enumerate(sorted(comp.thresholds)):
            lv[jw >= t] = base + n
        lv[exact] = base + len(comp.thresholds)
    elif comp.kind == "address":
        pc = arenas["postcode_std"]
        same_pc = S.exact(pc, pc, left, right) == 1.0
        for n, col in enumerate(("postcode_district", "postcode_sector"), start=1):
            lv[S.exact(arenas[col], arenas[col], left, right) == 1.0] = n
        lv[same_pc] = 3
        lv[same_pc & (S.jaro_winkler(a, a, left, right) >= comp.thresholds[0])] = 4
        lv[same_pc & exact] = 5
        null = pc[2][left] | pc[2][right]
    else:
        return None
    lv[null] = identity.NULL
    return lv


def test_levels_skip_only_work_that_cannot_change_them(world_records):
    """Exact by value codes, similarities only where they decide: the same levels as computing everything."""
    rec, _ = world_records
    m = identity.RecordMatcher()
    df, arenas, comps = m._prepare(rec)
    left, right, _ = m.candidate_pairs(df)
    plain = {k: v for k, v in arenas.items() if not isinstance(k, tuple)}     # no codes: strings compared
    checked = 0
    for comp in comps:
        fast = comp.levels(arenas, left, right)
        np.testing.assert_array_equal(fast, comp.levels(plain, left, right), err_msg=comp.column)
        ref = _levels_by_brute_force(comp, plain, left, right)
        if ref is not None:
            np.testing.assert_array_equal(fast, ref, err_msg=comp.column)
            checked += 1
    assert checked == 3 and len(left) > 1000


def test_one_record_kernel_gives_the_batch_levels_on_hard_pairs(world_records):
    """The fused one-record kernel (:func:`crmlab.kernels.linkage.score_one`, behind
    ``score_candidates``) against the batch path (column kernels, value codes, NumPy weights) on
    pairs chosen to reach every level: swapped names, one-letter typos, transposed birth dates, the
    same postcode with a similar street, missing fields, a term-frequency weighted common name, a
    numeric comparison, and random strangers."""
    rec, _ = world_records
    comps = [*identity.DEFAULT_COMPARISONS[:5], identity.Comparison("address_std", "address", (0.88,)),
             identity.Comparison("address_std", "string", (0.9, 0.7), dice=0.5),
             identity.Comparison("postcode_std", "postcode"), identity.Comparison("email_std", "exact"),
             identity.Comparison("age", "numeric", (5.0, 1.0))]
    base = rec.sample(150, random_state=1).reset_index(drop=True)
    base["age"] = pd.to_datetime(base["dob"], errors="coerce").dt.year.rsub(2026).astype("float64")
    rng = np.random.default_rng(2)
    variants = []
    for kind in ("swap", "typo", "dob", "street", "missing"):
        v = base.copy()
        v["source_id"] = v["source_id"].astype(str) + "-" + kind
        if kind == "swap":
            v["first_name_std"], v["last_name_std"] = base["last_name_std"], base["first_name_std"]
        elif kind == "typo":
            v["first_name_std"] = v["first_name_std"].str.slice_replace(1, 2, "x")
            v["last_name_std"] = v["last_name_std"].str[:-1]
            v["age"] += rng.choice([0.0, 0.5, 3.0, 9.0], len(v))
            v["phone_std"] = "+99" + v["phone_std"].str[3:]          # same last 7 digits, another prefix
        elif kind == "dob":
            d = pd.to_datetime(v["dob"], errors="coerce")
            swapped = pd.to_datetime(d.dt.strftime("%Y%d%m"), format="%Y%m%d", errors="coerce").fillna(d)
            v["dob"] = swapped.where(rng.random(len(v)) < 0.5, d + pd.Timedelta(days=1))    # 1 edit, mostly
        elif kind == "street":
            v["address_std"] = v["address_std"].str.replace(r"\b(\w)", lambda m: m.group(1).upper(), regex=True)
            v["address_std"] = v["address_std"].str[:-2] + "zz"
            moved = rng.random(len(v)) < 0.3                          # same sector, another postcode
            v.loc[moved, "postcode_std"] = v.loc[moved, "postcode_std"].str[:-2] + "ZZ"
        else:
            for c in ("first_name_std", "last_name_std", "email_std", "phone_std", "postcode_std", "address_std",
                      "dob", "age"):
                v.loc[rng.random(len(v)) < 0.5, c] = None
        variants.append(v)
    allrec = pd.concat([base, *variants], ignore_index=True)
    m = identity.RecordMatcher(comparisons=comps, random_state=0).fit(pd.concat([rec.assign(
        age=pd.to_datetime(rec["dob"], errors="coerce").dt.year.rsub(2026).astype("float64")), allrec.iloc[150:]],
        ignore_index=True))
    keyed, arenas, _ = m._prepare(allrec)
    cols = m.index_columns()
    rows = keyed[cols].astype(object).where(keyed[cols].notna(), None)
    n = len(base)
    reached = np.zeros((len(comps), 7), bool)
    for i in range(n):
        cand = np.r_[i + n * np.arange(1, 6), rng.integers(0, len(allrec), 5)]
        cand = cand[cand != i]
        left = np.full(len(cand), i)
        levels = m._levels(arenas, m.comparisons_, left, cand)
        bf = m._weights(keyed, levels, left, cand)
        prob = 1.0 / (1.0 + np.exp2(-(np.log2(m.lambda_ / (1 - m.lambda_)) + bf.sum(axis=1))))
        got_p, got_l, got_bf = m.score_candidates(rows.iloc[i].to_dict(),
                                                  {c: rows[c].to_numpy()[cand].tolist() for c in cols})
        np.testing.assert_array_equal(got_l, levels, err_msg=f"record {i}")
        np.testing.assert_allclose(got_bf, bf, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got_p, prob, rtol=1e-12, atol=1e-15)
        for k in range(len(comps)):
            reached[k, levels[:, k][levels[:, k] >= 0]] = True
            reached[k, 6] |= (levels[:, k] < 0).any()
    for k, c in enumerate(comps):          # every level of every comparison was met, and a missing value
        assert reached[k, :len(c.labels())].all() and reached[k, 6], (c.column, c.kind, reached[k])


def test_blocking_report_counts_completeness_from_the_true_pairs(world_records):
    """The report's pairs completeness (from the planted pairs) equals counting over the candidate pairs."""
    rec, truth = world_records
    m = identity.RecordMatcher(max_block=4).fit(rec)           # small blocks: some are skipped
    ref = m.candidate_pairs(identity.add_keys(rec), truth)[2]
    got = matching_report.blocking_report(m, rec, truth)
    pd.testing.assert_frame_equal(got, ref, check_exact=False, rtol=1e-12)
    assert (ref["blocks_skipped"] > 0).any()


def test_synthetic_world_matching(world_records):
    rec, truth = world_records
    m = identity.RecordMatcher()
    km = m.fit_predict(rec)
    pw = matching_report.pairwise_scores(km["customer_key"].to_numpy(), truth)
    bc = matching_report.bcubed_scores(km["customer_key"].to_numpy(), truth)
    assert pw["f1"] >= 0.97 and bc["f1"] >= 0.98, (pw, bc)
    assert km["match_confidence"].between(0, 1).all()
    # blocking leaves some true pairs uncompared; transitivity through other records recovers them
    stats = m.candidate_pairs(identity.add_keys(rec), truth)[2]
    assert stats.iloc[-1]["pairs_completeness"] > 0.95 and stats.iloc[-1]["reduction_ratio"] > 0.99
    assert pw["recall"] > 0.96


def test_keys_stable_when_one_percent_is_new(world_records):
    rec, _ = world_records
    rng = np.random.default_rng(1)
    new = rng.random(len(rec)) < 0.01
    old_rec, new_rec = rec[~new].reset_index(drop=True), rec[new].reset_index(drop=True)
    m = identity.RecordMatcher().fit(old_rec)
    first = m.predict(old_rec)
    again = m.predict(pd.concat([old_rec, new_rec], ignore_index=True), previous=first)
    merged = first.merge(again, on=["source_system", "source_id"], suffixes=("_1", "_2"))
    assert (merged["customer_key_1"] == merged["customer_key_2"]).mean() >= 0.99
    # incremental: only pairs with a new record are scored; old records keep their keys exactly
    inc = m.match_new(old_rec, first, new_rec)
    assert len(inc) == len(rec)
    kept = first.merge(inc, on=["source_system", "source_id"], suffixes=("_1", "_2"))
    assert (kept["customer_key_1"] == kept["customer_key_2"]).all()
    fresh = inc.merge(new_rec[["source_system", "source_id"]], on=["source_system", "source_id"])
    full = again.merge(new_rec[["source_system", "source_id"]], on=["source_system", "source_id"])
    assert (fresh.sort_values("source_id")["customer_key"].to_numpy()
            == full.sort_values("source_id")["customer_key"].to_numpy()).mean() > 0.95


def test_numeric_comparison_levels():
    c = identity.Comparison("age", "numeric", thresholds=(1, 5))
    arenas = {"age": np.array([30.0, 30.0, 31.0, 34.0, 50.0, np.nan])}
    left, right = np.zeros(5, np.int64), np.arange(1, 6)
    assert c.labels() == ["else", "within 5", "within 1", "exact"]
    assert c.levels(arenas, left, right).tolist() == [3, 2, 1, 0, identity.NULL]


def test_bad_input():
    with pytest.raises(CrmlabError, match="non-empty"):
        identity.RecordMatcher().fit(pd.DataFrame())
    recs = pd.DataFrame({"source_system": ["a"], "source_id": ["1"], "first_name_std": ["x"]})
    with pytest.raises(CrmlabError, match="lack column"):
        identity.RecordMatcher().fit(recs)
    recs, _ = datasets.read_febrl4(ROOT / "data" / "febrl")
    recs = recs.assign(suburb=None)
    with pytest.raises(CrmlabError, match="'suburb' is empty"):
        datasets.febrl_matcher().fit(recs)
    recs2, _ = datasets.read_febrl4(ROOT / "data" / "febrl")
    recs2["street_number"] = pd.to_numeric(recs2["street_number"])
    with pytest.raises(CrmlabError, match="must hold text"):
        datasets.febrl_matcher().fit(recs2)
    with pytest.raises(CrmlabError, match=r"lack column\(s\) \['source_id'\]"):
        datasets.febrl_matcher().fit(recs2.drop(columns="source_id"))
    dup = pd.concat([recs2.head(3), recs2.head(1)])
    with pytest.raises(CrmlabError, match="unique within each source system"):
        datasets.febrl_matcher().fit(dup.assign(street_number=dup["street_number"].astype("string")))
    with pytest.raises(CrmlabError, match="not fitted"):
        identity.RecordMatcher().score_pairs(recs2)


# --- reliability findings (#14)
def test_keys_do_not_depend_on_row_order(world_records):
    recs = world_records[0] if isinstance(world_records, tuple) else world_records
    a = identity.RecordMatcher().fit_predict(recs)
    shuffled = recs.sample(frac=1.0, random_state=11)
    b = identity.RecordMatcher().fit_predict(shuffled)
    key = ["source_system", "source_id"]
    merged = a.merge(b, on=key, suffixes=("_a", "_b"))
    assert len(merged) == len(a)
    assert (merged["customer_key_a"] == merged["customer_key_b"]).all()


def test_extra_columns_modes_and_single_source_link(febrl):
    recs, _ = febrl
    recs = recs.groupby("source_system").head(400).copy()
    recs["tags"] = [["a", "b"]] * len(recs)                             # unhashable values
    recs["meta"] = [{"k": 1}] * len(recs)
    m = datasets.febrl_matcher().fit(recs)
    assert len(m.predict(recs)) == len(recs)
    assert datasets.febrl_matcher(mode="dedupe").mode == "dedupe"
    one = recs.assign(source_system="crm")
    with pytest.raises(CrmlabError, match="mode 'link' only compares records of different source systems.*'crm'"):
        datasets.febrl_matcher().fit(one)


def test_saved_matcher_scores_one_record_as_the_batch_scores_its_pairs(world_records):
    """A matcher saved as JSON (what stage 60 publishes for the service) and read back scores one
    record against candidates (plain lists, the per-request path) exactly as the fitted matcher
    scored the same pairs in batch: same levels, same probabilities."""
    import json

    rec, _ = world_records
    m = identity.RecordMatcher(random_state=0).fit(rec)
    pairs = m.score_pairs(rec)
    saved = identity.RecordMatcher.from_dict(json.loads(json.dumps(m.to_dict())))
    assert saved.get_params(deep=False)["threshold"] == m.threshold
    keyed = identity.add_keys(rec.reset_index(drop=True))
    cols = saved.index_columns()
    rows = keyed[cols].astype(object).where(keyed[cols].notna(), None)
    rng = np.random.default_rng(0)
    for i in rng.choice(np.unique(pairs.left), 40, replace=False):
        mine = np.flatnonzero(pairs.left == i)
        right = pairs.right[mine]
        query = rows.iloc[i].to_dict()
        cand = {c: rows[c].to_numpy()[right].tolist() for c in cols}
        prob, levels, bf = saved.score_candidates(query, cand)
        np.testing.assert_array_equal(levels, pairs.levels[mine])
        np.testing.assert_allclose(prob, pairs.probability[mine], rtol=1e-12, atol=1e-15)
        assert bf.shape == (len(mine), len(saved.comparisons_))
    with pytest.raises(CrmlabError, match="not a saved RecordMatcher"):
        identity.RecordMatcher.from_dict({"format": 99})


def test_largest_blocks_name_the_key_and_size():
    """Each rule's largest blocks: sizes as a group-by of the keyed records says, the key masked,
    skipped exactly when above max_block."""
    records = sources.load(ROOT / "data" / "sample").customers
    m = identity.RecordMatcher(max_block=4)
    big = m.largest_blocks(records, k=3)
    keyed = identity.add_keys(records)
    for rule in identity.DEFAULT_BLOCKING:
        want = keyed.groupby(list(rule), dropna=True).size().sort_values(ascending=False).head(3).to_numpy()
        got = big.loc[big["rule"] == " & ".join(rule)]
        np.testing.assert_array_equal(got["records"].to_numpy(), want)
        np.testing.assert_array_equal(got["skipped"].to_numpy(), want > 4)
        assert (got["pairs"] == got["records"] * (got["records"] - 1) // 2).all()
    assert big["key"].str.contains(r"\*").all()                   # person fields masked


def _new_keys_ref(systems, ids, clusters) -> dict:
    """Plain reference: clusters numbered K0000000001.. by their smallest (system, id) as text."""
    first = {}
    for s, i, c in zip(systems, ids, clusters):
        first[c] = min(first.get(c, (str(s), str(i))), (str(s), str(i)))
    return {c: f"K{n + 1:010d}" for n, c in enumerate(sorted(first, key=first.get))}


@pytest.mark.parametrize("ids", ["numeric", "text"])
def test_new_keys_numbered_by_each_clusters_first_record_as_text(ids):
    """assign_keys: skewed clusters (one of 400 records, most of one), spanning systems, ids whose text
    order is not their numeric order (9 < 10 as numbers, '10' < '9' as text), rows in any order; with a
    previous key map, the clusters it covers keep their keys and the new ones are numbered after them."""
    rng = np.random.default_rng(3)
    n = 5000
    systems = rng.choice(["web", "crm", "store"], n)
    raw = rng.permutation(20_000)[:n]
    clusters = np.minimum(rng.zipf(1.3, n), 1500) if ids == "numeric" else rng.integers(0, 3000, n)
    clusters[:400] = 7
    cur = pd.DataFrame({"source_system": systems, "source_id": raw if ids == "numeric" else [f"id{v}" for v in raw],
                        "cluster": clusters}).sample(frac=1, random_state=2)
    got = identity.assign_keys(cur)
    ref = _new_keys_ref(cur["source_system"], cur["source_id"], cur["cluster"])
    assert list(got) == [ref[c] for c in cur["cluster"]]
    prev = cur.assign(customer_key=got)[cur["cluster"] % 3 == 0].drop(columns="cluster")
    again = identity.assign_keys(cur, prev)
    kept = (cur["cluster"] % 3 == 0).to_numpy()
    assert (again[kept] == got[kept]).all()
    rest = cur[~kept]
    last = max(int(k[1:]) for k in got[kept])
    ref = {c: f"K{int(k[1:]) + last:010d}" for c, k in _new_keys_ref(rest["source_system"], rest["source_id"],
                                                                      rest["cluster"]).items()}
    assert list(again[~kept]) == [ref[c] for c in rest["cluster"]]
