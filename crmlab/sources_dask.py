"""Input tables read, validated and written by the workers of a Dask cluster, part by part (#18).

A table given as a folder of Parquet parts (``crmlab generate --partitions``) is read part by part on
the workers; a single file is one part. Nothing of the rows passes through the caller:

1. each part is read and the facts its id columns' type depends on come back (rows, columns, the
   numeric test of the first values): the id types are decided over all parts, as for the whole table;
2. each part is typed and checked on a worker (:func:`crmlab.sources.validate_table` with the decided
   id types, its rows numbered as in the whole table) and, when it has no problem, standardised and
   written as a part of the run's sources artifact;
3. keys are checked for duplicates across parts and foreign keys for orphans by hashing the key
   columns into buckets (every value of a key in one bucket; a bucket's pieces joined on a worker).

Problems come back as the local load names them (table, column, the table's file or folder, counts,
the first offending rows): parts' problems of one kind are summed, an empty required column or table
judged over all parts. The tables written are the local load's tables, row for row (tested).
``dask`` is imported by the caller (the client is given).
"""
from __future__ import annotations

import json
import shutil
from operator import getitem
from pathlib import Path

import numpy as np
import pandas as pd

from . import engine
from . import sources as S
from .encoding import member_of
from .errors import SourceError
from .events_dask import hash_buckets, split_rows

def _pack(e: SourceError) -> tuple:
    return (e.table, e.column, e.problem, e.rows, e.path, e.n_bad)


def _facts(path: str, table: str, kind: str, folder: str | None) -> dict:
    """Pass 1 on a worker: rows and the id columns' :func:`crmlab.sources.id_facts` of a part (of a
    Parquet part only its metadata and id columns are read); a part of ``folder`` that cannot be read
    is said as the local load says it of the folder."""
    wanted = [c.name for c in S.SCHEMAS[kind]["columns"] if c.kind == "id"]
    try:
        df, rows = _id_columns(path, wanted, folder)
    except S.SourcesInvalid as exc:
        return {"rows": 0, "ids": {}, "errors": [_pack(e) for e in exc.errors]}
    return {"rows": rows, "ids": {c: S.id_facts(df[c]) for c in wanted if c in df}, "errors": []}


def _id_columns(path: str, wanted: list, folder: str | None) -> tuple[pd.DataFrame, int]:
    """A part's ``wanted`` columns (those it has) and its rows: of a Parquet part from its metadata and
    those columns; anything else (or a part that cannot be read so) read as the local load reads it
    (a part of ``folder`` as a part of that table)."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq
        try:
            meta = pq.ParquetFile(path)
            have = [c for c in wanted if c in meta.schema_arrow.names]
            return pd.read_parquet(path, columns=have), meta.metadata.num_rows
        except (OSError, ValueError):
            pass                                        # the local load's message, below
    df = S.read_part(Path(path), Path(folder)) if folder is not None else S._read_file(Path(path))
    return df, len(df)


def _typed(path: str, table: str, kind: str, where: str, offset: int, ids: dict, as_of, out: str, keep: list) -> dict:
    """Pass 2 on a worker: the part typed and checked, its rows numbered from ``offset``; without a
    problem, finished as the local load finishes the whole table and written to ``out``. Only the
    ``keep`` columns (keys and foreign keys) stay in the worker's memory for the checks across parts."""
    df = S._read_file(Path(path))
    df.index = pd.RangeIndex(offset, offset + len(df))
    typed, errors = S.validate_table(df, table, kind, where, as_of, part={"ids": ids})
    if errors:                                      # typed as far as it goes: the key is still checked
        return {"typed": typed[[c for c in keep if c in typed]], "errors": [_pack(e) for e in errors], "out": None}
    if kind == "customers":
        typed = S._standardised(S._combined_customers({table: typed}, [table]))
    elif "source_id" in typed and table in ("orders", "contacts"):
        typed["source_id"] = typed["source_id"].astype("string")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    typed.to_parquet(out, index=False)
    return {"typed": typed[keep], "errors": [], "out": out, "offset": offset}


