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
