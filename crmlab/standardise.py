"""Standardisation of person fields (part of the sources layer).

Every function takes a pandas Series of strings and returns a Series of the same length with
``<NA>`` where the input is missing or cannot be read. They are vectorised (pandas string
methods), so 1M records take seconds.
"""
from __future__ import annotations

import re
import unicodedata

import numpy as np
import pandas as pd

from ._world_data import NICKNAMES, STREET_ABBREV

_NICK = {k.lower(): v.lower() for k, v in NICKNAMES.items()}
_STREET = {v.lower(): k.lower() for k, v in STREET_ABBREV.items() if v.lower() != k.lower()}

# the patterns, shared by the vectorised functions and :func:`standardise_person` (one record)
_SEPARATORS = r"[-_/.,]"
_NOT_NAME = r"[^a-z ]"
_NOT_NAME_OR_DIGIT = r"[^a-z0-9 ]"
#: Python's ``\s`` spelled out (no whitespace lies above U+3000; a test checks the whole range): pyarrow's RE2
#: then runs the replacements, where ``\s`` itself sends pandas to Python's ``re`` value by value
_WHITESPACE = "".join(c for c in map(chr, range(0x3001)) if re.fullmatch(r"\s", c))
_SPACES = "[" + _WHITESPACE + "]+"
_EMAIL = r"[a-z0-9._%+'-]+@[a-z0-9.-]+\.[a-z]{2,}"
_PHONE_TRUNK = r"\(0\)"
_PHONE_JUNK = r"[^0-9+]"
_INTERNATIONAL = r"^00"
_TRUNK_ZERO = r"^0"
_NATIONAL = r"[1-9][0-9]{9}"
_POSTCODE_JUNK = r"[^A-Z0-9]"
_POSTCODE = r"[A-Z]{1,2}[0-9][A-Z0-9]?[0-9][A-Z]{2}"
_STREET_WORDS = r"\b(" + "|".join(sorted(_STREET, key=len, reverse=True)) + r")\b"
_AREA = r"^([A-Z]+)"


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
    drop = _NOT_NAME_OR_DIGIT if keep_digits else _NOT_NAME
    s = s.str.replace(_SEPARATORS, " ", regex=True).str.replace(drop, "", regex=True)
    s = s.str.replace(_SPACES, " ", regex=True).str.strip()
    return s.mask(s == "")


def first_name(s: pd.Series) -> pd.Series:
    """Standardised first name with diminutives mapped to the given name ('Bill' -> 'william')."""
    s = name(s)
    return s.map(lambda v: _NICK.get(v, v), na_action="ignore").astype("string")


def email(s: pd.Series) -> pd.Series:
    """Lower-cased, trimmed e-mail; <NA> unless it looks like local@domain.tld."""
    s = _as_str(s).str.strip().str.lower().str.replace(_SPACES, "", regex=True)
    ok = s.str.fullmatch(_EMAIL).fillna(False).astype(bool)
    return s.where(ok)


def phone(s: pd.Series, country_code: str = "44") -> pd.Series:
    """E.164 digits ('+447700900123'); national '0...' and '+44 (0)...' forms accepted.

    <NA> unless the result has 10 national digits.
    """
    s = _as_str(s).str.replace(_PHONE_TRUNK, "", regex=True).str.replace(_PHONE_JUNK, "", regex=True)
    s = s.str.replace(_INTERNATIONAL, "+", regex=True)
    national = s.str.replace(rf"^\+{country_code}", "", regex=True).str.replace(_TRUNK_ZERO, "", regex=True)
    ok = national.str.fullmatch(_NATIONAL).fillna(False).astype(bool)
    return ("+" + country_code + national).where(ok)


def postcode(s: pd.Series) -> pd.Series:
    """UK postcode in canonical form 'SW1A 1AA'; <NA> if it does not parse."""
    s = _as_str(s).str.upper().str.replace(_POSTCODE_JUNK, "", regex=True)
    ok = s.str.fullmatch(_POSTCODE).fillna(False).astype(bool)
    return (s.str[:-3] + " " + s.str[-3:]).where(ok)


