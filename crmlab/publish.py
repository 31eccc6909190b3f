"""Versioned, atomic publishing of scored tables for touchpoints (SQL database + Parquet).

Layout in the database (SQLite file by default, any SQLAlchemy URL):

* ``<table>__v000012``: the rows of version 12 of each published table, with its indexes;
* ``<table>``: a view on the current version (what touchpoints query);
* ``crmlab_versions``: one row per version (status current | kept | pruned, when, row counts,
  schema version, note).

A publish writes the new version's tables, checks them against :data:`CONTRACT`, and switches
every view, all in **one transaction**: readers see the old version or the new one, never a mix,
and a publish killed midway is rolled back by the database, leaving the previous version intact.
Older versions are kept (``keep``) and can be restored. Parquet copies go to
``<dir>/parquet/v000012/`` (written to a temporary folder, then renamed) and ``CURRENT`` names the
current version after the database has switched.
"""
from __future__ import annotations

import datetime as dt
import fnmatch
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .config import mask_url
from .errors import CrmlabError
from .table_parts import TableParts

SCHEMA_VERSION = 2                # 2: customer_offers, recent_contacts, decision_policy added
CATALOG = "crmlab_versions"


class PublishError(CrmlabError):
    """A table breaks the published schema contract, or the database refuses the publish."""


@dataclass(frozen=True)
class Field:
    name: str                    # a column name, or a pattern such as ``propensity_*``
    kind: str                    # str | int | float | prob | bool | timestamp
    nullable: bool = True


#: The published schema contract (schema version 1). Every publish checks every table against it:
#: required columns present, no other columns, types, nulls, probabilities in [0, 1], unique keys.
CONTRACT: dict[str, dict] = {
    "customer_scores": dict(key=("customer_key",), fields=(
        Field("customer_key", "str", False), Field("segment_id", "int"), Field("segment", "str"),
        Field("value_band", "str"), Field("risk_band", "str"), Field("value_risk_cell", "str"),
        Field("value", "float"), Field("p_alive", "prob"), Field("expected_purchases_365d", "float"),
        Field("attrition_risk", "prob"), Field("propensity_*", "prob"), Field("response_propensity", "prob"),
        Field("next_best_offer", "str"), Field("next_best_offer_name", "str"),
        Field("preferred_channel", "str"), Field("preferred_medium", "str"),
        Field("treatment", "str", False), Field("rule", "str", False), Field("contact", "bool", False),
        Field("contact_reason", "str"), Field("control", "bool", False), Field("model_version", "str"),
        Field("decision_version", "str", False), Field("score_version", "int", False),
        Field("scored_at", "timestamp", False))),
    "customer_key_map": dict(key=("source_system", "source_id"), fields=(
        Field("source_system", "str", False), Field("source_id", "str", False),
        Field("customer_key", "str", False), Field("match_confidence", "prob"))),
    "affinity_rules": dict(key=("rule",), fields=(
        Field("rule", "str", False), Field("antecedents", "str", False), Field("consequents", "str", False),
        Field("antecedent support", "prob"), Field("consequent support", "prob"), Field("support", "prob"),
        Field("confidence", "prob"), Field("lift", "float"), Field("leverage", "float"),
        Field("conviction", "float"), Field("zhangs_metric", "float"), Field("jaccard", "prob"),
        Field("certainty", "float"), Field("kulczynski", "prob"), Field("all_confidence", "prob"),
        Field("n_antecedent", "int"), Field("n_consequent", "int"), Field("n_both", "int"),
        Field("p_value", "prob"), Field("q_value", "prob"), Field("significant", "bool"),
        Field("customer_facing", "bool", False), Field("guard", "str"))),
    "customer_offers": dict(key=("customer_key", "rank"), fields=(
        Field("customer_key", "str", False), Field("rank", "int", False), Field("product_id", "str", False),
        Field("product_name", "str"), Field("nbo_score", "float"))),
    "recent_contacts": dict(key=("customer_key", "contact_date"), fields=(
        Field("customer_key", "str", False), Field("contact_date", "timestamp", False),
        Field("contacts", "int", False))),
    "decision_policy": dict(key=("setting",), fields=(Field("setting", "str", False), Field("value", "str", False))),
    "segment_profiles": dict(key=("kind", "segment"), fields=(
        Field("kind", "str", False), Field("segment_id", "int"), Field("segment", "str", False),
        Field("customers", "int", False), Field("share", "prob"), Field("value_share", "prob"),
        Field("mean_value", "float"), Field("mean_attrition_risk", "prob"),
        Field("preferred_channel", "str"), Field("traits", "str"))),
}

@dataclass
class IdentityTables:
    """Person data published with a version but apart from the touchpoint tables (the identity index
    of real-time identification): on PostgreSQL in its own ``schema``, closed to PUBLIC and readable
    only through ``role`` (created NOLOGIN when missing; grant it to the service's login); on SQLite
    (no schemas or roles) as plain tables of the same file. Never in the Parquet copy, never under
    the contract's views. ``indexes``: per table, the column tuples to index; ``settle``: (table,
    column, values) rows to delete in the publish transaction (provisional persons this run took in)."""

    tables: dict
    indexes: dict = field(default_factory=dict)
    schema: str = "crmlab_identity"
    role: str | None = "crmlab_identity_reader"
    settle: tuple | None = None

    def qualified(self, eng, name: str) -> str:
        return identity_name(eng, self.schema, name)


def identity_name(eng, schema: str | None, name: str) -> str:
    """A table of the identity schema as this database names it: ``schema.name`` on PostgreSQL, ``name``
    on SQLite (no schemas)."""
    return f"{schema}.{name}" if eng.dialect.name == "postgresql" and schema else name


#: Column names that would hold direct personal data: never published, whatever the table.
PII_PATTERNS = ("*name", "*first_name*", "*last_name*", "*email*", "*e_mail*", "*phone*", "*mobile*",
                "*address*", "*street*", "*postcode*", "*zip*", "*dob*", "*birth*", "*town*")
_PII_ALLOWED = {"next_best_offer_name", "product_name"}     # product names, not a person's


# ----------------------------------------------------------------------------- contract

