"""Data-quality profiles of the input tables (the tables and plots of notebook 00)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .errors import PERSONAL_FIELDS, mask_value, masked
from .events import order_values
from .labels import label, money_label
from .sources import Sources

PERSON_FIELDS = ("first_name", "last_name", "dob", "email", "phone", "address", "postcode")


def overview(src: Sources) -> pd.DataFrame:
    """One row per input table: rows, columns, share of empty cells, where it was read from (rows: the
    whole table's where ``src`` is a sample, :meth:`crmlab.pipeline.StageContext.report_sources`)."""
    rows = []
    for name, df in src.tables.items():
        if name == "customers":
            for system, part in df.groupby("source_system", sort=True):
                raw = part[[c for c in part.columns if not c.endswith("_std") and c != "postcode_area"]]
                rows.append((f"customers_{system}", src.counts.get(f"customers_{system}", len(part)), raw.shape[1] - 1,
                             float(raw.isna().to_numpy().mean()), src.origin.get(f"customers_{system}", "")))
        else:
            rows.append((name, src.counts.get(name, len(df)), df.shape[1], float(df.isna().to_numpy().mean()),
                         src.origin.get(name, "")))
    return pd.DataFrame(rows, columns=["table", "rows", "columns", "empty_cells", "source"])


def column_profile(df: pd.DataFrame, top: int = 1) -> pd.DataFrame:
    """Per column: type, filled share, distinct values, min, max and the most frequent value."""
    out = []
    for col in df.columns:
        s = df[col]
        nn = s.dropna()
        lo = hi = None
        if len(nn) and (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_datetime64_any_dtype(s)) \
                and not pd.api.types.is_bool_dtype(s):
            lo, hi = nn.min(), nn.max()
        vc = nn.value_counts().head(top)
        most = f"{_plain(vc.index[0])} ({vc.iloc[0]:,})" if len(vc) else ""
        lo, hi = _plain(lo), _plain(hi)
        if col in PERSONAL_FIELDS and len(vc):
            lo, hi, most = mask_value(lo), mask_value(hi), f"{mask_value(vc.index[0])} ({vc.iloc[0]:,})"
        out.append((col, str(s.dtype), 1 - s.isna().mean() if len(s) else np.nan, nn.nunique(), lo, hi, most))
    return pd.DataFrame(out, columns=["column", "dtype", "filled", "distinct", "min", "max", "most_frequent"])


def _plain(v):
    """A value as a reviewer reads it: dates without a time of day, floats rounded."""
    if v is None:
        return None
    if isinstance(v, pd.Timestamp):
        return f"{v:%Y-%m-%d}" if v == v.normalize() else f"{v:%Y-%m-%d %H:%M}"
    if isinstance(v, (float, np.floating)):
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return v


def missingness(customers: pd.DataFrame) -> pd.DataFrame:
    """Share of missing person fields by source system (rows: systems, columns: fields)."""
    cols = [c for c in PERSON_FIELDS if c in customers]
    return customers.groupby("source_system")[cols].agg(lambda s: s.isna().mean())


def standardisation(customers: pd.DataFrame) -> pd.DataFrame:
    """Per system and field: share present, share valid after standardisation, distinct raw vs standard forms."""
    rows = []
    for system, part in customers.groupby("source_system", sort=True):
        for f in ("first_name", "last_name", "email", "phone", "postcode", "address"):
            if f not in part or f"{f}_std" not in part:
                continue
            raw, std = part[f], part[f"{f}_std"]
            present = raw.notna()
            rows.append((system, f, present.mean(), std[present].notna().mean() if present.any() else np.nan,
                         raw.nunique(), std.nunique()))
    return pd.DataFrame(rows, columns=["system", "field", "present", "valid_after_std", "distinct_raw",
                                       "distinct_std"])


def standardisation_examples(customers: pd.DataFrame, field: str, n: int = 5, seed: int = 0) -> pd.DataFrame:
    """Records whose raw value differs from the standard form (before -> after)."""
    d = customers[["source_system", field, f"{field}_std"]].dropna(subset=[field])
    changed = d[d[field].astype("string").str.strip().str.lower() != d[f"{field}_std"].astype("string").str.lower()]
    out = changed.sample(min(n, len(changed)), random_state=seed) if len(changed) else changed
    return masked(out.rename(columns={f"{field}_std": f"{field} (standardised)"}))


def shared_identifiers(customers: pd.DataFrame) -> pd.DataFrame:
    """How many records share an e-mail, phone or name+postcode: within one system (possible duplicate
    registrations) and across systems (the same person known to several touchpoints)."""
    keys = {"email": ["email_std"], "phone": ["phone_std"],
            "name + postcode": ["first_name_std", "last_name_std", "postcode_std"]}
    rows = []
    for ident, cols in keys.items():
        if not all(c in customers for c in cols):
            continue
        d = customers.dropna(subset=cols)
        grp = d.groupby(cols, sort=False)["source_system"]
        size, n_sys = grp.transform("size"), grp.transform("nunique")
        within = d.assign(size=size).groupby(cols + ["source_system"], sort=False)["size"].transform("size") > 1
        rows.append((ident, len(d), int(within.sum()), int((n_sys > 1).sum())))
    return pd.DataFrame(rows, columns=["identifier", "records_with_it", "shared_within_system",
                                       "shared_across_systems"])


def date_ranges(src: Sources) -> pd.DataFrame:
    """First and last date and span in days of every date column."""
    rows = []
    for name, df in src.tables.items():
        for col in df.columns:
            if pd.api.types.is_datetime64_any_dtype(df[col]) and df[col].notna().any():
                lo, hi = df[col].min(), df[col].max()
                rows.append((name, col, lo.date(), hi.date(), (hi - lo).days, df[col].isna().mean()))
    return pd.DataFrame(rows, columns=["table", "column", "first", "last", "days", "missing"])


def order_facts(src: Sources) -> pd.DataFrame:
    """Order-level facts: value, lines, units, channel, date (one row per order)."""
    lines = src["order_lines"]
    agg = lines.groupby("order_id").agg(lines=("line_no", "size"), units=("quantity", "sum"))
    return order_values(src["orders"], lines).join(agg, on="order_id")


# ----------------------------------------------------------------------------- plots

def plot_missingness(customers: pd.DataFrame):
    m = missingness(customers)
    fig, ax = plt.subplots(figsize=(1.2 * m.shape[1] + 2, 0.6 * m.shape[0] + 1.5))
    im = ax.imshow(m.to_numpy(dtype=float), cmap="Reds", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(m.shape[1]), [label(c) for c in m.columns], rotation=30, ha="right")
    ax.set_yticks(range(m.shape[0]), m.index)
    for (i, j), v in np.ndenumerate(m.to_numpy(dtype=float)):
        ax.text(j, i, f"{v:.0%}", ha="center", va="center", color="white" if v > 0.5 else "black", fontsize=9)
    fig.colorbar(im, ax=ax, label="share missing")
    ax.set_title("Missing person fields by source system")
    fig.tight_layout()
    return fig


def plot_orders_over_time(orders: pd.DataFrame, freq: str = "MS"):
    d = orders.groupby([pd.Grouper(key="order_date", freq=freq), "channel"]).size().unstack(fill_value=0)
    fig, ax = plt.subplots(figsize=(10, 3.5))
    d.plot(ax=ax, marker=".")
    ax.set_ylabel("orders per month")
    ax.set_xlabel("month")
    ax.set_title("Orders over time by channel")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_distributions(facts: pd.DataFrame, orders_per_record: pd.Series):
    fig, axes = plt.subplots(1, 3, figsize=(11.5, 3.5))
    v = facts["value"]
    axes[0].hist(v.clip(upper=v.quantile(0.99)), bins=50, color="#4c72b0")
    axes[0].set(title="Order value (top 1% clipped)", xlabel=money_label("order value"), ylabel="orders")
    axes[1].hist(facts["lines"].clip(upper=20), bins=np.arange(0.5, 21.5), color="#55a868")
    axes[1].set(title="Lines per order", xlabel="lines (20 = 20 or more)", ylabel="orders")
    axes[2].hist(orders_per_record.clip(upper=30), bins=np.arange(0.5, 31.5), color="#c44e52")
    axes[2].set(title="Orders per customer record", xlabel="orders (30 = 30 or more)", ylabel="records (log scale)",
                yscale="log")
    fig.tight_layout()
    return fig


def plot_departments(src: Sources):
    lines = src["order_lines"].merge(src["products"][["product_id", "department"]], on="product_id")
    rev = (lines["quantity"] * lines["unit_price"]).groupby(lines["department"]).sum().sort_values()
    fig, ax = plt.subplots(figsize=(8, 4))
    rev.plot.barh(ax=ax, color="#8172b2")
    ax.xaxis.set_major_formatter(plt.matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
    ax.set(title="Revenue by department", xlabel=money_label("revenue"), ylabel="")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- implausible values

#: Values typed when the real one was unknown (compared lower-cased, trimmed).
PLACEHOLDERS = frozenset({
    "n/a", "na", "n.a.", "none", "null", "nil", "unknown", "unk", "tba", "tbc", "test", "x", "xx", "xxx", "xxxx",
    "-", "--", ".", "?", "0", "00000", "01234", "012345", "123456", "1234567890", "no email", "noemail",
    "no.email", "test@test", "test@test.com", "a@a", "a@a.com", "none@none.com", "no@email.com", "not known",
    "not given", "refused", "dummy", "blank", "abc",
})
_PLACEHOLDER_RE = r"^(?:(.)\1{2,}|0+|9+|test\d*@.*|.*@(?:example|test)\.(?:com|org)|n/?a)$"


def placeholders(customers: pd.DataFrame, fields=("first_name", "last_name", "email", "phone", "postcode",
                                                    "address")) -> pd.DataFrame:
    """Placeholder values in person fields ("unknown", "test@test", "XXX", "0"): per system and field, how
    many records and the most common placeholders (they are not personal data, so they are shown)."""
    rows = []
    for f in fields:
        if f not in customers:
            continue
        raw = customers[f].astype("string").str.strip().str.lower()
        bad = (raw.isin(list(PLACEHOLDERS)) | raw.str.fullmatch(_PLACEHOLDER_RE)).fillna(False).astype(bool)
        if not bad.any():
            continue
        for system, part in customers.loc[bad, ["source_system"]].assign(v=customers.loc[bad, f]).groupby(
                "source_system", sort=True):
            top = part["v"].value_counts().head(3)
            rows.append((system, f, len(part), len(part) / int((customers["source_system"] == system).sum()),
                         ", ".join(f'"{v}" ({n:,})' for v, n in top.items())))
    return pd.DataFrame(rows, columns=["system", "field", "records", "share_of_records", "examples"])


def implausible_dates(src: Sources, min_age: int = 16, max_age: int = 110) -> pd.DataFrame:
    """Dates that cannot be right: sign-up after the record's last order, sign-up or orders after the data's
    last date, birth dates giving an age below ``min_age`` or above ``max_age``. Counts and examples (record ids
    and dates; a birth date shows its year only)."""
    customers, orders = src.customers, src["orders"]
    end = orders["order_date"].max()
    rows = []

    def add(check, table, column, mask, examples):
        n = int(mask.sum())
        rows.append((check, table, column, n, n / max(len(mask), 1), examples if n else ""))

    if "created_at" in customers:
        last = orders.groupby(["source_system", "source_id"])["order_date"].max().rename("last_order")
        c = customers[["source_system", "source_id", "created_at"]].join(last, on=["source_system", "source_id"])
        late = (c["created_at"] > c["last_order"]).to_numpy()
        ex = c[late].head(3)
        add("sign-up after the record's last order", "customers", "created_at", late,
            "; ".join(f"{s} {i}: signed up {a:%d %b %Y}, last order {b:%d %b %Y}"
                      for s, i, a, b in ex[["source_system", "source_id", "created_at", "last_order"]].itertuples(
                          index=False)))
        future = (customers["created_at"] > end).to_numpy()
        add("sign-up after the last order in the data", "customers", "created_at", future,
            "; ".join(f"{s} {i}: {a:%d %b %Y}" for s, i, a in
                      customers.loc[future, ["source_system", "source_id", "created_at"]].head(3).itertuples(
                          index=False)))
    if "dob" in customers:
        age = (end - customers["dob"]).dt.days / 365.25
        young, old = (age < min_age).fillna(False).to_numpy(), (age > max_age).fillna(False).to_numpy()
        for mask, what in ((young, f"younger than {min_age}"), (old, f"older than {max_age}")):
            add(f"birth date: {what} at the last order date", "customers", "dob", mask,
                "; ".join(f"{s} {i}: born {mask_value(d)}" for s, i, d in
                          customers.loc[mask, ["source_system", "source_id", "dob"]].head(3).itertuples(index=False)))
    if "contacts" in src.tables and "contact_date" in src["contacts"]:
        ct = src["contacts"]["contact_date"]
        future = (ct > end + pd.Timedelta(days=366)).to_numpy()
        add("contact more than a year after the last order", "contacts", "contact_date", future,
            "; ".join(f"{d:%d %b %Y}" for d in ct[future].head(3)))
    return pd.DataFrame(rows, columns=["check", "table", "column", "rows", "share_of_rows", "examples"])
