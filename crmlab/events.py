"""The events layer: validated sources + customer key map -> what each recognised customer did, dated.

Everything after record matching reads customers through this layer, never through the raw
sources: :func:`customer_keys` is the one join from source records to ``customer_key``, and
:class:`CustomerEvents` holds keyed orders, order lines, contacts with their attributed responses
and an undated profile per customer. A run builds it once (``10_identity`` writes it next to the
key map) and every later stage reads it (:meth:`crmlab.pipeline.StageContext.events`).

Without a key map each source record counts as its own customer (key ``<system>:<source id>``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import CrmlabError

#: The artifact names under which a run stores the events (see :meth:`CustomerEvents.artifacts`).
ARTIFACTS = ("events_orders", "events_lines", "events_contacts", "events_profile")


def customer_keys(records: pd.DataFrame, key_map: pd.DataFrame | None, what: str) -> np.ndarray:
    """``customer_key`` of each row of ``records`` (``source_system``, ``source_id``), in row order.

    Rows whose source record is missing from ``key_map`` raise a :class:`CrmlabError` naming
    ``what`` (e.g. "orders") and a few of the records.
    """
    sid = records["source_id"].astype("string")
    if key_map is None:
        return (records["source_system"].astype("string") + ":" + sid).to_numpy()
    km = key_map[["source_system", "source_id", "customer_key"]].astype({"source_id": "string"})
    left = pd.DataFrame({"source_system": records["source_system"].to_numpy(), "source_id": sid.to_numpy()})
    key = left.merge(km, on=["source_system", "source_id"], how="left")["customer_key"]
    missing = key.isna().to_numpy()
    if missing.any():
        raise CrmlabError(f"{int(missing.sum()):,} {what} reference source records missing from the customer key "
                          f"map, e.g. {left.loc[missing, ['source_system', 'source_id']].head(3).to_dict('records')}")
    return key.to_numpy()


def order_values(orders: pd.DataFrame, order_lines: pd.DataFrame) -> pd.DataFrame:
    """Orders with their ``value`` (sum of quantity x unit price over the lines)."""
    v = (order_lines["quantity"] * order_lines["unit_price"]).groupby(order_lines["order_id"]).sum()
    return orders.assign(value=orders["order_id"].map(v).fillna(0.0).to_numpy())


def keyed_contacts(src, key_map: pd.DataFrame | None = None) -> pd.DataFrame:
    """Contacts with ``customer_key`` and their campaign's ``window_days``."""
    if "contacts" not in src.tables or "campaigns" not in src.tables:
        raise CrmlabError("this run's inputs have no 'contacts' and 'campaigns' tables: nothing to measure")
    c = src["contacts"].astype({"source_id": "string"})
    c = c.assign(customer_key=customer_keys(c, key_map, "contacts"))
    camp = src["campaigns"][["campaign_id", "window_days"]]
    return c.merge(camp, on="campaign_id", how="left")


#: The column that numbers each row of a part of the events as in the whole table (its local row order).
ROW = "_row"


def read_parts(folder, first: int | None = None, columns: list | None = None) -> pd.DataFrame:
    """A table written as a folder of Parquet parts, whole (or its ``first`` parts; only those of
    ``columns`` it has): rows numbered :data:`ROW` (events split by customer) put back in that order,
    the number dropped."""
    parts = sorted(Path(folder).glob("*.parquet"))[:first]
    columns = None if columns is None or not parts else present(parts[0], [*columns, ROW])
    df = pd.concat([pd.read_parquet(p, columns=columns) for p in parts], ignore_index=True)
    if ROW in df:
        df = df.iloc[np.argsort(df[ROW].to_numpy(), kind="stable")].drop(columns=ROW).reset_index(drop=True)
    return df


def present(path, columns: list) -> list:
    """Those of ``columns`` that the Parquet file at ``path`` has, in the given order (its schema read)."""
    import pyarrow.parquet as pq

    have = set(pq.read_schema(path).names)
    return [c for c in columns if c in have]


