"""Validation gives one clear message naming table, column, file and offending rows."""
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from crmlab import sources
from crmlab.cli import main
from crmlab.sources import SourcesInvalid


def _rewrite(folder, table, fn):
    path = folder / f"{table}.csv"
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    fn(df).to_csv(path, index=False)
    return path


def _problem(folder):
    with pytest.raises(SourcesInvalid) as info:
        sources.load(folder)
    return info.value


def test_sample_loads_typed_and_standardised(sample_copy):
    src = sources.load(sample_copy)
    assert src.systems == ["callcentre", "store", "web"]
    o = src["orders"]
    assert str(o["order_date"].dtype).startswith("datetime64") and o["order_id"].dtype == "int64"
    assert src["order_lines"]["quantity"].dtype == "float64"
    assert {"first_name_std", "phone_std", "postcode_std", "email_std"} <= set(src.customers.columns)
    assert set(src.fingerprints) == set(src.origin) and all(len(v) == 16 for v in src.fingerprints.values())


def test_missing_column(sample_copy):
    path = _rewrite(sample_copy, "orders", lambda d: d.drop(columns="order_date"))
    err = _problem(sample_copy)
    (e,) = err.errors
    assert (e.table, e.column, e.path) == ("orders", "order_date", str(path))
    assert "required column is missing" in str(err) and str(path) in str(err)


def test_wrong_type_and_unparseable_date(sample_copy):
    def bad(d):
        d.loc[3, "unit_price"] = "twelve"
        return d
    _rewrite(sample_copy, "order_lines", bad)

    def bad_date(d):
        d.loc[5, "order_date"] = "31/31/2025"
        return d
    _rewrite(sample_copy, "orders", bad_date)
    err = _problem(sample_copy)
    found = {(e.table, e.column): e for e in err.errors}
    assert "not a number" in str(found[("order_lines", "unit_price")])
    assert "twelve" in str(found[("order_lines", "unit_price")])
    assert "unparseable date" in str(found[("orders", "order_date")]) and "31/31/2025" in str(err)


def test_duplicate_key(sample_copy):
    _rewrite(sample_copy, "products", lambda d: pd.concat([d, d.iloc[[7]]]))
    (e,) = _problem(sample_copy).errors
    assert (e.table, e.column) == ("products", "product_id") and "duplicate key" in str(e)
    assert e.n_bad == 2 and "P0008" in str(e)


def test_negative_quantity(sample_copy):
    def neg(d):
        d.loc[10, "quantity"] = "-2"
        return d
    _rewrite(sample_copy, "order_lines", neg)
    (e,) = _problem(sample_copy).errors
    assert (e.table, e.column) == ("order_lines", "quantity") and "negative" in str(e) and "-2" in str(e)


def test_empty_table(sample_copy):
    _rewrite(sample_copy, "campaigns", lambda d: d.iloc[:0])
    err = _problem(sample_copy)
    assert any(e.table == "campaigns" and "empty" in str(e) for e in err.errors)


def test_orphan_foreign_keys(sample_copy):
    def orphan(d):
        d.loc[0, "product_id"] = "P9999"
        return d
    _rewrite(sample_copy, "order_lines", orphan)

    def orphan_customer(d):
        d.loc[1, "source_id"] = "L0000000000"
        return d
    _rewrite(sample_copy, "orders", orphan_customer)
    err = _problem(sample_copy)
    cols = {(e.table, e.column) for e in err.errors}
    assert ("order_lines", "product_id") in cols and ("orders", "source_system, source_id") in cols
    assert "P9999" in str(err) and "L0000000000" in str(err) and "orphan foreign key" in str(err)


def test_missing_required_table_and_no_customers(sample_copy):
    os.remove(sample_copy / "orders.csv")
    for f in sample_copy.glob("customers_*.csv"):
        f.unlink()
    msg = str(_problem(sample_copy))
    assert "table 'orders'" in msg and "required table not found" in msg and "customers_<system>" in msg


def test_cli_validate_exit_codes(sample_copy, capsys):
    assert main(["validate", "--data", str(sample_copy)]) == 0
    _rewrite(sample_copy, "customers_web", lambda d: d.drop(columns="source_id"))
    assert main(["validate", "--data", str(sample_copy)]) == 2
    err = capsys.readouterr().err
    assert "customers_web" in err and "source_id" in err and "Traceback" not in err


