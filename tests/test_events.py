"""The events layer: one key join, built once per run, read by every later stage (#16)."""
import numpy as np
import pandas as pd
import pytest

from crmlab import events, pipeline
from crmlab.errors import CrmlabError
from crmlab.events import CustomerEvents
from crmlab.sources import load

from conftest import SAMPLE


@pytest.fixture(scope="module")
def src():
    return load(SAMPLE)


@pytest.fixture(scope="module")
def key_map(src):
    rt = pd.read_csv(SAMPLE / "truth" / "record_truth.csv", dtype={"source_id": str})
    return rt.rename(columns={"customer_id": "customer_key"})


def test_events_match_a_plain_lookup(src, key_map):
    ev = CustomerEvents.from_sources(src, key_map)
    lookup = {(s, i): k for s, i, k in key_map[["source_system", "source_id", "customer_key"]].itertuples(index=False)}
    o = src["orders"]
    assert ev.orders["order_id"].tolist() == o["order_id"].tolist()
    assert ev.orders["customer_key"].tolist() == [lookup[(s, str(i))] for s, i in zip(o["source_system"], o["source_id"])]
    ln = src["order_lines"]
    value = (ln["quantity"] * ln["unit_price"]).groupby(ln["order_id"]).sum()
    np.testing.assert_allclose(ev.orders.set_index("order_id")["value"], value.reindex(o["order_id"]).fillna(0.0))
    # every line carries its order's customer and date, and every line is there once
    assert len(ev.lines) == len(ln)
    j = ev.lines.merge(ev.orders, on="order_id", suffixes=("", "_o"))
    assert (j["customer_key"] == j["customer_key_o"]).all() and (j["order_date"] == j["order_date_o"]).all()
    dept = src["products"].set_index("product_id")["department"]
    assert (ev.lines["department"].to_numpy() == ev.lines["product_id"].map(dept).to_numpy()).all()
    # contacts keyed the same way, with responses; profile one row per customer with a record
    c = src["contacts"]
    assert ev.contacts["customer_key"].tolist() == [lookup[(s, str(i))] for s, i in zip(c["source_system"], c["source_id"])]
    assert set(events.RESPONSE_COLUMNS) <= set(ev.contacts.columns)
    assert sorted(ev.profile.index) == sorted(key_map["customer_key"].unique())
    assert ev.profile["n_systems"].sum() == len(src.customers[["source_system"]].assign(k=key_map.set_index(
        ["source_system", "source_id"]).loc[list(zip(src.customers["source_system"], src.customers["source_id"].astype(str))),
                                            "customer_key"].to_numpy()).drop_duplicates())


def test_without_a_key_map_each_record_is_a_customer(src):
    ev = CustomerEvents.from_sources(src)
    assert set(ev.orders["customer_key"]) <= set(src.customers["source_system"] + ":" + src.customers["source_id"].astype(str))
    assert len(ev.profile) == len(src.customers) and (ev.profile["n_systems"] == 1).all()


def test_a_record_missing_from_the_key_map_is_named(src, key_map):
    gone = src["orders"].iloc[0]
    km = key_map[~((key_map["source_system"] == gone["source_system"]) & (key_map["source_id"] == str(gone["source_id"])))]
    with pytest.raises(CrmlabError, match=r"orders reference source records missing from the customer key map.*"
                                          + str(gone["source_id"])):
        CustomerEvents.from_sources(src, km)


def test_reattribution_replaces_the_responses(src, key_map):
    ev = CustomerEvents.from_sources(src, key_map)
    fresh = events.attribute_responses(events.keyed_contacts(src, key_map), ev.orders, window_days=7)
    again = events.attribute_responses(ev.contacts, ev.orders, window_days=7)
    pd.testing.assert_frame_equal(again, fresh)
    assert list(again.columns) == list(ev.contacts.columns)


def _ns(df):
    return df.astype({c: "datetime64[ns]" for c in df.columns if pd.api.types.is_datetime64_any_dtype(df[c])})


def test_events_are_written_once_and_read_back_equal(src, key_map, tmp_path, monkeypatch):
    params = tmp_path / "p.yaml"
    params.write_text(f"run_name: t\nruns_dir: {tmp_path / 'runs'}\ndata:\n  dir: {SAMPLE}\n"
                      "stages: [20_affinity, 30_value]\n")
    run_dir = tmp_path / "runs" / "r1"
    ctx = pipeline.StageContext.open(str(params), str(run_dir))
    built = ctx.events()                         # no 10_identity among the stages: built from record keys, written
    assert all((run_dir / "artifacts" / f"{n}.parquet").exists() for n in events.ARTIFACTS)
    mtime = (run_dir / "artifacts" / "events_lines.parquet").stat().st_mtime_ns
    again = pipeline.StageContext.open(str(params), str(run_dir)).events()    # a later stage reads them
    assert (run_dir / "artifacts" / "events_lines.parquet").stat().st_mtime_ns == mtime
    for a, b in zip((built.orders, built.lines, built.contacts, built.profile),
                    (again.orders, again.lines, again.contacts, again.profile)):
        pd.testing.assert_frame_equal(_ns(a), _ns(b), check_dtype=False)   # Parquet keeps dates in ms, not s
    # with 10_identity among the stages a missing events artifact names that stage
    params.write_text(f"run_name: t\nruns_dir: {tmp_path / 'runs'}\ndata:\n  dir: {SAMPLE}\n")
    ctx = pipeline.StageContext.open(str(params), str(tmp_path / "runs" / "r2"))
    with pytest.raises(CrmlabError, match="events_orders.*written by 10_identity"):
        ctx.events()