def address(s: pd.Series) -> pd.Series:
    """Address line: name-standardised with street-type abbreviations expanded ('Rd' -> 'road')."""
    s = name(s, keep_digits=True)
    return s.str.replace(_STREET_WORDS, lambda m: _STREET[m.group(1)], regex=True)


def standardise_customers(df: pd.DataFrame) -> pd.DataFrame:
    """Add the ``*_std`` columns used downstream; the original columns are kept as read."""
    out = df.copy()
    cols = {"first_name": first_name, "last_name": name, "email": email, "phone": phone,
            "postcode": postcode, "address": address}
    for col, fn in cols.items():
        if col in out:
            out[f"{col}_std"] = fn(out[col])
    if "postcode_std" in out:
        out["postcode_area"] = out["postcode_std"].str.extract(_AREA, expand=False)
    return out


# ----------------------------------------------------------------------------- one record

_RE = {k: re.compile(v) for k, v in dict(sep=_SEPARATORS, not_name=_NOT_NAME, not_name_digit=_NOT_NAME_OR_DIGIT,
                                         spaces=_SPACES, email=_EMAIL, trunk=_PHONE_TRUNK, phone_junk=_PHONE_JUNK,
                                         international=_INTERNATIONAL, trunk_zero=_TRUNK_ZERO,
                                         national=_NATIONAL, pc_junk=_POSTCODE_JUNK, postcode=_POSTCODE,
                                         street=_STREET_WORDS, area=_AREA).items()}


def _accents_off(v: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", v) if not unicodedata.combining(c))


def _name_one(v, keep_digits: bool = False):
    if v is None:
        return None
    v = _accents_off(str(v)).lower()
    v = _RE["not_name_digit" if keep_digits else "not_name"].sub("", _RE["sep"].sub(" ", v))
    v = _RE["spaces"].sub(" ", v).strip()
    return v or None


def standardise_person(raw: dict, country_code: str = "44") -> dict:
    """One record's ``*_std`` fields (and ``postcode_area``) from its raw fields, as
    :func:`standardise_customers` gives them for a table (a test holds the two equal), in
    microseconds rather than the milliseconds pandas needs for a one-row table."""
    out = {}
    first = _name_one(raw.get("first_name"))
    out["first_name_std"] = None if first is None else _NICK.get(first, first)
    out["last_name_std"] = _name_one(raw.get("last_name"))
    e = raw.get("email")
    if e is not None:
        e = _RE["spaces"].sub("", str(e).strip().lower())
        e = e if _RE["email"].fullmatch(e) else None
    out["email_std"] = e
    p = raw.get("phone")
    if p is not None:
        p = _RE["phone_junk"].sub("", _RE["trunk"].sub("", str(p)))
        p = _RE["international"].sub("+", p)
        national = _RE["trunk_zero"].sub("", re.sub(rf"^\+{country_code}", "", p))
        p = "+" + country_code + national if _RE["national"].fullmatch(national) else None
    out["phone_std"] = p
    pc = raw.get("postcode")
    if pc is not None:
        pc = _RE["pc_junk"].sub("", str(pc).upper())
        pc = pc[:-3] + " " + pc[-3:] if _RE["postcode"].fullmatch(pc) else None
    out["postcode_std"] = pc
    a = _name_one(raw.get("address"), keep_digits=True)
    out["address_std"] = None if a is None else _RE["street"].sub(lambda m: _STREET[m.group(1)], a)
    area = None if pc is None else _RE["area"].match(pc)
    out["postcode_area"] = None if area is None else area.group(1)
    return out


def valid_share(raw: pd.Series, std: pd.Series) -> float:
    """Share of non-missing raw values that standardise to a valid value."""
    present = raw.notna().to_numpy()
    return float(np.nan if not present.any() else std.notna().to_numpy()[present].mean())