def test_parquet_and_csv_read_the_same(world, tmp_path):
    pq_src = sources.load(world)
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    for f in world.glob("*.parquet"):
        pd.read_parquet(f).to_csv(csv_dir / f"{f.stem}.csv", index=False, date_format="%Y-%m-%d")
    csv_src = sources.load(csv_dir)
    for name in ("orders", "order_lines", "products", "contacts"):
        pd.testing.assert_frame_equal(pq_src[name], csv_src[name], check_dtype=False)


def _to_sql(world, engine, schema=None):
    for f in world.glob("*.parquet"):
        pd.read_parquet(f).to_sql(f.stem, engine, schema=schema, index=False, if_exists="replace", chunksize=20000)


def test_sql_source_sqlite(world, tmp_path):
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    engine = sa.create_engine(url)
    _to_sql(world, engine)
    engine.dispose()
    src = sources.load(url=url)
    assert src.row_counts() == sources.load(world).row_counts()
    assert "table orders" in src.origin["orders"]


@pytest.mark.postgres
def test_sql_source_postgres(world, postgres_server, postgres_schema):
    _, schema = postgres_schema
    engine = sa.create_engine(postgres_server)
    try:
        _to_sql(world, engine, schema)
        src = sources.load(url=postgres_server, schema=schema)
        assert src.row_counts() == sources.load(world).row_counts()
    finally:
        engine.dispose()


# --- reliability findings (#14): bad input that used to pass or crash
def test_future_order_dates_and_implausible_birth_dates(sample_copy):
    def future(d):
        d.loc[[3, 8], "order_date"] = ["2030-01-01", "2099-06-30"]
        return d
    _rewrite(sample_copy, "orders", future)

    def dob(d):
        d.loc[2, "dob"] = "1850-01-01"
        return d
    _rewrite(sample_copy, "customers_web", dob)
    err = _problem(sample_copy)
    msgs = {(e.table, e.column): str(e) for e in err.errors}
    assert "date after the as-of date" in msgs[("orders", "order_date")] and "[2 rows]" in msgs[("orders", "order_date")]
    assert "more than 120 years" in msgs[("customers_web", "dob")]
    with pytest.raises(SourcesInvalid, match="after the as-of date 2026-01-31"):
        sources.load(sample_copy, as_of="2026-01-31")


@pytest.mark.parametrize("value,match", [("inf", "not a finite number"), ("1e308", "implausibly large")])
def test_infinite_and_absurd_amounts(sample_copy, value, match):
    def bad(d):
        d.loc[5, "unit_price"] = value
        return d
    _rewrite(sample_copy, "order_lines", bad)
    (e,) = _problem(sample_copy).errors
    assert (e.table, e.column) == ("order_lines", "unit_price") and match in str(e)


def test_empty_and_non_utf8_files_are_clear_errors(sample_copy):
    (sample_copy / "products.csv").write_bytes(b"")
    err = _problem(sample_copy)
    assert "the file is empty (0 bytes)" in str(err) and "products.csv" in str(err)
    (sample_copy / "products.csv").unlink()
    path = sample_copy / "campaigns.csv"
    raw = path.read_bytes().split(b"\n")
    raw[3] = raw[3].replace(b",", b"\xe9,", 1)
    path.write_bytes(b"\n".join(raw))
    sources_err = pytest.raises(SourcesInvalid, sources.read_raw, sample_copy)
    assert "not UTF-8 text: byte 0xe9 on line 4" in str(sources_err.value)
    assert "campaigns.csv" in str(sources_err.value)


def test_errors_mask_personal_data(sample_copy):
    def dup(d):
        d.loc[1, "source_id"] = d.loc[0, "source_id"]
        return d
    _rewrite(sample_copy, "customers_web", dup)
    raw = pd.read_csv(sample_copy / "customers_web.csv", dtype=str)
    err = str(_problem(sample_copy))
    assert "duplicate key" in err
    for col in ("email", "phone", "last_name"):
        v = raw.loc[0, col]
        if isinstance(v, str) and len(v) > 3:
            assert v not in err, col


