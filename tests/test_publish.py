"""Publishing: schema contract, atomic versions (a reader during a publish, a publish failing or
killed midway), history and restore, lookup; on SQLite and on a real PostgreSQL server."""
import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path
import threading
import time

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from crmlab import publish, score_figures
from crmlab.publish import PublishError


def tables(version_tag: int, n: int = 2000) -> dict:
    """Published tables whose sizes and ids depend on the tag, so a mix of versions is detectable."""
    n = n + 10 * version_tag
    keys = [f"K{i:06d}" for i in range(n)]
    scores = pd.DataFrame({
        "customer_key": keys, "segment_id": np.int64(1), "segment": "Active web shoppers", "value_band": "high",
        "risk_band": "low", "value_risk_cell": "high value / low risk", "value": np.linspace(0, 100, n),
        "p_alive": 0.8, "expected_purchases_365d": 2.0, "attrition_risk": 0.2, "propensity_food": 0.3,
        "response_propensity": 0.1, "next_best_offer": "P0001", "next_best_offer_name": "Bananas",
        "preferred_channel": "web", "preferred_medium": "email", "treatment": f"offer_{version_tag}",
        "rule": "r", "contact": True, "contact_reason": None, "control": False, "model_version": "m1",
        "decision_version": "d1"})
    km = pd.DataFrame({"source_system": np.repeat(["web", "store"], n), "source_id": [f"W{i}" for i in range(n)] +
                       [f"S{i}" for i in range(n)], "customer_key": keys * 2, "match_confidence": 1.0})
    return {"customer_scores": scores, "customer_key_map": km}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def target(request, tmp_path):
    if request.param == "sqlite":
        return publish.default_url(tmp_path), tmp_path
    url, _ = request.getfixturevalue("postgres_schema")
    return url, tmp_path


def test_contract_rejects_pii_extra_columns_bad_types_and_duplicate_keys(target):
    url, folder = target
    t = tables(1)
    t["customer_scores"] = t["customer_scores"].assign(email="a@b.c", shoe_size=42)
    t["customer_scores"].loc[3, "attrition_risk"] = 1.7
    t["customer_key_map"] = pd.concat([t["customer_key_map"], t["customer_key_map"].head(1)])
    with pytest.raises(PublishError) as err:
        publish.publish(t, url, folder)
    msg = str(err.value)
    for part in ("personal data columns must not be published: email", "not in the contract: shoe_size",
                 "'attrition_risk' must be a probability", "(source_system, source_id) is not unique"):
        assert part in msg
    assert publish.history(url).empty                                   # nothing written
    assert publish.check_contract("customer_scores", tables(1)["customer_scores"].drop(columns="treatment").assign(
        score_version=np.int64(1), scored_at=pd.Timestamp("2026-01-01"))) == ["missing column 'treatment'"]


def test_versions_history_restore_and_lookup(target):
    url, folder = target
    for tag in (1, 2, 3):
        assert publish.publish(tables(tag), url, folder, keep=2) == tag
    h = publish.history(url).set_index("version")
    assert h["status"].to_dict() == {3: "current", 2: "kept", 1: "pruned"}
    cur = publish.read_table(url, "customer_scores")
    assert len(cur) == 2030 and (cur["score_version"] == 3).all()
    assert len(publish.read_table(url, "customer_scores", version=2)) == 2020
    assert len(publish.read_parquet(folder, "customer_scores")) == 2030
    assert sorted(p.name for p in (folder / "parquet").glob("v*")) == ["v000002", "v000003"]
    with publish.Lookup(url) as lk:
        a, b = lk.get("web", "W17"), lk.get("store", "S17")
        assert a["customer_key"] == b["customer_key"] == "K000017" and a["treatment"] == "offer_3"
        assert a["contact"] is True and a["control"] is False
        assert lk.get("web", "nope") is None
        publish.restore(url, 2, folder)
        assert lk.get("web", "W17")["score_version"] == 2                # the open reader sees the switch
    assert publish.current_version(url) == 2
    assert publish.read_parquet(folder, "customer_scores")["score_version"].iloc[0] == 2
    with pytest.raises(PublishError, match="pruned"):
        publish.restore(url, 1)
    assert publish.publish(tables(4), url, folder, keep=2) == 4          # numbering continues after a restore