def _matches(field: Field, col: str) -> bool:
    return fnmatch.fnmatchcase(col, field.name) if "*" in field.name else col == field.name


def _kind_ok(s: pd.Series, kind: str) -> bool:
    if kind in ("float", "prob"):
        return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
    if kind == "int":
        return pd.api.types.is_integer_dtype(s)
    if kind == "bool":
        return pd.api.types.is_bool_dtype(s)
    if kind == "timestamp":
        return pd.api.types.is_datetime64_any_dtype(s)
    return pd.api.types.is_string_dtype(s) or pd.api.types.is_object_dtype(s) or s.isna().all()


def check_contract(name: str, df: pd.DataFrame) -> list[str]:
    """Problems of ``df`` as published table ``name`` (empty list: it conforms)."""
    if name not in CONTRACT:
        return [f"'{name}' is not a published table (known: {', '.join(CONTRACT)})"]
    spec, problems = CONTRACT[name], []
    pii = [c for c in df.columns if c not in _PII_ALLOWED and any(fnmatch.fnmatchcase(c.lower(), p) for p in PII_PATTERNS)]
    if pii:
        problems.append(f"personal data columns must not be published: {', '.join(pii)}")
    for f in spec["fields"]:
        cols = [c for c in df.columns if _matches(f, c)]
        if not cols and "*" not in f.name:
            problems.append(f"missing column '{f.name}'")
        for c in cols:
            s = df[c]
            if not _kind_ok(s, f.kind):
                problems.append(f"column '{c}' must be {f.kind}, is {s.dtype}")
                continue
            if not f.nullable and s.isna().any():
                problems.append(f"column '{c}' has {int(s.isna().sum())} missing values (rows {list(df.index[s.isna()][:3])})")
            if f.kind == "prob":
                bad = s.notna() & ~s.between(0.0, 1.0)
                if bad.any():
                    problems.append(f"column '{c}' must be a probability in [0, 1]; {int(bad.sum())} rows are not, "
                                    f"e.g. {s[bad].iloc[:3].tolist()}")
    extra = [c for c in df.columns if not any(_matches(f, c) for f in spec["fields"]) and c not in pii]
    if extra:
        problems.append(f"columns not in the contract: {', '.join(extra)}")
    key = [k for k in spec["key"] if k in df]
    if len(key) == len(spec["key"]) and df.duplicated(key).any():
        dup = df.loc[df.duplicated(key, keep=False), key].head(3).to_dict("records")
        problems.append(f"key ({', '.join(key)}) is not unique, e.g. {dup}")
    return problems


