"""Input tables: documented schemas, reading (CSV, Parquet, SQL) and validation.

Tables (one file per table in a folder, named ``<table>.csv`` / ``.csv.gz`` / ``.parquet``, or a folder
``<table>/`` of Parquet parts read in name order, or one database table each):

=====================  ==========================================================================
``customers_<system>``  one per source system (store, web, callcentre, ...): ``source_id`` (key),
                        ``first_name``, ``last_name`` and optional ``dob``, ``email``, ``phone``,
                        ``address``, ``town``, ``postcode``, ``created_at``, ``*_opt_in``
``products``            ``product_id`` (key), ``product_name``, ``category``, ``department``,
                        ``list_price`` >= 0, optional ``sensitive``
``orders``              ``order_id`` (key), ``source_system``, ``source_id`` -> customers_<system>,
                        ``order_date``, optional ``channel``, ``ref_code``
``order_lines``         (``order_id`` -> orders, ``line_no``) key, ``product_id`` -> products,
                        ``quantity`` > 0, ``unit_price`` >= 0
``campaigns``           optional: ``campaign_id`` (key), ``name``, ``start_date``, optional
                        ``media``, ``window_days`` > 0
``contacts``            optional: ``contact_id`` (key), ``campaign_id`` -> campaigns,
                        ``source_system``, ``source_id`` -> customers_<system>, ``contact_date``,
                        optional ``medium``, ``ref_code``, ``group`` in {treatment, control}
=====================  ==========================================================================

Contacts that touchpoints recorded through the service (``POST /v1/contacts``, table
``touchpoint_contacts`` of the publish database) join ``contacts`` when ``data.touchpoint_contacts``
is on (:func:`read_touchpoint_contacts`), so the next run's measurement sees them.

:func:`load` reads every table, checks it against its schema (missing column, wrong type,
unparseable date, nulls in a required field, duplicate key, out-of-range value, empty table,
orphan foreign key) and raises :class:`SourcesInvalid` listing each problem with table, column,
file and a few offending rows. Raw inputs are never modified.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import CrmlabError, SourceError
from .standardise import standardise_customers


@dataclass(frozen=True)
class Col:
    name: str
    kind: str                    # str | id | date | int | float | bool
    required: bool = True        # the column must exist
    nullable: bool = False
    min: float | None = None     # inclusive lower bound
    min_exclusive: bool = False
    allowed: tuple | None = None
    max: float | None = None     # inclusive upper bound (numbers)
    past: bool = False           # dates: not after the as-of date


CUSTOMER_COLUMNS = (
    Col("source_id", "id"), Col("first_name", "str", nullable=True), Col("last_name", "str", nullable=True),
    Col("dob", "date", False, True, past=True), Col("email", "str", False, True), Col("phone", "str", False, True),
    Col("address", "str", False, True), Col("town", "str", False, True), Col("postcode", "str", False, True),
    Col("created_at", "date", False, True), Col("email_opt_in", "bool", False, True),
    Col("mail_opt_in", "bool", False, True), Col("sms_opt_in", "bool", False, True),
)

SCHEMAS: dict[str, dict] = {
    "customers": dict(columns=CUSTOMER_COLUMNS, key=("source_id",)),
    "products": dict(columns=(Col("product_id", "id"), Col("product_name", "str"), Col("category", "str"),
                              Col("department", "str"), Col("list_price", "float", min=0, max=1e9),
                              Col("sensitive", "bool", False, True)), key=("product_id",)),
    "orders": dict(columns=(Col("order_id", "id"), Col("source_system", "str"), Col("source_id", "id"),
                            Col("order_date", "date", past=True), Col("channel", "str", False, True),
                            Col("ref_code", "str", False, True)), key=("order_id",)),
    "order_lines": dict(columns=(Col("order_id", "id"), Col("line_no", "int", min=1), Col("product_id", "id"),
                                 Col("quantity", "float", min=0, min_exclusive=True, max=1e6),
                                 Col("unit_price", "float", min=0, max=1e9)), key=("order_id", "line_no")),
    "campaigns": dict(columns=(Col("campaign_id", "id"), Col("name", "str", False, True),
                               Col("start_date", "date"), Col("media", "str", False, True),
                               Col("window_days", "int", min=1)), key=("campaign_id",), optional=True),
    "contacts": dict(columns=(Col("contact_id", "id"), Col("campaign_id", "id"), Col("source_system", "str"),
                              Col("source_id", "id"), Col("contact_date", "date", past=True),
                              Col("medium", "str", False, True), Col("ref_code", "str", False, True),
                              Col("group", "str", allowed=("treatment", "control"))),
                     key=("contact_id",), optional=True),
}

#: (table, columns) -> (parent table, columns); ``customers`` means the customer table of the row's system
FOREIGN_KEYS = [
    ("orders", ("source_system", "source_id"), "customers", ("source_system", "source_id")),
    ("order_lines", ("order_id",), "orders", ("order_id",)),
    ("order_lines", ("product_id",), "products", ("product_id",)),
    ("contacts", ("campaign_id",), "campaigns", ("campaign_id",)),
    ("contacts", ("source_system", "source_id"), "customers", ("source_system", "source_id")),
]

_BOOL = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False,
         "t": True, "f": False, "y": True, "n": False}
_EXTS = (".parquet", ".csv", ".csv.gz")


class SourcesInvalid(CrmlabError):
    """One or more input tables failed validation; ``errors`` holds a SourceError per problem."""

    def __init__(self, errors: list[SourceError]):
        self.errors = errors
        head = f"{len(errors)} problem{'s' if len(errors) > 1 else ''} in the input tables:"
        super().__init__(head + "\n" + "\n".join(f"- {e}" for e in errors))


@dataclass
class Sources:
    """Validated, typed input tables with standardised person fields.

    ``tables`` maps table name to DataFrame; ``customers`` is all customer tables stacked with a
    ``source_system`` column and ``*_std`` columns; ``origin`` maps table name to file path or URL.
    """

    tables: dict[str, pd.DataFrame]
    systems: list[str]
    origin: dict[str, str] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    set_aside: dict[str, str] = field(default_factory=dict)       # rows left out on purpose, by table: why
    counts: dict[str, int] = field(default_factory=dict)          # rows per table when known without reading

    @property
    def customers(self) -> pd.DataFrame:
        return self.tables["customers"]

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.tables[name]

    def part_files(self) -> dict[str, list[Path]] | None:
        """Each table's Parquet files in table order when the tables are read from files (the run's
        sources artifact: a folder of parts or one file per table); None when they are held in memory."""
        if not isinstance(self.tables, _LazyTables):
            return None
        return {n: _parts(p) if p.is_dir() else [p] for n, p in self.tables._paths.items()}

    def pieces(self, name: str, columns: list[str]):
        """Table ``name``'s ``columns`` in table order, a file at a time when it is read from files and not
        held yet (a report that scans a large table in bounded memory); else the table, in one piece."""
        tables = self.tables
        if isinstance(tables, _LazyTables) and name not in tables._frames:
            import pyarrow.parquet as pq

            path = tables._paths[name]
            for part in (_parts(path) if path.is_dir() else [path]):
                yield pq.read_table(part, columns=columns).to_pandas()
        else:
            yield self.tables[name][columns]

    def row_counts(self) -> dict[str, int]:
        return {k: int(self.counts[k]) if k in self.counts else int(len(self.tables[k])) for k in self.tables}

    def write(self, folder: str | Path) -> dict[str, str]:
        """Write every table as Parquet into ``folder``; returns name -> path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out = {}
        for name, df in self.tables.items():
            path = folder / f"{name}.parquet"
            df.to_parquet(path, index=False)
            out[name] = str(path)
        meta = {"tables": list(self.tables), "systems": self.systems, "origin": self.origin,
                "fingerprints": self.fingerprints, "set_aside": self.set_aside}
        (folder / "sources.json").write_text(json.dumps(meta, indent=2))
        return out

    @classmethod
    def read_artifacts(cls, folder: str | Path) -> "Sources":
        """Read tables written by :meth:`write` (already validated; no checks repeated)."""
        folder = Path(folder)
        meta = json.loads((folder / "sources.json").read_text())
        tables = _LazyTables({name: folder / (name if _is_parts(folder / name) else f"{name}.parquet")
                              for name in meta["tables"]})
        return cls(tables, meta["systems"], meta["origin"], meta["fingerprints"], meta.get("set_aside", {}),
                   meta.get("counts", {}))