def test_orphan_lookup_equals_the_merge_on_text():
    """The foreign-key check's hashed lookup gives the rows a merge on the keys as text gives: one and
    two columns, integer against text ids, missing values, duplicates on the parent side."""
    from crmlab.sources import _orphans

    rng = np.random.default_rng(4)
    sys_ = pd.Series(rng.choice(["web", "store", None], 3000), dtype="string")
    ids = pd.Series(rng.integers(0, 500, 3000), dtype="Int64").mask(rng.random(3000) < 0.05)
    parent = pd.DataFrame({"s": pd.Series(rng.choice(["web", "store"], 900), dtype="string"),
                           "i": pd.Series(rng.integers(0, 400, 900).astype(str), dtype="string")})
    child = pd.DataFrame({"s": sys_, "i": ids})

    def reference(left, right):
        m = left.astype("string").merge(right.astype("string").set_axis(list(left.columns), axis=1).drop_duplicates(),
                                        how="left", indicator=True)
        return (m["_merge"] == "left_only").to_numpy()

    for cols in (["i"], ["s", "i"]):
        got = _orphans(child[cols], parent[cols])
        assert np.array_equal(got, reference(child[cols], parent[cols])) and 100 < got.sum() < 3000
    same = child.assign(i=child["i"].astype("string"))                   # both sides text: no conversion
    assert np.array_equal(_orphans(same[["s", "i"]], parent), reference(same[["s", "i"]], parent))
    wide = pd.DataFrame({"a": pd.Series(rng.integers(0, 20000, 40000).astype(str), dtype="string"),
                         "b": pd.Series(rng.integers(0, 20000, 40000).astype(str), dtype="string")})
    got = _orphans(wide.iloc[:30000], wide.iloc[25000:])                 # codes too wide for a table: hashed
    assert np.array_equal(got, reference(wide.iloc[:30000], wide.iloc[25000:])) and got.sum() > 1000


def test_load_customers_alone_equals_the_loaded_customers(tmp_path):
    """The customer tables alone, read, validated and standardised as load() makes them; a missing
    system or a bad customer table is named."""
    folder = Path(__file__).resolve().parents[1] / "data" / "sample"
    pd.testing.assert_frame_equal(sources.load_customers(folder), sources.load(folder).customers)
    systems = sources.load(folder).systems[:1]
    got = sources.load_customers(folder, systems)
    assert set(got["source_system"]) == set(systems) and len(got) > 100
    with pytest.raises(SourcesInvalid, match="customers_nowhere.*table not found"):
        sources.load_customers(folder, ["nowhere"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "customers_web.csv").write_text("source_id,first_name\n1,Ann\n1,Bob\n")
    with pytest.raises(SourcesInvalid, match="customers_web"):
        sources.load_customers(bad)


@pytest.mark.parametrize("parts", [
    [["1", "2"], ["3", "x7"]],                 # text in a later part: text everywhere
    [["1", None], ["012", "4"]],               # a leading zero: text
    [[1, 2], [3, 4]],                          # integers stored as such
    [[1, 2], ["3", "4"]],                      # integers, then the same as text
    [[None, None], ["5", "6"]],                # a part without values
    [["7", "8"], ["9.5", "10"]],               # a fraction: text
])
def test_id_type_decided_over_parts_is_the_whole_tables(parts):
    """An id column typed part by part with the type decided from every part's facts equals the whole
    column typed at once (#18: sources validated by the workers)."""
    from crmlab.sources import CUSTOMER_COLUMNS, _coerce, id_facts, id_numeric

    col = CUSTOMER_COLUMNS[0]
    frames = [pd.DataFrame({"source_id": pd.Series(p, dtype=object if any(isinstance(v, str) for v in p) or
                                                   None in p else "int64")}) for p in parts]
    whole = _coerce(pd.concat(frames, ignore_index=True), col, "t", None, [])
    numeric = id_numeric([id_facts(f["source_id"]) for f in frames])
    by_parts = pd.concat([_coerce(f, col, "t", None, [], numeric) for f in frames], ignore_index=True)
    pd.testing.assert_series_equal(by_parts, whole, check_exact=True)