#: Free-text columns whose values could come from source data (product, segment, rule names):
#: a value starting with = + - @ or a tab/CR would run as a formula when a touchpoint exports
#: the table to a spreadsheet, so it is published with a leading apostrophe (OWASP CSV injection).
TEXT_FIELDS = {"customer_scores": ("segment", "next_best_offer_name", "rule", "contact_reason", "value_risk_cell"),
               "customer_offers": ("product_name",),
               "affinity_rules": ("rule", "antecedents", "consequents", "guard"),
               "segment_profiles": ("segment", "traits")}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formulas(name: str, df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with spreadsheet formulas in free-text columns defused ("=cmd()" -> "'=cmd()")."""
    cols = [c for c in TEXT_FIELDS.get(name, ()) if c in df.columns]
    if not cols:
        return df
    df = df.copy(deep=False)                       # copy-on-write: a column changed here is copied, not the table
    for c in cols:
        s = df[c]
        hit = s.notna() & s.astype("string").str.startswith(_FORMULA_START).fillna(False)
        if hit.any():
            df[c] = s.astype("string").where(~hit, "'" + s.astype("string"))
    return df


def contract_markdown() -> str:
    """The contract as a Markdown table (for docs and the publish report)."""
    lines = ["| table | column | type | nullable |", "|---|---|---|---|"]
    for t, spec in CONTRACT.items():
        for f in spec["fields"]:
            key = " (key)" if f.name in spec["key"] else ""
            lines.append(f"| {t} | `{f.name}`{key} | {f.kind} | {'yes' if f.nullable else 'no'} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- database

def default_url(folder) -> str:
    return f"sqlite:///{Path(folder).resolve() / 'crmlab.sqlite'}"


def engine(url: str, create: bool = True):
    """A SQLAlchemy engine; SQLite files get WAL (readers never wait for a publish) and a busy timeout.

    ``create=False`` (readers): a SQLite file that does not exist is an error, never created empty.
    """
    import sqlalchemy as sa

    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if not create and not path.is_file():
            raise PublishError(f"no published database at {path} (the file does not exist): check the path, "
                               "or run the chain (stage 60_publish) first")
        path.parent.mkdir(parents=True, exist_ok=True)
        eng = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(eng, "connect")
        def _on_connect(dbapi_conn, _):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
            # let SQLAlchemy issue BEGIN itself so DDL stays inside the transaction (pysqlite quirk)
            dbapi_conn.isolation_level = None

        @sa.event.listens_for(eng, "begin")
        def _begin(conn):
            conn.exec_driver_sql("BEGIN")
        return eng
    try:
        return sa.create_engine(url, pool_pre_ping=True)
    except Exception as exc:  # noqa: BLE001 - bad URL or missing driver
        raise PublishError(f"cannot use database URL {_safe(url)}: {exc}") from None


def _safe(url: str) -> str:
    return mask_url(url)


def _phys(table: str, version: int) -> str:
    return f"{table}__v{version:06d}"


def _q(eng, name: str) -> str:
    return eng.dialect.identifier_preparer.quote(name)


def _qt(eng, name: str) -> str:
    """A table or view name, schema-qualified ones ('crmlab_identity.identity_index') quoted per part."""
    return ".".join(_q(eng, part) for part in name.split("."))


def _split(name: str) -> tuple[str | None, str]:
    schema, _, table = name.rpartition(".")
    return schema or None, table


def _ensure_catalog(conn) -> None:
    import sqlalchemy as sa

    conn.execute(sa.text(
        f"CREATE TABLE IF NOT EXISTS {CATALOG} (version INTEGER PRIMARY KEY, status VARCHAR(16) NOT NULL, "
        "published_at VARCHAR(40) NOT NULL, schema_version INTEGER NOT NULL, tables TEXT NOT NULL, "
        "row_counts TEXT NOT NULL, note TEXT, restored_at VARCHAR(40))"))


def history(url: str) -> pd.DataFrame:
    """Every published version, newest first (empty when nothing was published)."""
    import sqlalchemy as sa

    eng = engine(url)
    try:
        if not sa.inspect(eng).has_table(CATALOG):
            return pd.DataFrame(columns=["version", "status", "published_at", "schema_version", "tables",
                                         "row_counts", "note", "restored_at"])
        with eng.connect() as conn:
            return pd.read_sql(sa.text(f"SELECT * FROM {CATALOG} ORDER BY version DESC"), conn)
    finally:
        eng.dispose()


def current_version(url: str) -> int | None:
    h = history(url)
    cur = h.loc[h["status"] == "current", "version"]
    return int(cur.iloc[0]) if len(cur) else None


def _to_sql_frame(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for c in out.columns:
        if pd.api.types.is_datetime64_any_dtype(out[c]):
            out[c] = out[c].dt.strftime("%Y-%m-%dT%H:%M:%S")          # portable and sortable
        elif pd.api.types.is_string_dtype(out[c]) or isinstance(out[c].dtype, pd.CategoricalDtype):
            out[c] = out[c].astype(object).where(out[c].notna(), None)
    return out


#: rows per block of CSV made for COPY, or of values inserted on SQLite (bounds what is held at once)
COPY_BLOCK = 200_000


def _copies(eng) -> bool:
    return eng.dialect.name == "postgresql" and eng.dialect.driver == "psycopg"


def _target(eng, name: str, df: pd.DataFrame) -> str:
    return f"{_qt(eng, name)} ({', '.join(_q(eng, c) for c in df.columns)})"


def _arrow_blocks(df: pd.DataFrame):
    """``df`` as Arrow tables of :data:`COPY_BLOCK` rows, made one at a time as they are read,
    timestamps as the text :func:`_to_sql_frame` writes; None when Arrow cannot type a column (mixed
    Python objects)."""
    import pyarrow as pa

    try:
        schema = _arrow_schema(df)
    except (pa.ArrowException, TypeError, ValueError):
        return None
    return (_timestamps_as_text(pa.Table.from_pandas(df.iloc[a:a + COPY_BLOCK], schema=schema, preserve_index=False))
            for a in range(0, max(len(df), 1), COPY_BLOCK))


def _timestamps_as_text(t):
    import pyarrow as pa
    import pyarrow.compute as pc

    for i, f in enumerate(t.schema):
        if pa.types.is_timestamp(f.type):
            t = t.set_column(i, f.name, pc.strftime(t.column(i), "%Y-%m-%dT%H:%M:%S"))
    return t


def _copy(cur, name_cols: str, df: pd.DataFrame) -> None:
    """``COPY`` the rows of ``df`` into ``name_cols`` on a psycopg cursor: CSV made by Arrow in blocks of
    :data:`COPY_BLOCK` rows (text quoted, missing values unquoted empty, which PostgreSQL reads as
    NULL; floats in their shortest exact form; timestamps as :func:`_to_sql_frame` writes them). A
    column Arrow cannot type (mixed Python objects) falls back to psycopg's row by row formatting."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    blocks = _arrow_blocks(df)
    if blocks is None:
        sql = _to_sql_frame(df)
        with cur.copy(f"COPY {name_cols} FROM STDIN") as copy:
            values = [sql[c].astype(object).where(sql[c].notna(), None).tolist() for c in sql.columns]
            for row in zip(*values):
                copy.write_row(row)
        return
    options = pacsv.WriteOptions(include_header=False)
    with cur.copy(f"COPY {name_cols} FROM STDIN (FORMAT csv)") as copy:
        for block in blocks:
            sink = pa.BufferOutputStream()
            pacsv.write_csv(block, sink, options)
            copy.write(memoryview(sink.getvalue()))


def _create(conn, name: str, df: pd.DataFrame) -> tuple[str | None, str]:
    """Create table ``name`` (``schema.table`` or ``table``), empty, with the column types of
    :func:`_to_sql_frame`; returns (schema, table)."""
    schema, bare = _split(name)
    _to_sql_frame(df.head(0)).to_sql(bare, conn, schema=schema, index=False)
    return schema, bare


def _insert(conn, eng, name: str, df) -> None:
    """Create ``name`` with the column types of :func:`_to_sql_frame`, then fill it in bulk on the same
    connection (inside the publish transaction): ``executemany`` on SQLite, ``COPY`` on PostgreSQL
    (psycopg), pandas' ``to_sql`` elsewhere. Missing values become NULL. A :class:`TableParts` is
    written one part at a time."""
    parted = isinstance(df, TableParts)
    _create(conn, name, df.meta if parted else df)
    for frame in df.frames() if parted else [df]:
        _fill(conn, eng, name, frame)


def _fill(conn, eng, name: str, df: pd.DataFrame) -> None:
    """Append the rows of ``df`` to the existing table ``name`` (see :func:`_insert`)."""
    target = _target(eng, name, df)
    if _copies(eng):
        with conn.connection.driver_connection.cursor() as cur:
            _copy(cur, target, df)
        return
    if eng.dialect.name == "sqlite":               # in blocks: the rows as Python values, a block at a time
        cur = conn.connection.driver_connection.cursor()
        for a in range(0, len(df), COPY_BLOCK):
            block = _to_sql_frame(df.iloc[a:a + COPY_BLOCK])
            values = [block[c].astype(object).where(block[c].notna(), None).tolist() for c in block.columns]
            cur.executemany(f"INSERT INTO {target} VALUES ({', '.join('?' * len(values))})", zip(*values))
        cur.close()
    else:
        schema, bare = _split(name)
        _to_sql_frame(df).to_sql(bare, conn, schema=schema, index=False, if_exists="append", chunksize=50_000)


def _switch_views(conn, eng, tables, version: int) -> None:
    """Point each table's view at ``version``'s physical table, inside the caller's transaction.

    PostgreSQL: the views are locked together (sorted names), with a lock timeout shorter than the
    server's deadlock check, and replaced with CREATE OR REPLACE; when readers hold them the
    publisher backs off and retries, so a reader is never chosen as a deadlock victim (a DROP
    VIEW here once failed 22 of 40,600 lookups with DeadlockDetected).
    """
    import sqlalchemy as sa

    if eng.dialect.name != "postgresql":
        _replace_views(conn, eng, tables, version)
        return
    views = set(sa.inspect(conn).get_view_names())
    held = sorted(t for t in tables if t in views)       # the touchpoint views (identity views need no lock)
    rng = np.random.default_rng()
    for attempt in range(200):
        try:
            with conn.begin_nested():
                conn.execute(sa.text("SET LOCAL lock_timeout = '200ms'"))
                if held:
                    conn.execute(sa.text(f"LOCK TABLE {', '.join(_q(eng, t) for t in held)} IN ACCESS EXCLUSIVE MODE"))
                _replace_views(conn, eng, tables, version)
                conn.execute(sa.text("SET LOCAL lock_timeout = 0"))
            return
        except sa.exc.DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != "55P03" or attempt == 199:   # 55P03: lock not available
                raise
            time.sleep(0.01 + 0.05 * rng.random())


def _replace_views(conn, eng, tables, version: int) -> None:
    import sqlalchemy as sa

    insp = sa.inspect(conn)
    views = {}
    for t in sorted(tables):
        schema, bare = _split(t)
        if schema not in views:
            views[schema] = set(insp.get_view_names(schema=schema))
        body = f"AS SELECT * FROM {_qt(eng, _phys(t, version))}"
        if bare in views[schema]:
            if eng.dialect.name == "postgresql":
                # CREATE OR REPLACE keeps the view (and its grants); it needs the same leading
                # columns, so a changed schema falls back to drop and create inside a savepoint
                try:
                    with conn.begin_nested():
                        conn.execute(sa.text(f"CREATE OR REPLACE VIEW {_qt(eng, t)} {body}"))
                    continue
                except sa.exc.DBAPIError as exc:
                    if getattr(exc.orig, "sqlstate", None) == "55P03":
                        raise
            conn.execute(sa.text(f"DROP VIEW {_qt(eng, t)}"))
        elif insp.has_table(bare, schema=schema):
            raise PublishError(f"the database already has a table named '{t}' that crmlab did not create; "
                               "publish to another database or schema")
        conn.execute(sa.text(f"CREATE VIEW {_qt(eng, t)} {body}"))


def publish(tables: dict, url: str, folder=None, keep: int = 5, note: str = "",
            progress=None, identity: IdentityTables | None = None, writers: int = 1,
            _fail_after: str | None = None) -> int:
    """Publish ``tables`` (name -> DataFrame, or :class:`~crmlab.table_parts.TableParts` whose rows stay
    on Dask workers and are written a part at a time) as a new version; returns the version number.

    Every table is checked against the contract first (all problems reported together, nothing
    written). ``customer_scores`` gets ``score_version`` and ``scored_at`` here. ``keep`` versions
    stay in the database (older ones are dropped); ``folder`` (optional) receives the Parquet copy.
    ``identity``: person tables published with the version, apart (:class:`IdentityTables`).
    ``writers`` > 1 on PostgreSQL: the tables are written in row ranges (or parts) by that many
    connections at once (:func:`_write_parallel`), then switched to in one transaction; on SQLite (one
    writer) and other databases everything is written in the switching transaction.
    ``_fail_after`` (tests) raises after writing that table.
    """
    import sqlalchemy as sa

    say = progress or (lambda m: None)
    if keep < 1:
        raise PublishError(f"publish.keep must be at least 1, got {keep}")
    if not 1 <= writers <= MAX_WRITERS:
        raise PublishError(f"publish.writers must be between 1 and {MAX_WRITERS}, got {writers}")
    eng = engine(url)
    guard = None
    try:
        parallel = writers > 1 and _copies(eng)
        with eng.connect() as conn:
            with conn.begin():
                _ensure_catalog(conn)
            if _copies(eng):
                _drop_abandoned(conn, eng, say)
            with conn.begin():
                version = int(conn.execute(sa.text(f"SELECT COALESCE(MAX(version), 0) + 1 FROM {CATALOG}")).scalar())
        now = pd.Timestamp(dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)).floor("s")
        tables = {n: (df.transform(_prepare, n, version, now) if isinstance(df, TableParts) else
                      _prepare(df, n, version, now)) for n, df in tables.items()}
        problems = {n: _problems(n, df) for n, df in tables.items()}
        problems = {n: p for n, p in problems.items() if p}
        if problems:
            raise PublishError("nothing published: the tables break the schema contract:\n"
                               + "\n".join(f"  {n}: {p}" for n, ps in problems.items() for p in ps))
        if folder:
            sync_parquet(url, folder, _eng=eng)           # mend what a killed publish left behind
        counts = {n: len(df) for n, df in tables.items()}
        staged = _stage_parquet(tables, folder, version, counts) if folder else None
        t0 = time.perf_counter()
        try:
            if parallel:
                guard = _reserve(eng, version, now, tables, note)
                _write_parallel(eng, tables, version, writers, say, _fail_after)
            with eng.connect() as conn, conn.begin():
                if parallel:
                    _check_written(conn, eng, counts, version)
                else:
                    taken = conn.execute(sa.text(f"SELECT COUNT(*) FROM {CATALOG} WHERE version = :v"),
                                         {"v": version}).scalar()
                    if taken:
                        raise PublishError(f"version {version} was taken by another publish running at the same time; retry")
                    for name, df in tables.items():
                        say(f"writing {name} ({len(df):,} rows) as version {version}")
                        phys = _phys(name, version)
                        _insert(conn, eng, phys, df)
                        for stmt in _indexes(eng, name, phys):
                            conn.execute(sa.text(stmt))
                        if _fail_after == name:
                            raise RuntimeError(f"simulated failure after writing {name}")
                names = list(tables)
                if identity is not None:
                    names += _write_identity(conn, eng, identity, version, say)
                _switch_views(conn, eng, names, version)
                if identity is not None:
                    _grant_identity(conn, eng, identity)
                conn.execute(sa.text(f"UPDATE {CATALOG} SET status = 'kept' WHERE status = 'current'"))
                if parallel:
                    conn.execute(sa.text(f"UPDATE {CATALOG} SET status = 'current', tables = :t, row_counts = :rc "
                                         "WHERE version = :v"),
                                 {"v": version, "t": json.dumps(sorted(names)), "rc": json.dumps(counts)})
                else:
                    _catalog_insert(conn, version, "current", now, names, counts, note)
                _prune(conn, eng, keep)
        except BaseException:
            if staged:
                shutil.rmtree(staged, ignore_errors=True)
            if guard is not None:
                _abandon(guard, eng, version, list(tables))
            raise
        say(f"version {version} is current ({time.perf_counter() - t0:.1f} s in the database)")
        if folder:
            _commit_parquet(folder, version, keep)
        return version
    except sa.exc.SQLAlchemyError as exc:
        raise PublishError(f"publishing to {_safe(url)} failed, nothing changed: {exc.__class__.__name__}: "
                           f"{str(exc).splitlines()[0]}") from None
    finally:
        if guard is not None:
            guard.close()
        eng.dispose()