class _LazyTables(Mapping):
    """Tables read from their Parquet files on first use: a stage that needs the products does not
    read 12 million order lines (1M customers)."""

    def __init__(self, paths: dict[str, Path]):
        self._paths, self._frames = paths, {}

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in self._frames:                                    # KeyError for an unknown table
            path = self._paths[name]
            self._frames[name] = (pd.concat([pd.read_parquet(p) for p in _parts(path)], ignore_index=True)
                                  if path.is_dir() else pd.read_parquet(path))
        return self._frames[name]

    def __iter__(self):
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


# ----------------------------------------------------------------------------- reading

def _file_for(folder: Path, name: str) -> Path | None:
    for ext in _EXTS:
        p = folder / f"{name}{ext}"
        if p.exists():
            return p
    p = folder / name
    return p if _is_parts(p) else None


def _is_parts(path: Path) -> bool:
    """A folder of Parquet part files (a partitioned table, e.g. ``crmlab generate --partitions``)."""
    return path.is_dir() and any(path.glob("*.parquet"))


def _parts(path: Path) -> list[Path]:
    return sorted(path.glob("*.parquet"))


def read_part(part: Path, folder: Path) -> pd.DataFrame:
    """One Parquet part of the partitioned table ``folder``; one that cannot be read is a problem of the
    folder's table."""
    try:
        return pd.read_parquet(part)
    except (OSError, ValueError) as exc:
        raise SourcesInvalid([SourceError(folder.name, None, f"a part cannot be read: {str(exc).splitlines()[0]}",
                                          path=str(folder))]) from None


