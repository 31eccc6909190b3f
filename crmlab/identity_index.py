"""The identity index and real-time identification against it.

A touchpoint that meets someone (a caller, a web sign-up, a till) asks "who is this?". The batch
matcher (:class:`crmlab.identity.RecordMatcher`) answered that for every known record; this module
publishes what it needs to answer it for one new record, at the moment of contact:

* ``identity_index``: the standardised person fields (and blocking keys) of every known record with
  its customer key, one row per record, indexed per blocking rule;
* ``identity_model``: the fitted matcher (m, u, prior, term frequencies) as JSON.

Both are published with each version (:class:`crmlab.publish.IdentityTables`): apart from the
touchpoint tables (own schema and role on PostgreSQL), never in the Parquet copy, never returned.
:class:`Identifier` standardises a person exactly as the sources layer does, reads the candidates
that share a blocking key with it (one statement, so one version), scores them with the published
matcher and answers the best customer with the per-field evidence, never a value. A person no
known record matches gets a **provisional key**: the person is kept in ``identity_provisional``
(same schema), found again by later calls, read by the next run as the source system
``touchpoint`` and matched in batch; that run's publication settles the provisional rows it took in.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import time

import numpy as np
import pandas as pd

from . import identity
from .direct import DirectConnections
from .publish import IdentityTables, PublishError, _qt, _split, engine, identity_name
from .sources import PERSON_FIELDS, PROVISIONAL_SYSTEM, PROVISIONAL_TABLE
from .standardise import standardise_person
from .table_parts import TableParts

INDEX, MODEL = "identity_index", "identity_model"


def model_id(model: dict) -> str:
    return hashlib.sha256(json.dumps(model, sort_keys=True).encode()).hexdigest()[:16]


def index_rows(records: pd.DataFrame, key_map: pd.DataFrame, matcher: identity.RecordMatcher) -> pd.DataFrame:
    """The identity index's rows of ``records`` (standardised customer records, ``Sources.customers``):
    each record's source, ``matcher``'s blocking keys and its customer key from ``key_map`` (missing
    where ``key_map`` has no row), in record order."""
    return with_customer_keys(keyed_records(records, matcher), key_map, matcher)


def keyed_records(records: pd.DataFrame, matcher: identity.RecordMatcher) -> pd.DataFrame:
    """Each record's source and ``matcher``'s blocking keys, as text (the first step of :func:`index_rows`)."""
    cols = matcher.index_columns()
    keyed = identity.add_keys(records.reset_index(drop=True), keys=cols)
    return keyed[["source_system", "source_id", *cols]].astype({"source_id": "string", "source_system": "string",
                                                                 **dict.fromkeys(cols, "string")})


def with_customer_keys(keyed: pd.DataFrame, key_map: pd.DataFrame, matcher: identity.RecordMatcher) -> pd.DataFrame:
    """:func:`keyed_records`' rows with their customer key from ``key_map`` and the model's id (the
    second step of :func:`index_rows`)."""
    idx = keyed.merge(key_map[["source_system", "source_id", "customer_key"]].astype(
        {"source_id": "string", "source_system": "string"}), on=["source_system", "source_id"], how="left")
    idx["model_id"] = model_id(matcher.to_dict())
    return idx


def _unkeyed(idx: pd.DataFrame) -> int:
    return int(idx["customer_key"].isna().sum())


def identity_tables(index, key_map: pd.DataFrame, matcher: identity.RecordMatcher,
                    schema: str = "crmlab_identity", role: str | None = "crmlab_identity_reader") -> IdentityTables:
    """The identity index and model of one run, ready for :func:`crmlab.publish.publish`.

    ``index``: :func:`index_rows` of the run's records (a frame, or a
    :class:`~crmlab.table_parts.TableParts` of them left on Dask workers); ``key_map``: the run's
    customer key map. Provisional persons the run took in are settled (deleted) at publication."""
    model = matcher.to_dict()
    missing = sum(index.map(_unkeyed)) if isinstance(index, TableParts) else _unkeyed(index)
    if missing:
        raise PublishError(f"{missing} records have no customer key: the identity index and the key map disagree")
    took = key_map.loc[key_map["source_system"] == PROVISIONAL_SYSTEM, "source_id"].astype(str).tolist()
    return IdentityTables(
        tables={INDEX: index, MODEL: pd.DataFrame({"model_id": [model_id(model)], "model": [json.dumps(model)]})},
        indexes={INDEX: [tuple(r) for r in matcher.blocking_rules_] + [("customer_key",)]},
        schema=schema, role=role, settle=(PROVISIONAL_TABLE, "provisional_key", took))


def keyed_person(person: dict) -> dict:
    """One person's raw fields -> one keyed record (column -> value, None for missing), standardised
    as the sources layer standardises a table."""
    return identity.person_keys(standardise_person(person), person.get("dob"))


class Identifier:
    """Identification of one person at a time against the published identity index.

    ``url``: the database (a login that can read the identity schema, and write its provisional
    table); ``schema``: the identity schema on PostgreSQL; ``threshold``: the match probability
    from which a customer is recognised (default: the published matcher's)."""

    def __init__(self, url: str, schema: str = "crmlab_identity", threshold: float | None = None,
                 max_candidates: int = 2000):
        import sqlalchemy as sa

        self.eng = engine(url, create=False)
        self._index, self._model, self._prov = (_qt(self.eng, identity_name(self.eng, schema, t))
                                                for t in (INDEX, MODEL, PROVISIONAL_TABLE))
        self._prov_schema = _split(identity_name(self.eng, schema, PROVISIONAL_TABLE))[0]
        self._q = self.eng.dialect.identifier_preparer.quote
        self.threshold = threshold
        self.max_candidates = int(max_candidates)
        self._models: dict[str, identity.RecordMatcher] = {}
        self._plans: dict[int, dict] = {}             # id(model) -> statement pieces and labels
        self._prov_cols: list[str] | None = None
        self._prov_checked = -1e9
        self._direct = DirectConnections(url)        # the per-request reads: driver cursors, no pool
        self._ph = self._direct.placeholder
        self._sa = sa

    # ---- the published model
    def _matcher(self, mid: str | None = None) -> identity.RecordMatcher:
        sa = self._sa
        if mid is not None and mid in self._models:
            return self._models[mid]
        with self.eng.connect() as conn:
            try:
                rows = conn.execute(sa.text(f"SELECT model_id, model FROM {self._model}")).all()
            except sa.exc.DBAPIError:
                raise PublishError("no identity index is published here: run the chain (stage 60_publish) with "
                                   "publish.identity on") from None
        if not rows:
            raise PublishError("the published identity model is empty")
        got, model = rows[0][0], identity.RecordMatcher.from_dict(json.loads(rows[0][1]))
        self._models = {got: model}                   # one model at a time: the current version's
        if mid is not None and mid != got:            # a publish happened between the two reads: read again
            return self._matcher(None)
        return model

    # ---- candidates
    def _sql(self, m: identity.RecordMatcher) -> dict:
        """The statement pieces and evidence labels of one model (built once per model)."""
        got = self._plans.get(id(m))
        if got is None:
            cols = ["customer_key", *m.index_columns()]
            got = {"rules": [(rule, "(" + " AND ".join(f"{self._q(c)} = {self._ph}" for c in rule) + ")")
                             for rule in m.blocking_rules_],
                   "cols": cols, "index": f"SELECT {', '.join(self._q(c) for c in [*cols, 'model_id'])} FROM {self._index}",
                   "prov": f"SELECT provisional_key, {', '.join(self._q(c) for c in cols[1:])}, NULL FROM {self._prov}",
                   "fields": [c.column.removesuffix("_std").removesuffix("_str") for c in m.comparisons_],
                   "labels": [c.labels() for c in m.comparisons_]}
            self._plans = {id(m): got}                 # one model at a time, as _models
        return got

    def _where(self, m: identity.RecordMatcher, rec: dict) -> tuple[str, list]:
        """The blocking rules whose fields ``rec`` has, as one OR of ANDs in the driver's parameter style."""
        terms, params = [], []
        for rule, term in self._sql(m)["rules"]:
            vals = [rec.get(c) for c in rule]
            if any(v is None for v in vals):
                continue
            terms.append(term)
            params += [str(v) for v in vals]
        return " OR ".join(terms), params

    def _candidates(self, m, rec) -> dict:
        """Column -> list of values of the known records (then provisional persons) sharing a blocking
        key with ``rec``; ``provisional`` flags the latter. One statement reads the published index."""
        where, params = self._where(m, rec)
        sql = self._sql(m)
        cols = sql["cols"]
        out = {c: [] for c in [*cols, "model_id", "provisional"]}
        if not where:
            return out
        rows = self._direct.fetchall(f"{sql['index']} WHERE {where} LIMIT {self.max_candidates}", params)
        prov = []
        if self._provisional_ready(m):
            prov = self._direct.fetchall(f"{sql['prov']} WHERE {where} LIMIT {self.max_candidates}", params)
        for flag, part in ((False, rows), (True, prov)):
            if part:
                for c, values in zip([*cols, "model_id"], zip(*part)):
                    out[c].extend(values)
                out["provisional"].extend([flag] * len(part))
        return out

    def _provisional_ready(self, m) -> bool:
        """Whether the provisional table exists with the model's columns (its absence is looked up again
        at most once a second: another worker may create it)."""
        sa = self._sa
        if self._prov_cols is None:
            if time.monotonic() < self._prov_checked + 1.0:
                return False
            self._prov_checked = time.monotonic()
            with self.eng.connect() as conn:
                insp = sa.inspect(conn)
                if not insp.has_table(PROVISIONAL_TABLE, schema=self._prov_schema):
                    return False
                self._prov_cols = [c["name"] for c in insp.get_columns(PROVISIONAL_TABLE, schema=self._prov_schema)]
        return all(c in self._prov_cols for c in m.index_columns())

    # ---- the answer
    def identify(self, person: dict, create: bool = True) -> dict:
        """The customer this person is, with match probability and per-field evidence (levels and
        weights, never values). Not found: a provisional key when ``create``, else no key."""
        rec = keyed_person(person)
        m = self._matcher(next(iter(self._models), None))
        cand = self._candidates(m, rec)
        mids = [v for v in cand["model_id"] if v is not None]
        if mids and mids[0] not in self._models:      # a new version was published: its model scores it
            m = self._matcher(mids[0])
        threshold = m.threshold if self.threshold is None else self.threshold
        n = len(cand["customer_key"])
        out = {"status": "unknown", "customer_key": None, "match_probability": 0.0, "provisional": False,
               "candidates_compared": n, "other_customers_above_threshold": 0, "evidence": []}
        if n:
            prob, levels, bf = m.score_candidates(rec, cand)
            best = int(np.argmax(prob))
            out["match_probability"] = round(float(prob[best]), 6)
            sql = self._sql(m)
            out["evidence"] = [
                {"field": field, "level": "missing" if lv == identity.NULL else labels[lv], "log2_bayes_factor": round(w, 3)}
                for field, labels, lv, w in zip(sql["fields"], sql["labels"], levels[best].tolist(), bf[best].tolist())]
            above = {cand["customer_key"][i] for i in np.flatnonzero(prob >= threshold)}
            out["other_customers_above_threshold"] = max(len(above) - 1, 0)
            if prob[best] >= threshold:
                prov = bool(cand["provisional"][best])
                out.update(status="provisional" if prov else "matched", customer_key=cand["customer_key"][best],
                           provisional=prov)
                return out
        if create:
            out.update(status="provisional", customer_key=self._new_provisional(m, person, rec), provisional=True)
        return out

    def _new_provisional(self, m, person: dict, rec: dict) -> str:
        sa = self._sa
        key = "P" + secrets.token_hex(8).upper()
        cols = m.index_columns()
        row = {"provisional_key": key, "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               **{f"raw_{f}": (None if person.get(f) is None else str(person.get(f))) for f in PERSON_FIELDS},
               **{c: rec.get(c) for c in cols}}
        with self.eng.begin() as conn:
            self._ensure_provisional(conn, list(row))
            conn.execute(sa.text(f"INSERT INTO {self._prov} ({', '.join(self._q(c) for c in row)}) "
                                 f"VALUES ({', '.join(':' + f'v{i}' for i in range(len(row)))})"),
                         {f"v{i}": v for i, v in enumerate(row.values())})
        return key

    def _ensure_provisional(self, conn, cols: list[str]) -> None:
        sa = self._sa
        insp = sa.inspect(conn)
        if not insp.has_table(PROVISIONAL_TABLE, schema=self._prov_schema):
            if self._prov_schema:
                conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {self._q(self._prov_schema)}"))
            body = ", ".join(f"{self._q(c)} VARCHAR(200)" for c in cols if c != "provisional_key")
            conn.execute(sa.text(f"CREATE TABLE IF NOT EXISTS {self._prov} (provisional_key VARCHAR(40) PRIMARY KEY, "
                                 f"{body})"))
            have = ["provisional_key", *[c for c in cols if c != "provisional_key"]]
        else:
            have = [c["name"] for c in insp.get_columns(PROVISIONAL_TABLE, schema=self._prov_schema)]
            for c in cols:
                if c not in have:
                    conn.execute(sa.text(f"ALTER TABLE {self._prov} ADD COLUMN {self._q(c)} VARCHAR(200)"))
                    have.append(c)
        self._prov_cols = have

    def close(self) -> None:
        self._direct.close()
        self.eng.dispose()