def test_failure_midway_leaves_the_previous_version(target):
    url, folder = target
    publish.publish(tables(1), url, folder)
    with pytest.raises(RuntimeError, match="simulated"):
        publish.publish(tables(2), url, folder, _fail_after="customer_key_map")
    assert publish.current_version(url) == 1
    assert len(publish.read_table(url, "customer_scores")) == 2010
    assert publish.read_parquet(folder, "customer_scores")["score_version"].iloc[0] == 1
    eng = publish.engine(url)
    names = sa.inspect(eng).get_table_names()
    eng.dispose()
    assert not [n for n in names if "__v000002" in n]                   # rolled back, no leftovers
    assert publish.publish(tables(3), url, folder) == 2


def test_publish_killed_midway(target, tmp_path):
    """A publishing process killed with SIGKILL while writing: the previous version stays current."""
    url, folder = target
    publish.publish(tables(1), url, folder)
    _publish_killed_at(url, folder, tmp_path / "writing", "writing customer_key_map", tag=2, n=20000)
    assert publish.current_version(url) == 1
    assert len(publish.read_table(url, "customer_scores")) == 2010
    with publish.Lookup(url) as lk:
        assert lk.get("web", "W5")["score_version"] == 1
    assert publish.publish(tables(3), url, folder) == 2                  # and the next publish works


def test_readers_never_see_a_mix(target):
    """A reader thread queries both views in one statement while versions are published."""
    url, folder = target
    publish.publish(tables(0), url, folder)
    expected = {v: (2000 + 10 * v, 2 * (2000 + 10 * v)) for v in range(0, 6)}
    seen, problems, stop = set(), [], threading.Event()
    q = sa.text("SELECT (SELECT COUNT(*) FROM customer_scores), (SELECT COUNT(*) FROM customer_key_map), "
                "(SELECT MIN(score_version) FROM customer_scores), (SELECT MAX(score_version) FROM customer_scores)")

    def reader():
        eng = publish.engine(url)
        with eng.connect() as conn:
            while not stop.is_set():
                n_scores, n_map, lo, hi = conn.execute(q).one()
                conn.commit()
                tag = (n_scores - 2000) // 10
                if lo != hi or expected.get(tag) != (n_scores, n_map):
                    problems.append((n_scores, n_map, lo, hi))
                seen.add(lo)
        eng.dispose()

    th = threading.Thread(target=reader)
    th.start()
    try:
        for tag in range(1, 6):
            publish.publish(tables(tag), url, folder, keep=3)
    finally:
        stop.set()
        th.join(60)
    assert not problems, problems[:5]
    assert len(seen) >= 2                                                # it did read while versions changed


def test_lookup_on_an_empty_database_is_a_clear_error(tmp_path):
    url = publish.default_url(tmp_path)
    with pytest.raises(PublishError, match="no published database at .*does not exist"):
        publish.Lookup(url)
    assert not (tmp_path / "crmlab.sqlite").exists()                    # finding #14: no empty file made
    with pytest.raises(PublishError, match="no published database"):
        publish.read_table(url, "customer_scores")
    publish.history(url)                                                # a writer's call creates it
    with pytest.raises(PublishError, match="nothing published"):
        publish.Lookup(url)


def test_contract_doc_lists_every_table():
    md = publish.contract_markdown()
    assert all(f"| {t} |" in md for t in publish.CONTRACT)