def read_table(table) -> pd.DataFrame | None:
    """A table given as a frame, the path of a Parquet file or of a folder of parts (:func:`read_parts`), or None."""
    if table is None or isinstance(table, pd.DataFrame):
        return table
    return read_parts(table) if Path(table).is_dir() else pd.read_parquet(table)


#: Columns :func:`attribute_responses` adds to contacts.
RESPONSE_COLUMNS = ("response_order_id", "response_date", "response_value", "attribution", "responded")


def attribute_responses(contacts: pd.DataFrame, orders: pd.DataFrame, window_days: int | None = None) -> pd.DataFrame:
    """One row per contact with its response, if any.

    ``contacts``: ``contact_id, customer_key, contact_date, ref_code`` and ``window_days`` (or pass
    ``window_days``); ``orders``: ``order_id, customer_key, order_date, value, ref_code``.
    An order quoting a contact's reference code within the window is that contact's response; else
    the customer's first order in ``[contact_date, contact_date + window)``. An order answers one
    contact only (a code-quoted one first, then the latest contact before it).
    Adds ``responded``, ``response_order_id``, ``response_date``, ``response_value`` and
    ``attribution`` (``ref_code`` | ``window`` | missing); earlier response columns are replaced.
    """
    need_c = {"contact_id", "customer_key", "contact_date"} | ({"window_days"} if window_days is None else set())
    need_o = {"order_id", "customer_key", "order_date", "value"}
    for name, df, need in (("contacts", contacts, need_c), ("orders", orders, need_o)):
        missing = sorted(need - set(df.columns))
        if missing:
            raise CrmlabError(f"attribute_responses: {name} lack column(s) {', '.join(missing)}")
    c = with_window_end(contacts, window_days)
    o = orders[["order_id", "customer_key", "order_date", "value"]
               + (["ref_code"] if "ref_code" in orders else [])]
    quoted = ref_code_hits(c, o)
    if quoted is None:
        return with_responses(c, window_hits(c, o, [], []))
    rest = window_hits(c, o, quoted["contact_id"], quoted["order_id"])
    return with_responses(c, pd.concat([quoted, rest], ignore_index=True))


def campaign_starts(contacts: pd.DataFrame) -> pd.Series:
    """Each campaign's first contact date (the minima of disjoint sets of contacts' starts give all of theirs)."""
    return contacts.groupby("campaign_id")["contact_date"].min()


def with_window_end(contacts: pd.DataFrame, window_days: int | None = None) -> pd.DataFrame:
    """Contacts without earlier response columns, with the end of their response window (``_end``)."""
    c = contacts.drop(columns=[k for k in RESPONSE_COLUMNS if k in contacts]).reset_index(drop=True)
    win = pd.to_timedelta(c["window_days"] if window_days is None else window_days, unit="D")
    return c.assign(_end=c["contact_date"] + win)


_HIT_COLUMNS = ["contact_id", "order_id", "order_date", "value", "attribution", "order_key"]


def ref_code_hits(c: pd.DataFrame, o: pd.DataFrame) -> pd.DataFrame | None:
    """Orders quoting a contact's reference code within its window: one per contact, an order for one
    contact (the earliest order first). ``order_key``: the order's customer (any customer may quote a code).
    Every hit joins rows of one reference code, so the hits of a subset of the codes are computed
    from their contacts and orders alone. None when either table has no ``ref_code``."""
    if "ref_code" not in c or "ref_code" not in o:
        return None
    quoted = o[o["ref_code"].notna()].rename(columns={"customer_key": "order_key"})
    m = c[["contact_id", "ref_code", "contact_date", "_end"]].dropna(subset=["ref_code"]).merge(quoted, on="ref_code")
    m = m[(m["order_date"] >= m["contact_date"]) & (m["order_date"] < m["_end"])]
    m = m.sort_values(["order_date", "order_id"]).drop_duplicates("contact_id").drop_duplicates("order_id")
    return m.assign(attribution="ref_code")[_HIT_COLUMNS]