def _prepare(df: pd.DataFrame, name: str, version: int, now) -> pd.DataFrame:
    """Table ``name`` as published: formulas defused; ``customer_scores`` stamped with the version."""
    df = neutralise_formulas(name, df)
    if name == "customer_scores":
        df = df.assign(score_version=np.int64(version), scored_at=now)
    return df


def _problems(name: str, df) -> list[str]:
    """:func:`check_contract` of a table, or of every part of a :class:`TableParts` (each problem once;
    a key unique in every part may still repeat across parts: the unique index refuses it)."""
    if not isinstance(df, TableParts):
        return check_contract(name, df)
    if df.n == 0:
        return check_contract(name, df.meta)
    return list(dict.fromkeys(p for part in df.map(_part_problems, name) for p in part))


def _part_problems(df: pd.DataFrame, name: str) -> list[str]:
    return check_contract(name, df)


def _catalog_insert(conn, version: int, status: str, now, names, counts: dict, note: str) -> None:
    """The catalog row of ``version``."""
    import sqlalchemy as sa

    conn.execute(sa.text(
        f"INSERT INTO {CATALOG} (version, status, published_at, schema_version, tables, row_counts, note) "
        "VALUES (:v, :status, :at, :sv, :t, :rc, :note)"),
        {"v": version, "status": status, "at": now.isoformat(), "sv": SCHEMA_VERSION, "t": json.dumps(sorted(names)),
         "rc": json.dumps(counts), "note": note})