def test_drift_flags_a_shifted_score():
    rng = np.random.default_rng(0)
    old = pd.DataFrame({"a": rng.normal(size=5000), "b": rng.normal(size=5000)})
    new = pd.DataFrame({"a": rng.normal(size=5000), "b": rng.normal(1.0, 1, size=5000)})
    d = _drift(old, new)
    assert d.loc["a", "psi"] < 0.05 and d.loc["b", "psi"] > 0.2
    assert d.loc["b", "warning"] and not d.loc["a", "warning"]
    assert d.loc["b", "psi"] == pytest.approx(score_figures.psi(old["b"], new["b"]), rel=1e-12)
    assert d.loc["b", "mean_now"] == pytest.approx(new["b"].mean(), rel=1e-12)


def test_psi_of_constant_or_missing_scores():
    same = pd.Series([3.0] * 50)
    assert score_figures.psi(same, pd.Series(np.linspace(0, 9, 50))) == 0.0       # one bin: nothing to shift
    assert np.isnan(score_figures.psi(pd.Series([np.nan] * 5), same))
    assert np.isnan(score_figures.psi(same, pd.Series([], dtype=float)))


def test_previous_version_is_read_a_column_at_a_time(target, monkeypatch):
    """What drift reads of the published version, a column at a time, is what the table in memory gives:
    means, deciles and counts in them, the row count, the plotted sample; nothing before a first
    publication."""
    url, folder = target
    monkeypatch.setattr(score_figures, "SAMPLE", 300)                   # every 7th row plotted
    assert score_figures.PreviousScores.read(url, ["value"]) is None
    t = tables(1)
    s = t["customer_scores"]
    s["value"] = np.random.default_rng(1).gamma(2.0, 30.0, len(s))
    s.loc[::7, "p_alive"] = np.nan
    publish.publish(t, url, folder)
    cols = score_figures.drift_columns(s)
    got = score_figures.PreviousScores.read(url, [*cols, "not_published"])
    want = score_figures.PreviousScores.of(s, version=1)
    assert got.version == 1 and got.rows == len(s) and list(got.means) == cols
    for c in cols:
        np.testing.assert_array_equal(got.edges[c], want.edges[c])
        np.testing.assert_array_equal(got.counts[c], want.counts[c])
        assert got.means[c] == pytest.approx(want.means[c], rel=1e-12, nan_ok=True)
    pd.testing.assert_frame_equal(got.sample, want.sample)
    assert len(got.sample) == 288 and list(got.sample.columns) == ["value", "p_alive", "attrition_risk",
                                                                   "response_propensity"]
    assert publish.table_columns(url, "customer_scores")[:2] == ["customer_key", "segment_id"]