def window_hits(c: pd.DataFrame, o: pd.DataFrame, used_contacts, used_orders) -> pd.DataFrame:
    """For contacts not in ``used_contacts``: the customer's first order (not in ``used_orders``) within
    the window; an order answers the latest such contact before it. Per customer: the hits of a
    subset of the customers are computed from their contacts and orders alone."""
    rest = c[~c["contact_id"].isin(used_contacts)][["contact_id", "customer_key", "contact_date", "_end"]]
    m = rest.merge(o[~o["order_id"].isin(used_orders)], on="customer_key")
    m = m[(m["order_date"] >= m["contact_date"]) & (m["order_date"] < m["_end"])]
    m = m.sort_values(["order_date", "order_id"]).drop_duplicates("contact_id")
    m = m.sort_values(["contact_date", "contact_id"], ascending=False).drop_duplicates("order_id")  # latest touch
    return m.assign(attribution="window", order_key=m["customer_key"])[_HIT_COLUMNS]


def with_responses(c: pd.DataFrame, hits: pd.DataFrame) -> pd.DataFrame:
    """Contacts (:func:`with_window_end`) with the response columns of their ``hits``."""
    h = hits[["contact_id", "order_id", "order_date", "value", "attribution"]]
    h = h.rename(columns={"order_id": "response_order_id", "order_date": "response_date", "value": "response_value"})
    out = c.drop(columns="_end").merge(h, on="contact_id", how="left")
    out["responded"] = out["response_order_id"].notna()
    out["response_value"] = out["response_value"].fillna(0.0)
    return out


def profile(customers: pd.DataFrame, key_map: pd.DataFrame | None) -> pd.DataFrame:
    """Per customer_key, undated attributes: earliest dob, number of source systems, opt-ins, contactability."""
    return profile_of(customers.assign(customer_key=customer_keys(customers, key_map, "customer records")))


def profile_of(c: pd.DataFrame) -> pd.DataFrame:
    """:func:`profile` of customer records that carry their ``customer_key`` (customers in order of
    their first record: the profile of a subset of the customers is computed from their records alone)."""
    g = c.groupby("customer_key", sort=False)
    prof = pd.DataFrame({"dob": g["dob"].min(), "n_systems": g["source_system"].nunique()})
    for col in ("email_opt_in", "mail_opt_in", "sms_opt_in"):
        if col in c:
            prof[col] = g[col].max().astype("float64")
    prof["has_email"] = g["email"].count().gt(0).astype("float64") if "email" in c else np.nan
    prof["has_phone"] = g["phone"].count().gt(0).astype("float64") if "phone" in c else np.nan
    return prof


#: The columns of the keyed orders (:attr:`CustomerEvents.orders`).
ORDER_COLUMNS = ["order_id", "customer_key", "order_date", "value", "channel", "ref_code"]


def keyed_lines(lines: pd.DataFrame, department: pd.Series, orders: pd.DataFrame) -> pd.DataFrame:
    """Order lines with the product's ``department``, the line ``value`` and their order's
    ``customer_key`` and ``order_date`` (lines of orders not in ``orders`` are left out; line order kept)."""
    ln = lines.assign(department=lines["product_id"].map(department).to_numpy(),
                      value=(lines["quantity"] * lines["unit_price"]).to_numpy())
    return ln.merge(orders[["order_id", "customer_key", "order_date"]], on="order_id")


