"""Synthetic CRM world with planted, known truth.

``generate(WorldSpec(customers=1000, seed=1), "out/")`` writes the documented input tables
(``customers_<system>``, ``products``, ``orders``, ``order_lines``, ``campaigns``, ``contacts``) and,
under ``out/truth/``, what later stages must recover:

* ``record_truth``: source record -> true customer, with the variations planted in the record
  (typos, nicknames, transposed names, missing fields, old address/phone/e-mail, shared households);
* ``customer_truth``: buy-till-you-die draws per customer (Poisson rate per week, dropout
  probability, Gamma-Gamma spend rate), whether and when the customer dropped out, true channel
  and media preferences, life stage;
* ``affinity_truth``: planted bundles/complements and the planted sensitive pair;
* ``uplift_truth``: planted incremental response per campaign and life stage;
* ``truth.json``: the population parameters (BG/NBD r, alpha, a, b; Gamma-Gamma p, q, gamma).

The process: every customer makes a first purchase at acquisition, then purchases as a Poisson
process (rate ``lambda ~ Gamma(r, alpha)`` per week) and becomes inactive after each repeat purchase
with probability ``p ~ Beta(a, b)`` (BG/NBD). Each order's value is ``Gamma(gg_p, nu)`` with
``nu ~ Gamma(gg_q, gg_gamma)`` (Gamma-Gamma), spread over the basket's lines. Customers are drawn
in chunks with their own random streams, so memory stays bounded and output depends only on the
seed and size.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import _world_data as W

SYSTEMS = ("store", "web", "callcentre")
CHANNELS = ("store", "web", "phone")          # the channel each system records orders for
MEDIA = ("email", "mail", "sms")
LIFE_STAGES = ("young", "family", "senior")

# per system: probabilities of each planted variation in a record
RECORD_PROFILE = {
    "store": dict(typo=0.04, nick=0.08, swap=0.01, case=0.15, miss_email=0.45, miss_phone=0.25,
                  miss_dob=0.10, miss_addr=0.02, old_addr=0.6, old_phone=0.5, old_email=0.5),
    "web": dict(typo=0.03, nick=0.15, swap=0.005, case=0.20, miss_email=0.0, miss_phone=0.5,
                miss_dob=0.55, miss_addr=0.05, old_addr=0.3, old_phone=0.3, old_email=0.3),
    "callcentre": dict(typo=0.10, nick=0.10, swap=0.03, case=0.05, miss_email=0.6, miss_phone=0.0,
                       miss_dob=0.35, miss_addr=0.15, old_addr=0.5, old_phone=0.2, old_email=0.5),
}


@dataclass(frozen=True)
class Campaign:
    campaign_id: str
    name: str
    start_date: str
    media: tuple[str, ...]
    window_days: int
    uplift: tuple[float, float, float]      # incremental response if alive, by LIFE_STAGES
    contact_rate: float = 0.4
    control_share: float = 0.2


DEFAULT_CAMPAIGNS = (
    Campaign("WB25", "Win-back mailing", "2025-04-07", ("mail",), 30, (0.02, 0.05, 0.09)),
    Campaign("SP26", "Spring e-mail and SMS", "2026-03-02", ("email", "sms"), 21, (0.08, 0.04, 0.01)),
    Campaign("SU26", "Summer SMS flash sale", "2026-05-18", ("sms",), 14, (0.0, 0.0, 0.0)),
)


@dataclass(frozen=True)
class WorldSpec:
    """Size, seed and true parameters of a synthetic world (time unit of BG/NBD: weeks)."""

    customers: int = 5000
    seed: int = 42
    start: str = "2024-07-01"
    end: str = "2026-06-30"
    r: float = 0.55
    alpha: float = 7.0
    a: float = 0.8
    b: float = 3.2
    gg_p: float = 6.0
    gg_q: float = 4.0
    gg_gamma: float = 40.0
    household_share: float = 0.12
    mover_share: float = 0.10
    duplicate_share: float = 0.03
    campaigns: tuple[Campaign, ...] = field(default=DEFAULT_CAMPAIGNS)
    chunk: int = 100_000

    def __post_init__(self):
        if self.customers < 1:
            raise ValueError("customers must be >= 1")
        if pd.Timestamp(self.end) - pd.Timestamp(self.start) < pd.Timedelta(days=120):
            raise ValueError("the world must span at least 120 days")


# ----------------------------------------------------------------------------- helpers

def _zipf(n: int, s: float = 1.0, shift: float = 3.0) -> np.ndarray:
    w = 1.0 / (np.arange(n) + shift) ** s
    return w / w.sum()


def _pick(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Row-wise categorical draw: column index where the row's cumulative probability passes u."""
    return np.minimum((u[:, None] > cum).sum(axis=1), cum.shape[1] - 1)


def _scrambled(n: int, mult: int, add: int, mod: int) -> np.ndarray:
    """n distinct pseudo-random integers in [0, mod) (an affine bijection of 0..n-1)."""
    return (np.arange(n, dtype=np.int64) * mult + add) % mod


def _s(values) -> pd.Series:
    """Text as Arrow holds it (its bytes, not a Python object per value: a 10M-customer world's names)."""
    return pd.Series(values, dtype="str")


_KEYBOARD = {c: n for c, n in zip("qwertyuiopasdfghjklzxcvbnm",
                                  ["wa", "qes", "wrd", "etf", "ryg", "tuh", "yij", "uok", "ipl", "ol",
                                   "qsz", "awdx", "sefc", "drgv", "fthb", "gyjn", "hukm", "jil", "kop",
                                   "asx", "zsdc", "xdfv", "cfgb", "vghn", "bhjm", "njk"])}