def _indexes(eng, name: str, phys: str) -> list[str]:
    """The statements indexing a published table's version: its contract key (unique), and the
    customer key where touchpoints look rows up by it."""
    key = ", ".join(_q(eng, k) for k in CONTRACT[name]["key"])
    out = [f"CREATE UNIQUE INDEX {_q(eng, 'ix_' + phys)} ON {_q(eng, phys)} ({key})"]
    if name in ("customer_key_map", "recent_contacts"):
        out.append(f"CREATE INDEX {_q(eng, 'ixk_' + phys)} ON {_q(eng, phys)} (customer_key)")
    return out


# ----------------------------------------------------------------------------- parallel writes (PostgreSQL)

#: most connections writing at once (the engine's pool holds 15)
MAX_WRITERS = 12
#: fewest rows a connection writes when a table is split between writers
PARALLEL_MIN_ROWS = 50_000
#: the advisory lock a parallel publish holds on its version while it writes (per schema of the catalog)
_LOCK = "hashtext(coalesce(current_schema(), '') || '.crmlab_versions')"


def _reserve(eng, version: int, now, tables: dict, note: str):
    """Take ``version`` for a parallel publish: a connection that holds the version's advisory lock for
    the whole publish (a publish killed midway releases it with its connection), and the catalog row
    ``writing`` committed under it. Returns that connection."""
    import sqlalchemy as sa

    guard = eng.connect()
    try:
        with guard.begin():
            guard.execute(sa.text(f"SELECT pg_advisory_lock({_LOCK}, :v)"), {"v": version})
            try:
                _catalog_insert(guard, version, "writing", now, tables, {}, note)
            except sa.exc.IntegrityError:
                raise PublishError(f"version {version} was taken by another publish running at the same time; "
                                   "retry") from None
    except BaseException:
        guard.close()
        raise
    return guard