def _drift(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Drift of a score table against another, as stage 60 computes it (figures of the new scores)."""
    new = new.assign(customer_key=[f"K{i}" for i in range(len(new))], next_best_offer=None, treatment="t",
                     contact=False, control=False, contact_reason=None)
    previous = score_figures.PreviousScores.of(old)
    return score_figures.ScoreFigures.compute(new, (), previous).drift(previous)


def test_documented_contract_is_the_checked_one():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "published_tables.md").read_text()
    assert publish.contract_markdown() in doc, "docs/published_tables.md is out of date with publish.CONTRACT"
    assert f"schema version {publish.SCHEMA_VERSION}" in doc


# --- reliability findings (#14): one version truth for SQL and Parquet
@contextlib.contextmanager
def _publish_paused_at(url, folder, flag, step: str, tag: int, n: int = 2000, writers: int = 1):
    """A publish in another process, paused when its progress reaches ``step``; SIGKILLed on leaving."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        from test_publish import tables
        from crmlab import publish
        def progress(msg):
            if msg.startswith({step!r}):
                open({str(flag)!r}, "w").close()
                time.sleep(60)
        publish.publish(tables({tag}, n={n}), {url!r}, {str(folder)!r}, progress=progress, writers={writers})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        for _ in range(600):
            if flag.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert flag.exists(), f"the publishing process did not reach '{step}'"
        yield proc
    finally:
        proc.kill()
        proc.wait(30)
    flag.unlink()


def _publish_killed_at(url, folder, flag, step: str, tag: int, n: int = 2000, writers: int = 1) -> None:
    """Start a publish in another process and SIGKILL it when its progress reaches ``step``."""
    with _publish_paused_at(url, folder, flag, step, tag, n, writers):
        pass


@pytest.mark.parametrize("step", ["writing customer_scores", "writing customer_key_map", "version"])
def test_kill_at_every_step_leaves_sql_and_parquet_agreeing(target, tmp_path, step):
    """Killed before the data, during the database write, or after the database commit but before
    the Parquet copy is made current: after the next check, SQL and Parquet name the same version."""
    url, folder = target
    publish.publish(tables(1), url, folder)
    _publish_killed_at(url, folder, tmp_path / "flag", step, tag=2)
    state = publish.sync_parquet(url, folder)
    assert state["ok"] and state["sql"] == state["parquet"], state
    assert state["sql"] == (2 if step == "version" else 1)
    assert len(publish.read_parquet(folder, "customer_scores")) == len(publish.read_table(url, "customer_scores"))
    v = publish.publish(tables(3), url, folder)
    assert publish.sync_parquet(url, folder)["parquet"] == v == publish.current_version(url)


def test_restore_refuses_a_version_without_its_parquet_copy(target, tmp_path):
    url, folder = target
    publish.publish(tables(1), url, folder)
    publish.publish(tables(2), url)                                     # no Parquet copy of version 2
    publish.publish(tables(3), url, folder)
    with pytest.raises(PublishError, match="Parquet copy is missing"):
        publish.restore(url, 2, folder)
    assert publish.current_version(url) == 3 and publish.sync_parquet(url, folder)["parquet"] == 3
    publish.restore(url, 1, folder)
    assert publish.sync_parquet(url, folder, repair=False)["parquet"] == 1 == publish.current_version(url)


def test_read_table_returns_contract_types_and_republishes(target, tmp_path):
    url, folder = target
    t = tables(1)
    t["customer_scores"]["segment_id"] = pd.array([None] + [1] * (len(t["customer_scores"]) - 1), dtype="Int64")
    publish.publish(t, url, folder)
    back = publish.read_table(url, "customer_scores")
    assert str(back["segment_id"].dtype) == "Int64" and back["contact"].dtype == bool
    copy = {"customer_scores": back.drop(columns=["score_version", "scored_at"]),
            "customer_key_map": publish.read_table(url, "customer_key_map")}
    assert publish.publish(copy, publish.default_url(tmp_path / "copy")) == 1    # the contract still holds
    # the columns drift compares, read one at a time: the table's values (missing ones as NaN)
    cols = score_figures.drift_columns(back)
    assert "value" in cols and "contact" not in cols and "segment_id" not in cols and "score_version" not in cols
    for c in cols:
        np.testing.assert_array_equal(publish.read_column(url, "customer_scores", c), back[c].to_numpy(float), err_msg=c)


def test_spreadsheet_formulas_are_defused_and_html_escaped(target, tmp_path):
    url, folder = target
    t = tables(1)
    t["customer_scores"].loc[0, "next_best_offer_name"] = '=HYPERLINK("http://x","y")'
    t["customer_scores"].loc[1, "next_best_offer_name"] = "<script>alert(1)</script>"
    publish.publish(t, url, folder)
    with publish.Lookup(url) as lk:
        assert lk.get("web", "W0")["next_best_offer_name"] == '\'=HYPERLINK("http://x","y")'
        assert lk.get("web", "W2")["next_best_offer_name"] == "Bananas"
    from crmlab.pipeline import StageContext

    StageContext.open(str(Path(__file__).resolve().parents[1] / "params" / "ci.yaml"), str(tmp_path / "run"))
    html_out = pd.DataFrame({"name": ["<script>alert(1)</script>"]}).style.to_html()
    assert "<script>" not in html_out and "&lt;script&gt;" in html_out


def test_cli_creates_private_files(tmp_path):
    db = tmp_path / "p" / "crm.sqlite"
    from crmlab.cli import main as cli_main

    old = os.umask(0o022)
    try:
        assert cli_main(["versions", "--url", f"sqlite:///{db}"]) == 0
    finally:
        os.umask(old)
    assert db.stat().st_mode & 0o077 == 0 and (tmp_path / "p").stat().st_mode & 0o077 == 0


def test_lookups_never_fail_during_publishes_and_a_restore(target):
    """Finding #14: on PostgreSQL 22 of 40,600 lookups failed with DeadlockDetected (the lookup join
    waited on the publisher's DROP VIEW). Two lookup threads during 5 publishes and a restore:
    zero failed reads, every answer from one version."""
    url, folder = target
    publish.publish(tables(0), url, folder)
    failures, answers, stop = [], [], threading.Event()

    def reader(sys_, ids):
        with publish.Lookup(url) as lk:
            while not stop.is_set():
                for i in ids:
                    try:
                        row = lk.get(sys_, i)
                    except Exception as exc:  # noqa: BLE001 - every failed read counts
                        failures.append(repr(exc))
                        continue
                    answers.append((row["score_version"], row["treatment"]))

    threads = [threading.Thread(target=reader, args=("web", [f"W{i}" for i in range(0, 50, 7)])),
               threading.Thread(target=reader, args=("store", [f"S{i}" for i in range(1, 50, 5)]))]
    for th in threads:
        th.start()
    try:
        for tag in range(1, 6):
            publish.publish(tables(tag), url, folder, keep=3)
        publish.restore(url, 4, folder)
        time.sleep(0.2)
    finally:
        stop.set()
        for th in threads:
            th.join(60)
    assert not failures, failures[:3]
    assert len(answers) > 100 and len({v for v, _ in answers}) >= 2
    # a version's rows carry that version's treatment (tables(tag) -> offer_<tag>, version = tag + 1)
    assert all(t == f"offer_{v - 1}" for v, t in answers)


def test_drift_plot_shows_each_score_present_in_both():
    import matplotlib
    matplotlib.use("Agg")
    rng = np.random.default_rng(0)
    old = pd.DataFrame({"value": rng.gamma(2, 10, 500), "attrition_risk": rng.random(500)})
    new = old.assign(value=old["value"] * 1.5, p_alive=rng.random(500))
    fig = score_figures.plot_drift(old, new)
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["Customer value", "Attrition risk"]   # p_alive: new only
    assert _drift(old, new).loc["value", "psi"] > _drift(old, new).loc["attrition_risk", "psi"]


def _identity(tag: int, schema: str, settle=()):
    idx = pd.DataFrame({"source_system": "web", "source_id": [f"W{i}" for i in range(5 + tag)],
                        "customer_key": [f"K{i:06d}" for i in range(5 + tag)], "last_name_std": "smith",
                        "postcode_std": "SW1A 1AA", "model_id": f"m{tag}"})
    return publish.IdentityTables(tables={"identity_index": idx, "identity_model": pd.DataFrame(
        {"model_id": [f"m{tag}"], "model": ["{}"]})}, indexes={"identity_index": [("last_name_std", "postcode_std")]},
        schema=schema, role="crmlab_t_identity_reader", settle=("identity_provisional", "provisional_key", list(settle)))


def test_identity_tables_are_published_apart_and_versioned(target):
    """Person data for real-time identification: published in the same transaction as the touchpoint
    tables (same version, pruned and rolled back with them), never in the Parquet copy, and on
    PostgreSQL in its own schema that PUBLIC cannot enter and only the identity role may read.
    Provisional persons the run took in are deleted in that transaction."""
    url, folder = target
    eng = publish.engine(url)
    pg = eng.dialect.name == "postgresql"
    schema = f"{sa.engine.make_url(url).query['options'].split('%3D')[-1].split('=')[-1]}_id" if pg else None
    name = f'"{schema}".identity_index' if pg else "identity_index"
    prov = f'"{schema}".identity_provisional' if pg else "identity_provisional"
    try:
        with eng.begin() as c:
            if pg:
                c.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            c.execute(sa.text(f"CREATE TABLE {prov} (provisional_key VARCHAR(40) PRIMARY KEY)"))
            c.execute(sa.text(f"INSERT INTO {prov} VALUES ('PA'), ('PB'), ('PC')"))
        assert publish.publish(tables(1), url, folder, keep=1, identity=_identity(1, schema, ["PA", "PB"])) == 1
        with eng.connect() as c:
            assert c.execute(sa.text(f"SELECT COUNT(*), MIN(model_id) FROM {name}")).one() == (6, "m1")
            assert c.execute(sa.text(f"SELECT provisional_key FROM {prov}")).scalars().all() == ["PC"]
        with pytest.raises(RuntimeError, match="simulated"):              # rolled back with the version
            publish.publish(tables(2), url, folder, identity=_identity(2, schema), _fail_after="customer_key_map")
        assert publish.publish(tables(3), url, folder, keep=1, identity=_identity(3, schema)) == 2
        with eng.connect() as c:
            assert c.execute(sa.text(f"SELECT COUNT(*), MIN(model_id) FROM {name}")).one() == (8, "m3")
            insp = sa.inspect(c)
            where = schema if pg else None
            assert sorted(t for t in insp.get_table_names(schema=where) if t.startswith("identity_index")) == \
                ["identity_index__v000002"]                             # version 1 pruned with the rest
            if pg:
                assert "identity_index" not in insp.get_view_names()   # not beside the touchpoint views
                assert not c.execute(sa.text("SELECT has_schema_privilege('public', :s, 'USAGE')"),
                                     {"s": schema}).scalar()
                assert c.execute(sa.text("SELECT has_table_privilege('crmlab_t_identity_reader', :t, 'SELECT')"),
                                 {"t": f"{schema}.identity_index"}).scalar()
        assert sorted(json_tables(url)) == sorted(["customer_key_map", "customer_scores",
                                                   f"{schema}.identity_index" if pg else "identity_index",
                                                   f"{schema}.identity_model" if pg else "identity_model"])
        assert not list((folder / "parquet").rglob("identity_*"))          # never in the Parquet copy
        with pytest.raises(PublishError, match="not a published table"):
            publish.read_table(url, "identity_index")
    finally:
        if pg:
            with eng.begin() as c:
                c.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        eng.dispose()


def json_tables(url: str) -> list[str]:
    import json

    h = publish.history(url)
    return json.loads(h.loc[h["status"] == "current", "tables"].iloc[0])


# --- #18: tables written by several connections at once on PostgreSQL, switched to in one transaction
def _tricky(n: int = 3000) -> dict:
    """Tables whose values test the COPY text: floats in their last bit, infinities, quotes, commas,
    line breaks, empty text against missing text, missing numbers and flags."""
    t = tables(1, n)
    rng = np.random.default_rng(0)
    s = t["customer_scores"]
    s["value"] = rng.standard_normal(len(s)) * 10.0 ** rng.integers(-300, 300, len(s))
    s.loc[s.index[:3], "value"] = [np.inf, -np.inf, 5e-324]
    s["p_alive"] = rng.random(len(s))
    s.loc[s.index[::7], "p_alive"] = np.nan
    s["next_best_offer_name"] = np.where(np.arange(len(s)) % 5 == 0, 'say "hi",\nthen\tgo; \\N', "")
    s.loc[s.index[::11], "next_best_offer_name"] = None
    s["contact"] = np.arange(len(s)) % 3 == 0
    return t


@pytest.mark.postgres
@pytest.mark.parametrize("writers", [1, 3])
def test_copy_text_reads_back_exactly(postgres_schema, tmp_path, monkeypatch, writers):
    """What PostgreSQL holds is what was published, to the last bit of every float, whether one
    connection wrote it or three wrote ranges of it."""
    monkeypatch.setattr(publish, "PARALLEL_MIN_ROWS", 500)
    url, _ = postgres_schema
    want = _tricky()
    v = publish.publish(want, url, tmp_path, writers=writers)
    for name, df in want.items():
        key = list(publish.CONTRACT[name]["key"])                        # SQL keeps no row order
        got = publish.read_table(url, name).drop(columns=["score_version", "scored_at"], errors="ignore")
        got = got.sort_values(key, ignore_index=True)
        pd.testing.assert_frame_equal(got, df.sort_values(key, ignore_index=True), check_dtype=False, check_exact=True,
                                      obj=name)
    scored = publish.read_table(url, "customer_scores")
    assert (scored["score_version"] == v).all() and scored["scored_at"].notna().all()
    assert publish.history(url)["status"].tolist() == ["current"]


@pytest.mark.postgres
def test_parallel_publish_failing_midway_frees_its_version(postgres_schema, tmp_path, monkeypatch):
    """A parallel publish that fails after some ranges were committed: the previous version stays
    current, the new version's tables are dropped and its number is free for the next publish."""
    monkeypatch.setattr(publish, "PARALLEL_MIN_ROWS", 500)
    url, folder = postgres_schema[0], tmp_path
    publish.publish(tables(1), url, folder, writers=3)
    with pytest.raises(RuntimeError, match="simulated"):
        publish.publish(tables(2), url, folder, writers=3, _fail_after="customer_scores")
    assert publish.current_version(url) == 1 and len(publish.read_table(url, "customer_scores")) == 2010
    eng = publish.engine(url)
    names = sa.inspect(eng).get_table_names()
    eng.dispose()
    assert not [n for n in names if "__v000002" in n]
    assert publish.history(url)["status"].tolist() == ["current"]
    assert publish.publish(tables(3), url, folder, writers=3) == 2


@pytest.mark.postgres
def test_parallel_publish_killed_is_cleaned_by_the_next_and_a_running_one_is_left_alone(postgres_schema, tmp_path):
    """A parallel publish SIGKILLed after its ranges were committed (before the switch): readers still
    see the previous version. While it is alive (paused), another publish leaves its tables alone;
    once it is dead, the next publish drops them and takes over."""
    url, folder = postgres_schema[0], tmp_path
    publish.publish(tables(1), url, folder)

    def written():
        eng = publish.engine(url)
        try:
            return sorted(n for n in sa.inspect(eng).get_table_names() if "__v000002" in n)
        finally:
            eng.dispose()

    with _publish_paused_at(url, folder, tmp_path / "flag", "indexing version 2", tag=2, n=120_000, writers=3):
        assert written() == ["customer_key_map__v000002", "customer_scores__v000002"]
        assert publish.history(url).set_index("version")["status"].to_dict() == {2: "writing", 1: "current"}
        with pytest.raises(PublishError, match="still being written"):
            publish.restore(url, 2)
        assert publish.publish(tables(3), url, folder) == 3               # a publish beside it
        assert written() == ["customer_key_map__v000002", "customer_scores__v000002"]
    assert publish.current_version(url) == 3 and len(publish.read_table(url, "customer_scores")) == 2030
    said = []
    assert publish.publish(tables(4), url, folder, writers=3, progress=said.append) == 4
    assert written() == [] and any("left by a publish that did not finish" in m for m in said)
    assert set(publish.history(url)["status"]) == {"current", "kept"}
    with publish.Lookup(url) as lk:
        assert lk.get("web", "W5")["score_version"] == 4