def _kept(t: "_Table") -> list:
    """The columns of a table the checks across parts read: its key and its foreign keys."""
    cols = list(S.SCHEMAS[t.kind]["key"])
    if t.kind == "customers":
        cols += ["source_system"]
    for child, fk, _, _ in S.FOREIGN_KEYS:
        if child == t.name:
            cols += [c for c in fk if c not in cols]
    return cols


def _errors(result: dict) -> list:
    return result["errors"]


def _split_keys(result: dict, cols: list, n: int, rename: list | None = None) -> list:
    """A typed part's key columns (and each row's number in the table) cut into ``n`` buckets."""
    typed = result["typed"]
    keys = typed[cols].astype("string").set_axis(rename or cols, axis=1).assign(_row=typed.index.to_numpy())
    return split_rows(keys, hash_buckets(keys, rename or cols, n), n)


def _duplicates(cols: list, *pieces) -> pd.DataFrame:
    keys = pd.concat(pieces, ignore_index=True)
    return keys[keys.duplicated(cols, keep=False)]


def _orphan_rows(cols: list, n_child: int, *pieces) -> np.ndarray:
    child = pd.concat(pieces[:n_child], ignore_index=True)
    parent = pd.concat(pieces[n_child:], ignore_index=True)
    orphan = S._orphans(child[cols], parent[cols]) & child[cols].notna().all(axis=1).to_numpy()
    return child["_row"].to_numpy()[orphan]


def _rows(df: pd.DataFrame, offset: int, rows) -> pd.DataFrame:
    """``rows`` (numbered as in the whole table) of a part whose first row is row ``offset``."""
    df.index = pd.RangeIndex(offset, offset + len(df))
    return df.loc[df.index.intersection(rows)]


def _take(result: dict, rows) -> pd.DataFrame:
    """Rows of a part as written (typed)."""
    return _rows(pd.read_parquet(result["out"]), result["offset"], rows)


def _raw_rows(path: str, offset: int, rows) -> pd.DataFrame:
    """Rows of a part as read (raw)."""
    return _rows(S._read_file(Path(path)), offset, rows)


def _unknown_systems(result: dict, systems: set) -> tuple:
    c = result["typed"]
    bad = ~c["source_system"].isin(systems)
    return int(bad.sum()), _take(result, c.index[bad][:5]) if bad.any() else None


class _Table:
    """One input table's parts on the cluster."""

    def __init__(self, name: str, path: Path, where: str | None = None):
        self.name, self.path = name, path
        self.where = where or str(path)                 # how problems name the table's place
        self.kind = "customers" if name.startswith("customers_") else name
        self.parts = S._parts(path) if path.is_dir() else [path]
        self.artifact = "customers" if self.kind == "customers" else name


def _merge(errors: list, total: int) -> list:
    """Parts' problems of one kind as one: counts summed, first rows kept; a required column missing in
    every row is 'entirely empty', as the whole table says."""
    merged = {}
    for table, column, problem, rows, path, n_bad in errors:
        key = (table, column, problem, path)
        if key not in merged:
            merged[key] = [rows, n_bad]
            continue
        had = merged[key]
        if rows is not None and len(rows) and (had[0] is None or len(had[0]) < 5):
            had[0] = rows if had[0] is None else pd.concat([had[0], rows]).head(5)
        had[1] = (had[1] or 0) + (n_bad or 0) if (had[1] or n_bad) else None
    out = []
    for (table, column, problem, path), (rows, n_bad) in merged.items():
        if problem == "missing values in a required field" and n_bad == total:
            out.append(SourceError(table, column, "column is entirely empty", path=path))
        else:
            out.append(SourceError(table, column, problem, rows, path, n_bad))
    return out