def _read_file(path: Path) -> pd.DataFrame:
    table = path.name.split(".")[0]
    if path.is_dir():                              # partitioned: its parts in name order, one table
        return pd.concat([read_part(p, path) for p in _parts(path)], ignore_index=True)
    if path.stat().st_size == 0:
        raise SourcesInvalid([SourceError(table, None, "the file is empty (0 bytes): expected a header row and "
                                          "data", path=str(path))])
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        # everything as text: typing happens in validation, so errors can name the bad values
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], skipinitialspace=False,
                           encoding="utf-8")
    except UnicodeDecodeError as exc:
        byte, where = exc.object[exc.start], ""
        if path.suffix == ".csv":                 # pandas' offsets are per chunk: find the byte in the file
            data = path.read_bytes()
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as whole:
                line = data.count(b"\n", 0, whole.start) + 1
                byte, where = data[whole.start], f" on line {line}"
        raise SourcesInvalid([SourceError(table, None, f"not UTF-8 text: byte 0x{byte:02x}{where}; "
                                          "save the file as UTF-8", path=str(path))]) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError) as exc:
        raise SourcesInvalid([SourceError(table, None, f"cannot be read: {str(exc).splitlines()[0]}",
                                          path=str(path))]) from None


def fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes, or of a partitioned table's part names and bytes (first 16 hex digits)."""
    h = hashlib.sha256()
    path = Path(path)
    folder = path.is_dir()
    for part in (_parts(path) if folder else [path]):
        if folder:
            h.update(part.name.encode() + b"\0")
        with open(part, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def input_files(folder: str | Path) -> dict[str, Path]:
    """The input files of a data folder, by table name (what :func:`read_raw` reads), without reading them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CrmlabError(f"data folder not found: {folder}")
    out = {}
    for name in SCHEMAS:
        if name != "customers" and (p := _file_for(folder, name)) is not None:
            out[name] = p
    for p in sorted(folder.iterdir()):
        if p.name.startswith("customers_") and (any(p.name.endswith(e) for e in _EXTS) or _is_parts(p)):
            out[p.name.split(".")[0]] = p
    return out


def read_raw(folder: str | Path | None = None, url: str | None = None, schema: str | None = None,
             systems: list[str] | None = None) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """Read the raw tables from a folder or a SQLAlchemy URL, untyped; returns (tables, origin)."""
    tables, origin = {}, {}
    if url:
        import sqlalchemy as sa
        engine = sa.create_engine(url)
        try:
            for n in sql_tables(engine, schema):
                with engine.connect() as conn:
                    tables[n] = pd.read_sql_table(n, conn, schema=schema)
                origin[n] = sql_origin(engine, n)
        finally:
            engine.dispose()
    else:
        for name, p in input_files(folder).items():
            tables[name], origin[name] = _read_file(p), str(p)
    return only_systems(tables, systems, url or folder), origin


def sql_tables(engine, schema: str | None) -> list[str]:
    """The input tables a database holds (SQLAlchemy ``engine``), as :func:`read_raw` reads them."""
    import sqlalchemy as sa

    return [n for n in sa.inspect(engine).get_table_names(schema=schema) if n in SCHEMAS or n.startswith("customers_")]


def sql_origin(engine, name: str) -> str:
    """How a database table is named as a table's origin (the URL without its password)."""
    return f"{engine.url.render_as_string(hide_password=True)} table {name}"


def only_systems(tables: dict, systems: list[str] | None, where) -> dict:
    """``tables`` (by name) without the customer tables of systems not in ``systems`` (all when None);
    a listed system without its table is an error naming ``where``."""
    if not systems:
        return tables
    for s in systems:
        if f"customers_{s}" not in tables:
            raise SourceError(f"customers_{s}", None, f"table not found in {where} (listed in data.systems)")
    return {k: v for k, v in tables.items() if not k.startswith("customers_") or k[len("customers_"):] in systems}


def missing_tables(names, where) -> list[SourceError]:
    """The problems of a set of table ``names`` read from ``where``: no customer table, a required table
    missing."""
    errors = []
    if not any(n.startswith("customers_") for n in names):
        errors.append(SourceError("customers_<system>", None, "no customer table found (expected at least "
                                  "one file or table named customers_<system>)", path=where or None))
    for name, spec in SCHEMAS.items():
        if name != "customers" and name not in names and not spec.get("optional"):
            errors.append(SourceError(name, None, "required table not found", path=where or None))
    return errors


# ----------------------------------------------------------------------------- validation

def id_facts(raw: pd.Series) -> dict:
    """What :func:`_coerce` decides an id column's type from, for one part of a table: whether it is
    stored as signed integers, the numeric test of its first 1,000 present values as text, and whether
    every present value is a whole number without a leading zero (:func:`id_numeric` combines parts)."""
    present = raw.notna()
    n = int(present.sum())
    if pd.api.types.is_signed_integer_dtype(raw):          # whole numbers as stored: nothing to parse
        return {"int": True, "present": n, "head": np.ones(min(n, 1000), bool), "whole": True}
    s = raw[present].astype("string")
    head = pd.to_numeric(s.head(1000), errors="coerce").notna().to_numpy()
    whole = False
    if head.all():                                         # a text value among the first: text, unparsed
        num = pd.to_numeric(s, errors="coerce")
        whole = bool(num.notna().all() and (num % 1 == 0).all() and not s.str.match(r"^0\d").any())
    return {"int": False, "present": n, "head": head, "whole": whole}


def id_numeric(parts: list[dict]) -> bool:
    """The type :func:`_coerce` gives an id column of the parts laid end to end (their :func:`id_facts`):
    True for whole numbers (Int64), False for text."""
    if not any(f["present"] for f in parts):
        return False
    if all(f["int"] for f in parts):
        return True
    head = np.concatenate([f["head"] for f in parts])[:1000]
    return bool(head.all() and all(f["whole"] for f in parts))


def _coerce(df: pd.DataFrame, col: Col, table: str, path: str | None, errors: list,
            numeric: bool | None = None) -> pd.Series | None:
    raw = df[col.name]
    present = raw.notna()
    if col.kind == "id" and numeric is not None:            # decided over every part of the table
        if numeric and pd.api.types.is_signed_integer_dtype(raw):
            return raw.astype("Int64")
        s = raw.astype("string")
        return pd.to_numeric(s, errors="coerce").astype("Int64") if numeric else s.str.strip()
    if col.kind in ("str", "id"):
        if col.kind == "id" and pd.api.types.is_signed_integer_dtype(raw) and present.any():
            return raw.astype("Int64")                       # what the text path gives for whole numbers
        s = raw.astype("string")
        if col.kind == "id":
            head = s[present].head(1000)                     # one text value among them: not numeric ids,
            if pd.to_numeric(head, errors="coerce").isna().any():   # without parsing every row (15 s at 1M)
                return s.str.strip()
            num = pd.to_numeric(s, errors="coerce")
            if s.notna().any() and num[present].notna().all() and (num[present] % 1 == 0).all() \
                    and not s[present].str.match(r"^0\d").any():
                return num.astype("Int64")
        return s.str.strip()
    if col.kind == "date":
        if pd.api.types.is_datetime64_any_dtype(raw):
            return raw.astype("datetime64[s]") if getattr(raw.dt, "tz", None) is None else raw.dt.tz_convert(None)
        parsed = pd.to_datetime(raw.astype("string"), errors="coerce", format="ISO8601")
        bad = present & parsed.isna()
        if bad.any():
            errors.append(SourceError(table, col.name, "unparseable date (expected ISO 8601, e.g. 2025-03-31)",
                                      df.loc[bad, [col.name]], path, int(bad.sum())))
            return None
        return parsed.astype("datetime64[s]")
    if col.kind in ("int", "float"):
        if pd.api.types.is_bool_dtype(raw):
            parsed = pd.Series(np.nan, index=raw.index)
        else:
            parsed = pd.to_numeric(raw, errors="coerce")
        bad = present & parsed.isna()
        if bad.any():
            errors.append(SourceError(table, col.name, f"not a number (expected {col.kind})",
                                      df.loc[bad, [col.name]], path, int(bad.sum())))
            return None
        inf = parsed.notna() & ~np.isfinite(parsed.astype("float64"))
        if inf.any():
            errors.append(SourceError(table, col.name, "not a finite number (inf)", df.loc[inf, [col.name]],
                                      path, int(inf.sum())))
            return None
        if col.kind == "int":
            frac = parsed.notna() & (parsed % 1 != 0)
            if frac.any():
                errors.append(SourceError(table, col.name, "not a whole number", df.loc[frac, [col.name]],
                                          path, int(frac.sum())))
                return None
            return parsed.astype("Int64")
        return parsed.astype("float64")
    if col.kind == "bool":
        if pd.api.types.is_bool_dtype(raw):
            return raw.astype("boolean")
        parsed = raw.astype("string").str.strip().str.lower().map(_BOOL, na_action="ignore")
        bad = present & parsed.isna()
        if bad.any():
            errors.append(SourceError(table, col.name, "not a boolean (true/false, yes/no, 1/0)",
                                      df.loc[bad, [col.name]], path, int(bad.sum())))
            return None
        return parsed.astype("boolean")
    raise ValueError(col.kind)


def validate_table(df: pd.DataFrame, table: str, kind: str, path: str | None = None,
                   as_of=None, part: dict | None = None) -> tuple[pd.DataFrame, list]:
    """Type and check one table against ``SCHEMAS[kind]``; returns (typed frame, errors).

    Dates of events (orders, contacts) and birth dates may not lie after ``as_of`` (default: today);
    birth dates may not lie more than 120 years before it. ``part``: ``df`` is one part of the table
    (:mod:`crmlab.sources_dask`): ``{"ids": {column: numeric}}`` the id types decided over all parts;
    an empty part, a column empty in this part and the key are then the caller's to judge (an empty
    required column is reported as missing values)."""
    as_of = pd.Timestamp(as_of if as_of is not None else pd.Timestamp.now().normalize())
    spec = SCHEMAS[kind]
    errors: list[SourceError] = []
    if len(df) == 0:
        return df, [] if part is not None else [SourceError(table, None, "table is empty", path=path)]
    missing = [c.name for c in spec["columns"] if c.required and c.name not in df.columns]
    for m in missing:
        close = [c for c in df.columns if c.lower().replace(" ", "_") == m]
        hint = f" (found '{close[0]}': names are case-sensitive)" if close else ""
        errors.append(SourceError(table, m, f"required column is missing{hint}; columns present: "
                                  f"{', '.join(map(str, df.columns))}", path=path))
    if missing:
        return df, errors
    out = df.copy()
    for col in spec["columns"]:
        if col.name not in df.columns:
            continue
        typed = _coerce(df, col, table, path, errors, None if part is None else part["ids"].get(col.name))
        if typed is None:
            continue
        out[col.name] = typed
        if not col.nullable:
            nul = typed.isna()
            if nul.all() and part is None:
                errors.append(SourceError(table, col.name, "column is entirely empty", path=path))
                continue
            if nul.any():
                errors.append(SourceError(table, col.name, "missing values in a required field",
                                          df.loc[nul], path, int(nul.sum())))
            elif str(typed.dtype) in ("Int64", "boolean"):
                out[col.name] = typed.astype("int64" if typed.dtype == "Int64" else bool)
        if col.min is not None:
            below = (typed <= col.min) if col.min_exclusive else (typed < col.min)
            below = below.fillna(False).astype(bool)
            if below.any():
                rel = ">" if col.min_exclusive else ">="
                what = ("negative value" if not col.min_exclusive else "negative or zero value") \
                    if col.min == 0 else "value out of range"
                errors.append(SourceError(table, col.name, f"{what} (must be {rel} {col.min:g})",
                                          df.loc[below], path, int(below.sum())))
        if col.max is not None:
            above = (typed > col.max).fillna(False).astype(bool)
            if above.any():
                errors.append(SourceError(table, col.name, f"implausibly large value (must be <= {col.max:g})",
                                          df.loc[above], path, int(above.sum())))
        if col.past:
            late = (typed > as_of + pd.Timedelta(days=1)).fillna(False).astype(bool)
            if late.any():
                errors.append(SourceError(table, col.name, f"date after the as-of date {as_of:%Y-%m-%d} "
                                          "(data.as_of; default today)", df.loc[late], path, int(late.sum())))
            if col.name == "dob":
                old = (typed < as_of - pd.DateOffset(years=120)).fillna(False).astype(bool)
                if old.any():
                    errors.append(SourceError(table, col.name, "birth date more than 120 years before the as-of "
                                              "date", df.loc[old], path, int(old.sum())))
        if col.allowed is not None:
            bad = typed.notna() & ~typed.isin(col.allowed)
            if bad.any():
                errors.append(SourceError(table, col.name, f"value not in {list(col.allowed)}",
                                          df.loc[bad, [col.name]], path, int(bad.sum())))
    key = list(spec["key"])
    if part is None and not any(e.column in key for e in errors):
        dup = out.duplicated(key, keep=False)
        if dup.any():
            errors.append(SourceError(table, ", ".join(key), "duplicate key",
                                      df.loc[dup].sort_values(key), path, int(dup.sum())))
    return out, errors


def _orphans(left: pd.DataFrame, right: pd.DataFrame) -> np.ndarray:
    """Rows of ``left`` whose key (its columns, compared as text) is no row of ``right``: each column's
    values of both sides coded together, the codes combined into one integer key, looked up by hash
    (a merge with indicator took 8 s for the foreign keys of 1M customers' 12M order lines)."""
    key_l = np.zeros(len(left), np.int64)
    key_r = np.zeros(len(right), np.int64)
    span = 1.0
    for a, b in zip(left.columns, right.columns):
        lv, rv = left[a], right[b]
        if lv.dtype != rv.dtype:                          # as text, as the contract compares them
            lv, rv = lv.astype("string"), rv.astype("string")
        codes, uniq = pd.factorize(pd.concat([lv, rv], ignore_index=True), use_na_sentinel=True)
        codes = codes.astype(np.int64) + 1                # missing: 0
        span *= len(uniq) + 1
        if span > 2.0 ** 62:                              # keys too wide for one integer: the merge
            m = left.astype("string").merge(right.astype("string").set_axis(list(left.columns), axis=1)
                                            .drop_duplicates(), how="left", indicator=True)
            return (m["_merge"] == "left_only").to_numpy()
        key_l = key_l * (len(uniq) + 1) + codes[:len(lv)]
        key_r = key_r * (len(uniq) + 1) + codes[len(lv):]
    if span <= 2.0 ** 28:                                 # dense codes: a presence table, no hashing
        known = np.zeros(int(span), bool)
        known[key_r] = True
        return ~known[key_l]
    return pd.Index(np.unique(key_r)).get_indexer(key_l) < 0


def _check_foreign_keys(tables: dict, origin: dict, broken: set, errors: list) -> None:
    for child, cols, parent, pcols in FOREIGN_KEYS:
        if child not in tables or child in broken:
            continue
        c = tables[child]
        if parent == "customers":
            if "customers" not in tables:                      # a customer table is itself invalid
                continue
            known = tables["customers"][["source_system", "source_id"]]
            systems = set(known["source_system"].unique())
            bad_sys = ~c["source_system"].isin(systems)
            if bad_sys.any():
                errors.append(SourceError(child, "source_system", f"unknown source system (customer tables "
                                          f"present: {sorted(systems)})", c.loc[bad_sys],
                                          origin.get(child), int(bad_sys.sum())))
                continue
        elif parent not in tables or parent in broken:
            if parent not in tables:
                errors.append(SourceError(child, cols[0], f"refers to table '{parent}', which is missing",
                                          path=origin.get(child)))
            continue
        else:
            known = tables[parent][list(pcols)]
        orphan = _orphans(c[list(cols)], known) & c[list(cols)].notna().all(axis=1).to_numpy()
        if orphan.any():
            errors.append(SourceError(child, ", ".join(cols), f"orphan foreign key: no matching "
                                      f"{', '.join(pcols)} in '{parent}'", c.loc[orphan],
                                      origin.get(child), int(orphan.sum())))


def validate(raw: dict[str, pd.DataFrame], origin: dict[str, str] | None = None, where: str = "",
             as_of=None) -> Sources:
    """Validate raw tables; returns :class:`Sources` or raises :class:`SourcesInvalid`.

    ``where`` (folder or URL) is named in messages about missing tables.
    """
    origin = origin or {}
    errors = missing_tables(raw, where)
    typed, broken = {}, set()
    cust_names = sorted(k for k in raw if k.startswith("customers_"))
    for name in [*cust_names, *(n for n in SCHEMAS if n in raw and n != "customers")]:
        kind = "customers" if name.startswith("customers_") else name
        df, errs = validate_table(raw[name], name, kind, origin.get(name), as_of)
        typed[name] = df
        if errs:
            broken.add(name)
            errors += errs
    if cust_names and not any(n in broken for n in cust_names):
        typed["customers"] = _combined_customers(typed, cust_names)
    _check_foreign_keys(typed, origin, broken, errors)
    if errors:
        raise SourcesInvalid(errors)
    customers = _standardised(typed["customers"])
    tables = {"customers": customers}
    for n in SCHEMAS:
        if n != "customers" and n in typed:
            tables[n] = typed[n]
    for n in ("orders", "contacts"):
        if n in tables:
            tables[n]["source_id"] = tables[n]["source_id"].astype("string")
    systems = [n[len("customers_"):] for n in cust_names]
    return Sources(tables, systems, dict(origin))


def _combined_customers(typed: dict, cust_names: list[str]) -> pd.DataFrame:
    parts = [typed[n].assign(source_system=n[len("customers_"):]) for n in cust_names]
    customers = pd.concat(parts, ignore_index=True)
    customers["source_id"] = customers["source_id"].astype("string")
    return customers[["source_system", *(c for c in customers if c != "source_system")]]


def _standardised(customers: pd.DataFrame) -> pd.DataFrame:
    customers = standardise_customers(customers)
    customers["source_system"] = customers["source_system"].astype("string")
    return customers


def load_customers(folder: str | Path, systems: list[str] | None = None) -> pd.DataFrame:
    """The customer records alone: every ``customers_<system>`` table of ``folder`` (or those of
    ``systems``), validated and standardised as :func:`load` makes ``Sources.customers``, without
    reading the other tables (record matching on its own: orders and lines are most of a world)."""
    files = {n: p for n, p in input_files(folder).items() if n.startswith("customers_")
             and (not systems or n[len("customers_"):] in systems)}
    missing = [s for s in systems or [] if f"customers_{s}" not in files]
    if missing or not files:
        raise SourcesInvalid([SourceError(f"customers_{missing[0]}" if missing else "customers_<system>", None,
                                          "table not found" if missing else "no customer table found (expected "
                                          "at least one file named customers_<system>)", path=str(folder))])
    typed, errors = {}, []
    for name, p in sorted(files.items()):
        typed[name], errs = validate_table(_read_file(p), name, "customers", str(p))
        errors += errs
    if errors:
        raise SourcesInvalid(errors)
    return _standardised(_combined_customers(typed, sorted(files)))


def load(folder: str | Path | None = None, url: str | None = None, schema: str | None = None,
         systems: list[str] | None = None, as_of=None, fingerprints: dict[str, str] | None = None,
         touchpoints_url: str | None = None, identity_schema: str | None = "crmlab_identity") -> Sources:
    """Read, validate and standardise all input tables (see module docstring).

    ``fingerprints``: the files' :func:`fingerprint` by table name when the caller has them already
    (a run hashes its inputs before loading, to look for a reusable load); else computed here.
    ``touchpoints_url``: the publish database whose ``touchpoint_contacts`` join ``contacts`` and
    whose provisional persons (in ``identity_schema``) become the customers of system ``touchpoint``."""
    raw, origin = read_raw(folder, url, schema, systems)
    prints = {}
    if folder and not url:
        known = fingerprints or {}
        prints = {k: known[k] if k in known else fingerprint(v) for k, v in origin.items()}
    persons = read_provisional_persons(touchpoints_url, identity_schema) if touchpoints_url else None
    if persons is not None:
        name = f"customers_{PROVISIONAL_SYSTEM}"
        raw[name] = persons
        origin[name] = f"{_mask(touchpoints_url)} table {PROVISIONAL_TABLE} (persons identified at touchpoints)"
        prints[name] = (fingerprints or {}).get(name) or touchpoint_digest(persons)
    tp = read_touchpoint_contacts(touchpoints_url) if touchpoints_url else None
    files, aside = dict(origin), {}
    if tp is not None and len(tp):
        # the digest of every recorded contact, as the run's input digests have it (pipeline._input_digests)
        prints[TOUCHPOINT_CONTACTS] = (fingerprints or {}).get(TOUCHPOINT_CONTACTS) or touchpoint_digest(tp)
        tp, why = _known_only(tp, raw)
        if why:
            aside[TOUCHPOINT_CONTACTS] = why
    if tp is not None and len(tp):
        raw["contacts"] = pd.concat([raw["contacts"].astype("string"), tp], ignore_index=True) \
            if "contacts" in raw else tp
        where = f"{_mask(touchpoints_url)} table {TOUCHPOINT_CONTACTS}"
        origin["contacts"] = f"{origin['contacts']} + {where} (ids 'tp:...')" if "contacts" in origin else where
        files[TOUCHPOINT_CONTACTS] = where
    src = validate(raw, origin, str(url or folder), as_of)      # problems name both places
    src.origin, src.fingerprints, src.set_aside = files, prints, aside
    return src


def load_params(params: dict, fingerprints: dict[str, str] | None = None) -> Sources:
    """:func:`load` with the ``data`` section of a parameter dict (and, with
    ``data.touchpoint_contacts``, the contacts touchpoints recorded in the publish database)."""
    d = params["data"]
    return load(d["dir"], d["url"], d["sql_schema"], d["systems"] or None, d["as_of"], fingerprints,
                touchpoints_url(params), params["publish"]["identity_schema"])


# ----------------------------------------------------------------------------- touchpoint contacts

TOUCHPOINT_CONTACTS = "touchpoint_contacts"
#: touchpoint outcomes that are contacts (a bounced message never reached the customer)
DELIVERED = ("contacted", "responded", "declined")


def touchpoints_url(params: dict) -> str | None:
    """The publish database the service records contacts in, when ``data.touchpoint_contacts`` is on."""
    if not params["data"].get("touchpoint_contacts"):
        return None
    pub = params["publish"]
    return pub["url"] or f"sqlite:///{Path(pub['dir']).resolve() / 'crmlab.sqlite'}"


def _mask(url: str) -> str:
    import sqlalchemy as sa

    return sa.engine.make_url(url).render_as_string(hide_password=True)


def read_touchpoint_contacts(url: str) -> pd.DataFrame | None:
    """Contacts recorded by touchpoints (:mod:`crmlab.service`) in the ``contacts`` input's shape:
    ``contact_id`` prefixed ``tp:`` (never mixed up with the batch's ids), ``contact_date`` the
    UTC date of ``occurred_at``, the touchpoint channel as ``medium``; bounced ones left out (the
    customer was never reached). Responses are not taken from the touchpoint's word: measurement
    finds them in the orders, as for every contact. None when there is no database or table yet."""
    import sqlalchemy as sa

    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        return None                                              # nothing published here yet
    eng = sa.create_engine(url)
    try:
        if not sa.inspect(eng).has_table(TOUCHPOINT_CONTACTS):
            return None
        with eng.connect() as conn:
            df = pd.read_sql_query(sa.text(
                f"SELECT contact_id, campaign_id, source_system, source_id, channel, ref_code, contact_group, "
                f"occurred_at, outcome FROM {TOUCHPOINT_CONTACTS} ORDER BY contact_id"), conn)
    except sa.exc.SQLAlchemyError as exc:
        raise SourceError(TOUCHPOINT_CONTACTS, None, f"cannot be read from {_mask(url)}: "
                                                     f"{type(exc).__name__}") from None
    finally:
        eng.dispose()
    df = df[df["outcome"].isin(DELIVERED)]
    when = pd.to_datetime(df["occurred_at"], utc=True, format="ISO8601", errors="coerce")
    out = pd.DataFrame({"contact_id": "tp:" + df["contact_id"].astype(str), "campaign_id": df["campaign_id"],
                        "source_system": df["source_system"], "source_id": df["source_id"],
                        "contact_date": when.dt.strftime("%Y-%m-%d"), "medium": df["channel"],
                        "ref_code": df["ref_code"], "group": df["contact_group"]})
    return out.astype("string").reset_index(drop=True)


#: persons identified at a touchpoint without a known record (crmlab.identity_index), in the publish
#: database's identity schema; the next run reads them as customers of this source system
PROVISIONAL_TABLE = "identity_provisional"
PROVISIONAL_SYSTEM = "touchpoint"
#: person fields a touchpoint may give (raw, as typed); standardised like every customer table
PERSON_FIELDS = ("first_name", "last_name", "dob", "email", "phone", "address", "town", "postcode")


def read_provisional_persons(url: str, schema: str | None = "crmlab_identity") -> pd.DataFrame | None:
    """The persons touchpoints identified but no known record matched (:mod:`crmlab.identity_index`),
    as the ``customers_touchpoint`` source table: raw fields, ``source_id`` the provisional key,
    ``created_at`` its date. None when there are none."""
    import sqlalchemy as sa

    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        return None
    eng = sa.create_engine(url)
    try:
        pg = eng.dialect.name == "postgresql"
        sch = schema if pg and schema else None
        if not sa.inspect(eng).has_table(PROVISIONAL_TABLE, schema=sch):
            return None
        q = eng.dialect.identifier_preparer.quote
        name = f"{q(sch)}.{q(PROVISIONAL_TABLE)}" if sch else q(PROVISIONAL_TABLE)
        with eng.connect() as conn:
            df = pd.read_sql_query(sa.text(
                f"SELECT provisional_key, created_at, {', '.join('raw_' + f for f in PERSON_FIELDS)} FROM {name} "
                "ORDER BY provisional_key"), conn)
    except sa.exc.SQLAlchemyError as exc:
        raise SourceError(PROVISIONAL_TABLE, None, f"cannot be read from {_mask(url)}: {type(exc).__name__}") from None
    finally:
        eng.dispose()
    if df.empty:
        return None
    out = df.rename(columns={f"raw_{f}": f for f in PERSON_FIELDS}).rename(columns={"provisional_key": "source_id"})
    out["created_at"] = pd.to_datetime(out["created_at"], utc=True, format="ISO8601").dt.strftime("%Y-%m-%d")
    return out[["source_id", *PERSON_FIELDS, "created_at"]].astype("string")


def _known_only(tp: pd.DataFrame, raw: dict) -> tuple[pd.DataFrame, str | None]:
    """Touchpoint contacts whose campaign and customer record are in the inputs; the others wait for
    a later run (a touchpoint may record a sign-up before its system's export has it), said, not fatal."""
    def ids(s):
        return set(s.dropna().astype(str).str.strip())

    campaigns = ids(raw["campaigns"]["campaign_id"]) if "campaigns" in raw else set()
    known_c = tp["campaign_id"].isin(campaigns).to_numpy()
    known_p = np.zeros(len(tp), bool)
    for system in tp["source_system"].dropna().unique():
        table = raw.get(f"customers_{system}")
        if table is not None and "source_id" in table:
            rows = (tp["source_system"] == system).to_numpy()
            known_p[rows] = tp.loc[rows, "source_id"].isin(ids(table["source_id"])).to_numpy()
    ok = known_c & known_p
    if ok.all():
        return tp, None
    return tp[ok].reset_index(drop=True), (
        f"{int((~ok).sum()):,} recorded contacts left for a later run: campaign not in the inputs "
        f"({int((~known_c).sum()):,}), customer record not in the inputs ({int((~known_p).sum()):,})")


def touchpoint_digest(df: pd.DataFrame) -> str:
    """A fingerprint of the touchpoint contacts (a run whose inputs include new ones is not reused)."""
    return hashlib.sha256(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes()).hexdigest()[:16]