@dataclass
class EventCodes:
    """Customers as integers: ``keys`` (sorted customer keys of the orders) and, per table row, the
    code into them (-1: a contact of a customer without orders); ``profile_pos``: each key's row in
    the profile (-1: none); ``order_by``: the orders' rows in (order_date, order_id) order and
    ``order_rank`` each order's position in it."""

    keys: pd.Index
    order: np.ndarray
    line: np.ndarray
    contact: np.ndarray | None
    profile_pos: np.ndarray
    order_by: np.ndarray
    order_rank: np.ndarray

    @classmethod
    def build(cls, ev: "CustomerEvents") -> "EventCodes":
        order, keys = pd.factorize(ev.orders["customer_key"], sort=True)
        keys = pd.Index(keys, name="customer_key")
        line = keys.get_indexer(ev.lines["customer_key"])
        contact = None if ev.contacts is None else keys.get_indexer(ev.contacts["customer_key"])
        oid = pd.factorize(ev.orders["order_id"], sort=True)[0]
        by = np.lexsort((oid, ev.orders["order_date"].to_numpy())).astype(np.int64)
        rank = np.empty(len(by), np.int64)
        rank[by] = np.arange(len(by))
        return cls(keys, order.astype(np.int64), line.astype(np.int64), None if contact is None else
                   contact.astype(np.int64), ev.profile.index.get_indexer(keys).astype(np.int64), by, rank)

    def subset(self, rows: np.ndarray) -> tuple[pd.Index, np.ndarray]:
        """For the orders at boolean ``rows``: their customers' keys (sorted) and a map from global
        code to position among them (-1: not among them)."""
        oc = self.order[rows]
        present = np.flatnonzero(np.bincount(oc[oc >= 0], minlength=len(self.keys)))
        remap = np.full(len(self.keys) + 1, -1, np.int64)   # the extra slot maps code -1 to -1
        remap[present] = np.arange(len(present))
        return self.keys[present], remap