def _typo(s: str, rnd: random.Random) -> str:
    if len(s) < 3:
        return s
    i = rnd.randrange(1, len(s))
    op = rnd.random()
    c = s[i].lower()
    if op < 0.35 and c in _KEYBOARD:                       # neighbouring key
        rep = rnd.choice(_KEYBOARD[c])
        return s[:i] + (rep.upper() if s[i].isupper() else rep) + s[i + 1:]
    if op < 0.6:                                            # dropped letter
        return s[:i] + s[i + 1:]
    if op < 0.8 and i < len(s) - 1:                         # transposed letters
        return s[:i] + s[i + 1] + s[i] + s[i + 2:]
    return s[:i] + s[i] + s[i:]                             # doubled letter


# ----------------------------------------------------------------------------- products

def make_products(rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    """Product table (department-major order) and each product's popularity weight within its department."""
    rows, weights = [], []
    for dept, cats in W.TAXONOMY.items():
        base_price = W.DEPT_PRICE[dept]
        for cat, items in cats.items():
            for item in items:
                price = round(base_price * float(rng.lognormal(0.0, 0.35)), 2)
                for variant, mult, pop in (("", 1.0, 1.0), ("Premium ", 1.8, 0.35)):
                    rows.append((f"{variant}{item}", cat, dept, round(price * mult, 2),
                                 cat in W.SENSITIVE_CATEGORIES, item if not variant else None))
                    weights.append(pop * float(rng.lognormal(0.0, 0.8)))
    df = pd.DataFrame(rows, columns=["product_name", "category", "department", "list_price",
                                     "sensitive", "_base"])
    weights = np.asarray(weights)
    planted = {name for ants, cons, *_ in W.AFFINITIES for name in (*ants, cons)}
    weights[df["_base"].isin(planted).to_numpy()] *= 3.0        # planted items are common enough to matter
    df.insert(0, "product_id", [f"P{i + 1:04d}" for i in range(len(df))])
    return df, weights


# ----------------------------------------------------------------------------- customers

def _addresses(rng, n):
    towns = W.TOWNS
    tw = np.array([t[3] for t in towns])
    tw /= tw.sum()
    t_idx = rng.choice(len(towns), n, p=tw)
    district = 1 + (rng.random(n) * np.array([t[2] for t in towns])[t_idx]).astype(int)
    letters = np.array(list("ABDEFGHJLNPQRSTUWXYZ"), dtype=object)
    inward = (_s(rng.integers(1, 10, n).astype(str)) + letters[rng.integers(0, 20, n)]
              + letters[rng.integers(0, 20, n)])
    area = _s(np.array([t[1] for t in towns], dtype=object)[t_idx])
    postcode = area + _s(district.astype(str)) + " " + inward
    house = np.minimum(1 + rng.geometric(0.04, n), 400)
    street = (_s(house.astype(str)) + " " + _s(np.array(W.STREETS, dtype=object)[rng.integers(0, len(W.STREETS), n)])
              + " " + _s(np.array(W.STREET_TYPES, dtype=object)[rng.integers(0, len(W.STREET_TYPES), n)]))
    town = _s(np.array([t[0] for t in towns], dtype=object)[t_idx])
    return street, town, postcode


def _emails(rng, first, last, n):
    f = first.str.lower().str.replace(r"[^a-z]", "", regex=True)
    la = last.str.lower().str.replace(r"[^a-z]", "", regex=True)
    pattern = rng.integers(0, 5, n)
    local = np.select([pattern == 0, pattern == 1, pattern == 2, pattern == 3],
                      [f + "." + la, f + la, f.str[0] + "." + la, f + "_" + la], default=la + "." + f)
    local = _s(local)
    digits = rng.random(n) < 0.4
    local = local.where(~digits, local + _s(rng.integers(1, 99, n).astype(str)))
    dom = _s(np.array(W.EMAIL_DOMAINS, dtype=object)[rng.choice(len(W.EMAIL_DOMAINS), n, p=_zipf(len(W.EMAIL_DOMAINS), 1.2, 1.0))])
    email = local + "@" + dom
    dup = email.duplicated(keep="first").to_numpy()
    email[dup] = local[dup] + _s(np.flatnonzero(dup).astype(str)) + "@" + dom[dup]
    return email


def make_customers(rng: np.random.Generator, spec: WorldSpec) -> dict:
    """True customers: identity, household, buy-till-you-die draws, channel/media/department preferences."""
    n = spec.customers
    start, end = pd.Timestamp(spec.start), pd.Timestamp(spec.end)
    horizon = (end - start).days
    life = rng.choice(3, n, p=[0.3, 0.4, 0.3])
    age = np.select([life == 0, life == 1], [rng.integers(18, 35, n), rng.integers(35, 55, n)],
                    rng.integers(55, 86, n))
    dob = (np.datetime64(end.date()) - (age * 365.25 + rng.integers(0, 365, n)).astype("timedelta64[D]"))
    first = _s(np.array(W.FIRST_NAMES, dtype=object)[rng.choice(len(W.FIRST_NAMES), n, p=_zipf(len(W.FIRST_NAMES), 0.7))])
    last = _s(np.array(W.SURNAMES, dtype=object)[rng.choice(len(W.SURNAMES), n, p=_zipf(len(W.SURNAMES), 1.0, 2.0))])
    street, town, postcode = _addresses(rng, n)

    # shared households: a joiner takes a host's address (and usually surname)
    household = np.arange(n)
    joiner = rng.random(n) < spec.household_share
    hosts = np.flatnonzero(~joiner)
    if len(hosts) and joiner.any():
        j = np.flatnonzero(joiner)
        h = hosts[rng.integers(0, len(hosts), len(j))]
        household[j] = h
        street[j], town[j], postcode[j] = street[h].to_numpy(), town[h].to_numpy(), postcode[h].to_numpy()
        same_name = rng.random(len(j)) < 0.7
        last[j[same_name]] = last[h[same_name]].to_numpy()

    mover = rng.random(n) < spec.mover_share
    old_street, old_town, old_postcode = _addresses(rng, n)
    phone = _s(rng.integers(10**8, 10**9, n).astype(str)).radd("07")
    old_phone = _s(rng.integers(10**8, 10**9, n).astype(str)).radd("07")
    email = _emails(rng, first, last, n)
    old_email = _emails(rng, first, last, n)
    clash = old_email.isin(set(email)).to_numpy()            # an address belongs to one person only
    parts = old_email[clash].str.split("@", n=1)
    old_email[clash] = parts.str[0] + "." + _s(np.flatnonzero(clash).astype(str)) .to_numpy() + "@" + parts.str[1]

    acq_day = rng.integers(0, horizon - 28, n)
    lam = rng.gamma(spec.r, 1.0 / spec.alpha, n)
    p = rng.beta(spec.a, spec.b, n)
    nu = rng.gamma(spec.gg_q, 1.0 / spec.gg_gamma, n)

    chan_alpha = np.array([[0.35, 1.3, 0.15], [0.9, 0.8, 0.2], [1.3, 0.3, 0.5]])[life]
    chan = rng.gamma(chan_alpha)
    chan /= chan.sum(1, keepdims=True)
    chan[chan < 0.08] = 0.0
    chan[chan.sum(1) == 0, 0] = 1.0
    chan /= chan.sum(1, keepdims=True)
    media_alpha = np.array([[1.2, 0.2, 0.8], [0.8, 0.5, 0.5], [0.3, 1.3, 0.3]])[life]
    media = rng.gamma(media_alpha)
    media /= media.sum(1, keepdims=True)

    depts = list(W.TAXONOMY)
    base = np.full(len(depts), 0.6)
    base[:4] = 1.5                                               # groceries are everyone's staple
    dept_alpha = np.tile(base, (3, 1))
    boosts = {0: {"Electronics": 3, "Clothing": 2}, 1: {"Baby": 5, "Leisure": 2},   # by life stage
              2: {"Garden & Outdoor": 3, "Health & Beauty": 2}}
    for stage, by_dept in boosts.items():
        for d, f in by_dept.items():
            dept_alpha[stage, depts.index(d)] *= f
    dept_alpha[[0, 2], depts.index("Baby")] *= 0.1
    dept = rng.gamma(dept_alpha[life]).astype(np.float32)
    dept /= dept.sum(1, keepdims=True)

    return dict(n=n, life=life, dob=dob, first=first, last=last, street=street, town=town,
                postcode=postcode, household=household, mover=mover, old_street=old_street,
                old_town=old_town, old_postcode=old_postcode, phone=phone, old_phone=old_phone,
                email=email, old_email=old_email, acq_day=acq_day, lam=lam, p=p, nu=nu,
                chan=chan, media=media, dept=dept)


# ----------------------------------------------------------------------------- source records

_ID_FORMAT = {  # system -> (prefix, multiplier, offset, modulus, formatter)
    "store": ("L", 7_919_000_003, 4_012_345_678, 10**10, lambda v: v.astype(str).str.zfill(10)),
    "web": ("W", 2_654_435_761, 0x5A17C0DE, 2**32, lambda v: v.map("{:08x}".format)),
    "callcentre": ("C", 3_141_597, 1_234_567, 10**7, lambda v: v.astype(str).str.zfill(7)),
}


def _person_records(rng, rnd, C: dict, spec: WorldSpec, system: str, prof: dict, cust_all: np.ndarray,
                    is_dup: np.ndarray, ids_for=None):
    """One system's records of the customers ``cust_all`` with planted variation (``prof``); returns
    (table in random row order, its truth rows, the ids in ``cust_all`` order). ``ids_for(m)``: ids
    other than the system's own scrambled format."""
    start = np.datetime64(pd.Timestamp(spec.start).date())
    accented = dict(W.ACCENTED)
    nick_of = {}
    for short, full in W.NICKNAMES.items():
        nick_of.setdefault(full, []).append(short)
    m = len(cust_all)
    u = lambda: rng.random(m)                                 # noqa: E731
    flags = {}
    first = C["first"][cust_all].reset_index(drop=True)
    last = C["last"][cust_all].reset_index(drop=True)
    # accents: recorded with the accent in about half the records of accented names
    acc = first.isin(list(accented)).to_numpy() & (u() < 0.5)
    first[acc] = first[acc].map(accented)
    nick = (u() < prof["nick"]) & first.isin(list(nick_of)).to_numpy()
    first[nick] = [rnd.choice(nick_of[v]) for v in first[nick]]
    flags["nickname"] = nick
    for col, ser in (("first", first), ("last", last)):
        t = u() < prof["typo"] / 2
        ser[t] = [_typo(v, rnd) for v in ser[t]]
        flags[f"typo_{col}"] = t
    swap = u() < prof["swap"]
    first[swap], last[swap] = last[swap].to_numpy(), first[swap].to_numpy()
    flags["swapped_names"] = swap
    case = u()
    up, lo = case < prof["case"] / 2, (case >= prof["case"] / 2) & (case < prof["case"])
    first[up], last[up] = first[up].str.upper(), last[up].str.upper()
    first[lo], last[lo] = first[lo].str.lower(), last[lo].str.lower()

    mover = C["mover"][cust_all]
    old_addr = mover & ((u() < prof["old_addr"]) | is_dup)
    street = C["street"][cust_all].reset_index(drop=True)
    town = C["town"][cust_all].reset_index(drop=True)
    postcode = C["postcode"][cust_all].reset_index(drop=True)
    street[old_addr] = C["old_street"][cust_all[old_addr]].to_numpy()
    town[old_addr] = C["old_town"][cust_all[old_addr]].to_numpy()
    postcode[old_addr] = C["old_postcode"][cust_all[old_addr]].to_numpy()
    flags["old_address"] = old_addr
    abbrev = u() < 0.3
    for full, short in W.STREET_ABBREV.items():
        street[abbrev] = street[abbrev].str.replace(f" {full}", f" {short}", regex=False)
    pc_style = rng.integers(0, 4, m)
    postcode[pc_style == 1] = postcode[pc_style == 1].str.replace(" ", "", regex=False)
    postcode[pc_style == 2] = postcode[pc_style == 2].str.lower()

    phone = C["phone"][cust_all].reset_index(drop=True)
    old_ph = (u() < 0.25 * prof["old_phone"]) | (is_dup & (u() < 0.5))
    phone[old_ph] = C["old_phone"][cust_all[old_ph]].to_numpy()
    flags["old_phone"] = old_ph
    style = rng.integers(0, 4, m)
    phone = np.select([style == 0, style == 1, style == 2],
                      [phone.str[:5] + " " + phone.str[5:], "+44 " + phone.str[1:],
                       "+44 (0)" + phone.str[1:5] + "-" + phone.str[5:8] + "-" + phone.str[8:]], default=phone)
    phone = _s(phone)
    email = C["email"][cust_all].reset_index(drop=True)
    old_em = (u() < 0.3 * prof["old_email"]) | (is_dup & (system == "web"))
    email[old_em] = C["old_email"][cust_all[old_em]].to_numpy()
    flags["old_email"] = old_em
    shout = u() < 0.05
    email[shout] = email[shout].str.upper()
    dob = pd.Series(C["dob"][cust_all]).astype("datetime64[s]")

    for col, key in ((email, "miss_email"), (phone, "miss_phone"), (dob, "miss_dob")):
        miss = u() < prof[key]
        col[miss] = None
        flags[key.replace("miss_", "missing_")] = miss
    for col, junk in ((email, ["n/a", "none", "test@test", "no email"]), (phone, ["0", "n/a", "01234", "tba"]),
                      (postcode, ["N/A", "XXX", "unknown"])):
        bad = u() < 0.01                                    # placeholder junk typed at the till
        col[bad] = np.array(junk, dtype=object)[rng.integers(0, len(junk), int(bad.sum()))]
        flags["junk_value"] = flags.get("junk_value", np.zeros(m, bool)) | bad
    miss_addr = u() < prof["miss_addr"]
    street[miss_addr] = None
    postcode[miss_addr & (u() < 0.7)] = None
    flags["missing_address"] = miss_addr

    created = start + C["acq_day"][cust_all] - rng.integers(0, 15, m) + is_dup * rng.integers(30, 200, m)
    pref_media = C["media"][cust_all]
    if ids_for is None:
        prefix, mult, add, mod, fmt = _ID_FORMAT[system]
        ids = prefix + fmt(pd.Series(_scrambled(m, mult, add, mod)))
    else:
        ids = ids_for(m)
    hh = C["household"][cust_all] != cust_all
    table = pd.DataFrame({
        "source_id": ids.to_numpy(), "first_name": first.to_numpy(), "last_name": last.to_numpy(),
        "dob": dob.to_numpy(), "email": email.to_numpy(), "phone": phone.to_numpy(),
        "address": street.to_numpy(), "town": town.to_numpy(), "postcode": postcode.to_numpy(),
        "created_at": pd.Series(created.astype("datetime64[D]")).astype("datetime64[s]").to_numpy(),
        "email_opt_in": (pref_media[:, 0] > 0.25) | (u() < 0.15),
        "mail_opt_in": (pref_media[:, 1] > 0.25) | (u() < 0.15),
        "sms_opt_in": (pref_media[:, 2] > 0.25) | (u() < 0.15),
    })
    for col in ("first_name", "last_name", "email", "phone", "address", "town", "postcode"):
        table[col] = table[col].astype("string")
    order = rng.permutation(m)
    flag_names = np.array(list(flags), dtype=object)
    fm = np.column_stack([flags[k] for k in flags])
    fm = np.column_stack([fm, is_dup, hh])
    flag_names = np.r_[flag_names, ["duplicate_record", "shared_household"]]
    variations = [",".join(flag_names[row]) for row in fm]
    truth = pd.DataFrame({"source_system": system, "source_id": ids.to_numpy(), "customer_id": cust_all + 1,
                          "variations": variations}).iloc[order]
    return table.iloc[order].reset_index(drop=True), truth, ids


def make_records(rng: np.random.Generator, C: dict, spec: WorldSpec, emit=None):
    """Source records per system with planted variation; returns tables, truth and the order lookup.

    ``emit(name, table, truth)``: each system's table and truth rows are handed over as they are made
    and not kept (tables and truth are then returned empty), so a large world holds one system's
    records at a time."""
    n = C["n"]
    has = C["chan"] > 0
    has[:, 2] |= rng.random(n) < 0.08                            # service calls create call-centre records
    rnd = random.Random(int(rng.integers(2**31)))
    tables, truths, lookup = {}, [], {}
    for s_i, system in enumerate(SYSTEMS):
        prof = RECORD_PROFILE[system]
        cust = np.flatnonzero(has[:, s_i])
        dup = cust[rng.random(len(cust)) < spec.duplicate_share]
        cust_all = np.concatenate([cust, dup])
        is_dup = np.r_[np.zeros(len(cust), bool), np.ones(len(dup), bool)]
        table, truth, ids = _person_records(rng, rnd, C, spec, system, prof, cust_all, is_dup)
        if emit is None:
            tables[f"customers_{system}"] = table
            truths.append(truth)
        else:
            emit(f"customers_{system}", table, truth)
            del table, truth
        first_rec = np.full(n, -1, np.int64)
        first_rec[cust] = np.arange(len(cust))
        second_rec = np.full(n, -1, np.int64)
        second_rec[dup] = len(cust) + np.arange(len(dup))
        lookup[system] = (ids.to_numpy(dtype=object), first_rec, second_rec)
    truth = pd.concat(truths, ignore_index=True) if truths else pd.DataFrame()
    return tables, truth, lookup, has


#: variation of the person fields a touchpoint is given at the moment of contact: current details
#: (the customer is there), typed with the errors of a till or a call-centre screen
HOLDOUT_PROFILE = dict(typo=0.05, nick=0.10, swap=0.01, case=0.10, miss_email=0.3, miss_phone=0.3,
                       miss_dob=0.3, miss_addr=0.05, old_addr=0.0, old_phone=0.0, old_email=0.0)


def make_identify_holdout(rng: np.random.Generator, C: dict, spec: WorldSpec, has: np.ndarray) -> pd.DataFrame:
    """Person records held back from the batch, for checking real-time identification: records of
    known customers (``customer_id`` set) and of people who are not customers (``customer_id`` <NA>),
    a third of whom live in a known customer's household, mostly under the same surname."""
    known = np.flatnonzero(has.any(axis=1))
    n_known = int(min(2000, max(50, spec.customers // 10), len(known)))
    n_new = max(n_known // 5, 1)
    rnd = random.Random(int(rng.integers(2**31)))
    pick = np.sort(rng.choice(known, n_known, replace=False))
    kt, ktruth, _ = _person_records(rng, rnd, C, spec, "touchpoint", HOLDOUT_PROFILE, pick, np.zeros(n_known, bool),
                                    ids_for=lambda m: _s(np.char.add("HK", np.arange(m).astype(str))))
    N = make_customers(rng, replace(spec, customers=n_new))
    joins = np.flatnonzero(rng.random(n_new) < 1 / 3)
    hosts = rng.choice(known, len(joins))
    for col in ("street", "town", "postcode"):
        N[col][joins] = C[col][hosts].to_numpy()
    same = rng.random(len(joins)) < 0.7
    N["last"][joins[same]] = C["last"][hosts[same]].to_numpy()
    N["household"] = np.arange(n_new)                 # a joiner is a person of their own, not a duplicate
    nt, ntruth, _ = _person_records(rng, rnd, N, spec, "touchpoint", HOLDOUT_PROFILE, np.arange(n_new),
                                    np.zeros(n_new, bool),
                                    ids_for=lambda m: _s(np.char.add("HN", np.arange(m).astype(str))))
    host_of = np.zeros(n_new, np.int64)
    host_of[joins] = hosts + 1
    kt["customer_id"] = pd.array(ktruth["customer_id"].to_numpy(), dtype="Int64")
    kt["household_of"] = pd.array([pd.NA] * n_known, dtype="Int64")
    nt["customer_id"] = pd.array([pd.NA] * n_new, dtype="Int64")
    nt["household_of"] = pd.array(host_of[ntruth["customer_id"].to_numpy() - 1], dtype="Int64").astype("Int64")
    nt.loc[nt["household_of"] == 0, "household_of"] = pd.NA
    out = pd.concat([kt, nt], ignore_index=True)
    return out.drop(columns=["created_at", "email_opt_in", "mail_opt_in", "sms_opt_in"])


# ----------------------------------------------------------------------------- orders and lines

class _Catalogue:
    """Product draws by department and the planted affinities as index arrays."""

    def __init__(self, products: pd.DataFrame, weights: np.ndarray):
        depts = list(W.TAXONOMY)
        d_idx = products["department"].map({d: i for i, d in enumerate(depts)}).to_numpy()
        self.n = len(products)
        self.dept_start = np.searchsorted(d_idx, np.arange(len(depts) + 1))
        cum = np.empty(self.n)
        for d in range(len(depts)):
            lo, hi = self.dept_start[d], self.dept_start[d + 1]
            cum[lo:hi] = d + np.cumsum(weights[lo:hi]) / weights[lo:hi].sum()
        self.cum = cum
        self.price = products["list_price"].to_numpy()
        by_base = {b: i for i, b in enumerate(products["_base"]) if b is not None}
        self.rules = [([by_base[a] for a in ants], by_base[cons], prob)
                      for ants, cons, prob, _ in W.AFFINITIES]

    def draw(self, dept: np.ndarray, u: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(self.cum, dept + u, side="right")
        return np.clip(idx, self.dept_start[dept], self.dept_start[dept + 1] - 1)


def _baskets(rng, cat: _Catalogue, order_cust: np.ndarray, value: np.ndarray, dept_pref: np.ndarray):
    """Order lines for orders of known value; planted affinities applied; prices sum to the value."""
    n_orders = len(order_cust)
    n_lines = 1 + rng.poisson(value / 30.0)
    line_order = np.repeat(np.arange(n_orders), n_lines)
    dcum = np.cumsum(dept_pref[order_cust[line_order]], axis=1)
    dept = _pick(dcum, rng.random(len(line_order)) * dcum[:, -1])
    prod = cat.draw(dept, rng.random(len(line_order)))
    qty = 1 + rng.poisson(0.25, len(line_order))
    P = cat.n
    key = line_order.astype(np.int64) * P + prod
    for ants, cons, prob in cat.rules:
        item = key % P
        orders_with = np.unique(key[item == ants[0]] // P)
        for a in ants[1:]:
            orders_with = np.intersect1d(orders_with, key[item == a] // P)
        add = orders_with[rng.random(len(orders_with)) < prob]
        key = np.r_[key, add * P + cons]
        qty = np.r_[qty, np.ones(len(add), np.int64)]
    srt = np.argsort(key, kind="stable")                  # merge repeated (order, product) lines
    key, qty = key[srt], qty[srt]
    new = np.r_[True, key[1:] != key[:-1]]
    ukey, quantity = key[new], np.add.reduceat(qty, np.flatnonzero(new))
    l_order, l_prod = ukey // P, ukey % P
    list_value = np.bincount(l_order, weights=cat.price[l_prod] * quantity, minlength=n_orders)
    scale = value / list_value
    unit_price = np.maximum(np.round(cat.price[l_prod] * scale[l_order], 2), 0.01)
    first = np.r_[0, np.flatnonzero(np.diff(l_order)) + 1]
    line_no = np.arange(len(l_order)) - np.repeat(first, np.diff(np.r_[first, len(l_order)]))
    return l_order, l_prod, quantity, unit_price, line_no + 1


def _chunk_orders(rng, spec: WorldSpec, C: dict, lo: int, hi: int, cat: _Catalogue, lookup: dict,
                  camp_days: np.ndarray, order_id0: int):
    """Orders, lines, contacts and truth for customers lo..hi-1 (one chunk, its own random stream)."""
    nc = hi - lo
    start = pd.Timestamp(spec.start)
    end_day = (pd.Timestamp(spec.end) - start).days
    acq = C["acq_day"][lo:hi]
    lam, p, nu = C["lam"][lo:hi], C["p"][lo:hi], C["nu"][lo:hi]
    Tw = (end_day - acq) / 7.0
    N = rng.poisson(lam * Tw)
    K = rng.geometric(p)                                   # repeat purchase after which the customer leaves
    x = np.minimum(N, K)
    dead = K <= N
    rep = np.repeat(np.arange(nc), N)
    t = rng.random(len(rep)) * Tw[rep]
    srt = np.lexsort((t, rep))
    t = t[srt]
    rank = np.arange(len(rep)) - np.repeat(np.r_[0, np.cumsum(N)[:-1]], N)
    keep = rank < x[rep]
    rep_c, rep_t = rep[keep], t[keep]
    last_t = np.zeros(nc)
    last_t[rep_c] = rep_t                                   # sorted, so the last write is the latest
    death_day = np.where(dead, acq + np.floor(last_t * 7).astype(np.int64), np.iinfo(np.int64).max)

    o_cust = np.r_[np.arange(nc), rep_c]
    o_day = np.r_[acq, acq[rep_c] + np.floor(rep_t * 7).astype(np.int64)]
    o_incr = np.full(len(o_cust), -1)                       # campaign index of planted incremental orders

    contacts, uplift_rows = [], []
    pref_medium = np.argmax(C["media"][lo:hi], axis=1)
    for c_i, camp in enumerate(spec.campaigns):
        d = camp_days[c_i]
        selected = (acq < d) & (rng.random(nc) < camp.contact_rate)
        control = selected & (rng.random(nc) < camp.control_share)
        medium = rng.integers(0, len(camp.media), nc)
        camp_media_idx = np.array([MEDIA.index(mm) for mm in camp.media])[medium]
        factor = np.where(camp_media_idx == pref_medium, 1.5, 0.75)
        base = np.array(camp.uplift)[C["life"][lo:hi]]
        uplift = np.minimum(base * factor, 1.0)
        alive = death_day > d
        treat = selected & ~control
        respond = treat & alive & (rng.random(nc) < uplift)
        r_c = np.flatnonzero(respond)
        o_cust = np.r_[o_cust, r_c]
        o_day = np.r_[o_day, d + rng.integers(0, camp.window_days, len(r_c))]
        o_incr = np.r_[o_incr, np.full(len(r_c), c_i)]
        sel = np.flatnonzero(selected)
        contacts.append(pd.DataFrame({"_cust": sel + lo, "_camp": c_i, "medium_i": camp_media_idx[sel],
                                      "control": control[sel]}))
        for ls in range(3):
            m = treat & (C["life"][lo:hi] == ls)
            uplift_rows.append((camp.campaign_id, LIFE_STAGES[ls], int(selected[C["life"][lo:hi] == ls].sum()),
                                int(m.sum()), float((uplift * alive)[m].sum()), int(respond[m].sum()),
                                float(base[m].sum())))

    srt = np.lexsort((o_day, o_cust))
    o_cust, o_day, o_incr = o_cust[srt], o_day[srt], o_incr[srt]
    n_o = len(o_cust)
    ccum = np.cumsum(C["chan"][lo:hi][o_cust], axis=1)
    ch = _pick(ccum, rng.random(n_o))
    source_id = np.empty(n_o, dtype=object)
    for s_i, system in enumerate(SYSTEMS):
        m = ch == s_i
        ids, first_rec, second_rec = lookup[system]
        g = o_cust[m] + lo
        rec = np.where((second_rec[g] >= 0) & (rng.random(m.sum()) < 0.4), second_rec[g], first_rec[g])
        source_id[m] = ids[rec]
    value = rng.gamma(spec.gg_p, 1.0 / nu[o_cust])

    # reference codes: always on contacts; quoted on most incremental orders and some organic ones
    ref = np.full(n_o, None, dtype=object)
    contact_df = pd.concat(contacts, ignore_index=True)
    for c_i, camp in enumerate(spec.campaigns):
        cc = contact_df[(contact_df["_camp"] == c_i) & ~contact_df["control"]]["_cust"].to_numpy() - lo
        is_t = np.zeros(nc, bool)
        is_t[cc] = True
        inc = np.flatnonzero((o_incr == c_i) & (rng.random(n_o) < 0.7))
        ref[inc] = _ref_codes(camp.campaign_id, o_cust[inc] + lo)
        win = is_t[o_cust] & (o_day >= camp_days[c_i]) & (o_day < camp_days[c_i] + camp.window_days) & (o_incr < 0)
        w_idx = np.flatnonzero(win)
        if len(w_idx):
            _, first_i = np.unique(o_cust[w_idx], return_index=True)
            f_idx = w_idx[first_i]
            f_idx = f_idx[rng.random(len(f_idx)) < 0.25]
            ref[f_idx] = _ref_codes(camp.campaign_id, o_cust[f_idx] + lo)

    l_order, l_prod, qty, price, line_no = _baskets(rng, cat, o_cust, value, C["dept"][lo:hi])
    order_ids = order_id0 + np.arange(n_o)
    start64 = np.datetime64(start.date())
    orders = pd.DataFrame({
        "order_id": order_ids, "source_system": np.array(SYSTEMS, dtype=object)[ch], "source_id": source_id,
        "order_date": pd.Series(start64 + o_day).astype("datetime64[s]").to_numpy(),
        "channel": np.array(CHANNELS, dtype=object)[ch], "ref_code": ref})
    for col in ("source_system", "source_id", "channel", "ref_code"):
        orders[col] = orders[col].astype("string")
    lines = pd.DataFrame({"order_id": order_ids[l_order], "line_no": line_no,
                          "product_id": np.char.add("P", np.char.zfill((l_prod + 1).astype(str), 4)),
                          "quantity": qty, "unit_price": price})
    lines["product_id"] = lines["product_id"].astype("string")
    life = C["life"][lo:hi]
    truth = pd.DataFrame({
        "customer_id": np.arange(lo, hi) + 1, "life_stage": np.array(LIFE_STAGES, dtype=object)[life],
        "household_id": C["household"][lo:hi] + 1,
        "acquired_at": pd.Series(start64 + acq).astype("datetime64[s]").to_numpy(),
        "lambda_per_week": lam, "p_dropout": p, "nu_spend": nu,
        "repeat_purchases": x, "dropped_out": dead,
        "dropped_out_at": pd.Series(np.where(dead, start64 + np.minimum(death_day, end_day),
                                             np.datetime64("NaT"))).astype("datetime64[s]").to_numpy(),
        **{f"pref_{c}": C["chan"][lo:hi, i] for i, c in enumerate(CHANNELS)},
        **{f"pref_{m}": C["media"][lo:hi, i] for i, m in enumerate(MEDIA)},
        "preferred_channel": np.array(CHANNELS, dtype=object)[np.argmax(C["chan"][lo:hi], 1)],
        "preferred_medium": np.array(MEDIA, dtype=object)[np.argmax(C["media"][lo:hi], 1)],
        "incremental_orders": np.bincount(o_cust[o_incr >= 0], minlength=nc),
    })
    for col in ("life_stage", "preferred_channel", "preferred_medium"):
        truth[col] = truth[col].astype("string")
    return orders, lines, contact_df, truth, uplift_rows


def _ref_codes(campaign_id: str, cust: np.ndarray) -> np.ndarray:
    h = (cust.astype(np.int64) * 2_654_435_761 + sum(map(ord, campaign_id)) * 40_503) % (2**32)
    return np.array([f"{campaign_id}-{v:08X}" for v in h.tolist()], dtype=object)


# ----------------------------------------------------------------------------- writing

class _Writer:
    """Appends chunks of a table to one CSV or Parquet file, or with ``parts`` writes each chunk as a
    Parquet part file of the folder ``path`` (a partitioned table: ``path/part-00000.parquet``, ...)."""

    def __init__(self, path: Path, fmt: str, parts: bool = False):
        self.path, self.fmt, self._pq, self.rows, self.parts, self.n = path, fmt, None, 0, parts, 0
        if parts:
            if path.is_dir():
                for old in path.glob("part-*.parquet"):
                    old.unlink()
            path.mkdir(parents=True, exist_ok=True)
        else:
            self.path.unlink(missing_ok=True)

    def write(self, df: pd.DataFrame) -> None:
        if self.parts:
            df.to_parquet(self.path / f"part-{self.n:05d}.parquet", index=False)
            self.n += 1
        elif self.fmt == "parquet":
            table = pa.Table.from_pandas(df, preserve_index=False)
            if self._pq is None:
                self._pq = pq.ParquetWriter(self.path, table.schema)
            self._pq.write_table(table.cast(self._pq.schema))
        else:
            df.to_csv(self.path, mode="a", header=self.rows == 0, index=False, date_format="%Y-%m-%d")
        self.rows += len(df)

    def close(self) -> None:
        if self._pq is not None:
            self._pq.close()


def _write(df: pd.DataFrame, path: Path, fmt: str) -> None:
    w = _Writer(path, fmt)
    w.write(df)
    w.close()


def generate(spec: WorldSpec, out: str | Path, fmt: str = "parquet", progress=None, partitioned: bool = False) -> dict:
    """Generate a world into ``out`` (tables) and ``out/truth`` (planted truth); returns row counts.

    ``progress``: optional callable(str) told about each step. ``partitioned``: the large tables
    (customers_<system>, orders, order_lines, contacts) as folders of Parquet parts, one per chunk of
    ``spec.chunk`` customers (orders, lines and contacts are written as they are made; the customer
    records are made whole, then split); the other tables as single files.
    """
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"format must be 'csv' or 'parquet', got {fmt!r}")
    if partitioned and fmt != "parquet":
        raise ValueError("partitioned worlds are written as Parquet parts: use format 'parquet'")
    say = progress or (lambda msg: None)
    out = Path(out)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    ext = "csv" if fmt == "csv" else "parquet"
    ss = np.random.SeedSequence(spec.seed)
    s_prod, s_cust, s_rec, s_chunks = ss.spawn(4)
    products, weights = make_products(np.random.default_rng(s_prod))
    say(f"customers: drawing {spec.customers:,} true customers")
    C = make_customers(np.random.default_rng(s_cust), spec)
    say("source records: store, web, call centre with planted variation")
    counts = {}
    n_parts = (spec.customers + spec.chunk - 1) // spec.chunk      # chunks of customers: one part each
    truth_writer = _Writer(out / "truth" / f"record_truth.{ext}", fmt)

    def emit(name, df, truth):                                    # written as made: one system held at a time
        if partitioned:
            w = _Writer(out / name, fmt, parts=True)
            for rows in np.array_split(np.arange(len(df)), n_parts):
                w.write(df.iloc[rows])
        else:
            _write(df, out / f"{name}.{ext}", fmt)
        truth_writer.write(truth)
        counts[name] = len(df)

    _, _, lookup, has = make_records(np.random.default_rng(s_rec), C, spec, emit)
    truth_writer.close()
    _write(products.drop(columns="_base"), out / f"products.{ext}", fmt)
    counts["products"] = len(products)
    cat = _Catalogue(products, weights)

    start = pd.Timestamp(spec.start)
    camp_days = np.array([(pd.Timestamp(c.start_date) - start).days for c in spec.campaigns])
    campaigns = pd.DataFrame({
        "campaign_id": [c.campaign_id for c in spec.campaigns], "name": [c.name for c in spec.campaigns],
        "start_date": pd.to_datetime([c.start_date for c in spec.campaigns]).astype("datetime64[s]"),
        "media": ["|".join(c.media) for c in spec.campaigns],
        "window_days": [c.window_days for c in spec.campaigns]})
    _write(campaigns, out / f"campaigns.{ext}", fmt)
    counts["campaigns"] = len(campaigns)

    writers = {k: _Writer(out / (k if partitioned else f"{k}.{ext}"), fmt, parts=partitioned)
               for k in ("orders", "order_lines", "contacts")}
    t_writer = _Writer(out / "truth" / f"customer_truth.{ext}", fmt)
    uplift_rows, order_id0, contact_id0 = [], 1_000_001, 5_000_001
    chunk_seeds = s_chunks.spawn(n_parts)
    for k, lo in enumerate(range(0, spec.customers, spec.chunk)):
        hi = min(lo + spec.chunk, spec.customers)
        say(f"orders: customers {lo + 1:,}-{hi:,} of {spec.customers:,}")
        orders, lines, contacts, truth, up = _chunk_orders(
            np.random.default_rng(chunk_seeds[k]), spec, C, lo, hi, cat, lookup, camp_days, order_id0)
        order_id0 += len(orders)
        writers["orders"].write(orders)
        writers["order_lines"].write(lines)
        writers["contacts"].write(_contact_table(contacts, spec, C, lookup, camp_days, contact_id0))
        contact_id0 += len(contacts)
        t_writer.write(truth)
        uplift_rows += up
    for w in (*writers.values(), t_writer):
        w.close()
    counts.update({k: w.rows for k, w in writers.items()})

    up = pd.DataFrame(uplift_rows, columns=["campaign_id", "life_stage", "contacted", "treated",
                                            "expected_incremental", "incremental_responders", "uplift_sum"])
    up = up.groupby(["campaign_id", "life_stage"], sort=False).sum().reset_index()
    up["uplift_if_alive"] = up["uplift_sum"] / up["treated"].clip(lower=1)
    up["true_incremental_rate"] = up["expected_incremental"] / up["treated"].clip(lower=1)
    _write(up.drop(columns=["uplift_sum", "expected_incremental"]), out / "truth" / f"uplift_truth.{ext}", fmt)
    aff = pd.DataFrame([(" + ".join(a), c, pr, kind) for a, c, pr, kind in W.AFFINITIES],
                       columns=["antecedents", "consequent", "probability", "kind"])
    _write(aff, out / "truth" / f"affinity_truth.{ext}", fmt)
    meta = {"spec": {k: v for k, v in asdict(spec).items() if k != "campaigns"},
            "campaigns": [asdict(c) for c in spec.campaigns],
            "btyd": {"time_unit": "week", "r": spec.r, "alpha": spec.alpha, "a": spec.a, "b": spec.b},
            "gamma_gamma": {"p": spec.gg_p, "q": spec.gg_q, "gamma": spec.gg_gamma},
            "systems": list(SYSTEMS), "rows": counts, "format": fmt}
    (out / "truth" / "truth.json").write_text(json.dumps(meta, indent=2, default=str))
    say("identify holdout: person records kept out of the sources, for checking real-time identification")
    hold = make_identify_holdout(np.random.default_rng(ss.spawn(1)[0]), C, spec, has)
    _write(hold, out / "truth" / f"identify_holdout.{ext}", fmt)
    return counts


def _contact_table(contacts: pd.DataFrame, spec: WorldSpec, C: dict, lookup: dict, camp_days, id0: int):
    """Contact history rows: the record a medium reaches (e-mail -> web, mail -> store, SMS -> any)."""
    n = len(contacts)
    cust = contacts["_cust"].to_numpy()
    medium = contacts["medium_i"].to_numpy()
    preferred = np.array([1, 0, 2])[medium]                  # e-mail -> web, mail -> store, SMS -> call centre
    has_rec = np.column_stack([lookup[s][1][cust] >= 0 for s in SYSTEMS])
    system = np.where(has_rec[np.arange(n), preferred], preferred, np.argmax(has_rec, axis=1))
    source_id = np.empty(n, dtype=object)
    for s_i, s in enumerate(SYSTEMS):
        m = system == s_i
        source_id[m] = lookup[s][0][lookup[s][1][cust[m]]]
    camp = contacts["_camp"].to_numpy()
    cid = np.array([c.campaign_id for c in spec.campaigns], dtype=object)
    start64 = np.datetime64(pd.Timestamp(spec.start).date())
    ref = np.empty(n, dtype=object)
    for c_i, c in enumerate(spec.campaigns):
        m = camp == c_i
        ref[m] = _ref_codes(c.campaign_id, cust[m])
    df = pd.DataFrame({
        "contact_id": id0 + np.arange(n), "campaign_id": cid[camp],
        "source_system": np.array(SYSTEMS, dtype=object)[system], "source_id": source_id,
        "contact_date": pd.Series(start64 + camp_days[camp]).astype("datetime64[s]").to_numpy(),
        "medium": np.array(MEDIA, dtype=object)[medium], "ref_code": ref,
        "group": np.where(contacts["control"].to_numpy(), "control", "treatment")})
    for col in ("campaign_id", "source_system", "source_id", "medium", "ref_code", "group"):
        df[col] = df[col].astype("string")
    return df