def load(client, folder, out, systems: list[str] | None = None, as_of=None,
         fingerprints: dict[str, str] | None = None, where: str | None = None,
         origin: dict[str, str] | None = None) -> S.Sources:
    """Read, validate and standardise the input tables of ``folder`` on ``client``'s workers and write
    them as the run's sources artifact ``out`` (a folder of parts per table and ``sources.json``);
    returns the :class:`~crmlab.sources.Sources` that reads them there. Raises
    :class:`~crmlab.sources.SourcesInvalid` as :func:`crmlab.sources.load` does (nothing written).
    ``where`` and ``origin`` (table -> text): how problems name the inputs' place and tables when the
    folder only stages them (:func:`stage_sql`); the tables then have no fingerprints, as locally."""
    folder, out = Path(folder), Path(out)
    files = S.only_systems(S.input_files(folder), systems, folder)
    errors: list[SourceError] = S.missing_tables(files, where or str(folder))
    cust_names = sorted(k for k in files if k.startswith("customers_"))
    order = [*cust_names, *(n for n in S.SCHEMAS if n in files and n != "customers")]
    tables = {n: _Table(n, files[n], (origin or {}).get(n)) for n in order}

    # pass 1: rows and id facts per part
    facts = {n: client.gather([client.submit(_facts, str(p), n, t.kind, str(t.path) if t.path.is_dir() else None,
                                             pure=False) for p in t.parts])
             for n, t in tables.items()}
    rows, offsets, ids = {}, {}, {}
    for n, t in tables.items():
        counts = [f["rows"] for f in facts[n]]
        rows[n] = sum(counts)
        offsets[n] = np.r_[0, np.cumsum(counts)[:-1]].astype(int).tolist()
        said = [SourceError(*e) for f in facts[n] for e in f["errors"]]
        errors += said[:1] if t.path.is_dir() else said     # the local load stops at a folder's first bad part
        id_cols = {c for f in facts[n] for c in f["ids"]}
        ids[n] = {c: S.id_numeric([f["ids"][c] for f in facts[n] if c in f["ids"]]) for c in id_cols}
    if errors:                                          # a part that cannot be read, a table missing
        raise S.SourcesInvalid(errors)

    # pass 2: typed, checked and written part by part
    shutil.rmtree(out, ignore_errors=True)
    results, broken = {}, set()
    for s_i, (n, t) in enumerate(tables.items()):
        results[n] = [client.submit(_typed, str(p), n, t.kind, t.where, offsets[n][k], ids[n], as_of,
                                    str(out / t.artifact / f"part-{s_i:03d}-{k:05d}.parquet"), _kept(t), pure=False)
                      for k, p in enumerate(t.parts)]
    try:
        for n, t in tables.items():
            found = _merge([e for part in client.gather([client.submit(_errors, r) for r in results[n]]) for e in part],
                           rows[n])
            if rows[n] == 0:
                found = [SourceError(n, None, "table is empty", path=t.where)]
            key = list(S.SCHEMAS[t.kind]["key"])
            if rows[n] and not any(e.column in key for e in found):
                found += _key_check(client, t, results[n], key, offsets[n])
            errors += found
            if found:
                broken.add(n)
        errors += _foreign_key_check(client, tables, results, broken, cust_names)
        if errors:
            raise S.SourcesInvalid(errors)
    except BaseException:
        client.cancel([r for rs in results.values() for r in rs])
        shutil.rmtree(out, ignore_errors=True)
        raise
    client.cancel([r for rs in results.values() for r in rs])
    known = fingerprints or {}
    prints = {} if origin else {n: known[n] if n in known else S.fingerprint(t.path) for n, t in tables.items()}
    origin = {n: t.where for n, t in tables.items()}
    counts = {"customers": sum(rows[n] for n in cust_names), **{n: rows[n] for n in order}}   # and per system
    names = ["customers", *(n for n in S.SCHEMAS if n != "customers" and n in tables)]
    meta = {"tables": names, "systems": [n[len("customers_"):] for n in cust_names], "origin": origin,
            "fingerprints": prints, "set_aside": {}, "counts": counts}
    (out / "sources.json").write_text(json.dumps(meta, indent=2))
    return S.Sources.read_artifacts(out)


