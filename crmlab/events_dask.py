"""Customer events split by customer over a Dask cluster, for features computed per partition.

Every per-customer computation over :class:`~crmlab.events.CustomerEvents` (features at a cut-off,
above all) can run on a part of the customers: :class:`PartitionedEvents` puts each customer's orders,
lines, contacts and profile row in one partition (a hash of the key picks it, the same for every
table), each table in its input order, and keeps the parts on the workers. Per-customer sums then add
the same rows in the same order as on the whole table, so the features are the local ones bit for bit,
in the local row order once the parts are put back together by customer key.

Where the sources were read by the workers, the events are built there too (:func:`build`: the key
map joined to the source records, lines to their orders, responses to the contacts, in hash buckets,
then cut by customer) and written as parts; the stages get :class:`PartedEvents`, whose order lines
stay on the workers. Otherwise the stage's process splits its events and sends the parts. ``dask`` is
imported by the caller (the client is given).
"""
from __future__ import annotations

import math
import shutil
from operator import getitem
from pathlib import Path

import numpy as np
import pandas as pd

from . import engine
from .errors import CrmlabError
from .feature_rows import FeatureRows
from .events import (ARTIFACTS, ORDER_COLUMNS, ROW, CustomerEvents, keyed_lines, present, profile_of, read_parts,
                     ref_code_hits, window_hits, with_responses, with_window_end)


def part_of(keys, n: int) -> np.ndarray:
    """Partition of each customer key: a hash of the key's text, the same in every table."""
    return (pd.util.hash_array(np.asarray(keys, dtype=object)) % np.uint64(n)).astype(np.int64)


def hash_buckets(df: pd.DataFrame, cols: list, n: int) -> np.ndarray:
    """Bucket of each row: a hash of its key columns as text (equal keys, whatever their dtypes, meet)."""
    h = np.zeros(len(df), np.uint64)
    for c in cols:
        h = h * np.uint64(1_000_003) + pd.util.hash_array(df[c].astype("string").to_numpy(dtype=object))
    return (h % np.uint64(n)).astype(np.int64)