@dataclass
class CustomerEvents:
    """Everything known about each customer, dated: the input to features, labels, values and measurement.

    ``orders``: order_id, customer_key, order_date, value, channel, ref_code (source order);
    ``lines``: every order line column (order_id, line_no, product_id, quantity, unit_price, ...)
    with the order's customer_key and order_date, the product's department and the line value;
    ``contacts``: one row per contact with its campaign's window and its response (see
    :func:`attribute_responses`), or None when the inputs have no contacts; ``profile``: indexed
    by customer_key, undated attributes (see :func:`profile`).
    """

    orders: pd.DataFrame
    lines: pd.DataFrame
    contacts: pd.DataFrame | None
    profile: pd.DataFrame

    #: The events' parts on a Dask cluster where they were built there (:class:`crmlab.events_dask.PartedEvents`).
    parts = None

    @classmethod
    def from_sources(cls, src, key_map: pd.DataFrame | None = None) -> "CustomerEvents":
        """Key every order, line and contact of validated sources ``src`` with ``key_map``."""
        o = order_values(src["orders"], src["order_lines"])
        o = o.assign(customer_key=customer_keys(o, key_map, "orders"))
        orders = o[ORDER_COLUMNS].reset_index(drop=True)
        lines = keyed_lines(src["order_lines"], src["products"].set_index("product_id")["department"], orders)
        contacts = None
        if "contacts" in src.tables and "campaigns" in src.tables:
            contacts = attribute_responses(keyed_contacts(src, key_map), orders)
        return cls(orders, lines, contacts, profile(src.customers, key_map))

    def codes(self) -> "EventCodes":
        """Integer customer codes of every order, line and contact, computed once per events object
        (the tables are treated as read-only): features at many cut-offs index integers, not strings."""
        cached = self.__dict__.get("_codes")
        if cached is None:
            cached = self.__dict__["_codes"] = EventCodes.build(self)
        return cached

    @property
    def last_date(self) -> pd.Timestamp:
        """The last order date: scores made "now" use the day after it as cut-off."""
        return self.orders["order_date"].max()

    def features(self, builder, cutoff) -> pd.DataFrame:
        """``builder.transform(self, cutoff)`` (by parts of the customers where the events are parts)."""
        return builder.transform(self, cutoff)

    def feature_rows(self, builder, cutoff) -> pd.DataFrame:
        """The features at ``cutoff`` where they are computed: here the frame itself (where the events are
        parts: left on the workers, :class:`crmlab.feature_rows.FeatureRows`)."""
        return self.features(builder, cutoff)

    @property
    def has_contacts(self) -> bool:
        """Whether the inputs had contacts (asked without reading them where the events are parts)."""
        return self.contacts is not None

    def order_pieces(self, columns: list[str]):
        """(row numbers, ``columns``) of the orders in pieces (here one: the table; where the events are
        parts, a part at a time read from its file): a scan of every order in bounded memory."""
        yield np.arange(len(self.orders)), self.orders[columns]

    def map_parts(self, fn, *args, what: str | None = None, tables: tuple = ()) -> list:
        """``[fn(events, *tables, *args)]`` for disjoint sets of customers (here one: these events; where the
        events are parts, one per part, computed where the part lies; ``what``: its name in errors).
        ``tables``: tables with a ``customer_key`` (frames, paths of Parquet files or folders, or None),
        each given as its rows of those customers (here whole; where the events are parts, cut there)."""
        return [fn(self, *[read_table(t) for t in tables], *args)]

    def lines_sample(self, customers: int) -> tuple[pd.DataFrame, float]:
        """Order lines of a random set of at least ``customers`` customers (here all), and the share of
        customers they are (a report's evaluation on a sample where the events are parts)."""
        return self.lines, 1.0

    def empty(self) -> "CustomerEvents":
        """These events without rows (the same tables and columns)."""
        return CustomerEvents(self.orders.iloc[:0], self.lines.iloc[:0],
                              None if self.contacts is None else self.contacts.iloc[:0], self.profile.iloc[:0])

    def departments(self, before=None) -> list:
        """The departments of the lines (dated before ``before``), sorted."""
        ln = self.lines if before is None else self.lines[self.lines["order_date"] < pd.Timestamp(before)]
        return sorted(ln["department"].dropna().unique())

    def department_buyers(self, before) -> pd.Series:
        """How many customers bought from each department before ``before`` (index: department, sorted)."""
        ln = self.lines[self.lines["order_date"] < pd.Timestamp(before)]
        return ln.groupby("department")["customer_key"].nunique()

    def bought(self, customers: pd.Index, start, end, departments) -> pd.DataFrame:
        """Per customer of ``customers`` (distinct keys, in that order) and department (columns, as
        given): whether they bought from it in ``[start, end)``."""
        ln = self.lines[(self.lines["order_date"] >= start) & (self.lines["order_date"] < end)]
        who = pd.Index(customers).get_indexer(ln["customer_key"])
        what = pd.Index(departments).get_indexer(ln["department"])
        out = np.zeros((len(customers), len(departments)), dtype=bool)
        ok = (who >= 0) & (what >= 0)
        out[who[ok], what[ok]] = True
        return pd.DataFrame(out, index=customers, columns=list(departments))

    def ordered(self, customers: pd.Index, start, end) -> pd.Series:
        """Per customer of ``customers`` (distinct keys, in that order): whether they ordered in ``[start, end)``."""
        o = self.orders
        o = o[(o["order_date"] >= start) & (o["order_date"] < end)]
        return pd.Series(pd.Index(o["customer_key"].unique()).get_indexer(customers) >= 0, index=customers)

    def transactions(self) -> pd.DataFrame:
        """One row per order: ``customer_key``, ``order_date``, ``value``, ``channel`` (the input of value models)."""
        return self.orders[["customer_key", "order_date", "value", "channel"]]

    def artifacts(self) -> dict[str, pd.DataFrame]:
        """The tables as written to a run folder (profile with its key as a column), by artifact name."""
        out = {"events_orders": self.orders, "events_lines": self.lines,
               "events_profile": self.profile.rename_axis("customer_key").reset_index()}
        if self.contacts is not None:
            out["events_contacts"] = self.contacts
        return out

    @classmethod
    def from_artifacts(cls, read) -> "CustomerEvents":
        """Rebuild from :meth:`artifacts` through ``read(name) -> DataFrame | None``."""
        orders, lines, contacts, profile = (read(name) for name in ARTIFACTS)
        return cls(orders, lines, contacts, profile.set_index("customer_key"))