def _buckets(parts: int) -> int:
    return max(1, min(64, parts))


#: most duplicate rows read back to show the first of them as the local load sorts them
_SHOWN_FROM = 100_000


def _key_check(client, t: _Table, results: list, key: list, offsets: list) -> list:
    """Duplicate keys across the parts of a table (the local message, count and first rows)."""
    n = _buckets(len(results))
    splits = [client.submit(_split_keys, r, key, n, pure=False) for r in results]
    dups = client.gather([client.submit(_duplicates, key, *[client.submit(getitem, s, b) for s in splits])
                          for b in range(n)])
    dup = np.sort(pd.concat(dups, ignore_index=True)["_row"].to_numpy())
    if not len(dup):
        return []
    raw = pd.concat(client.gather([client.submit(_raw_rows, str(p), off, dup[:_SHOWN_FROM], pure=False)
                                   for p, off in zip(t.parts, offsets)])).sort_index()
    return [SourceError(t.name, ", ".join(key), "duplicate key", raw.sort_values(key), t.where, len(dup))]


def _foreign_key_check(client, tables: dict, results: dict, broken: set, cust_names: list) -> list:
    """The local foreign-key checks (:data:`crmlab.sources.FOREIGN_KEYS`) by hash buckets over the parts."""
    errors = []
    systems = {n[len("customers_"):] for n in cust_names}
    for child, cols, parent, pcols in S.FOREIGN_KEYS:
        if child not in tables or child in broken:
            continue
        c_parts = results[child]
        path = tables[child].where
        if parent == "customers":
            if not cust_names or any(n in broken for n in cust_names):
                continue
            p_parts = [r for n in cust_names for r in results[n]]     # standardised: with source_system
            got = client.gather([client.submit(_unknown_systems, r, systems) for r in c_parts])
            n_bad = sum(g[0] for g in got)
            if n_bad:
                shown = pd.concat([g[1] for g in got if g[1] is not None]).head(5)
                errors.append(SourceError(child, "source_system", f"unknown source system (customer tables "
                                          f"present: {sorted(systems)})", shown, path, n_bad))
                continue
        elif parent not in tables or parent in broken:
            if parent not in tables:
                errors.append(SourceError(child, cols[0], f"refers to table '{parent}', which is missing", path=path))
            continue
        else:
            p_parts = results[parent]
        n = _buckets(max(len(c_parts), len(p_parts)))
        c_split = [client.submit(_split_keys, r, list(cols), n, pure=False) for r in c_parts]
        p_split = [client.submit(_split_keys, r, list(pcols), n, list(cols), pure=False) for r in p_parts]
        rows = client.gather([client.submit(_orphan_rows, list(cols), len(c_split),
                                            *[client.submit(getitem, s, b) for s in (*c_split, *p_split)])
                              for b in range(n)])
        orphan = np.sort(np.concatenate(rows)) if rows else np.array([], np.int64)
        if len(orphan):
            shown = pd.concat(client.gather([client.submit(_take, r, orphan[:5]) for r in c_parts]))
            errors.append(SourceError(child, ", ".join(cols), f"orphan foreign key: no matching {', '.join(pcols)} "
                                      f"in '{parent}'", shown.sort_index(), path, len(orphan)))
    return errors


def stage_sql(url: str, schema: str | None, systems: list[str] | None, out, chunk_rows: int) -> dict[str, str]:
    """The input tables of a SQL database written to ``out`` as folders of raw Parquet parts of
    ``chunk_rows`` rows, streamed (a server-side cursor: one part in memory at a time), in the order the
    local load reads them; returns how the local load names each table (its ``origin``)."""
    import sqlalchemy as sa

    out = Path(out)
    engine = sa.create_engine(url)
    try:
        wanted = S.only_systems({n: S.sql_origin(engine, n) for n in S.sql_tables(engine, schema)}, systems, url)
        for n in wanted:
            (out / n).mkdir(parents=True, exist_ok=True)
            k = 0
            with engine.connect().execution_options(stream_results=True) as conn:
                for chunk in pd.read_sql_table(n, conn, schema=schema, chunksize=chunk_rows):
                    if len(chunk) or not k:
                        chunk.to_parquet(out / n / f"part-{k:05d}.parquet", index=False)
                        k += 1
            if not k:                               # an empty table: its columns, no rows
                cols = [c["name"] for c in sa.inspect(engine).get_columns(n, schema=schema)]
                pd.DataFrame({c: pd.Series(dtype=object) for c in cols}).to_parquet(out / n / "part-00000.parquet")
    finally:
        engine.dispose()
    return wanted