def split_rows(df: pd.DataFrame, part: np.ndarray, n: int) -> list[pd.DataFrame]:
    """``df``'s rows by ``part`` (0..n-1), each list entry in input order."""
    order = np.argsort(part, kind="stable")                 # stable: each part keeps the input order
    bounds = np.searchsorted(part[order], np.arange(n + 1))
    return [df.iloc[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]


def split(ev: CustomerEvents, n: int) -> list[CustomerEvents]:
    """``ev`` as ``n`` events objects over disjoint sets of customers (every table's rows of a customer
    in one of them, in input order)."""
    orders = split_rows(ev.orders, part_of(ev.orders["customer_key"], n), n)
    lines = split_rows(ev.lines, part_of(ev.lines["customer_key"], n), n)
    contacts = (split_rows(ev.contacts, part_of(ev.contacts["customer_key"], n), n) if ev.contacts is not None
                else [None] * n)
    profile = split_rows(ev.profile, part_of(ev.profile.index, n), n)
    return [CustomerEvents(o, ln, c, p) for o, ln, c, p in zip(orders, lines, contacts, profile)]


def _transform(ev: CustomerEvents, builder, cutoff) -> pd.DataFrame | None:
    return builder.transform(ev, cutoff) if (ev.orders["order_date"] < pd.Timestamp(cutoff)).any() else None


class PartitionedEvents:
    """``ev`` split by customer into parts of about ``partition_rows`` order lines, held by the workers
    of ``client``; :meth:`features` computes :meth:`FeatureBuilder.transform` on every part. With
    ``folder`` (a run's artifacts holding the events as parts, :func:`build`) the workers read the parts
    there: nothing is split or sent by the caller."""

    def __init__(self, client, ev: CustomerEvents, partition_rows: int, folder=None):
        self.client, self.events, self.folder = client, ev, folder
        if folder is None:
            self.n = parts_for(max(len(ev.lines), len(ev.orders)), partition_rows)
        else:
            self.n = len(list((Path(folder) / "events_orders").glob("*.parquet")))
        self.scatter()

    def scatter(self) -> None:
        """Send the parts to the workers, or have them read the parts (again, after a worker holding
        some was lost)."""
        if self.folder is None:
            self.parts = engine.scatter(self.client, split(self.events, self.n))
        else:
            self.parts = [self.client.submit(read_part, str(self.folder), p, pure=False) for p in range(self.n)]

    def map(self, fn, *args, what: str | None = None, each: list | None = None, tables: tuple = ()) -> list:
        """``fn(part_events, [each[i],] *tables' parts, *args)`` on every part ``i``, on the workers; the
        results in part order. A worker lost on the way costs one more try on parts scattered anew
        (:func:`crmlab.engine.retry_lost`). ``each`` is sent as data, not inside the task graph (a million
        keys would weigh it down); ``tables`` are cut by customer there (:func:`parts_on_workers`)."""
        def run():
            first = [] if each is None else [engine.scatter(self.client, list(each))]
            cut = [parts_on_workers(self.client, t, self.n) for t in tables]
            return self.client.gather(self.client.map(fn, self.parts, *first, *cut, *[[a] * self.n for a in args],
                                                      pure=False))

        return engine.retry_lost(run, f"{what or getattr(fn, '__name__', 'a function')} on {self.n} parts of the "
                                      "events", again=self.scatter)

    def frame(self, builder, cutoff, p: int):
        """``builder.transform`` of part ``p`` at ``cutoff`` (None: no order before it), a future."""
        return self.client.submit(_transform, self.parts[p], builder, cutoff, pure=False)

    def feature_rows(self, builder, cutoff) -> FeatureRows | pd.DataFrame:
        """``builder.transform(ev, cutoff)`` of the whole events computed by parts and left on the
        workers (:class:`~crmlab.feature_rows.FeatureRows`); where no part has an order before the
        cut-off, what the whole events say (a frame, or their error)."""
        rows = FeatureRows.compute(self, builder, cutoff)
        return builder.transform(self.events, cutoff) if rows is None else rows

    def features(self, builder, cutoff) -> pd.DataFrame:
        """``builder.transform(ev, cutoff)`` of the whole events, computed by parts: equal to it."""
        rows = self.feature_rows(builder, cutoff)
        return rows if isinstance(rows, pd.DataFrame) else rows.fetch()


def on_cluster(client, ev: CustomerEvents, partition_rows: int) -> PartitionedEvents:
    """``ev`` by parts of the customers on ``client``'s workers: the parts already there for
    :class:`PartedEvents`, else ``ev`` split and sent (:class:`PartitionedEvents`)."""
    return ev.parts if ev.parts is not None else PartitionedEvents(client, ev, partition_rows)


def rows_on(client, ev: CustomerEvents, partition_rows: int):
    """``rows(builder, cutoff)``: ``builder.transform(ev, cutoff)`` here when ``client`` is None, else
    computed by the parts of ``ev`` on the cluster (:func:`on_cluster`, split once for all cut-offs) and
    left there (:class:`~crmlab.feature_rows.FeatureRows`), for code that fetches samples and applies
    models where the rows lie."""
    return ev.feature_rows if client is None else on_cluster(client, ev, partition_rows).feature_rows


def _departments(ev: CustomerEvents, before) -> list:
    return ev.departments(before)


def _buyers(ev: CustomerEvents, before) -> pd.Series:
    return ev.department_buyers(before)


def _bought(ev: CustomerEvents, customers: pd.Index, start, end, departments) -> pd.DataFrame:
    return ev.bought(customers, start, end, departments)


def _ordered(ev: CustomerEvents, customers: pd.Index, start, end) -> pd.Series:
    return ev.ordered(customers, start, end)


def _read_on_first_use(name: str) -> property:
    """A table of the events read when first asked for (the object's ``_table(name)``), or as set."""
    attr = f"_{name}"

    def get(self):
        if attr not in self.__dict__:
            self.__dict__[attr] = self._table(name)
        return self.__dict__[attr]

    def put(self, value) -> None:
        self.__dict__[attr] = value

    return property(get, put)


def _last_date(ev: CustomerEvents):
    return ev.orders["order_date"].max()


class PartedEvents(CustomerEvents):
    """The run's events as the workers built them (:func:`build`), left there as parts (:attr:`parts`,
    read there). What the stages ask of them (the last order date, departments, buyers per department,
    who bought what in a window, features) is computed by parts, equal to the whole; code that reads a
    table itself (:attr:`orders`, :attr:`lines`, :attr:`contacts`, :attr:`profile`) reads it whole here
    on first use."""

    orders = _read_on_first_use("events_orders")
    lines = _read_on_first_use("events_lines")
    contacts = _read_on_first_use("events_contacts")
    profile = _read_on_first_use("events_profile")

    def __init__(self, client, folder):
        self.folder = Path(folder)
        self.parts = PartitionedEvents(client, self, 0, folder)

    def _table(self, name: str) -> pd.DataFrame | None:
        """Table ``name`` read whole from its parts (None where the run has no such table)."""
        folder = self.folder / name
        df = read_parts(folder) if folder.is_dir() else None
        return df.set_index("customer_key") if name == "events_profile" and df is not None else df

    @property
    def last_date(self) -> pd.Timestamp:
        return pd.Series(self.parts.map(_last_date, what="the last order date")).max()

    def __repr__(self) -> str:
        return f"PartedEvents(in {self.parts.n} parts at {self.folder})"     # nothing read

    def features(self, builder, cutoff) -> pd.DataFrame:
        return self.parts.features(builder, cutoff)

    def feature_rows(self, builder, cutoff):
        return self.parts.feature_rows(builder, cutoff)

    @property
    def has_contacts(self) -> bool:
        return (self.folder / "events_contacts").is_dir()

    def order_pieces(self, columns: list[str]):
        for path in sorted((self.folder / "events_orders").glob("*.parquet")):
            df = pd.read_parquet(path, columns=[ROW] + columns)
            yield df[ROW].to_numpy(), df[columns]

    def map_parts(self, fn, *args, what: str | None = None, tables: tuple = ()) -> list:
        return self.parts.map(fn, *args, what=what, tables=tables)

    def lines_sample(self, customers: int) -> tuple[pd.DataFrame, float]:
        """The lines of the first parts (customers are spread over the parts by a hash of their key)."""
        n, total = self.parts.n, len(self.profile)
        k = n if total <= customers else min(n, math.ceil(n * customers / total))
        return read_parts(self.folder / "events_lines", k), k / n

    def empty(self) -> CustomerEvents:
        """No rows, the tables' columns and types (from the first parts' schemas: nothing read)."""
        import pyarrow.parquet as pq

        def table(name):
            folder = self.folder / name
            if not folder.is_dir():
                return None
            df = pq.read_schema(sorted(folder.glob("*.parquet"))[0]).empty_table().to_pandas()
            return df.drop(columns=ROW) if ROW in df else df

        return CustomerEvents(table("events_orders"), table("events_lines"), table("events_contacts"),
                              table("events_profile").set_index("customer_key"))

    def departments(self, before=None) -> list:
        return sorted(set().union(*self.parts.map(_departments, before, what="departments")))

    def department_buyers(self, before) -> pd.Series:
        got = pd.concat(self.parts.map(_buyers, before, what="buyers per department"))
        return got.groupby(level=0).sum().rename_axis("department").rename("customer_key")

    def bought(self, customers: pd.Index, start, end, departments) -> pd.DataFrame:
        return self._per_customer(_bought, customers, start, end, departments, what="purchases by department")

    def ordered(self, customers: pd.Index, start, end) -> pd.Series:
        return self._per_customer(_ordered, customers, start, end, what="orders in a window")

    def _per_customer(self, fn, customers: pd.Index, *args, what: str):
        """``fn(part, its customers, *args)`` on the part of each customer, rows back in ``customers``' order."""
        part = part_of(customers, self.parts.n)
        pieces = split_rows(pd.Series(np.arange(len(customers)), index=customers), part, self.parts.n)
        out = pd.concat(self.parts.map(fn, *args, each=[c.index for c in pieces], what=what))
        return out.iloc[np.argsort(np.concatenate([c.to_numpy() for c in pieces]), kind="stable")]


def _part_table(folder: str, name: str, p: int) -> pd.DataFrame | None:
    """Table ``name`` of customer part ``p`` in ``folder`` (:func:`build`), labelled as :func:`split` labels it."""
    path = Path(folder) / name / f"part-{p:05d}.parquet"
    if not path.exists():
        return None
    df = pd.read_parquet(path)
    if name == "events_profile":
        return df.drop(columns=ROW).set_index("customer_key")
    return df.set_index(pd.Index(df[ROW].to_numpy())).drop(columns=ROW)


class EventsPart(CustomerEvents):
    """Customer part ``p`` of the events written by :func:`build` into ``folder``: each table's rows
    labelled with their row number in the whole table, as :func:`split` cuts the whole. Its order
    lines, the largest table, are read when first asked for: stages that never ask (value,
    decisions, measurement) do not hold them on the workers."""

    lines = _read_on_first_use("events_lines")

    def __init__(self, folder: str, p: int):
        self.folder, self.p = folder, p
        self.orders, self.contacts, self.profile = (self._table(name) for name in
                                                    ("events_orders", "events_contacts", "events_profile"))

    def _table(self, name: str) -> pd.DataFrame | None:
        return _part_table(self.folder, name, self.p)


def read_part(folder: str, p: int) -> CustomerEvents:
    """Customer part ``p`` of the events written by :func:`build` into ``folder`` (:class:`EventsPart`)."""
    return EventsPart(str(folder), p)


def parts_for(rows: int, partition_rows: int) -> int:
    """How many customer parts events of ``rows`` order lines (or orders, the more) are cut into."""
    return max(1, math.ceil(rows / partition_rows))


def parts_on_workers(client, table, n: int, by: list | None = None) -> list:
    """A table cut into ``n`` parts on ``client``'s workers: by customer (:func:`part_of` of its
    ``customer_key``) or, with ``by``, by a hash of those columns (:func:`hash_buckets`). Futures of
    frames, each part's rows in table order and labelled with their row number in the whole, as
    :func:`split_rows` cuts the whole. ``table``: a frame here (sent), the path of a Parquet file or
    folder of parts (read there a row group a task, never here), or None (``n`` Nones)."""
    if table is None:
        return [None] * n
    if isinstance(table, pd.DataFrame):
        if not table.index.equals(pd.RangeIndex(len(table))):
            table = table.reset_index(drop=True)
        return engine.scatter(client, split_rows(table, _parts(table, n, by), n))
    import pyarrow.parquet as pq

    path = Path(table)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    groups, offset = [], 0
    for f in files:
        meta = pq.ParquetFile(f).metadata
        for g in range(meta.num_row_groups):
            groups.append(client.submit(_cut_group, str(f), g, offset, n, by, pure=False))
            offset += meta.row_group(g).num_rows
    if not groups:                                  # no rows at all: the empty table, n times
        groups = [client.submit(_cut_group, str(files[0]), None, 0, n, by, pure=False)]
    return [client.submit(_concat, *[client.submit(getitem, g, i, pure=False) for g in groups], pure=False)
            for i in range(n)]


def _parts(df: pd.DataFrame, n: int, by: list | None) -> np.ndarray:
    return part_of(df["customer_key"], n) if by is None else hash_buckets(df, by, n)


def _cut_group(path: str, group: int | None, offset: int, n: int, by: list | None) -> list[pd.DataFrame]:
    """Row group ``group`` of a Parquet file (None: the whole, empty, file), its rows numbered from
    ``offset``, cut into ``n`` parts (:func:`parts_on_workers`)."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    df = (f.read() if group is None else f.read_row_group(group)).to_pandas()
    df.index = pd.RangeIndex(offset, offset + len(df))
    return split_rows(df, _parts(df, n, by), n)


def _concat(*pieces) -> pd.DataFrame:
    return pd.concat(pieces) if len(pieces) > 1 else pieces[0]


# ----------------------------------------------------------------------------- events built on the workers

#: the columns that name a source record
SOURCE_KEY = ["source_system", "source_id"]


def by_columns(df: pd.DataFrame, cols: list, n: int) -> list[pd.DataFrame]:
    """``df``'s rows in ``n`` buckets by a hash of ``cols`` (:func:`hash_buckets`): equal keys meet."""
    return split_rows(df, hash_buckets(df, cols, n), n)


def _read_split(path: str, offset: int, cols: list, n: int) -> list[pd.DataFrame]:
    """A sources part, its rows numbered from ``offset``, cut into ``n`` buckets by a hash of ``cols``."""
    df = pd.read_parquet(path)
    df[ROW] = np.arange(offset, offset + len(df), dtype=np.int64)
    return by_columns(df, cols, n)


def _saved(folder: str, name: str, got):
    """``got`` (a frame, lists or tuples of frames, None) with each frame written to a pickle file in
    ``folder`` and its path in its place: a shuffle's pieces wait on disk, written once, for the task
    that joins them (:func:`_load`), not in the workers' memory, where Dask would spill them again
    and again."""
    if isinstance(got, pd.DataFrame):
        path = f"{folder}/{name}.pkl"
        got.to_pickle(path)
        return path
    if isinstance(got, (list, tuple)):
        return type(got)(_saved(folder, f"{name}.{i}", g) for i, g in enumerate(got))
    return got


def _on_disk(folder: str, name: str, fn, *args):
    """Task: ``fn(*args)``, its frames left in files (:func:`_saved`)."""
    return _saved(folder, name, fn(*args))


def _load(piece) -> pd.DataFrame:
    """A piece given as a frame or as the file :func:`_saved` wrote."""
    return pd.read_pickle(piece) if isinstance(piece, str) else piece


def _in_order(pieces) -> pd.DataFrame:
    pieces = [_load(p) for p in pieces]
    df = pd.concat(pieces, ignore_index=True) if len(pieces) > 1 else pieces[0].reset_index(drop=True)
    return df.iloc[np.argsort(df[ROW].to_numpy(), kind="stable")].reset_index(drop=True)


def _keyed(key_map: pd.DataFrame | None, *pieces) -> dict:
    """One bucket of source records (rows of one table) with their ``customer_key``: the rows whose
    record the key map lacks are counted and the first three shown, as :func:`~crmlab.events.customer_keys`
    says them."""
    df = _in_order(pieces)
    sid = df["source_id"].astype("string")
    if key_map is None:
        return {"df": df.assign(customer_key=(df["source_system"].astype("string") + ":" + sid).to_numpy()),
                "missing": 0, "shown": None}
    km = key_map.astype({"source_id": "string"})
    key = pd.DataFrame({"source_system": df["source_system"].to_numpy(), "source_id": sid.to_numpy()}).merge(
        km, on=SOURCE_KEY, how="left")["customer_key"]
    missing = key.isna().to_numpy()
    shown = df.loc[missing, [ROW, *SOURCE_KEY]].head(3).assign(source_id=sid[missing].head(3)) if missing.any() else None
    return {"df": df.assign(customer_key=key.to_numpy())[~missing].reset_index(drop=True),
            "missing": int(missing.sum()), "shown": shown}


def _frame(got: dict, campaigns=None) -> pd.DataFrame:
    """The keyed rows of a bucket (contacts: with their campaign's ``window_days``, as keyed_contacts)."""
    return got["df"] if campaigns is None else got["df"].merge(campaigns, on="campaign_id", how="left")


def _orders_by_id(got: dict, n: int) -> list[pd.DataFrame]:
    """Keyed orders (the events' columns but their value) cut into ``n`` buckets by a hash of the order id."""
    df = got["df"]
    return by_columns(df[[c for c in ORDER_COLUMNS if c != "value" and c in df] + [ROW]], ["order_id"], n)


def _by_customer(df: pd.DataFrame, n: int) -> list[pd.DataFrame]:
    return split_rows(df, part_of(df["customer_key"], n), n)


def _by_code(df: pd.DataFrame, n: int, columns: list | None = None) -> list[pd.DataFrame]:
    """Rows quoting a reference code, cut into ``n`` buckets by a hash of the code."""
    df = df[df["ref_code"].notna()]
    return by_columns(df if columns is None else df[columns], ["ref_code"], n)


def _missing(got: dict) -> tuple:
    return got["missing"], got["shown"]


def _valued(n: int, n_orders: int, codes: int, department, *pieces) -> tuple[list, list, list | None]:
    """One bucket of order ids: the lines keyed with their order's customer and date
    (:func:`~crmlab.events.keyed_lines`), the orders' ``value`` summed from them; both cut by customer
    part (``n`` parts), and the orders quoting a reference code cut into ``codes`` buckets by its hash
    (None without codes)."""
    orders = pd.concat([_load(p) for p in pieces[:n_orders]], ignore_index=True)
    lines = keyed_lines(_in_order(pieces[n_orders:]), department, orders)
    v = lines["value"].groupby(lines["order_id"]).sum()
    orders = orders.assign(value=orders["order_id"].map(v).fillna(0.0).to_numpy())
    quoting = _by_code(orders, codes, ["order_id", "customer_key", "order_date", "value", "ref_code", ROW]) if codes else None
    return _by_customer(orders, n), _by_customer(lines, n), quoting


def _quoted(n: int, n_contacts: int, *pieces) -> tuple[list, list]:
    """One bucket of reference codes: :func:`~crmlab.events.ref_code_hits`, cut by the contact's
    customer part (the hits) and by the order's (the orders they use)."""
    c = _in_order(pieces[:n_contacts])
    o = _in_order(pieces[n_contacts:])
    hits = ref_code_hits(with_window_end(c), o)
    contact_key = hits["contact_id"].map(pd.Series(c["customer_key"].to_numpy(), index=c["contact_id"]))
    return (split_rows(hits, part_of(contact_key, n), n),
            split_rows(hits[["order_id"]], part_of(hits["order_key"], n), n))


def _last(df: pd.DataFrame, cols: list | None = None) -> pd.DataFrame:
    """``df``'s columns (``cols``, else all) in their order with the row number last."""
    return df[[c for c in (cols or df.columns) if c != ROW] + [ROW]]


def _assemble(out: str, p: int, sizes: tuple, *pieces) -> dict:
    """Customer part ``p`` of the events from its pieces (orders, lines, contacts, reference-code hits,
    orders those hits use, keyed customer records; ``sizes`` pieces each), each table in the local row
    order, written to ``out``; returns the rows written per table."""
    groups, at = [], 0
    for k in sizes:
        groups.append(pieces[at:at + k])
        at += k
    o_p, l_p, c_p, h_p, u_p, r_p = groups
    orders = _last(_in_order(o_p), ORDER_COLUMNS)
    tables = {"events_orders": orders, "events_lines": _last(_in_order(l_p))}
    if c_p:
        c = _in_order(c_p)
        rows = c[ROW].to_numpy()
        c = with_window_end(c.drop(columns=ROW))
        if h_p:                                             # hits by code, made in the code buckets
            quoted = pd.concat([_load(h) for h in h_p], ignore_index=True)
            used = pd.concat([_load(u) for u in u_p], ignore_index=True)["order_id"]
            hits = pd.concat([quoted, window_hits(c, orders, quoted["contact_id"], used)], ignore_index=True)
        else:
            hits = window_hits(c, orders, [], [])
        tables["events_contacts"] = with_responses(c, hits).assign(**{ROW: rows})
    records = _in_order(r_p)
    prof = profile_of(records)
    prof[ROW] = records.groupby("customer_key", sort=False)[ROW].first()
    tables["events_profile"] = prof.rename_axis("customer_key").reset_index()
    written = {}
    for name, df in tables.items():
        path = Path(out) / name / f"part-{p:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(path, index=False)
        written[name] = len(df)
    return written


def _counts(paths: list) -> list[int]:
    import pyarrow.parquet as pq
    return [pq.read_metadata(p).num_rows for p in paths]


def _offsets(paths: list) -> list[int]:
    return np.r_[0, np.cumsum(_counts(paths))[:-1]].astype(int).tolist()


def table_rows(paths: list) -> int:
    """Rows of a table written as Parquet ``paths``, from their metadata."""
    return int(sum(_counts(paths)))


def build(client, parts: dict[str, list], key_map: "pd.DataFrame | str | Path | None", n: int, out) -> dict[str, int]:
    """The run's events (:meth:`crmlab.events.CustomerEvents.from_sources`) built by ``client``'s workers
    from the sources' Parquet ``parts`` (table name -> part files in table order) and written to ``out``
    as ``n`` parts split by customer (:func:`part_of`): ``out/<artifact>/part-NNNNN.parquet``, each
    table's rows in the local order with their row number in the whole table (:data:`ROW`).

    Nothing but the key map passes through the caller, and not even that when it is given as its Parquet
    file (read by the workers a row group a task). Source records are joined to the key map in
    buckets of a hash of (source_system, source_id), order lines to their orders in buckets of a hash
    of the order id (the orders' values summed there), contacts quoting a reference code to the orders
    quoting it in buckets of a hash of the code; every bucket is then cut by customer part. The pieces
    of the order-id, code and customer-part buckets wait in files under ``out`` (which the workers
    write the events to, so share) until they are joined, and are deleted after. Records missing from
    the key map raise the local error. Returns the rows written per artifact."""
    out = Path(out)
    offsets = {t: _offsets(ps) for t, ps in parts.items()}
    b = max(1, min(64, max(n, *(len(ps) for ps in parts.values()))))     # buckets of each join
    products = pd.concat([pd.read_parquet(p, columns=["product_id", "department"]) for p in parts["products"]])
    contacts = "contacts" in parts and "campaigns" in parts
    codes = b if contacts and present(parts["contacts"][0], ["ref_code"]) and present(parts["orders"][0], ["ref_code"]) \
        else 0
    held = {}

    def send():
        km = key_map[["source_system", "source_id", "customer_key"]] if isinstance(key_map, pd.DataFrame) \
            else None if key_map is None else str(key_map)
        held["km"] = parts_on_workers(client, km, b, by=SOURCE_KEY)
        held["dept"] = engine.scatter(client, [products.set_index("product_id")["department"]])[0]
        if contacts:
            camp = pd.concat([pd.read_parquet(p, columns=["campaign_id", "window_days"]) for p in parts["campaigns"]])
            held["camp"] = engine.scatter(client, [camp])[0]

    def piece(futures, i):
        return [client.submit(getitem, f, i) for f in futures]

    def keyed(table, what):
        splits = [client.submit(_read_split, str(p), off, SOURCE_KEY, b, pure=False)
                  for p, off in zip(parts[table], offsets[table])]
        got = [client.submit(_keyed, held["km"][i], *piece(splits, i), pure=False) for i in range(b)]
        said = client.gather([client.submit(_missing, g) for g in got])
        bad = sum(s[0] for s in said)
        if bad:
            shown = pd.concat([s[1] for s in said if s[1] is not None]).sort_values(ROW).head(3)
            raise CrmlabError(f"{bad:,} {what} reference source records missing from the customer key map, "
                              f"e.g. {shown[SOURCE_KEY].to_dict('records')}")
        return got

    def run():
        shutil.rmtree(spool, ignore_errors=True)
        spool.mkdir(parents=True)

        def disk(name, fn, *args):                          # the task's pieces left in files of the spool
            return client.submit(_on_disk, str(spool), name, fn, *args, pure=False)

        orders = [disk(f"o{k}", _orders_by_id, g, b) for k, g in enumerate(keyed("orders", "orders"))]
        lines = [disk(f"l{k}", _read_split, str(p), off, ["order_id"], b)
                 for k, (p, off) in enumerate(zip(parts["order_lines"], offsets["order_lines"]))]
        valued = [disk(f"v{i}", _valued, n, len(orders), codes, held["dept"], *piece(orders, i), *piece(lines, i))
                  for i in range(b)]
        cuts = [piece(valued, 0), piece(valued, 1)]
        c_cut, hit_cut, used_cut = [], [], []
        if contacts:
            keyed_c = [client.submit(_frame, g, held["camp"]) for g in keyed("contacts", "contacts")]
            c_cut = [disk(f"c{k}", _by_customer, f, n) for k, f in enumerate(keyed_c)]
            if codes:
                c_code = [disk(f"q{k}", _by_code, f, codes) for k, f in enumerate(keyed_c)]
                o_code = piece(valued, 2)
                quoted = [disk(f"h{r}", _quoted, n, len(c_code), *piece(c_code, r), *piece(o_code, r))
                          for r in range(codes)]
                hit_cut, used_cut = piece(quoted, 0), piece(quoted, 1)
        records = [disk(f"r{k}", _by_customer, client.submit(_frame, g), n)
                   for k, g in enumerate(keyed("customers", "customer records"))]
        # the customer parts' pieces named here: the joins read files, and a lost worker loses no piece
        groups = client.gather([*cuts, c_cut, hit_cut, used_cut, records])
        named = {x for g in groups for cut in g for x in cut}
        for f in spool.iterdir():                           # the order-id and code buckets are joined
            if str(f) not in named:
                f.unlink()
        sizes = tuple(len(g) for g in groups)
        done = [client.submit(_assemble, str(out), p, sizes, *[cut[p] for g in groups for cut in g], pure=False)
                for p in range(n)]
        written = client.gather(done)
        return {name: sum(w.get(name, 0) for w in written) for name in ARTIFACTS if any(name in w for w in written)}

    send()
    spool = out / ".events_pieces"         # in the run's folder, which the workers write the events to
    try:
        return engine.retry_lost(run, f"the events on {n} parts of the customers", again=send)
    finally:
        shutil.rmtree(spool, ignore_errors=True)
