"""Readers of the public data sets crmlab is checked on (bundled under ``data/``, sources in data/README.md)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import standardise as std
from .affinity import Baskets
from .identity import Comparison, RecordMatcher


FEBRL_COMPARISONS = [
    Comparison("first_name_std", "name", (0.92, 0.8), tf=True, swap_with="last_name_std"),
    Comparison("last_name_std", "name", (0.94, 0.85), tf=True),
    Comparison("dob_str", "date"),
    Comparison("street_number", "exact"),
    Comparison("address_std", "string", (0.95, 0.88)),
    Comparison("address_2", "string", (0.95, 0.88)),
    Comparison("suburb", "string", (0.95, 0.88)),
    Comparison("postcode", "code"),
    Comparison("state", "exact"),
]
FEBRL_BLOCKING = [("names_sorted",), ("last_name_std", "postcode"), ("dob_str",),
                  ("postcode", "street_number"), ("last_soundex", "first_initial"), ("first_name_std", "suburb"),
                  ("address_std", "postcode"), ("street_number", "suburb"), ("suburb", "postcode"),
                  ("first_name_std", "postcode"), ("last_name_std", "suburb")]
FEBRL_TRAINING = [("dob_str",), ("last_name_std", "postcode"), ("first_name_std", "last_name_std"),
                  ("postcode", "street_number")]


def read_febrl4(folder) -> tuple[pd.DataFrame, np.ndarray]:
    """FEBRL 4 (two files of 5,000) as one record table with ``source_system`` 'A'/'B', standardised,
    without ``soc_sec_id``; returns (records, true entity per record)."""
    parts = []
    for name, system in (("dataset4a.csv", "A"), ("dataset4b.csv", "B")):
        d = pd.read_csv(Path(folder) / name, skipinitialspace=True, dtype=str, keep_default_na=False, na_values=[""])
        d.insert(0, "source_system", system)
        parts.append(d)
    d = pd.concat(parts, ignore_index=True).rename(columns={"rec_id": "source_id"})
    out = pd.DataFrame({
        "source_system": d["source_system"], "source_id": d["source_id"],
        "first_name_std": std.name(d["given_name"]), "last_name_std": std.name(d["surname"]),
        "dob": pd.to_datetime(d["date_of_birth"], format="%Y%m%d", errors="coerce"),
        "street_number": d["street_number"].astype("string"), "address_std": std.address(d["address_1"]),
        "address_2": std.name(d["address_2"], keep_digits=True), "suburb": std.name(d["suburb"]),
        "postcode": d["postcode"].astype("string"), "state": d["state"].astype("string").str.lower()})
    out["dob_str"] = d["date_of_birth"].astype("string").where(d["date_of_birth"].str.fullmatch(r"\d{8}").fillna(False))
    truth = d["source_id"].str.extract(r"rec-(\d+)-", expand=False).to_numpy()
    return out, truth


def febrl_matcher(**kwargs) -> "RecordMatcher":
    """RecordMatcher configured for FEBRL-style Australian records (link mode)."""
    kwargs.setdefault("mode", "link")
    return RecordMatcher(comparisons=FEBRL_COMPARISONS, blocking=FEBRL_BLOCKING, training=FEBRL_TRAINING,
                         **kwargs)




def read_cdnow(path) -> pd.DataFrame:
    """The CDNOW sample as shipped with lifetimes (customer, id, yyyymmdd, CDs, dollars) -> transactions."""
    df = pd.read_csv(path, sep=r"\s+", header=None, names=["customer_key", "_id", "date", "quantity", "value"],
                     dtype={"date": str})
    df["order_date"] = pd.to_datetime(df["date"], format="%Y%m%d")
    return df[["customer_key", "order_date", "quantity", "value"]]


def read_groceries(path) -> Baskets:
    """The Groceries data set (one basket per line, items comma-separated) as Baskets."""
    lines = Path(path).read_text().splitlines()
    return Baskets.from_lists([[i.strip() for i in line.split(",") if i.strip()] for line in lines])