def load_params(client, params: dict, out, fingerprints: dict[str, str] | None = None) -> S.Sources | None:
    """:func:`load` with the ``data`` section of a parameter dict (a SQL source streamed into parts
    first: :func:`stage_sql`); None where the workers cannot read the inputs themselves (contacts
    recorded by touchpoints join them): the caller then loads them locally (:func:`crmlab.sources.load_params`)."""
    d = params["data"]
    if not d["url"] and not d["dir"]:
        return None
    tp = S.touchpoints_url(params)
    if tp:
        contacts = S.read_touchpoint_contacts(tp)
        if (contacts is not None and len(contacts)) or S.read_provisional_persons(
                tp, params["publish"]["identity_schema"]) is not None:
            return None
    if not d["url"]:
        return load(client, d["dir"], out, d["systems"] or None, d["as_of"], fingerprints)
    staged = Path(out).with_name(Path(out).name + ".sql")
    shutil.rmtree(staged, ignore_errors=True)
    try:
        origin = stage_sql(d["url"], d["sql_schema"], d["systems"] or None, staged, params["engine"]["partition_rows"])
        return load(client, staged, out, None, d["as_of"], where=str(d["url"]), origin=origin)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


# ----------------------------------------------------------------------------- a sample for reports

#: buckets of the record hash that draws a sample (its resolution: one in a million)
_SAMPLE_BUCKETS = 1_000_003


def _records_in(path: str, share: float) -> pd.DataFrame:
    """The rows of a part whose customer record (source_system, source_id) is in the sample."""
    df = pd.read_parquet(path)
    return df[hash_buckets(df, ["source_system", "source_id"], _SAMPLE_BUCKETS) < share * _SAMPLE_BUCKETS]


def _lines_of(path: str, orders: pd.Index) -> pd.DataFrame:
    df = pd.read_parquet(path)
    return df[member_of(df["order_id"], orders)]


def record_sample(client, src: S.Sources, records: int) -> tuple[S.Sources, float]:
    """``src`` (read from Parquet parts) on about ``records`` customer records drawn by a hash of
    (source_system, source_id), with their orders, those orders' lines and their contacts, read and
    filtered by ``client``'s workers; products and campaigns whole. Row counts
    (:meth:`~crmlab.sources.Sources.row_counts`) stay the whole tables'. Returns the sample and the
    share of the records drawn (``src`` itself and 1.0 when it has no more records)."""
    parts = src.part_files()
    total = src.row_counts()["customers"]
    if parts is None or total <= records:
        return src, 1.0
    share = records / total

    def drawn(name):
        got = client.gather([client.submit(_records_in, str(p), share, pure=False) for p in parts[name]])
        return pd.concat(got, ignore_index=True)

    orders = drawn("orders")
    ids = engine.scatter(client, pd.Index(orders["order_id"]), broadcast=True)
    lines = pd.concat(client.gather([client.submit(_lines_of, str(p), ids, pure=False) for p in parts["order_lines"]]),
                      ignore_index=True)
    got = {"orders": orders, "order_lines": lines}
    tables = {n: got[n] if n in got else drawn(n) if n in ("customers", "contacts") else src[n] for n in src.tables}
    counts = {**src.counts, **src.row_counts()}
    return S.Sources(tables, src.systems, src.origin, src.fingerprints, src.set_aside, counts), share