def _write_parallel(eng, tables: dict, version: int, writers: int, say, fail_after: str | None) -> None:
    """Write the version's tables by ``writers`` connections at once: each table created empty, its rows
    COPYed in ranges of at least :data:`PARALLEL_MIN_ROWS` (each range committed by itself), then its
    indexes. Readers see none of it: the views name the previous version until the switch."""
    from concurrent.futures import ThreadPoolExecutor

    import sqlalchemy as sa

    with eng.begin() as conn:
        for name, df in tables.items():
            _create(conn, _phys(name, version), df.meta if isinstance(df, TableParts) else df)
    jobs, ranges = [], {}
    for name, df in tables.items():
        if isinstance(df, TableParts):                  # a part a job, fetched by the writer that copies it
            ranges[name] = df.n
            jobs += [(name, i, None) for i in range(df.n)]
            continue
        ranges[name] = k = max(1, min(writers, len(df) // PARALLEL_MIN_ROWS))
        bounds = np.linspace(0, len(df), k + 1).astype(np.int64)
        jobs += [(name, a, b) for a, b in zip(bounds[:-1], bounds[1:])]

    def copy(job):
        name, a, b = job
        df = tables[name]
        if a == 0:
            pieces = f" in {ranges[name]} {'parts' if b is None else 'ranges'}, {writers} at once"
            say(f"writing {name} ({len(df):,} rows) as version {version}" + (pieces if ranges[name] > 1 else ""))
        rows = df.frame(a) if b is None else df.iloc[a:b]
        with eng.begin() as conn, conn.connection.driver_connection.cursor() as cur:
            _copy(cur, _target(eng, _phys(name, version), rows), rows)
        if fail_after == name:
            raise RuntimeError(f"simulated failure after writing {name}")

    def index(stmt):
        with eng.begin() as conn:
            conn.execute(sa.text(stmt))

    with ThreadPoolExecutor(writers) as pool:
        for _ in pool.map(copy, jobs):
            pass
        say(f"indexing version {version}")
        for _ in pool.map(index, [i for n in tables for i in _indexes(eng, n, _phys(n, version))]):
            pass


def _check_written(conn, eng, counts: dict, version: int) -> None:
    """Inside the switching transaction: every table of ``version`` holds its rows."""
    import sqlalchemy as sa

    for name, n in counts.items():
        got = conn.execute(sa.text(f"SELECT COUNT(*) FROM {_q(eng, _phys(name, version))}")).scalar()
        if got != n:
            raise PublishError(f"{_phys(name, version)} holds {got:,} rows, {n:,} were written: nothing published")


def _drop_tables(conn, eng, version: int, names) -> None:
    """Drop the physical tables of ``version`` of the published tables ``names``."""
    import sqlalchemy as sa

    for t in names:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {_qt(eng, _phys(t, version))}"))


def _drop_version(conn, eng, version: int, names) -> None:
    import sqlalchemy as sa

    _drop_tables(conn, eng, version, names)
    conn.execute(sa.text(f"DELETE FROM {CATALOG} WHERE version = :v AND status = 'writing'"), {"v": version})


def _abandon(guard, eng, version: int, names) -> None:
    """A parallel publish that failed: its tables dropped and its version freed, then its lock released
    (when the database is gone too, the next publish does it: :func:`_drop_abandoned`)."""
    import sqlalchemy as sa

    try:
        if guard.in_transaction():
            guard.rollback()
        with guard.begin():
            _drop_version(guard, eng, version, names)
        guard.execute(sa.text(f"SELECT pg_advisory_unlock({_LOCK}, :v)"), {"v": version})
        guard.commit()
    except sa.exc.SQLAlchemyError:
        pass


def _drop_abandoned(conn, eng, say) -> None:
    """Versions a killed parallel publish left ``writing`` (their lock is free: the process is gone):
    their tables dropped and the version freed. A publish still running holds its lock and is left alone."""
    import sqlalchemy as sa

    rows = conn.execute(sa.text(f"SELECT version, tables FROM {CATALOG} WHERE status = 'writing'")).fetchall()
    conn.commit()
    for version, tabs in rows:
        v = int(version)
        got = conn.execute(sa.text(f"SELECT pg_try_advisory_lock({_LOCK}, :v)"), {"v": v}).scalar()
        conn.commit()                                   # a session lock: it outlives the transaction
        if not got:
            continue
        try:
            with conn.begin():
                _drop_version(conn, eng, v, json.loads(tabs))
            say(f"dropped the tables of version {v}, left by a publish that did not finish")
        finally:
            conn.execute(sa.text(f"SELECT pg_advisory_unlock({_LOCK}, :v)"), {"v": v})
            conn.commit()


def _write_identity(conn, eng, idt: IdentityTables, version: int, say) -> list[str]:
    """Write the identity tables of ``version`` (inside the publish transaction); their view names."""
    import sqlalchemy as sa

    pg = eng.dialect.name == "postgresql"
    if pg and idt.schema:
        conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {_q(eng, idt.schema)}"))
        conn.execute(sa.text(f"REVOKE ALL ON SCHEMA {_q(eng, idt.schema)} FROM PUBLIC"))
    names = []
    for name, df in idt.tables.items():
        qual = idt.qualified(eng, name)
        phys = _phys(qual, version)
        say(f"writing {name} ({len(df):,} rows, apart from the touchpoint tables) as version {version}")
        _insert(conn, eng, phys, df)
        bare = _split(phys)[1]
        for i, cols in enumerate(idt.indexes.get(name, ())):
            conn.execute(sa.text(f"CREATE INDEX {_q(eng, f'ix{i}_{bare}')} ON {_qt(eng, phys)} "
                                 f"({', '.join(_q(eng, c) for c in cols)})"))
        names.append(qual)
    if idt.settle is not None:
        table, column, values = idt.settle
        qual = idt.qualified(eng, table)
        schema, bare = _split(qual)
        if values and sa.inspect(conn).has_table(bare, schema=schema):
            stmt = sa.text(f"DELETE FROM {_qt(eng, qual)} WHERE {_q(eng, column)} IN :v").bindparams(
                sa.bindparam("v", expanding=True))
            for i in range(0, len(values), 10_000):
                conn.execute(stmt, {"v": list(values[i:i + 10_000])})
    return names


def _grant_identity(conn, eng, idt: IdentityTables) -> None:
    """PostgreSQL: the identity views readable by ``idt.role`` (created NOLOGIN if missing) and nobody else."""
    import sqlalchemy as sa

    if eng.dialect.name != "postgresql" or not idt.schema or not idt.role:
        return
    role = _q(eng, idt.role)
    exists = conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": idt.role}).scalar()
    if not exists:
        try:
            with conn.begin_nested():
                conn.execute(sa.text(f"CREATE ROLE {role} NOLOGIN"))
        except sa.exc.DBAPIError:
            raise PublishError(f"the role '{idt.role}' that reads the identity index does not exist and this login "
                               f"may not create it: ask a database administrator to run CREATE ROLE {idt.role} "
                               "NOLOGIN, or set publish.identity_role") from None
    conn.execute(sa.text(f"GRANT USAGE ON SCHEMA {_q(eng, idt.schema)} TO {role}"))
    for name in idt.tables:
        conn.execute(sa.text(f"GRANT SELECT ON {_qt(eng, idt.qualified(eng, name))} TO {role}"))


def _prune(conn, eng, keep: int) -> None:
    import sqlalchemy as sa

    rows = conn.execute(sa.text(f"SELECT version, tables FROM {CATALOG} WHERE status IN ('current', 'kept') "
                                "ORDER BY version DESC")).fetchall()
    for version, tabs in rows[keep:]:
        _drop_tables(conn, eng, int(version), json.loads(tabs))
        conn.execute(sa.text(f"UPDATE {CATALOG} SET status = 'pruned' WHERE version = :v"), {"v": int(version)})


def restore(url: str, version: int, folder=None) -> int:
    """Make a kept version current again (atomically, like a publish); returns it."""
    import sqlalchemy as sa

    eng = engine(url)
    try:
        with eng.connect() as conn, conn.begin():
            _ensure_catalog(conn)
            row = conn.execute(sa.text(f"SELECT status, tables FROM {CATALOG} WHERE version = :v"), {"v": version}).fetchone()
            if row is None or row[0] not in ("current", "kept"):
                kept = conn.execute(sa.text(f"SELECT version FROM {CATALOG} WHERE status IN ('current', 'kept') "
                                            "ORDER BY version")).scalars().all()
                raise PublishError(f"version {version} cannot be restored: "
                                   f"{'it was never published' if row is None else 'it was pruned' if row[0] == 'pruned' else 'it is still being written'}; "
                                   f"kept versions: {kept}")
            if folder and not (Path(folder) / "parquet" / f"v{version:06d}").is_dir():
                raise PublishError(f"version {version} cannot be restored: its Parquet copy is missing under "
                                   f"{Path(folder) / 'parquet'} (SQL and Parquet would disagree); nothing changed")
            _switch_views(conn, eng, json.loads(row[1]), version)
            conn.execute(sa.text(f"UPDATE {CATALOG} SET status = 'kept' WHERE status = 'current'"))
            conn.execute(sa.text(f"UPDATE {CATALOG} SET status = 'current', restored_at = :at WHERE version = :v"),
                         {"v": version, "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    finally:
        eng.dispose()
    if folder:
        _write_current(Path(folder) / "parquet", version)
    return version


def read_table(url: str, name: str, version: int | None = None) -> pd.DataFrame:
    """A published table as touchpoints see it (the current version, or a kept one)."""
    import sqlalchemy as sa

    if name not in CONTRACT:
        raise PublishError(f"'{name}' is not a published table (known: {', '.join(CONTRACT)})")
    eng = engine(url, create=False)
    try:
        rel = _phys(name, version) if version else name
        with eng.connect() as conn:
            insp = sa.inspect(conn)
            if not insp.has_table(rel) and rel not in insp.get_view_names():
                raise PublishError(f"{_safe(url)} has no published '{rel}'")
            return _contract_types(name, pd.read_sql(sa.text(f"SELECT * FROM {_q(eng, rel)}"), conn))
    finally:
        eng.dispose()


def table_columns(url: str, name: str, version: int | None = None) -> list[str]:
    """The columns of a published table (the current version, or a kept one), nothing read."""
    import sqlalchemy as sa

    eng = engine(url, create=False)
    try:
        rel = _phys(name, version) if version else name
        return [c["name"] for c in sa.inspect(eng).get_columns(rel)]
    finally:
        eng.dispose()


def read_column(url: str, name: str, column: str, rows: int = 1_000_000) -> np.ndarray:
    """One numeric column of a published table's current version as float64 (missing: NaN), read
    ``rows`` at a time: the column, not a table of Python values, is what this process holds."""
    import sqlalchemy as sa

    eng = engine(url, create=False)
    try:
        with eng.connect() as conn:
            got = conn.execution_options(stream_results=True).execute(
                sa.text(f"SELECT {_q(eng, column)} FROM {_q(eng, name)}"))
            out = []
            while chunk := got.fetchmany(rows):
                out.append(np.array([r[0] for r in chunk], dtype=float))
            return np.concatenate(out) if out else np.zeros(0)
    finally:
        eng.dispose()


def _contract_types(name: str, df: pd.DataFrame) -> pd.DataFrame:
    """Columns read back from SQL in their contract types: SQLite returns a nullable integer column
    as float64 and booleans as 0/1, which would break the contract when the table is republished."""
    for c in df.columns:
        f = next((f for f in CONTRACT[name]["fields"] if _matches(f, c)), None)
        if f is None:
            continue
        if f.kind == "int":
            df[c] = df[c].astype("int64") if df[c].notna().all() else df[c].astype("Int64")
        elif f.kind == "bool":
            df[c] = df[c].astype("bool") if df[c].notna().all() else df[c].astype("boolean")
        elif f.kind == "timestamp":
            df[c] = pd.to_datetime(df[c])
    return df


# ----------------------------------------------------------------------------- Parquet copy

def _stage_parquet(tables, folder, version: int, counts: dict) -> Path:
    """Write and verify (row counts read back) the Parquet copy, then move it to its final folder
    ``v<version>``, all before the database switch; CURRENT moves only after the commit."""
    import pyarrow.parquet as pq

    root = Path(folder) / "parquet"
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".v{version:06d}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir(mode=0o700)
    try:
        for name, df in tables.items():
            if isinstance(df, TableParts):
                _parquet_by_parts(df, tmp / f"{name}.parquet")
            else:
                df.to_parquet(tmp / f"{name}.parquet", index=False)
            if pq.ParquetFile(tmp / f"{name}.parquet").metadata.num_rows != counts[name]:
                raise PublishError(f"the Parquet copy of {name} did not read back with {counts[name]:,} rows")
        final = root / f"v{version:06d}"
        if final.exists():                  # left by an earlier publish whose database commit failed
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _arrow_schema(df: pd.DataFrame):
    import pyarrow as pa

    return pa.Schema.from_pandas(df, preserve_index=False)


def _parquet_by_parts(parts: TableParts, path: Path) -> None:
    """One Parquet file of the parts, a row group (or more) a part, fetched one at a time; the schema
    is the parts' schemas unified (a column missing in one part and text in another is text)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schemas = parts.map(_arrow_schema) or [_arrow_schema(parts.meta)]
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    with pq.ParquetWriter(path, schema) as writer:
        for frame in parts.frames():
            writer.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False))


def _write_current(root: Path, version: int) -> None:
    tmp = root / f".CURRENT.{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps({"version": version}))
    os.replace(tmp, root / "CURRENT")


def _commit_parquet(folder, version: int, keep: int) -> None:
    root = Path(folder) / "parquet"
    _write_current(root, version)
    versions = sorted(p for p in root.glob("v[0-9]*") if p.is_dir())
    for old in versions[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    _drop_stale_staging(root)


def _drop_stale_staging(root: Path, age_s: float = 600) -> None:
    """Staging folders of killed publishes (older than ``age_s``, so a concurrent publish keeps its own)."""
    for junk in root.glob(".v*.tmp") if root.is_dir() else []:
        try:
            if time.time() - junk.stat().st_mtime > age_s:
                shutil.rmtree(junk, ignore_errors=True)
        except OSError:
            pass


def _parquet_current(root: Path) -> int | None:
    try:
        return int(json.loads((root / "CURRENT").read_text())["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def sync_parquet(url: str, folder, repair: bool = True, _eng=None) -> dict:
    """Check that the Parquet copy's CURRENT names the database's current version; with ``repair``,
    point it there when that version's folder exists (a publish killed between the database commit
    and the CURRENT write). Returns ``{"sql": v, "parquet": v, "ok": bool, "repaired": bool, "problem": str}``."""
    root = Path(folder) / "parquet"
    if _eng is None:
        sql = current_version(url)
    else:
        import sqlalchemy as sa

        with _eng.connect() as conn:
            sql = (conn.execute(sa.text(f"SELECT version FROM {CATALOG} WHERE status = 'current'")).scalar()
                   if sa.inspect(conn).has_table(CATALOG) else None)
    pq_v = _parquet_current(root)
    out = {"sql": sql, "parquet": pq_v, "ok": sql == pq_v, "repaired": False, "problem": ""}
    if repair:
        _drop_stale_staging(root)
    if sql is None or sql == pq_v:
        return out
    if (root / f"v{sql:06d}").is_dir():
        if repair:
            _write_current(root, sql)
            out.update(ok=True, repaired=True, parquet=sql)
    else:
        out["problem"] = f"the Parquet copy of version {sql} is missing under {root}"
    return out


def read_parquet(folder, name: str) -> pd.DataFrame:
    """The current Parquet copy of a published table."""
    root = Path(folder) / "parquet"
    try:
        version = json.loads((root / "CURRENT").read_text())["version"]
    except (OSError, ValueError, KeyError):
        raise PublishError(f"no published Parquet tables under {root} (no valid CURRENT file)") from None
    return pd.read_parquet(root / f"v{version:06d}" / f"{name}.parquet")


# ----------------------------------------------------------------------------- lookup

def score_row(row) -> dict:
    """A ``customer_scores`` row read from SQL as a dict, flags as booleans (SQLite stores them as 0/1)."""
    out = dict(row)
    for f in CONTRACT["customer_scores"]["fields"]:
        if f.kind == "bool" and out.get(f.name) is not None:
            out[f.name] = bool(out[f.name])
    return out


class Lookup:
    """Current scores of one customer from any source system's id, in one SQL statement.

    >>> with Lookup(url) as lk:
    ...     lk.get("web", "W123")       # dict of customer_scores columns, or None
    """

    def __init__(self, url: str):
        import sqlalchemy as sa

        self.url = url
        self._eng = engine(url, create=False)
        self._conn = self._eng.connect()
        if "customer_scores" not in sa.inspect(self._conn).get_view_names():
            self.close()
            raise PublishError(f"nothing published in {_safe(url)} yet: run the chain (stage 60_publish) first")
        self._stmt = sa.text(
            "SELECT m.source_system AS matched_system, m.source_id AS matched_id, s.* "
            "FROM customer_key_map m JOIN customer_scores s ON s.customer_key = m.customer_key "
            "WHERE m.source_system = :system AND m.source_id = :id")
        if self._eng.dialect.name == "sqlite":
            self._conn.commit()

    def get(self, source_system: str, source_id: str) -> dict | None:
        row = self._conn.execute(self._stmt, {"system": str(source_system), "id": str(source_id)}).mappings().first()
        if self._eng.dialect.name != "sqlite":
            self._conn.rollback()             # end the read transaction: the next lookup sees new versions
        else:
            self._conn.commit()
        return None if row is None else score_row(row)

    def systems(self) -> list[str]:
        import sqlalchemy as sa

        out = self._conn.execute(sa.text("SELECT DISTINCT source_system FROM customer_key_map ORDER BY 1")).scalars().all()
        self._conn.rollback()
        return list(out)

    def close(self) -> None:
        self._conn.close()
        self._eng.dispose()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def lookup(url: str, source_system: str, source_id: str) -> dict | None:
    """One-off lookup (opens and closes a connection); use :class:`Lookup` for many."""
    with Lookup(url) as lk:
        return lk.get(source_system, source_id)


# ----------------------------------------------------------------------------- drift

def lookup_check(url: str, key_map: pd.DataFrame, n: int, random_state: int = 0):
    """What a touchpoint sees: the published scores of every source record of the customer known to
    most systems (one row per record, all the same customer), and ``n`` random lookups timed.
    Returns (rows by ``system:id``, lookups, hits, milliseconds per lookup)."""
    multi = key_map.groupby("customer_key")["source_system"].nunique().idxmax()
    rows = key_map[key_map["customer_key"] == multi]
    ids = key_map.sample(min(n, len(key_map)), random_state=random_state)
    with Lookup(url) as lk:
        found = [lk.get(r.source_system, r.source_id) for r in rows.itertuples()]
        t0 = time.perf_counter()
        hits = sum(lk.get(s, i) is not None for s, i in zip(ids["source_system"], ids["source_id"]))
        per_ms = (time.perf_counter() - t0) / max(len(ids), 1) * 1e3
    shown = pd.DataFrame(found, index=[f"{r.source_system}:{r.source_id}" for r in rows.itertuples()])
    if shown["customer_key"].nunique() != 1:
        raise CrmlabError(f"the records of customer {multi} look up {shown['customer_key'].nunique()} different customers")
    return shown, len(ids), hits, per_ms
