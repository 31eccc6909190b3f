"""Dask mode (engine.kind: dask) gives the local results bit for bit: customer value from patterns
reduced across partitions (likelihood, parameters, standard errors, the table), features computed on
events split by customer. Also: fits on weighted patterns, the engine's errors."""
import pickle
import socket
from asyncio import CancelledError
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crmlab import (affinity, config, datasets, decisions, engine, identity, measure, score_figures, sources, targets,
                    value)
from crmlab.kernels import baskets as K
from crmlab.errors import CrmlabError
from crmlab.events import CustomerEvents
from crmlab.feature_rows import FeatureRows
from crmlab.features import FeatureBuilder
from crmlab.table_parts import TableParts
from crmlab.stages.value import rfm_at

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed: pip install 'crmlab[dask]'")
from crmlab import affinity_dask, decisions_dask, events_dask, identity_dask, value_dask  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
CI = Path(__file__).resolve().parents[1] / "params" / "ci.yaml"


@pytest.fixture(scope="module")
def cluster():
    c = engine.start({"kind": "dask", "workers": 2, "memory_limit": "1GB"})
    yield c
    c.close()


@pytest.fixture(scope="module")
def tx():
    return value.transactions(sources.load(SAMPLE))


@pytest.mark.parametrize("model,covariates", [("bgnbd", []), ("mbgnbd", ["first_channel"]), ("pareto", [])])
def test_dask_value_stage_equals_local(cluster, tx, model, covariates):
    P = {**config.load(CI)["value"], "model": model, "covariates": covariates}
    end = tx["order_date"].max()
    rfm = rfm_at(tx, P, end)
    m = value.make_model(model, covariates).fit(rfm)
    gg = value.GammaGamma().fit(rfm)
    want = value.customer_value(m, gg, rfm, P["clv_months"], P["discount_rate"], P["margin"], P["time_unit_days"])
    # ~12 partitions: customers spread by the shuffle, several partitions per worker
    rfm2, m2, gg2, got, said = value_dask.fit_value(cluster.client, tx, P, end, partition_rows=len(tx) // 12)
    assert m2.params_ == m.params_ and m2.se_ == m.se_ and m2.loglik_ == m.loglik_          # exactly
    assert m2.n_customers_ == m.n_customers_ == len(rfm)
    assert gg2.params_ == gg.params_ and gg2.se_ == gg.se_
    pd.testing.assert_frame_equal(rfm2, rfm, check_exact=True)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert isinstance(said, list)


def test_dask_value_names_the_bad_rows(cluster, tx):
    bad = tx.copy()
    bad.loc[bad.index[7], "value"] = np.nan
    P = config.load(CI)["value"]
    with pytest.raises(CrmlabError, match="missing or non-finite 'value'"):
        value_dask.fit_value(cluster.client, bad, P, bad["order_date"].max(), partition_rows=len(bad) // 4)


def test_models_fitted_on_weighted_patterns_equal_the_customer_fit():
    x, tx_, T = value.simulate_bgnbd(20000, 0.6, 4.0, 0.8, 2.5, T=np.random.default_rng(1).uniform(20, 60, 20000))
    rfm = pd.DataFrame({"frequency": x, "recency": tx_, "T": T})
    pats = rfm.groupby(["frequency", "recency", "T"]).size().rename("w").reset_index()
    pats = pats.sample(frac=1.0, random_state=3)                      # any order of the patterns
    for make in (lambda: value.BetaGeo(), lambda: value.BetaGeo(modified=True), lambda: value.ParetoNBD()):
        a = make().fit(rfm)
        b = make().fit(pats[["frequency", "recency", "T"]], sample_weight=pats["w"].to_numpy())
        assert a.params_ == b.params_ and a.se_ == b.se_ and a.n_customers_ == b.n_customers_ == 20000
    with pytest.raises(CrmlabError, match="sample_weight"):
        value.BetaGeo().fit(pats[["frequency", "recency", "T"]], sample_weight=-pats["w"].to_numpy())
    with pytest.raises(CrmlabError, match="sample_weight"):
        value.BetaGeo().fit(pats[["frequency", "recency", "T"]], sample_weight=[1.0, 2.0])


def test_a_scheduler_that_does_not_answer_is_a_clear_error(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                                     # nothing listens there
    monkeypatch.setattr(engine, "CONNECT_TIMEOUT_S", 2)
    t0 = time.perf_counter()
    with pytest.raises(engine.EngineError, match=f"engine.address tcp://127.0.0.1:{port}: no Dask scheduler"):
        engine.start({"kind": "dask", "address": f"tcp://127.0.0.1:{port}"})
    assert time.perf_counter() - t0 < 15
    assert engine.start({"kind": "local"}) is None


def test_bytes_the_workers_spill_are_counted_per_stage():
    """Cluster.usage() (the manifest's per-stage figures): the bytes a worker wrote to disk spilling
    since the previous call, from Dask's cumulative metrics; what lies on disk when a stage ends is
    often nothing (its data released), which the manifest reported as 0 spilled before."""
    import time

    from distributed import wait

    own = engine.start({"kind": "dask", "workers": 1, "memory_limit": "1GB"})
    try:
        assert own.usage()["spilled_bytes"] == 0
        held = [own.client.submit(np.full, 10_000_000, i, pure=False) for i in range(10)]   # 800 MB: over the 600 MB target
        wait(held)

        def on_disk():
            return sum(w["metrics"]["spilled_bytes"]["disk"] for w in own.client.scheduler_info()["workers"].values())
        deadline = time.time() + 30
        while on_disk() < 100 * 2**20 and time.time() < deadline:
            time.sleep(0.5)
        del held                                            # the stage ends: its data released, nothing on disk
        while on_disk() and time.time() < deadline:
            time.sleep(0.5)
        assert on_disk() == 0
        u = own.usage()
        assert u["spilled_bytes"] >= 100 * 2**20, u
        assert own.usage()["spilled_bytes"] == 0            # since the previous call only
        assert u["workers_peak_mb"] > 600
    finally:
        own.close()


def test_data_sent_again_right_after_its_release_is_not_lost(cluster):
    """The same parts scattered, released and at once scattered again (two steps in a row on the same
    baskets, or a retry): every task on them completes with the same answer. Under Dask's content-hash
    keys the second copy was forgotten by the scheduler (dask/distributed#8576): its tasks came back
    cancelled for "lost dependencies", or never (a CI run hung on it). No module scatters otherwise."""
    import re

    client = cluster.client
    data = [np.arange(1000) + i for i in range(10)]
    for _ in range(20):
        parts = engine.scatter(client, data)
        want = client.gather(client.map(np.sum, parts, pure=False))
        del parts
        parts = engine.scatter(client, data)
        futures = client.map(np.sum, parts, pure=False)
        distributed.wait(futures, timeout=30)
        assert client.gather(futures) == want
    direct = [p.name for p in (SAMPLE.parents[1] / "crmlab").glob("*.py")
              if p.name != "engine.py" and re.search(r"client\.scatter\(", p.read_text())]
    assert direct == []


def test_features_by_customer_parts_equal_the_whole(cluster, world):
    """Seven parts (customers hashed), features at cut-offs from before the first order to after the
    last, with contacts and the profile: the frames equal the whole table's, dtypes and order included."""
    ev = CustomerEvents.from_sources(sources.load(world))
    parts = events_dask.PartitionedEvents(cluster.client, ev, partition_rows=len(ev.lines) // 7 + 1)
    assert parts.n == 7
    pieces = events_dask.split(ev, 7)
    assert sum(len(p.orders) for p in pieces) == len(ev.orders) and sum(len(p.profile) for p in pieces) == len(ev.profile)
    assert all(set(p.orders["customer_key"]) <= set(p.profile.index) for p in pieces)
    cut = targets.cutoffs(ev.last_date, 90)
    fb = FeatureBuilder().fit(ev, cut["train"])
    first = ev.orders["order_date"].min()
    for c in (first + pd.Timedelta(days=3), cut["train"], cut["valid"], cut["score"]):
        want = fb.transform(ev, c)
        got = parts.features(fb, c)
        pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert "response_rate" in want and want["contacts"].sum() > 0            # contact features covered


def test_feature_rows_left_on_the_workers_read_as_the_frame(cluster, world):
    """Features kept on the workers (FeatureRows): rows by position (shuffled, repeated, none), rows of
    two cut-offs one after the other, functions applied where the rows lie: what the frame gives."""
    ev = CustomerEvents.from_sources(sources.load(world))
    parts = events_dask.PartitionedEvents(cluster.client, ev, partition_rows=len(ev.lines) // 5 + 1)
    cut = targets.cutoffs(ev.last_date, 90)
    fb = FeatureBuilder().fit(ev, cut["train"])
    want_tr, want_sc = fb.transform(ev, cut["train"]), fb.transform(ev, cut["score"])
    tr, sc = parts.feature_rows(fb, cut["train"]), parts.feature_rows(fb, cut["score"])
    assert isinstance(tr, FeatureRows) and len(tr) == len(want_tr) < len(sc) == len(want_sc)
    pd.testing.assert_index_equal(tr.index, want_tr.index)
    pd.testing.assert_index_equal(tr.columns, want_tr.columns)
    pos = np.random.default_rng(3).integers(0, len(want_sc), 700)        # unsorted, with repeats
    pd.testing.assert_frame_equal(sc.iloc[pos], want_sc.iloc[pos], check_exact=True)
    pd.testing.assert_frame_equal(sc.iloc[pos[:0]], want_sc.iloc[:0], check_exact=True)
    both = FeatureRows.concat([tr.rows(pos[pos < len(tr)]), sc.rows(slice(None, None, -3))])
    want = pd.concat([want_tr.iloc[pos[pos < len(tr)]], want_sc.iloc[::-3]])
    pd.testing.assert_frame_equal(both.iloc[:], want, check_exact=True)
    pd.testing.assert_index_equal(both.index, want.index)

    def spend(X, k):
        return np.column_stack([X["spend"].to_numpy() * k, X["orders"].to_numpy()])

    np.testing.assert_array_equal(both.apply(spend, 2.0), spend(want, 2.0))
    np.testing.assert_array_equal(sc.rows(pos[:0]).apply(spend, 2.0), spend(want_sc.iloc[:0], 2.0))


def test_segments_from_features_left_on_the_workers(cluster, world, monkeypatch):
    """The segmenter fitted on rows left on the workers (only its sample fetched): the frame's fit, k
    chosen alike, every customer assigned alike there; profiles from sums made there equal to 1e-12."""
    from crmlab import segments

    ev = CustomerEvents.from_sources(sources.load(world))
    parts = events_dask.PartitionedEvents(cluster.client, ev, partition_rows=len(ev.lines) // 5 + 1)
    cut = targets.cutoffs(ev.last_date, 90)["score"]
    fb = FeatureBuilder().fit(ev, cut)
    want_all, got_all = fb.transform(ev, cut), parts.feature_rows(fb, cut)
    cols = segments.select_features(want_all.columns, config.load(CI)["segments"]["features"])
    fetched = []
    fetch = FeatureRows.fetch
    monkeypatch.setattr(FeatureRows, "fetch", lambda self: fetched.append(len(self)) or fetch(self))
    kw = dict(k="auto", k_range=(3, 5), bootstraps=2, max_fit_rows=1500, select_rows=600, random_state=4)
    got = segments.Segmenter(**kw).fit(got_all[cols])
    want = segments.Segmenter(**kw).fit(want_all[cols])
    assert len(want_all) > 1500 and max(fetched) <= 1500, fetched
    assert got.k_ == want.k_
    pd.testing.assert_frame_equal(got.selection_, want.selection_)
    for a in segments.Segmenter._ARRAYS:
        np.testing.assert_array_equal(getattr(got, a), getattr(want, a), err_msg=a)
    np.testing.assert_array_equal(got.labels_, want.labels_)
    np.testing.assert_array_equal(got.reference_predict(got_all[cols]), want.labels_)
    names = [f"s{i}" for i in range(want.k_)]
    risk = pd.Series(np.linspace(0, 1, len(want_all)), index=want_all.index[::-1])
    p_got = segments.profile(got_all, got.labels_, names, risk=risk, seg=got)
    p_want = segments.profile(want_all, want.labels_, names, risk=risk, seg=want)
    pd.testing.assert_frame_equal(p_got, p_want, check_exact=False, rtol=1e-12, atol=0)
    assert p_want["mean_recency_days"].notna().all() and "preferred_channel" in p_want


def test_a_lost_worker_costs_a_recomputation_and_twice_a_clear_error(world, monkeypatch):
    """A worker holding parts of the events dies (killed, out of memory): the parts are scattered anew and
    the features come out equal; lost twice, the stage stops with its name and what it was computing."""
    import os

    ev = CustomerEvents.from_sources(sources.load(world))
    cut = targets.cutoffs(ev.last_date, 90)["score"]
    fb = FeatureBuilder().fit(ev, cut)
    own = engine.start({"kind": "dask", "workers": 2, "memory_limit": "1GB"})
    try:
        parts = events_dask.PartitionedEvents(own.client, ev, partition_rows=len(ev.lines) // 4 + 1)
        victim = next(iter(own.client.who_has(parts.parts[0]).values()))[0]
        try:
            own.client.run(os._exit, 1, workers=[victim])
        except Exception:                                              # noqa: BLE001 - its connection drops
            pass
        pd.testing.assert_frame_equal(parts.features(fb, cut), fb.transform(ev, cut), check_exact=True)
        # feature rows left on the workers: a worker holding some dies before they are read
        rows = parts.feature_rows(fb, cut)
        victim = next(iter(own.client.who_has(rows.frames[0]).values()))[0]
        try:
            own.client.run(os._exit, 1, workers=[victim])
        except Exception:                                              # noqa: BLE001 - its connection drops
            pass
        pd.testing.assert_frame_equal(rows.iloc[::-1], fb.transform(ev, cut).iloc[::-1], check_exact=True)
    finally:
        own.close()

    def always_lost():
        raise CancelledError("lost dependencies")

    monkeypatch.setenv("CRMLAB_STAGE", "40_propensity")
    with pytest.raises(engine.EngineError, match="stage 40_propensity: Dask workers were lost twice while computing "
                                                 "the features"):
        engine.retry_lost(always_lost, "the features")


def test_record_matching_survives_a_lost_worker():
    """A worker holding the matcher's parts dies between fit and predict: the parts are made anew from
    the records and the key map is the local one."""
    import os

    records = datasets.read_febrl4(SAMPLE.parent / "febrl")[0]
    local = datasets.febrl_matcher()
    want = local.fit(records).predict(records)
    own = engine.start({"kind": "dask", "workers": 2, "memory_limit": "1GB"})
    try:
        dm = identity_dask.DaskRecordMatcher.like(datasets.febrl_matcher()).on(own.client, parts=3).fit(records)
        victim = next(iter(own.client.who_has(dm._dask_parts[1][0][1]).values()))[0]
        try:
            own.client.run(os._exit, 1, workers=[victim])
        except Exception:                                              # noqa: BLE001 - its connection drops
            pass
        pd.testing.assert_frame_equal(dm.predict(records), want)
    finally:
        own.close()


def _as_dict(its):
    ptr = np.r_[0, np.cumsum(its.lens)]
    return {tuple(its.flat[a:z]): int(c) for a, z, c in zip(ptr[:-1], ptr[1:], its.counts)}


def test_groceries_itemsets_and_rules_on_the_cluster_equal_local(cluster):
    """Groceries at support 0.001: the same 13,492 itemsets with the same supports, mined on parts of
    the baskets (supports and pairs summed, longer itemsets by first-item groups), and the same rules."""
    b = datasets.read_groceries(Path(__file__).resolve().parents[1] / "data" / "groceries" / "groceries.csv")
    want = affinity.frequent_itemsets(b, min_support=0.001, columnar=True)
    got = affinity_dask.frequent_itemsets(cluster.client, b, min_support=0.001, partition_baskets=2000)
    assert len(want) == 13_492 and _as_dict(got) == _as_dict(want)
    for a in ("flat", "lens", "counts"):                            # the same arrays, in the same order
        assert np.array_equal(getattr(got, a), getattr(want, a)), a
    for longest, n_rules in ((1, 5_668), (None, 5_829)):
        rw, rg = (affinity.association_rules(x, metric="confidence", min_threshold=0.5, max_consequent_len=longest)
                  for x in (want, got))
        assert len(rw) == len(rg) == n_rules
        key = lambda r: sorted(zip(r.joined("antecedents"), r.joined("consequents"), r["support"], r["lift"]))
        assert key(rg) == key(rw)


@pytest.mark.parametrize("groups,max_len", [(1, None), (3, None), (7, 4), (5, 2)])
def test_itemsets_by_parts_on_long_skewed_baskets(cluster, groups, max_len):
    """Zipf item popularity, baskets of 1 to 60 items, 9 parts: every support equals local mining's."""
    rng = np.random.default_rng(5)
    n_items, lists = 120, []
    pop = 1.0 / np.arange(1, n_items + 1) ** 1.1
    for size in np.minimum(rng.geometric(0.12, 3000), 60):
        lists.append(rng.choice(n_items, size=size, replace=False, p=pop / pop.sum()).tolist())
    b = affinity.Baskets.from_lists(lists)
    want = affinity.frequent_itemsets(b, min_support=0.01, max_len=max_len, columnar=True)
    got = affinity_dask.frequent_itemsets(cluster.client, b, min_support=0.01, max_len=max_len,
                                          partition_baskets=350, groups=groups)
    assert len(want) > 200 and _as_dict(got) == _as_dict(want)


def test_projection_keeps_what_the_group_needs():
    """project(): baskets with an item of the group, cut at their lowest-ranked group item (plain reference)."""
    rng = np.random.default_rng(2)
    lists = [rng.choice(30, size=rng.integers(1, 12), replace=False).tolist() for _ in range(400)]
    indptr = np.r_[0, np.cumsum([len(x) for x in lists])]
    indices = np.concatenate(lists).astype(np.int32)
    rank = np.full(30, -1)
    rank[rng.permutation(30)[:25]] = np.arange(25)
    group = rng.integers(0, 3, 25)
    for g in range(3):
        ptr, items = K.project(indptr, indices, rank, group, g)
        ref = []
        for x in lists:
            lo = min((rank[i] for i in x if rank[i] >= 0 and group[rank[i]] == g), default=None)
            if lo is not None:
                ref.append([i for i in x if rank[i] >= lo])
        assert [items[a:z].tolist() for a, z in zip(ptr[:-1], ptr[1:])] == ref



def test_recommender_by_parts_equals_local(cluster, world):
    """Co-occurrences counted by parts and lists made by parts of the customers: the same neighbours
    and the same recommendation table, sensitive items excluded."""
    ev = CustomerEvents.from_sources(sources.load(world))
    b = affinity.Baskets.from_frame(ev.lines, "customer_key", "product_id")
    banned = set(b.items[:5])
    local = affinity.ItemRecommender(k=5)
    want = local.fit(b).recommend(b, exclude_items=banned)
    rec = affinity.ItemRecommender(k=5).fit(affinity_dask.BasketParts.scatter(cluster.client, b, 300))
    for a in ("nbr_ptr_", "nbr_idx_", "nbr_sim_", "popularity_"):
        assert np.array_equal(getattr(rec, a), getattr(local, a)), a
    got = affinity_dask.recommend(cluster.client, rec, b, banned, partition_baskets=300)
    assert len(want) > 1000 and not got["item"].isin(banned).any()
    pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_recommendations_left_on_the_workers_are_written_as_a_folder_of_parts(cluster, world, tmp_path):
    """Stage 20 in Dask mode: the lists made, named and checked by parts stay on the workers and are
    written by them as the artifact's parts (atomically, replacing an earlier folder or file): read back,
    the local table; the report's counts added up over the parts are the whole's. A sensitive product
    that reached a part is the stage's error."""
    from crmlab import pipeline

    ev = CustomerEvents.from_sources(sources.load(world))
    b = affinity.Baskets.from_frame(ev.lines, "customer_key", "product_id")
    names = pd.Series([f"name of {i}" for i in b.items], index=b.items)
    banned = set(b.items[:5])
    rec = affinity.ItemRecommender(k=5).fit(b)
    want = affinity.published_recommendations(rec.recommend(b, exclude_items=banned), names, banned)
    got = affinity_dask.recommend_parts(cluster.client, rec, b, banned, 300, affinity.published_recommendations, names,
                                        banned)
    assert isinstance(got, TableParts) and got.n > 3
    params = tmp_path / "p.yaml"
    params.write_text(f"run_name: t\nruns_dir: {tmp_path / 'runs'}\ndata:\n  dir: {world}\n")
    ctx = pipeline.StageContext.open(str(params), str(tmp_path / "runs" / "r1"))
    ctx.write_artifact("customer_recommendations", want.head(7))              # an earlier file, then folders
    for _ in range(2):
        path = ctx.write_artifact("customer_recommendations", got)
        assert path.is_dir() and len(list(path.glob("part-*.parquet"))) == got.n
        assert sorted(p.name for p in path.parent.iterdir()) == ["customer_recommendations"]   # nothing left over
        pd.testing.assert_frame_equal(ctx.read_artifact("customer_recommendations"), want, check_exact=True)
        pd.testing.assert_frame_equal(ctx.read_artifact("customer_recommendations", ["product_id", "nope", "customer_key"]),
                                      want[["product_id", "customer_key"]], check_exact=True)    # only those it has
    counts = affinity.add_recommendation_counts(got.map(affinity.recommendation_counts, banned))
    whole = affinity.recommendation_counts(want, banned)
    assert {k: counts[k] for k in ("customers", "rows", "sensitive")} == {k: whole[k] for k in ("customers", "rows", "sensitive")}
    pd.testing.assert_series_equal(counts["names"].sort_index(), whole["names"].sort_index(), check_names=False)
    assert counts["names"].is_monotonic_decreasing
    path = ctx.write_artifact("customer_recommendations", want)                # a frame replaces the folder
    assert path.is_file() and not (path.parent / "customer_recommendations").exists()
    pd.testing.assert_frame_equal(ctx.read_artifact("customer_recommendations", ["score", "nope"]), want[["score"]])
    (path.parent / "notes").mkdir()                                            # a folder that is not parts
    (path.parent / "notes" / "read.me").write_text("kept")
    with pytest.raises(CrmlabError, match="folder of other files"):
        ctx.write_artifact("notes", got)
    assert (path.parent / "notes" / "read.me").read_text() == "kept"
    with pytest.raises(CrmlabError, match="a sensitive product was recommended"):
        affinity_dask.recommend_parts(cluster.client, rec, b, (), 300, affinity.published_recommendations, names, banned)


@pytest.mark.parametrize("inputs", ["frames", "files"])
def test_decisions_by_parts_equal_the_whole(cluster, world, tmp_path, monkeypatch, inputs):
    """Scores, offers and recent contacts decided on nine parts of the customers equal the whole's, row
    order included: the media's overall response rates come from all contacts (parts hold customers
    never contacted by some medium), channel ties and the control draw are per customer, the
    do-not-contact list and the guarded products apply in every part. The score tables are frames sent
    from here, or Parquet files (several row groups; recommendations as a folder of parts) that the
    workers read. The report's figures counted on the parts are the whole's."""
    ev = CustomerEvents.from_sources(sources.load(world))
    c = ev.contacts
    mailed = c.loc[c["medium"] == "mail", "customer_key"].unique()[:3]        # most parts: no mail contact
    ev = CustomerEvents(ev.orders, ev.lines, c[(c["medium"] != "mail") | c["customer_key"].isin(mailed)], ev.profile)
    keys = ev.profile.index.to_numpy()
    rng = np.random.default_rng(5)
    n = len(keys)
    bands = np.array(["low", "medium", "high"], dtype=object)
    segments = pd.DataFrame({"customer_key": keys[rng.permutation(n)], "segment_id": rng.integers(0, 4, n),
                             "segment": rng.choice(np.array(["a", "b"], dtype=object), n),
                             "value_band": rng.choice(bands, n), "risk_band": rng.choice(bands, n),
                             "value": rng.gamma(2.0, 50.0, n), "attrition_risk": rng.random(n)})
    segments["value_risk_cell"] = segments["value_band"] + " value / " + segments["risk_band"] + " risk"
    value_t = pd.DataFrame({"customer_key": keys, "p_alive": rng.random(n), "expected_purchases_365d": rng.random(n)})
    products = pd.read_parquet(world / "products.parquet")
    items = ev.lines["product_id"].unique()
    recs = pd.DataFrame({"customer_key": np.repeat(keys, 6), "product_id": rng.choice(items, 6 * n),
                         "score": rng.random(6 * n)}).drop_duplicates(["customer_key", "product_id"])
    propensity = pd.DataFrame({"customer_key": keys, "attrition_risk": rng.random(n), "response_propensity": rng.random(n),
                               "model_version": "m1"})
    for dept in products["department"].unique()[:3]:
        propensity[f"propensity_{decisions._slug(dept)}"] = rng.random(n)
    D = dict(config.DEFAULTS["decisions"], control_share=0.2, frequency_days=400, frequency_cap=2)
    cutoff = ev.last_date - pd.Timedelta(days=30)
    args = (segments, value_t, propensity, recs, products, D, cutoff, set(keys[::50]), set(items[:4]), 3)
    want = decisions.decide_tables(ev, *args)
    sent = args
    if inputs == "files":
        (tmp_path / "recs").mkdir()
        for i, half in enumerate((recs.iloc[:len(recs) // 2], recs.iloc[len(recs) // 2:])):
            half.to_parquet(tmp_path / "recs" / f"part-{i:05d}.parquet", index=False, row_group_size=700)
        for name, df in (("segments", segments), ("value", value_t), ("propensity", propensity)):
            df.to_parquet(tmp_path / f"{name}.parquet", index=False, row_group_size=500)
        sent = (tmp_path / "segments.parquet", tmp_path / "value.parquet", tmp_path / "propensity.parquet",
                tmp_path / "recs", *args[4:])
    got = decisions_dask.decide_by_parts(cluster.client, len(ev.lines) // 9 + 1, ev, *sent)
    assert len(want[0]) == n and len(want[1]) > 2 * n and len(want[2]) > 100
    assert want[0]["contact"].any() and want[0]["control"].any() and want[0]["preferred_medium"].nunique() > 1
    for w, g in zip(want, got):                         # left on the workers, in ranges of rows or keys
        assert isinstance(g, TableParts) and g.n == 9 and len(g) == len(w)
        pd.testing.assert_frame_equal(g.compute(), w, check_exact=True)
    for g in got[1:]:
        last = [f["customer_key"].iloc[-1] for f in g.frames() if len(f)]
        assert last == sorted(last) and len(last) > 5
    assert min(got[0].rows) > 0
    monkeypatch.setattr(score_figures, "SAMPLE", 100)
    scores, guarded = want[0].assign(value=want[0]["value"] * 2.0), args[-2]
    previous = score_figures.PreviousScores.of(want[0])
    whole = score_figures.ScoreFigures.compute(scores, guarded, previous)
    parts = score_figures.ScoreFigures.compute(got[0].transform(lambda d: d.assign(value=d["value"] * 2.0)),
                                               guarded, previous)
    pd.testing.assert_frame_equal(parts.treatments, whole.treatments)
    pd.testing.assert_frame_equal(parts.treatments, decisions.summary(scores))
    for c in score_figures.COUNTED:
        pd.testing.assert_series_equal(parts.counts[c], whole.counts[c])
    assert parts.counts["preferred_medium"].sum() == n and parts.with_offer == whole.with_offer > n // 2
    assert parts.customers == n and parts.guarded_offers == whole.guarded_offers == 0
    pd.testing.assert_frame_equal(parts.sample, whole.sample)
    assert n // 200 < len(parts.sample) < n // 10
    pd.testing.assert_frame_equal(parts.drift(previous), whole.drift(previous), rtol=1e-12)
    assert parts.drift(previous).loc["value", "psi"] > 0.2 > parts.drift(previous).loc["p_alive", "psi"]


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_tables_left_on_the_workers_publish_as_their_frames(cluster, tmp_path, request, db):
    """Tables left on the workers (TableParts) are published a part at a time: the database and the
    Parquet copy hold what publishing the whole frames gives, to the last bit of every float (a text
    column empty in a whole part included); a part breaking the contract stops the publication with the
    problem named, and nothing changes."""
    from crmlab import publish
    from test_publish import _tricky

    url = publish.default_url(tmp_path) if db == "sqlite" else request.getfixturevalue("postgres_schema")[0]
    want = _tricky(3000)
    want["customer_scores"].loc[:999, "next_best_offer_name"] = None        # all missing in the first part
    thirds = lambda df: [df.iloc[a:a + len(df) // 3 + 1] for a in range(0, len(df), len(df) // 3 + 1)]
    v1 = publish.publish(want, url, tmp_path, writers=3)
    frames = {n: publish.read_parquet(tmp_path, n) for n in want}
    parted = {n: TableParts.scatter(cluster.client, thirds(df)) for n, df in want.items()}
    assert [p.n for p in parted.values()] == [3, 3]
    v2 = publish.publish(parted, url, tmp_path, writers=3)
    for name, df in want.items():
        key = list(publish.CONTRACT[name]["key"])
        drop = ["score_version", "scored_at"]
        got = publish.read_parquet(tmp_path, name)
        pd.testing.assert_frame_equal(got.drop(columns=drop, errors="ignore"), frames[name].drop(columns=drop, errors="ignore"),
                                      check_exact=True, obj=name)
        sql = {v: publish.read_table(url, name, version=v).drop(columns=drop, errors="ignore").sort_values(key, ignore_index=True)
               for v in (v1, v2)}
        pd.testing.assert_frame_equal(sql[v2], sql[v1], check_exact=True, obj=name)
    assert (publish.read_table(url, "customer_scores")["score_version"] == v2).all()
    bad = thirds(want["customer_scores"].assign(p_alive=0.5))
    bad[2] = bad[2].assign(p_alive=-1.0)
    with pytest.raises(publish.PublishError, match="column 'p_alive' must be a probability"):
        publish.publish({**parted, "customer_scores": TableParts.scatter(cluster.client, bad)}, url, tmp_path, writers=3)
    assert publish.current_version(url) == v2 and publish.history(url)["version"].max() == v2


def test_identity_index_made_by_the_workers_holds_the_local_rows(cluster, tmp_path):
    """The identity index of records in three Parquet parts, keyed and joined to the key map on the
    workers (regrouped by a hash of the source): the local index's rows; a record missing from the key
    map stops the publication as locally."""
    from crmlab import identity_index
    from crmlab.publish import PublishError

    records = datasets.read_febrl4(SAMPLE.parent / "febrl")[0]
    matcher = datasets.febrl_matcher().fit(records)
    km = matcher.predict(records)
    files = [tmp_path / f"part-{i}.parquet" for i in range(3)]
    for f, at in zip(files, np.array_split(np.arange(len(records)), 3)):
        records.iloc[at].to_parquet(f)
    want = identity_index.index_rows(records, km, matcher)
    km.to_parquet(tmp_path / "key_map.parquet", index=False, row_group_size=700)     # the artifact, read there
    src = ["source_system", "source_id"]
    for key_map in (km, tmp_path / "key_map.parquet"):
        got = identity_dask.index_rows_by_parts(cluster.client, files, key_map, matcher)
        assert got.n == 3 and len(got) == len(want) > 1000 and want["customer_key"].notna().all()
        pd.testing.assert_frame_equal(got.compute().sort_values(src, ignore_index=True),
                                      want.sort_values(src, ignore_index=True), check_exact=True)
    with pytest.raises(PublishError, match="^1 records have no customer key"):
        identity_index.identity_tables(identity_dask.index_rows_by_parts(cluster.client, files, km.iloc[1:], matcher),
                                       km, matcher)


def test_campaign_features_by_parts_equal_the_whole(cluster, world, monkeypatch):
    """Stage 70's uplift inputs: each contact's features at its campaign's start, computed by parts of the
    customers, equal the whole's (campaigns before any order are skipped in both)."""
    ev = CustomerEvents.from_sources(sources.load(world))
    want = measure.campaign_features(ev, ev.contacts)
    got = measure.campaign_features(ev, ev.contacts, features=events_dask.rows_on(cluster.client, ev, len(ev.lines) // 5))
    assert len(want[0]) > 500 and want[1].any() and want[2].any()
    pd.testing.assert_frame_equal(got[0], want[0], check_exact=True)
    assert np.array_equal(got[1], want[1]) and np.array_equal(got[2], want[2])
    pd.testing.assert_frame_equal(got[3], want[3])
    # a sample of the customers (measure.uplift_rows): only their rows come here from the workers; the
    # campaigns' starts are those of all contacts
    keys = ev.contacts["customer_key"]
    share = measure.sample_share(len(keys), len(keys) // 3)
    assert measure.sample_share(len(keys), len(keys)) == 1 and measure.in_sample(keys, 1.0).all()
    picked = measure.in_sample(keys, share, seed=2)
    assert 0.25 < picked.mean() < 0.42 and not np.array_equal(picked, measure.in_sample(keys, share, seed=3))
    sample, starts = ev.contacts[picked], measure.campaign_starts(ev.contacts)
    want = measure.campaign_features(ev, sample, starts=starts)
    fetched = []
    fetch = FeatureRows.fetch
    monkeypatch.setattr(FeatureRows, "fetch", lambda self: fetched.append(len(self)) or fetch(self))
    got = measure.campaign_features(ev, sample, starts=starts, features=events_dask.rows_on(cluster.client, ev, 5000))
    assert set(want[3]["customer_key"]) <= set(keys[picked]) and 0 < sum(fetched) == len(want[0]) < len(ev.contacts) // 2
    for g, w in zip(got, want):
        (pd.testing.assert_frame_equal if isinstance(w, pd.DataFrame) else np.testing.assert_array_equal)(g, w)


def test_a_run_joins_a_running_scheduler_and_leaves_it_running():
    """engine.address: the engine joins that scheduler (workers capped to one thread) and, closed, leaves
    the cluster running for whoever started it."""
    other = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                                     host="127.0.0.1")
    try:
        joined = engine.start({"kind": "dask", "address": other.scheduler_address})
        assert joined.local is None and joined.address == other.scheduler_address and joined.workers == 1
        assert joined.describe()["started_for_run"] is False
        assert set(joined.client.run(lambda: __import__("numba").get_num_threads()).values()) == {1}
        joined.close()
        with distributed.Client(other) as c:
            assert c.submit(sum, [1, 2]).result() == 3                      # still running
    finally:
        other.close()


def _matched(m, records, previous=None):
    m.fit(records)
    pairs = m.score_pairs(records)
    return pairs, identity.key_map(records, m.cluster(len(records), pairs), pairs, previous)


def test_dask_record_matching_with_oversized_blocks_equals_local(cluster, monkeypatch):
    """Blocks above max_block are skipped by their rule (and counted) and a pair in an earlier rule's
    skipped block is still made by a later rule, in parts as locally; training samples drawn from
    rules with more pairs than they take are the local ones."""
    monkeypatch.setattr(identity, "TRAINING_PAIRS", 3000)
    records = sources.load(SAMPLE).customers
    local = identity.RecordMatcher(max_block=3)
    pairs, km = _matched(local, records)
    dm = identity_dask.DaskRecordMatcher.like(local).on(cluster.client, parts=3)
    dpairs, dkm = _matched(dm, records)
    assert local.blocking_["blocks_skipped"].iloc[:-1].gt(0).sum() >= 2
    big = dm.largest_blocks(records, k=2)                      # named with their (masked) key and size
    pd.testing.assert_frame_equal(big, local.largest_blocks(records, k=2))
    assert big["skipped"].any() and (big.loc[big["skipped"], "records"] > 3).all()
    assert (big["key"].str.len() > 0).all()
    pd.testing.assert_frame_equal(dm.blocking_, local.blocking_)
    assert dm.lambda_ == local.lambda_ and dm.to_dict() == local.to_dict()
    assert {s["pairs"] for s in local.sessions_} > {3000} and dm.sessions_ == local.sessions_   # both paths
    pd.testing.assert_frame_equal(dkm, km)
    # the links left on the workers: components from merged forests, the guard on oversized clusters
    pd.testing.assert_frame_equal(dm.predict(records), km)
    assert km["customer_key"].value_counts().max() > 2
    local.max_cluster = dm.max_cluster = 2
    guarded = local.predict(records)
    pd.testing.assert_frame_equal(dm.predict(records), guarded)
    assert dm.n_oversized_ == local.n_oversized_ and not guarded.equals(km)


@pytest.mark.parametrize("world", ["febrl4", "sample"])
def test_dask_record_matching_equals_local(cluster, world):
    """Candidate pairs made, compared and scored by parts on the workers: the same m, u and prior
    bit for bit, the same blocking statistics, links and key map (keys kept from a previous map
    alike), and incremental matching of new records the same."""
    if world == "febrl4":
        records = datasets.read_febrl4(SAMPLE.parent / "febrl")[0]
        make = datasets.febrl_matcher
    else:
        records = sources.load(SAMPLE).customers
        make = identity.RecordMatcher
    local = make()
    pairs, km = _matched(local, records)
    dm = identity_dask.DaskRecordMatcher.like(make()).on(cluster.client, parts=5)
    dpairs, dkm = _matched(dm, records)
    assert all(np.array_equal(a, b) for a, b in zip(local.m_, dm.m_))
    assert all(np.array_equal(a, b) for a, b in zip(local.u_, dm.u_))
    assert dm.lambda_ == local.lambda_ and dm.n_iter_ == local.n_iter_ and dm.tf_ == local.tf_
    pd.testing.assert_frame_equal(dm.blocking_, local.blocking_)
    acc = pairs.probability >= local.threshold
    np.testing.assert_array_equal(dpairs.left, pairs.left[acc])
    np.testing.assert_array_equal(dpairs.right, pairs.right[acc])
    np.testing.assert_array_equal(dpairs.probability, pairs.probability[acc])
    np.testing.assert_array_equal(dpairs.best, identity.best_probability(len(records), pairs))
    pd.testing.assert_frame_equal(dkm, km)
    pd.testing.assert_frame_equal(dm.predict(records), km)
    assert dm.to_dict() == local.to_dict()
    # the report's sample: candidate pairs scored as locally, about as many as asked for
    sample = dm.pair_sample(records, 1000)
    at = pd.Series(np.arange(len(pairs.left)), index=pairs.left * len(records) + pairs.right)
    idx = at.loc[sample.left * len(records) + sample.right].to_numpy()
    assert 800 < len(idx) < 1200 and len(np.unique(idx)) == len(idx)
    np.testing.assert_array_equal(sample.probability, pairs.probability[idx])
    # a later run keeps the keys: the previous map's, shuffled in, as locally
    prev = km.assign(customer_key="P" + km["customer_key"].str[1:])
    rows = np.random.default_rng(0).permutation(len(records))
    again = records.iloc[rows].reset_index(drop=True)
    p1 = local.score_pairs(again)
    p2 = dm.score_pairs(again)
    pd.testing.assert_frame_equal(identity.key_map(again, dm.cluster(len(again), p2), p2, prev),
                                  identity.key_map(again, local.cluster(len(again), p1), p1, prev))
    # incremental: the last 5% of the records are new
    cut = int(len(records) * 0.95)
    old, new = records.iloc[:cut].reset_index(drop=True), records.iloc[cut:].reset_index(drop=True)
    known = km.iloc[:cut]
    pd.testing.assert_frame_equal(dm.match_new(old, known, new), local.match_new(old, known, new))
    assert dm.bridges_ == local.bridges_


# --- #18: input tables read, validated and written by the workers, part by part
@pytest.fixture(scope="module")
def parted_world(tmp_path_factory) -> Path:
    """A 3,000-customer world written as folders of six Parquet parts (orders, lines, contacts, customers)."""
    from crmlab import synth

    out = tmp_path_factory.mktemp("parted")
    synth.generate(synth.WorldSpec(customers=3000, seed=11, chunk=500), out, partitioned=True)
    return out


AS_OF = "2026-07-01"


def _tables(src) -> dict:
    return {n: src[n] for n in src.tables}


def test_sources_loaded_by_the_workers_equal_the_local_load(cluster, parted_world, tmp_path):
    """Every table the workers type, check, standardise and write part by part equals the local load's
    (values, dtypes, row order), read back as a stage reads the run's sources; row counts known
    without reading."""
    from crmlab import sources_dask

    want = sources.load(parted_world, as_of=AS_OF)
    want.write(tmp_path / "local")
    want = sources.Sources.read_artifacts(tmp_path / "local")
    got = sources_dask.load(cluster.client, parted_world, tmp_path / "dask", as_of=AS_OF)
    assert (tmp_path / "dask" / "order_lines").is_dir() and len(list((tmp_path / "dask" / "order_lines").iterdir())) == 6
    assert got.systems == want.systems and list(got.tables) == list(want.tables)
    assert got.fingerprints == want.fingerprints and got.origin == want.origin
    assert got.row_counts() == want.row_counts()
    again = sources.Sources.read_artifacts(tmp_path / "dask")
    for name in want.tables:
        pd.testing.assert_frame_equal(again[name], want[name], check_exact=True, obj=name)


def _plant(world: Path, to: Path) -> None:
    """A copy of ``world`` with problems in some parts: missing product ids in one part of the lines,
    orphan orders in another, an order id in two parts of the orders and an unparseable date in one,
    order ids stored as text in one part only (whole numbers all the same: Int64 as locally), and
    contacts of an unknown source system in one part."""
    import shutil

    shutil.copytree(world, to)
    lines = sorted((to / "order_lines").glob("*.parquet"))
    a = pd.read_parquet(lines[1])
    a["product_id"] = a["product_id"].astype(object)
    a.loc[a.index[[3, 7]], "product_id"] = None
    a.to_parquet(lines[1], index=False)
    b = pd.read_parquet(lines[4])
    b.loc[b.index[[0, 1]], "order_id"] = -5                              # no such order
    b.to_parquet(lines[4], index=False)
    orders = sorted((to / "orders").glob("*.parquet"))
    o0, o3 = pd.read_parquet(orders[0]), pd.read_parquet(orders[3])
    o3.loc[o3.index[2], "order_id"] = o0["order_id"].iloc[5]             # the same order id in parts 0 and 3
    o3["order_date"] = o3["order_date"].astype(str)
    o3.loc[o3.index[9], "order_date"] = "31/02/2026"
    o3.to_parquet(orders[3], index=False)
    o2 = pd.read_parquet(orders[2])
    o2["order_id"] = o2["order_id"].astype(str)
    o2.to_parquet(orders[2], index=False)
    contacts = sorted((to / "contacts").glob("*.parquet"))
    c2 = pd.read_parquet(contacts[2])
    c2.loc[c2.index[[4, 6]], "source_system"] = "shop"                  # no customers_shop table
    c2.to_parquet(contacts[2], index=False)


def test_problems_found_by_parts_are_the_local_loads(cluster, parted_world, tmp_path):
    """Problems planted in some parts: the workers report each as the local load does (table, column,
    problem, file, count, first rows), judged over the whole table (a key repeated across two parts,
    an orphan key whose parent lies in other parts); nothing is written."""
    from crmlab import sources_dask

    bad = tmp_path / "bad"
    _plant(parted_world, bad)
    with pytest.raises(sources.SourcesInvalid) as local:
        sources.load(bad, as_of=AS_OF)
    with pytest.raises(sources.SourcesInvalid) as by_parts:
        sources_dask.load(cluster.client, bad, tmp_path / "out", as_of=AS_OF)
    assert not (tmp_path / "out").exists()

    def described(errors):
        return sorted((e.table, e.column, e.problem, e.path, e.n_bad,
                       None if e.rows is None else e.rows.head(5).astype(str).to_csv()) for e in errors)

    want = described(local.value.errors)
    assert {(w[0], w[2].split(" (")[0]) for w in want} >= {
        ("order_lines", "missing values in a required field"), ("orders", "unparseable date"),
        ("orders", "duplicate key"), ("contacts", "unknown source system")}
    assert described(by_parts.value.errors) == want


def test_cross_part_keys_found_by_buckets(cluster, parted_world, tmp_path):
    """Every column valid: a key repeated in two parts is found by the hash buckets (and its children go
    unchecked, as locally); once it is unique, lines whose order lies in no part are orphans: both
    with the local message, count and first rows."""
    from crmlab import sources_dask
    import shutil

    bad = tmp_path / "keys"
    shutil.copytree(parted_world, bad)
    orders = sorted((bad / "orders").glob("*.parquet"))
    o0, o3 = pd.read_parquet(orders[0]), pd.read_parquet(orders[3])
    o3.loc[o3.index[2], "order_id"] = o0["order_id"].iloc[5]
    o3.to_parquet(orders[3], index=False)
    lines = sorted((bad / "order_lines").glob("*.parquet"))
    b = pd.read_parquet(lines[4])
    b.loc[b.index[[0, 1]], "order_id"] = -5
    b.to_parquet(lines[4], index=False)
    with pytest.raises(sources.SourcesInvalid) as local:
        sources.load(bad, as_of=AS_OF)
    with pytest.raises(sources.SourcesInvalid) as by_parts:
        sources_dask.load(cluster.client, bad, tmp_path / "out", as_of=AS_OF)
    got = {(e.table, e.problem): e for e in by_parts.value.errors}
    assert len(got) == len(local.value.errors) == 1                   # orders broken: its children unchecked
    o3.loc[o3.index[2], "order_id"] = o3["order_id"].iloc[1] + 10 ** 9  # the key unique again
    o3.to_parquet(orders[3], index=False)
    with pytest.raises(sources.SourcesInvalid) as local2:
        sources.load(bad, as_of=AS_OF)
    with pytest.raises(sources.SourcesInvalid) as by_parts2:
        sources_dask.load(cluster.client, bad, tmp_path / "out", as_of=AS_OF)
    assert [e.problem for e in local2.value.errors] == ["orphan foreign key: no matching order_id in 'orders'"]
    for e, g in ((local.value.errors[0], got[("orders", "duplicate key")]), (local2.value.errors[0],
                                                                            by_parts2.value.errors[0])):
        assert (g.column, g.path, g.n_bad, str(g)) == (e.column, e.path, e.n_bad, str(e))


def test_a_part_that_cannot_be_read_is_said_as_locally(cluster, parted_world, tmp_path):
    """Two parts of the order lines are not Parquet: the local message (the folder, its first bad part),
    though the workers read only the parts' metadata and id columns first."""
    from crmlab import sources_dask
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(parted_world, bad)
    lines = sorted((bad / "order_lines").glob("*.parquet"))
    for k in (2, 4):
        lines[k].write_bytes(b"not parquet at all" * 10)
    with pytest.raises(sources.SourcesInvalid) as local:
        sources.load(bad, as_of=AS_OF)
    with pytest.raises(sources.SourcesInvalid) as by_parts:
        sources_dask.load(cluster.client, bad, tmp_path / "out", as_of=AS_OF)
    assert str(by_parts.value) == str(local.value) and "a part cannot be read" in str(local.value)


# --- #18: the events built by the workers from the sources' parts
@pytest.mark.parametrize("mode", ["link_and_dedupe", "link"])
def test_records_left_in_their_parts_match_as_the_whole_table(cluster, parted_world, tmp_path, monkeypatch, mode):
    """Stage 10 in Dask mode: the records stay in the sources' parts (this process holds their names);
    the workers read the parts, and the fit, the key map, the report's blocking table (the true pairs'
    completeness, counted on the workers, with oversized blocks skipped) and its review rows are the
    local ones on the table."""
    from crmlab import matching_report, sources_dask
    from crmlab.truth import record_truth

    monkeypatch.setattr(identity, "TRAINING_PAIRS", 2000)      # rules with more pairs than taken, and fewer
    src = sources_dask.load(cluster.client, parted_world, tmp_path / "src", as_of=AS_OF)
    files = src.part_files()["customers"]
    records = sources.Sources.read_artifacts(tmp_path / "src").customers
    parted = identity_dask.PartedRecords(files)
    assert len(files) > 1 and len(parted) == len(records) and set(parted.columns) == set(records.columns)
    pd.testing.assert_frame_equal(parted["source_id"].to_frame(), records[["source_id"]])
    rows = np.array([len(records) - 1, 0, 17, 17, len(records) // 2])    # any order, repeats, across parts
    pd.testing.assert_frame_equal(parted.take(rows), records.take(rows).reset_index(drop=True))
    with pytest.raises(KeyError, match="take"):
        parted["email"]
    truth = record_truth(parted_world, parted)
    np.testing.assert_array_equal(truth, record_truth(parted_world, records))

    local = identity.RecordMatcher(mode=mode, max_block=3)
    local.fit(records)
    km = local.predict(records)
    dm = identity_dask.DaskRecordMatcher.like(local).on(cluster.client, parts=3)
    dm.fit(parted)
    assert dm.to_dict() == local.to_dict() and dm.sessions_ == local.sessions_
    taken = [s["pairs"] for s in local.sessions_]           # link: the sampled pairs less those within a system
    assert (2000 in taken if mode == "link_and_dedupe" else max(taken) < 2000) and min(taken) < 2000
    pd.testing.assert_frame_equal(dm.blocking_, local.blocking_)
    pd.testing.assert_frame_equal(dm.predict(parted), km)
    got = matching_report.blocking_report(dm, parted, truth)
    want = matching_report.blocking_report(local, records, truth)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert local.blocking_["blocks_skipped"].sum() > 0 and 0 < want["pairs_completeness"].iloc[-1] < 1
    # records given as a table (an incremental run reads them): chunks sent from here, the same counts
    pd.testing.assert_frame_equal(matching_report.blocking_report(dm, records, truth), want, check_exact=True)
    pd.testing.assert_frame_equal(dm.largest_blocks(parted), local.largest_blocks(records))
    pairs = local.score_pairs(records)
    pd.testing.assert_frame_equal(matching_report.review_sample(parted, pairs, 0.9, n=8),
                                  matching_report.review_sample(records, pairs, 0.9, n=8))
    pd.testing.assert_frame_equal(dm.explain(parted, pairs, 3), local.explain(records, pairs, 3))


def _key_map(src, world) -> pd.DataFrame:
    """The planted customers as the key map (records of one person in several systems share a key)."""
    from crmlab.truth import record_truth

    rec = src.customers[["source_system", "source_id"]]
    return rec.assign(customer_key=pd.Series(record_truth(world, rec)).map(lambda k: f"C{int(k):07d}").to_numpy())


def _events_from(folder: Path) -> CustomerEvents:
    from crmlab.events import read_parts

    return CustomerEvents.from_artifacts(lambda name: read_parts(folder / name))


@pytest.mark.parametrize("keys", ["planted", "records"])
def test_events_built_by_the_workers_equal_the_local_ones(cluster, parted_world, tmp_path, keys):
    """Orders (values summed over lines in other parts), lines, contacts with their responses (one
    reference code quoted by another customer's order) and the profile, built by the workers from the
    sources' six parts into five customer parts: put together they are the local events, values, dtypes
    and row order; each part holds its customers' rows in the local order."""
    from crmlab import sources_dask

    src = sources_dask.load(cluster.client, parted_world, tmp_path / "src", as_of=AS_OF)
    km = _key_map(src, parted_world) if keys == "planted" else None
    parts = src.part_files()
    assert len(parts["order_lines"]) == 6
    # another customer's order quotes a contact's code within its window: the contact's response
    before = CustomerEvents.from_sources(src, km).contacts
    o = src["orders"]
    coded = before[before["ref_code"].notna() & before["attribution"].ne("ref_code")].iloc[0]
    end = coded["contact_date"] + pd.Timedelta(days=int(coded["window_days"]))
    other = o.index[(o["source_id"] != coded["source_id"]) & o["ref_code"].isna() & (o["order_date"] >= coded["contact_date"])
                    & (o["order_date"] < end)][0]
    first = pd.read_parquet(parts["orders"][0])
    assert other < len(first)
    first.loc[other, "ref_code"] = coded["ref_code"]
    first.to_parquet(parts["orders"][0], index=False)
    src = sources.Sources.read_artifacts(tmp_path / "src")
    want = CustomerEvents.from_sources(src, km)
    hit = want.contacts.set_index("contact_id").loc[coded["contact_id"]]
    assert hit["attribution"] == "ref_code" and hit["response_order_id"] == o.loc[other, "order_id"]

    written = events_dask.build(cluster.client, parts, km, 5, tmp_path / "ev")
    assert written == {k: len(v) for k, v in want.artifacts().items()}
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == sorted(written)   # the pieces' files are gone
    got = _events_from(tmp_path / "ev")
    for name, df in want.artifacts().items():
        pd.testing.assert_frame_equal(got.artifacts()[name], df, check_exact=True, obj=name)
    if km is not None:                          # the key map as its Parquet file, read by the workers
        km.to_parquet(tmp_path / "km.parquet", row_group_size=1000, index=False)
        assert events_dask.build(cluster.client, parts, tmp_path / "km.parquet", 5, tmp_path / "ev2") == written
        for name, df in _events_from(tmp_path / "ev2").artifacts().items():
            pd.testing.assert_frame_equal(df, got.artifacts()[name], check_exact=True, obj=name)
    for p, piece in enumerate(events_dask.split(want, 5)):        # what the workers read: the whole's parts
        mine = events_dask.read_part(str(tmp_path / "ev"), p)
        assert "_events_lines" not in vars(mine)                # the lines are read when first asked for
        mine = pickle.loads(pickle.dumps(mine))                 # as a worker sends it to another
        for name, df in piece.artifacts().items():
            pd.testing.assert_frame_equal(mine.artifacts()[name], df, check_exact=True, obj=f"{name} part {p}")


def test_pieces_left_in_files_come_back_as_they_were(tmp_path):
    """A task's pieces written to the events build's spool (frames nested in tuples and lists, None for
    what a task lacks, empty pieces) are read back with their values, dtypes and index."""
    df = pd.DataFrame({"customer_key": pd.array(["a", None, "c"], dtype="str"),
                       "id": pd.array(["1", "2", None], dtype="string"),
                       "day": pd.to_datetime(["2026-01-01", None, "2026-01-03"]).astype("datetime64[ms]"),
                       "value": [1.5, np.nan, 3.0], events_dask.ROW: np.array([7, 3, 9])}).iloc[[2, 0]]
    got = events_dask._on_disk(str(tmp_path), "v0", lambda: ([df, df.iloc[:0]], [df.iloc[1:]], None))
    assert got[2] is None and all(isinstance(p, str) for p in [*got[0], *got[1]])
    assert len(set(got[0]) | set(got[1])) == 3 and len(list(tmp_path.iterdir())) == 3
    for path, want in zip([*got[0], *got[1]], [df, df.iloc[:0], df.iloc[1:]]):
        pd.testing.assert_frame_equal(events_dask._load(path), want, check_exact=True)
    assert events_dask._load(df) is df
    pd.testing.assert_frame_equal(events_dask._in_order(got[0] + [df.iloc[1:]]),
                                  pd.concat([df, df.iloc[1:]]).sort_values(events_dask.ROW).reset_index(drop=True))


def _never_whole(name: str) -> property:
    def get(self):
        raise AssertionError(f"the {name} were read whole into this process")
    return property(get, lambda self, value: None)


class _NothingWhole(events_dask.PartedEvents):
    """Parted events that fail when anything reads the orders, lines or contacts whole."""

    orders, lines, contacts = _never_whole("orders"), _never_whole("order lines"), _never_whole("contacts")


def test_stages_ask_the_lines_of_the_parts_and_get_the_whole_answers(cluster, parted_world, tmp_path, monkeypatch):
    """Departments, buyers per department, purchases in a window (customers in a shuffled order),
    feature builders, the propensity targets fitted and evaluated (labels, features and the treated
    contacts by parts) and the uplift inputs: equal to the local events', without the orders, the order
    lines or the contacts ever read whole here."""
    from crmlab import sources_dask

    src = sources_dask.load(cluster.client, parted_world, tmp_path / "src", as_of=AS_OF)
    km = _key_map(src, parted_world)
    want = CustomerEvents.from_sources(src, km)
    events_dask.build(cluster.client, src.part_files(), km, 4, tmp_path / "ev")
    got = _NothingWhole(cluster.client, tmp_path / "ev")
    # the last order date and the tables' columns without reading a table here
    assert got.last_date == want.last_date and "PartedEvents(in 4 parts" in repr(got)
    empty = got.empty()
    for name in ("orders", "lines", "contacts", "profile"):
        pd.testing.assert_frame_equal(getattr(empty, name), getattr(want, name).iloc[:0], check_index_type=False, obj=name)
    assert not [k for k in got.__dict__ if k.startswith("_events_")]
    P = config.load(CI)["propensity"]
    cut = targets.cutoffs(want.last_date, P["horizon_days"])
    assert got.departments() == want.departments() and got.departments(cut["train"]) == want.departments(cut["train"])
    pd.testing.assert_series_equal(got.department_buyers(cut["valid"]), want.department_buyers(cut["valid"]))
    who = want.profile.index[np.random.default_rng(0).permutation(len(want.profile))][:2500]
    depts = want.departments()[:4]
    pd.testing.assert_frame_equal(got.bought(who, cut["train"], cut["valid"], depts),
                                  want.bought(who, cut["train"], cut["valid"], depts))
    assert FeatureBuilder().fit(got, cut["train"]).feature_names_ == FeatureBuilder().fit(want, cut["train"]).feature_names_
    P = {**P, "fit_rows": 1000}                       # models fitted on samples: only those rows come here
    fetched = []
    fetch = FeatureRows.fetch
    monkeypatch.setattr(FeatureRows, "fetch", lambda self: fetched.append(len(self)) or fetch(self))
    mine, fb_mine, _ = targets.fit_targets(got, P, seed=1, progress=lambda s: None,
                                           features=events_dask.rows_on(cluster.client, got, 0))
    assert fetched and max(fetched) <= P["fit_rows"], fetched
    local, fb_local, _ = targets.fit_targets(want, P, seed=1, progress=lambda s: None)
    assert list(mine) == list(local) and len(mine) >= 3
    assert len(local["attrition"].holdout_X) > P["fit_rows"] and mine["attrition"].model.fit_rows_ == P["fit_rows"]
    for t in local:
        assert isinstance(mine[t].holdout_X, FeatureRows)
        pd.testing.assert_frame_equal(mine[t].holdout_X.iloc[:], local[t].holdout_X, check_exact=True, obj=t)
        assert mine[t].compiled.version == local[t].compiled.version, t
        np.testing.assert_array_equal(mine[t].holdout_y, local[t].holdout_y)
        # scikit-learn on the parts' rows: BLAS sums a block's last rows in another order (last bit)
        np.testing.assert_allclose(mine[t].holdout_p, local[t].holdout_p, rtol=1e-12, atol=0)
    X_m = measure.campaign_features(got, want.contacts, features=events_dask.rows_on(cluster.client, got, 0))[0]
    pd.testing.assert_frame_equal(X_m, measure.campaign_features(want, want.contacts)[0], check_exact=True)


def test_affinity_baskets_made_where_the_lines_lie_equal_the_whole(cluster, parted_world, tmp_path):
    """Stage 20 on events left as parts: order and customer baskets made by the parts (one with no line
    at all) give the whole's counts, itemsets (supports, order), department lifts and roll-ups, the
    same recommender and the local recommendation table row for row (lists regrouped by ranges of the
    customer), without the order lines ever read whole here."""
    from crmlab import sources_dask

    src = sources_dask.load(cluster.client, parted_world, tmp_path / "src", as_of=AS_OF)
    km = _key_map(src, parted_world)
    want = CustomerEvents.from_sources(src, km)
    events_dask.build(cluster.client, src.part_files(), km, 5, tmp_path / "ev")
    got = _NothingWhole(cluster.client, tmp_path / "ev")
    products = src["products"]
    items = products["product_id"]
    no_lines = cluster.client.submit(lambda ev: CustomerEvents(ev.orders.iloc[:0], ev.lines.iloc[:0], None,
                                                               ev.profile.iloc[:0]), got.parts.parts[0], pure=False)
    parts = got.parts.parts + [no_lines]
    orders = affinity_dask.BasketParts.of_events(cluster.client, parts, "order_id", items)
    whole = affinity.Baskets.from_frame(want.lines, "order_id", "product_id", items)
    assert orders.n == 5 and orders.n_baskets == whole.n_baskets and orders.items.equals(whole.items)
    np.testing.assert_array_equal(orders.item_counts(), whole.item_counts())
    for a, b in zip(orders.pair_counts(2), whole.pair_counts(2)):
        np.testing.assert_array_equal(a, b)
    its = affinity_dask.frequent_itemsets(cluster.client, orders, 0.002, 3)
    local = affinity.frequent_itemsets(whole, min_support=0.002, max_len=3, columnar=True)
    assert len(local) > 50 and (local.lens == 3).any()
    for a in ("flat", "lens", "counts"):
        assert np.array_equal(getattr(its, a), getattr(local, a)), a
    for level in ("department", "category"):
        mapping = products.set_index("product_id")[level]
        rolled, plain = orders.roll_up(mapping), whole.roll_up(mapping)
        assert rolled.items.equals(plain.items) and rolled.n_baskets == plain.n_baskets
        pd.testing.assert_frame_equal(affinity.lift_matrix(rolled), affinity.lift_matrix(plain), check_exact=True)
    customers = affinity_dask.BasketParts.of_events(cluster.client, parts, "customer_key", items)
    cw = affinity.Baskets.from_frame(want.lines, "customer_key", "product_id", items)
    rec, local = affinity.ItemRecommender(k=4).fit(customers), affinity.ItemRecommender(k=4).fit(cw)
    for a in ("nbr_ptr_", "nbr_idx_", "nbr_sim_", "popularity_"):
        assert np.array_equal(getattr(rec, a), getattr(local, a)), a
    banned = set(items[:40])
    names = products.set_index("product_id")["product_name"]
    table = affinity_dask.recommend_parts(cluster.client, rec, customers, banned, 0, affinity.published_recommendations,
                                          names, banned)
    assert table.n == 5
    expected = affinity.published_recommendations(local.recommend(cw, exclude_items=banned), names, banned)
    assert len(expected) > 5000
    pd.testing.assert_frame_equal(table.compute(), expected, check_exact=True)
    with pytest.raises(CrmlabError, match="no mapping"):
        orders.roll_up(products.set_index("product_id")["department"].iloc[1:])


def test_value_stage_and_its_report_by_parts_never_read_the_orders_here(cluster, parted_world, tmp_path):
    """Stage 30 on events left as parts: the fit, the table and the report's holdout check and weekly
    tracking come from the parts (patterns and sums), equal to the local stage's, and the orders are
    never read whole into the stage's process."""
    from crmlab import sources_dask
    from crmlab.stages.value import ValueResult, holdout_check

    src = sources_dask.load(cluster.client, parted_world, tmp_path / "src", as_of=AS_OF)
    km = _key_map(src, parted_world)
    want = CustomerEvents.from_sources(src, km)
    events_dask.build(cluster.client, src.part_files(), km, 4, tmp_path / "ev")
    got = _NothingWhole(cluster.client, tmp_path / "ev")
    P = {**config.load(CI)["value"], "model": "mbgnbd", "covariates": ["first_channel"], "holdout_days": 120}
    end = got.last_date
    tx = want.transactions()
    rfm = rfm_at(tx, P, end)
    m = value.make_model(P["model"], P["covariates"]).fit(rfm)
    rfm2, m2, gg2, table, _ = value_dask.fit_value(cluster.client, None, P, end, 0, got.parts)
    assert m2.params_ == m.params_ and m2.loglik_ == m.loglik_
    pd.testing.assert_frame_equal(rfm2, rfm, check_exact=True)
    assert sum(got.map_parts(len_orders)) == len(tx)

    mine = holdout_check(ValueResult(got, 0, end, None, None, None, None), P)
    local = holdout_check(ValueResult(want, len(tx), end, rfm, m, None, None), P)
    assert mine.model.params_ == local.model.params_ and mine.customers == local.customers
    pd.testing.assert_frame_equal(mine.report.table, local.report.table, rtol=1e-12)
    pd.testing.assert_frame_equal(mine.report.by_frequency, local.report.by_frequency, rtol=1e-12)
    from crmlab import value_report
    pd.testing.assert_frame_equal(value_report.tracking(mine.model, mine.tracking),
                                  value_report.tracking(local.model, local.tracking), rtol=1e-12)
    # the model of the check is the fit on the calibration customers' rows (to the last digits)
    rfm_cal = rfm_at(tx, P, end, local.calibration_end)
    on_rows = value.make_model(P["model"], P["covariates"]).fit(rfm_cal)
    assert local.customers == len(rfm_cal)
    for k, v in on_rows.params_.items():
        assert local.model.params_[k] == pytest.approx(v, rel=1e-9), k
    pd.testing.assert_frame_equal(local.report.table, value_report.holdout_report(on_rows, rfm_cal).table, rtol=1e-7)
    # the truth check: a sample's orders found by scanning the sources' and the events' files a piece at a time
    from crmlab import truth
    fresh = sources.Sources.read_artifacts(tmp_path / "src")
    keep, _ = truth.true_customers(parted_world, most=500)
    pd.testing.assert_frame_equal(truth.true_customer_transactions(parted_world, fresh, got, keep),
                                  truth.true_customer_transactions(parted_world, src, want, keep), check_exact=True)
    assert not fresh.tables._frames            # no source table read whole


def test_measure_stage_by_parts_never_reads_the_contacts_here(cluster, parted_world, tmp_path):
    """Stage 70 on events left as parts: lift from counts added over the parts equals the local lift
    (contacts, responders, rates, intervals and verdicts exactly, pooled revenue figures to 1e-12), for
    the age band and for segments read by the workers from a Parquet file; contact_responses, written
    by the workers, is the local table row for row; the uplift sample, campaign starts and attribution
    counts are the local ones; the contacts are never read whole here. With measure.window_days the
    responses are attributed anew over the whole, as locally."""
    from crmlab import sources_dask
    from crmlab.stages import measure as stage

    src = sources_dask.load(cluster.client, parted_world, tmp_path / "src", as_of=AS_OF)
    km = _key_map(src, parted_world)
    want = CustomerEvents.from_sources(src, km)
    events_dask.build(cluster.client, src.part_files(), km, 4, tmp_path / "ev")
    got = _NothingWhole(cluster.client, tmp_path / "ev")
    keys = want.profile.index
    rng = np.random.default_rng(5)
    seg = pd.DataFrame({"customer_key": keys, "segment": rng.integers(0, 6, len(keys))}).sample(frac=0.9, random_state=1)
    seg.to_parquet(tmp_path / "seg.parquet", index=False, row_group_size=400)       # 10% of customers: "unknown"
    M = {**config.load(CI)["measure"], "uplift_rows": len(want.contacts) // 3}
    for name, local_seg, their_seg in (("age_band", None, None), ("segment", seg, tmp_path / "seg.parquet")):
        mine, rows = stage.measure_events(got, {**M, "segment": name}, 3, their_seg)
        local, local_rows = stage.measure_events(want, {**M, "segment": name}, 3, local_seg)
        assert isinstance(rows, TableParts) and rows.n == 4 and len(local_rows) == len(want.contacts) > 1000
        pd.testing.assert_frame_equal(pd.concat(list(rows.frames()), ignore_index=True), local_rows, check_exact=True)
        lift_m, lift_l = stage.lift_artifact(mine), stage.lift_artifact(local)
        assert len(lift_l) > 6 and "unknown" in set(lift_l["segment"]) or name == "age_band"
        exact = [c for c in lift_l if not c.startswith("revenue") and "revenue" not in c]
        pd.testing.assert_frame_equal(lift_m[exact], lift_l[exact], check_exact=True)
        pd.testing.assert_frame_equal(lift_m, lift_l, rtol=1e-12, atol=0)
        assert (mine.contacts, mine.responded, mine.share) == (local.contacts, local.responded, local.share)
        assert 0.2 < local.share < 0.5 and len(local.sample) < len(want.contacts) / 2
        pd.testing.assert_frame_equal(mine.sample, local.sample, check_exact=True)
        pd.testing.assert_series_equal(mine.starts, local.starts)
        pd.testing.assert_series_equal(mine.by_attribution, local.by_attribution)
    # another segmentation (the truth check's life stage) counted by parts, the table cut by customer
    # there: the contacts of the customers it names
    by = [measure.lift_of(measure.add_lift_counts(e.map_parts(stage._lift_by, "segment", tables=(t,))))
          for e, t in ((got, tmp_path / "seg.parquet"), (want, seg))]
    pd.testing.assert_frame_equal(by[0], by[1], rtol=1e-12, atol=0)
    named = want.contacts[want.contacts["customer_key"].isin(seg["customer_key"])]
    assert 0.8 * len(want.contacts) < len(named) < len(want.contacts)
    pd.testing.assert_frame_equal(by[1], measure.lift_table(measure.add_segment(
        named, seg.set_index("customer_key")["segment"], "segment"), ["segment"]), check_exact=True)
    # responses attributed anew with another window: over the whole contacts and orders, as locally
    parted = events_dask.PartedEvents(cluster.client, tmp_path / "ev")
    W = {**M, "window_days": 9, "segment": "age_band"}
    (mine, rows), (local, local_rows) = (stage.measure_events(e, W, 3) for e in (parted, want))
    pd.testing.assert_frame_equal(rows, local_rows, check_exact=True)
    pd.testing.assert_frame_equal(stage.lift_artifact(mine), stage.lift_artifact(local), check_exact=True)
    assert local.responded < stage.measure_events(want, {**W, "window_days": None}, 3)[0].responded


def len_orders(ev) -> int:
    return len(ev.orders)


def test_a_sample_of_records_for_reports_brings_their_orders_lines_and_contacts(cluster, parted_world, tmp_path):
    """The data-quality report in Dask mode reads a sample: about the records asked for, every order and
    contact of those records and every line of those orders (no more), the whole tables' row counts."""
    from crmlab import quality, sources_dask

    src = sources_dask.load(cluster.client, parted_world, tmp_path / "src", as_of=AS_OF)
    whole = {n: src[n] for n in src.tables}
    got, share = sources_dask.record_sample(cluster.client, src, 1000)
    n = len(whole["customers"])
    assert share == 1000 / n and 0.7 * 1000 < len(got.customers) < 1.3 * 1000
    rec = pd.MultiIndex.from_frame(got.customers[["source_system", "source_id"]].astype("string"))

    def of_records(df):
        return df[pd.MultiIndex.from_frame(df[["source_system", "source_id"]].astype("string")).isin(rec)]

    for name in ("orders", "contacts"):
        pd.testing.assert_frame_equal(got[name], of_records(whole[name]).reset_index(drop=True), obj=name)
    lines = whole["order_lines"]
    pd.testing.assert_frame_equal(got["order_lines"], lines[lines["order_id"].isin(got["orders"]["order_id"])]
                                  .reset_index(drop=True))
    assert got.customers.merge(whole["customers"]).shape == got.customers.shape        # rows as they were
    pd.testing.assert_frame_equal(got["products"], whole["products"])
    assert got.row_counts() == src.row_counts() and got.row_counts()["order_lines"] == len(lines)
    ov = quality.overview(got).set_index("table")["rows"]
    assert ov["orders"] == len(whole["orders"]) and ov.filter(like="customers_").sum() == n
    assert sources_dask.record_sample(cluster.client, src, n) == (src, 1.0)


def test_events_name_records_missing_from_the_key_map(cluster, parted_world, tmp_path):
    """Orders of records the key map lacks: the local error, count and first records."""
    from crmlab import sources_dask

    src = sources_dask.load(cluster.client, parted_world, tmp_path / "src", as_of=AS_OF)
    km = _key_map(src, parted_world)
    km = km[~km["source_id"].isin(src["orders"]["source_id"].iloc[[5, 900, 4000]])]
    with pytest.raises(CrmlabError) as local:
        CustomerEvents.from_sources(src, km)
    with pytest.raises(CrmlabError) as got:
        events_dask.build(cluster.client, src.part_files(), km, 3, tmp_path / "ev")
    assert str(got.value) == str(local.value) and "orders reference source records missing" in str(got.value)


# --- #18: a SQL source streamed into parts, then read and checked by the workers
def _sql_world(world: Path, engine, schema=None, duplicate: bool = False) -> None:
    """``world``'s tables in a database; in every customer table the first 800 records lack e-mail and
    birth date (a whole part of NULLs), with a duplicate order id planted far from its twin on request."""
    for f in world.glob("*.parquet"):
        df = pd.read_parquet(f)
        if f.stem.startswith("customers_"):
            df.loc[:799, ["email", "dob"]] = None
        if duplicate and f.stem == "orders":
            df.loc[len(df) - 1, "order_id"] = df.loc[3, "order_id"]
        df.to_sql(f.stem, engine, schema=schema, index=False, if_exists="replace", chunksize=20000)


def _sql_equal(cluster, url, schema, tmp_path):
    from crmlab import sources_dask

    want = sources.load(url=url, schema=schema, as_of=AS_OF)
    want.write(tmp_path / "local")                          # as a stage reads them (dates in ms in Parquet)
    want = sources.Sources.read_artifacts(tmp_path / "local")
    origin = sources_dask.stage_sql(url, schema, None, tmp_path / "staged", chunk_rows=700)
    assert len(list((tmp_path / "staged" / "order_lines").glob("*.parquet"))) > 10
    got = sources_dask.load(cluster.client, tmp_path / "staged", tmp_path / "src", None, AS_OF, where=url, origin=origin)
    assert got.origin == want.origin and got.fingerprints == want.fingerprints == {}
    assert got.row_counts() == want.row_counts()
    for name in want.tables:
        pd.testing.assert_frame_equal(got[name], want[name], check_exact=True, obj=name)


def test_sql_source_streamed_into_parts_equals_the_local_load_sqlite(cluster, world, tmp_path):
    """SQLite: every table streamed in parts of 700 rows (one part of a customer table all NULL in e-mail
    and birth date) and loaded by the workers equals the local SQL load; a duplicate key across parts
    gets the local message, naming the database table."""
    import sqlalchemy as sa
    from crmlab import sources_dask

    url = f"sqlite:///{tmp_path / 'crm.db'}"
    engine = sa.create_engine(url)
    _sql_world(world, engine)
    engine.dispose()
    _sql_equal(cluster, url, None, tmp_path)
    engine = sa.create_engine(url)
    _sql_world(world, engine, duplicate=True)
    engine.dispose()
    with pytest.raises(sources.SourcesInvalid) as local:
        sources.load(url=url, as_of=AS_OF)
    params = config.load(CI, [f"data.url={url}", "engine.partition_rows=700", f"publish.dir={tmp_path / 'pub'}"])
    with pytest.raises(sources.SourcesInvalid) as got:
        sources_dask.load_params(cluster.client, params, tmp_path / "again" / "sources")
    assert str(got.value) == str(local.value) and "table orders" in str(got.value)
    assert not (tmp_path / "again").exists() or not any((tmp_path / "again").iterdir())   # nothing left


@pytest.mark.postgres
def test_sql_source_streamed_into_parts_equals_the_local_load_postgres(cluster, world, tmp_path, postgres_server,
                                                                       postgres_schema):
    import sqlalchemy as sa

    _, schema = postgres_schema
    engine = sa.create_engine(postgres_server)
    try:
        _sql_world(world, engine, schema)
    finally:
        engine.dispose()
    _sql_equal(cluster, postgres_server, schema, tmp_path)
