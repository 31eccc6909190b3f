"""Standardisation of person fields (part of the sources layer).

Every function takes a pandas Series of strings and returns a Series of the same length with
``<NA>`` where the input is missing or cannot be read. They are vectorised (pandas string
methods), so 1M records take seconds.
"""
from __future__ import annotations

import unicodedata

import numpy as np
import pandas as pd

from ._world_data import NICKNAMES, STREET_ABBREV

_NICK = {k.lower(): v.lower() for k, v in NICKNAMES.items()}
_STREET = {v.lower(): k.lower() for k, v in STREET_ABBREV.items() if v.lower() != k.lower()}


def _as_str(s: pd.Series) -> pd.Series:
    return s.astype("string")


def strip_accents(s: pd.Series) -> pd.Series:
    """'Zoë' -> 'Zoe' (NFKD decomposition, combining marks dropped)."""
    s = _as_str(s)
    uniq = s.dropna().unique()
    table = {u: "".join(c for c in unicodedata.normalize("NFKD", u) if not unicodedata.combining(c))
             for u in uniq}
    return s.map(table, na_action="ignore").astype("string")


def name(s: pd.Series, keep_digits: bool = False) -> pd.Series:
    """Lower case, accents removed, punctuation dropped (hyphen -> space), spaces collapsed."""
    s = strip_accents(s).str.lower()
    drop = r"[^a-z0-9 ]" if keep_digits else r"[^a-z ]"
    s = s.str.replace(r"[-_/.,]", " ", regex=True).str.replace(drop, "", regex=True)
    s = s.str.replace(r"\s+", " ", regex=True).str.strip()
    return s.mask(s == "")


def first_name(s: pd.Series) -> pd.Series:
    """Standardised first name with diminutives mapped to the given name ('Bill' -> 'william')."""
    s = name(s)
    return s.map(lambda v: _NICK.get(v, v), na_action="ignore").astype("string")


def email(s: pd.Series) -> pd.Series:
    """Lower-cased, trimmed e-mail; <NA> unless it looks like local@domain.tld."""
    s = _as_str(s).str.strip().str.lower().str.replace(r"\s+", "", regex=True)
    ok = s.str.fullmatch(r"[a-z0-9._%+'-]+@[a-z0-9.-]+\.[a-z]{2,}").fillna(False).astype(bool)
    return s.where(ok)


def phone(s: pd.Series, country_code: str = "44") -> pd.Series:
    """E.164 digits ('+447700900123'); national '0...' and '+44 (0)...' forms accepted.

    <NA> unless the result has 10 national digits.
    """
    s = _as_str(s).str.replace(r"\(0\)", "", regex=True).str.replace(r"[^0-9+]", "", regex=True)
    s = s.str.replace(r"^00", "+", regex=True)
    national = s.str.replace(rf"^\+{country_code}", "", regex=True).str.replace(r"^0", "", regex=True)
    ok = national.str.fullmatch(r"[1-9][0-9]{9}").fillna(False).astype(bool)
    return ("+" + country_code + national).where(ok)


def postcode(s: pd.Series) -> pd.Series:
    """UK postcode in canonical form 'SW1A 1AA'; <NA> if it does not parse."""
    s = _as_str(s).str.upper().str.replace(r"[^A-Z0-9]", "", regex=True)
    ok = s.str.fullmatch(r"[A-Z]{1,2}[0-9][A-Z0-9]?[0-9][A-Z]{2}").fillna(False).astype(bool)
    return (s.str[:-3] + " " + s.str[-3:]).where(ok)


def address(s: pd.Series) -> pd.Series:
    """Address line: name-standardised with street-type abbreviations expanded ('Rd' -> 'road')."""
    s = name(s, keep_digits=True)
    pattern = r"\b(" + "|".join(sorted(_STREET, key=len, reverse=True)) + r")\b"
    return s.str.replace(pattern, lambda m: _STREET[m.group(1)], regex=True)


def standardise_customers(df: pd.DataFrame) -> pd.DataFrame:
    """Add the ``*_std`` columns used downstream; the original columns are kept as read."""
    out = df.copy()
    cols = {"first_name": first_name, "last_name": name, "email": email, "phone": phone,
            "postcode": postcode, "address": address}
    for col, fn in cols.items():
        if col in out:
            out[f"{col}_std"] = fn(out[col])
    if "postcode_std" in out:
        out["postcode_area"] = out["postcode_std"].str.extract(r"^([A-Z]+)", expand=False)
    return out


def valid_share(raw: pd.Series, std: pd.Series) -> float:
    """Share of non-missing raw values that standardise to a valid value."""
    present = raw.notna().to_numpy()
    return float(np.nan if not present.any() else std.notna().to_numpy()[present].mean())
