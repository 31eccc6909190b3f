"""The synthetic world: determinism, shapes, and that the planted truth is really there."""
import filecmp
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import hyp2f1

from crmlab import sources, synth

ROOT = Path(__file__).resolve().parents[1]


def _read(world, name):
    return pd.read_parquet(world / f"{name}.parquet")


def test_same_seed_same_world_other_seed_other_world(tmp_path):
    spec = synth.WorldSpec(customers=300, seed=11)
    synth.generate(spec, tmp_path / "a", fmt="parquet")
    synth.generate(spec, tmp_path / "b", fmt="parquet")
    synth.generate(synth.WorldSpec(customers=300, seed=12), tmp_path / "c", fmt="parquet")
    for name in ("customers_web", "orders", "order_lines", "contacts", "truth/record_truth"):
        a, b, c = (pd.read_parquet(tmp_path / d / f"{name}.parquet") for d in "abc")
        pd.testing.assert_frame_equal(a, b)
        assert not (len(a) == len(c) and a.equals(c))


def test_bundled_sample_is_reproducible(tmp_path):
    meta = json.loads((ROOT / "data" / "sample" / "truth" / "truth.json").read_text())
    spec = synth.WorldSpec(customers=meta["spec"]["customers"], seed=meta["spec"]["seed"])
    synth.generate(spec, tmp_path, fmt="csv")
    for f in sorted((ROOT / "data" / "sample").rglob("*.csv")):
        rel = f.relative_to(ROOT / "data" / "sample")
        assert filecmp.cmp(f, tmp_path / rel, shallow=False), f"{rel} differs: regenerate data/sample"


def test_world_validates_and_has_three_systems(world):
    src = sources.load(world)
    assert src.systems == ["callcentre", "store", "web"]
    truth = pd.read_parquet(world / "truth" / "record_truth.parquet")
    assert len(truth) == len(src.customers)
    assert truth["customer_id"].nunique() == 2000           # every customer has at least one record
    assert (truth.groupby("customer_id").size() > 1).mean() > 0.5


def test_planted_record_variation(world):
    truth = pd.read_parquet(world / "truth" / "record_truth.parquet")
    flags = truth["variations"].str.split(",").explode().value_counts()
    for f in ("typo_first", "typo_last", "nickname", "swapped_names", "old_address", "old_phone",
              "old_email", "missing_email", "missing_dob", "shared_household", "duplicate_record"):
        assert flags.get(f, 0) > 0, f
    # a nickname record really carries a diminutive of the true name
    web = _read(world, "customers_web").merge(truth[truth.source_system == "web"], on="source_id")
    nick = web[web["variations"].str.contains("nickname")]
    assert nick["first_name"].str.lower().isin([k.lower() for k in synth.W.NICKNAMES]).mean() > 0.9


def test_products_taxonomy_and_sensitive_flag(world):
    p = _read(world, "products")
    assert len(p) >= 300 and p["product_id"].is_unique
    assert p.groupby("department")["category"].nunique().min() >= 4
    assert set(p.loc[p["sensitive"], "category"]) == set(synth.W.SENSITIVE_CATEGORIES)


def _lift(lines, products, a, c):
    name = products.set_index("product_id")["product_name"]
    baskets = lines.assign(n=lines["product_id"].map(name)).groupby("order_id")["n"].agg(set)
    has_a = baskets.map(lambda s: a in s)
    has_c = baskets.map(lambda s: c in s)
    return (has_a & has_c).mean() / (has_a.mean() * has_c.mean())


def test_planted_affinities_and_sensitive_pair(world):
    lines, products = _read(world, "order_lines"), _read(world, "products")
    assert _lift(lines, products, "Printer", "Ink Cartridge") > 5
    assert _lift(lines, products, "Duvet Quilt", "Push-up Bra") > 5
    assert products.set_index("product_name").loc["Push-up Bra", "sensitive"]
    assert _lift(lines, products, "Bananas", "Printer") < 2


def _bgnbd_expected(t, r, alpha, a, b):
    z = t / (alpha + t)
    return (a + b - 1) / (a - 1) * (1 - (alpha / (alpha + t)) ** r * hyp2f1(r, b, a + b - 1, z))


