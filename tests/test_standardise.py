from pathlib import Path

import pandas as pd

from crmlab import standardise as S


def test_names():
    got = S.first_name(pd.Series(["  Zoë ", "BILL", None, "Mary-Jane", "", "O'Brien", "Renée"]))
    assert got.tolist() == ["zoe", "william", pd.NA, "mary jane", pd.NA, "obrien", "renee"]
    assert S.name(pd.Series(["SMITH-JONES", "smith  jones"])).tolist() == ["smith jones", "smith jones"]


def test_phones_to_e164():
    raw = ["07700 900123", "+44 (0)7700-900-123", "0044 7700900123", "+447700900123", "12345", None, "n/a"]
    assert S.phone(pd.Series(raw)).tolist() == ["+447700900123"] * 4 + [pd.NA] * 3


def test_postcodes_canonical():
    raw = ["sw1a1aa", "SW1A 1AA", " ls6 2ab", "M1 1AE", "xx", None]
    assert S.postcode(pd.Series(raw)).tolist() == ["SW1A 1AA", "SW1A 1AA", "LS6 2AB", "M1 1AE", pd.NA, pd.NA]


def test_emails():
    got = S.email(pd.Series([" John.Smith@Gmail.COM", "bad@", "a b@x.org", None]))
    assert got.tolist() == ["john.smith@gmail.com", pd.NA, "ab@x.org", pd.NA]


def test_address_keeps_numbers_and_expands_abbreviations():
    got = S.address(pd.Series(["12 High St", "4, Oak Rd.", "7 Elm Gdns", None]))
    assert got.tolist() == ["12 high street", "4 oak road", "7 elm gardens", pd.NA]


def test_standardise_customers_adds_columns_keeps_raw():
    df = pd.DataFrame({"first_name": ["Bill"], "last_name": ["SMITH"], "postcode": ["sw1a1aa"]})
    out = S.standardise_customers(df)
    assert out["first_name"].tolist() == ["Bill"]
    assert out[["first_name_std", "last_name_std", "postcode_std", "postcode_area"]].iloc[0].tolist() == [
        "william", "smith", "SW1A 1AA", "SW"]


def test_one_record_standardisation_equals_the_table_path():
    """standardise_person + identity.person_keys (the touchpoint service's per-request path) give
    exactly what standardise_customers + identity.add_keys give a table: every sample record, the
    identify holdout, and awkward values (accents, dotted capitals, junk, odd spacing)."""
    import glob

    from crmlab import identity

    root = Path(__file__).resolve().parents[1] / "data" / "sample"
    cols = ["first_name", "last_name", "dob", "email", "phone", "address", "postcode"]
    frames = [pd.read_csv(f, dtype=str)[cols] for f in sorted(glob.glob(str(root / "customers_*.csv")))]
    frames.append(pd.read_csv(root / "truth" / "identify_holdout.csv", dtype=str)[cols])
    frames.append(pd.DataFrame({
        "first_name": ["  Zoë-Ann ", "", "İsmail", "O'Brien", None, "Bill"],
        "last_name": ["van der BERG", "---", "ÇELİK", "Ñúñez", "x", "Smith-Jones"],
        "dob": [None, "1980-02-29", None, None, "1999-12-31", None],
        "email": [" A.B@X.CO.UK ", "bad@", "x@y.z", None, "AB CD@ef.com", "n/a"],
        "phone": ["0044 7700 900123", "+44(0)7700900123", "07700 90012", "abc", "+4407700900123", "0"],
        "address": ["10 High St.", "Flat 2/3, Church Rd", "", None, "1 The Ave", "XXX"],
        "postcode": ["sw1a1aa", "SW1A 1AA ", "XXX", None, "ec1a1bb", "N/A"]}))
    raw = pd.concat(frames, ignore_index=True).astype("string")
    raw["dob"] = pd.to_datetime(raw["dob"], errors="coerce")
    table = identity.add_keys(S.standardise_customers(raw))
    for i, rec in enumerate(raw.astype(object).where(raw.notna(), None).to_dict("records")):
        one = identity.person_keys(S.standardise_person(rec), rec["dob"])
        want = {c: (None if pd.isna(table.at[i, c]) else str(table.at[i, c])) for c in one}
        assert one == want, (i, {c: (one[c], want[c]) for c in one if one[c] != want[c]})
    assert len(one) == 16 and len(raw) > 10_000


def test_whitespace_is_pythons_whole_set_and_runs_on_the_arrow_path(monkeypatch):
    """The spelled-out class matches exactly what Python's \\s matches over all of Unicode, so pyarrow runs
    the replacements (no per-value fallback), and names, e-mails and addresses come out as with \\s."""
    import re
    import sys

    every = "".join(c for c in map(chr, range(sys.maxunicode + 1)) if re.fullmatch(r"\s", c))
    assert S._WHITESPACE == every
    raw = pd.Series(["Anne\x0bMarie", "Jo\xa0\u2003Smith", "x\x1cy  z", "plain", None, "a\u3000b\tc\nd",
                     "12\u2003High\xa0\xa0St", " A.B @Ex\u2003ample.com\x85"], dtype="string")
    assert not raw.array._needs_python_regex(S._SPACES)
    fns = (S.name, S.first_name, S.address, S.email)
    got = [f(raw).tolist() for f in fns]
    monkeypatch.setattr(S, "_SPACES", r"\s+")                   # Python's own \\s, value by value
    assert raw.array._needs_python_regex(S._SPACES)
    assert got == [f(raw).tolist() for f in fns]