def test_purchases_follow_bgnbd_and_spend_gamma_gamma(world):
    meta = json.loads((world / "truth" / "truth.json").read_text())
    bt, gg = meta["btyd"], meta["gamma_gamma"]
    ct = pd.read_parquet(world / "truth" / "customer_truth.parquet")
    end = pd.Timestamp(meta["spec"]["end"])
    T = ((end - ct["acquired_at"]).dt.days / 7.0).to_numpy()
    expected = _bgnbd_expected(T, bt["r"], bt["alpha"], bt["a"], bt["b"])
    x = ct["repeat_purchases"].to_numpy()
    se = x.std() / np.sqrt(len(x))
    assert abs(x.mean() - expected.mean()) < 4 * se, (x.mean(), expected.mean(), se)
    # population parameters behind the draws
    assert ct["lambda_per_week"].mean() == pytest.approx(bt["r"] / bt["alpha"], rel=0.1)
    assert ct["p_dropout"].mean() == pytest.approx(bt["a"] / (bt["a"] + bt["b"]), rel=0.1)
    # orders in the tables = first purchase + repeats + planted incremental responses
    orders = _read(world, "orders")
    assert len(orders) == len(ct) + x.sum() + ct["incremental_orders"].sum()
    lines = _read(world, "order_lines")
    value = (lines["quantity"] * lines["unit_price"]).groupby(lines["order_id"]).sum()
    mean_gg = gg["p"] * gg["gamma"] / (gg["q"] - 1)
    assert value.mean() == pytest.approx(mean_gg, rel=0.08)


def test_campaigns_control_groups_and_planted_uplift(world):
    contacts, campaigns = _read(world, "contacts"), _read(world, "campaigns")
    assert len(campaigns) >= 2
    share = contacts.groupby("campaign_id")["group"].apply(lambda g: (g == "control").mean())
    assert share.between(0.15, 0.25).all()
    assert contacts["ref_code"].is_unique
    up = pd.read_parquet(world / "truth" / "uplift_truth.parquet")
    assert set(up["campaign_id"]) == set(campaigns["campaign_id"])
    null = up[up["campaign_id"] == "SU26"]
    assert (null["true_incremental_rate"] == 0).all() and (null["incremental_responders"] == 0).all()
    spring = up[up["campaign_id"] == "SP26"].set_index("life_stage")["uplift_if_alive"]
    assert spring["young"] > spring["family"] > spring["senior"]        # varies by segment
    orders = _read(world, "orders")
    quoted = orders["ref_code"].dropna()
    assert len(quoted) and quoted.isin(contacts.loc[contacts["group"] == "treatment", "ref_code"]).all()


def test_channel_and_media_preferences_show_in_behaviour(world):
    ct = pd.read_parquet(world / "truth" / "customer_truth.parquet")
    orders = _read(world, "orders")
    rt = pd.read_parquet(world / "truth" / "record_truth.parquet")
    o = orders.merge(rt, on=["source_system", "source_id"])
    top = o.groupby("customer_id")["channel"].agg(lambda s: s.value_counts().index[0])
    pref = ct.set_index("customer_id")["preferred_channel"]
    many = o.groupby("customer_id").size() >= 5
    assert (top[many] == pref[top[many].index]).mean() > 0.7


def test_bad_spec_is_refused():
    with pytest.raises(ValueError):
        synth.WorldSpec(customers=0)
    with pytest.raises(ValueError):
        synth.generate(synth.WorldSpec(customers=10), "/tmp/x", fmt="xls")


def test_partitioned_world_reads_back_as_the_same_tables(tmp_path, capsys):
    """generate --partitions writes the large tables as folders of Parquet parts; sources read a folder
    as one table (parts in name order): the same tables as the single-file world of the same chunks,
    the fingerprint covers every part, and a bad part is named."""
    from crmlab.cli import main

    spec = synth.WorldSpec(customers=600, seed=5, chunk=200)
    synth.generate(spec, tmp_path / "one", fmt="parquet")
    assert main(["generate", "--customers", "600", "--seed", "5", "--partitions", "3", "--out",
                 str(tmp_path / "parts"), "--quiet"]) == 0
    for name in ("orders", "order_lines", "contacts", "customers_web"):
        assert len(list((tmp_path / "parts" / name).glob("part-*.parquet"))) == 3, name
    assert (tmp_path / "parts" / "products.parquet").is_file()
    one, parts = sources.load(tmp_path / "one"), sources.load(tmp_path / "parts")
    for name in ("orders", "order_lines", "contacts", "products", "campaigns"):
        pd.testing.assert_frame_equal(parts[name], one[name], check_exact=True, obj=name)
    pd.testing.assert_frame_equal(parts.customers, one.customers, check_exact=True)
    before = sources.fingerprint(tmp_path / "parts" / "orders")
    first = tmp_path / "parts" / "orders" / "part-00000.parquet"
    pd.read_parquet(first).head(5).to_parquet(first, index=False)
    assert sources.fingerprint(tmp_path / "parts" / "orders") != before
    (tmp_path / "parts" / "orders" / "part-00001.parquet").write_bytes(b"not parquet")
    with pytest.raises(sources.SourcesInvalid, match="orders"):
        sources.load(tmp_path / "parts")
    assert main(["generate", "--customers", "10", "--partitions", "0", "--out", str(tmp_path / "x"), "--quiet"]) != 0
    assert "--partitions must be >= 1" in capsys.readouterr().err
