"""The touchpoint service: an ASGI app (FastAPI, served by uvicorn) over the published scores.

Touchpoint systems (call-centre screen, web site, till) call it over HTTP while the customer is
there. Every answer comes from the published SQL database (SQLite by default, PostgreSQL), read
through the views that ``publish`` switches in one transaction, or, with ``--redis``, from the Redis
online store that publishing fills per version and switches with one pointer (``crmlab.online_store``):
either way a response is one row of one version, and a publish or restore is seen by the next request,
without a restart.

Endpoints (JSON; OpenAPI at ``/docs`` and ``/openapi.json``):

* ``GET /health``: the database answers and something is published (no token needed);
* ``GET /v1/version``: current published version, when, and its model and decision versions;
* ``GET /v1/customers/{source_system}/{source_id}``: the customer's current scores and decision;
  404 with a JSON reason when the id is not in the published key map;
* ``POST /v1/identify``: person fields -> customer key, match probability and per-field evidence,
  from the published matcher and identity index (:mod:`crmlab.identity_index`); a person nobody
  known matches gets a provisional key (write scope) that the next run reconciles;
* ``POST /v1/decide``: a recognised customer and the context (channel, basket, campaign) -> the
  treatment and next best offer now (:func:`crmlab.decisions.decide_now`);
* ``POST /v1/contacts``: records a contact or response durably (committed before the 201) in the
  ``touchpoint_contacts`` table; idempotent by ``contact_id`` (the same body again: 200; a
  different body under a used id: 409).

Concurrency: the read endpoints (lookup, identify, decide, version) run on each worker's event loop:
a read takes a millisecond or less of CPU and never waits (SQLite WAL readers, PostgreSQL MVCC,
Redis), and in uvicorn's thread pool the request threads fought over the GIL (SQLite lookups at
1,000 req/s: p99 441 ms there, 6 ms on the loop). Writes (contacts, provisional persons) may wait
for a publish's lock, so they run in the thread pool. Scale with ``--workers`` (one per core).

Security: bearer tokens with ``read`` and ``write`` scopes (:func:`load_tokens`; only their
SHA-256 is kept), request bodies capped (413), validation errors as 422 naming the field but
never echoing the value, SQL through bound parameters only, and one log line per request with
the route's template (never the ids in the path) and no body.
"""

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import threads
from .errors import CrmlabError
from .identity_index import Identifier
from .online_store import RedisStore
from .publish import CATALOG, PublishError, _safe, engine, score_row
from .decisions import decide_now
from .direct import DirectConnections
from .sources import DELIVERED, TOUCHPOINT_CONTACTS

log = logging.getLogger("crmlab.service")

CONTACTS_TABLE = TOUCHPOINT_CONTACTS                # read by the next run as part of its contacts input
SCOPES = ("read", "write")
#: Environment of ``crmlab serve`` workers (uvicorn starts each from an import string).
ENV = {"db": "CRMLAB_SERVICE_DB", "tokens": "CRMLAB_SERVICE_TOKENS_FILE", "no_auth": "CRMLAB_SERVICE_NO_AUTH",
       "max_body": "CRMLAB_SERVICE_MAX_BODY", "redis": "CRMLAB_SERVICE_REDIS", "redis_prefix": "CRMLAB_SERVICE_REDIS_PREFIX",
       "identity_db": "CRMLAB_SERVICE_IDENTITY_DB", "identity_schema": "CRMLAB_SERVICE_IDENTITY_SCHEMA"}


class ServiceError(CrmlabError):
    """The service cannot start: no database, no tokens, a bad token file."""


# ----------------------------------------------------------------------------- tokens

def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def load_tokens(path) -> dict[str, frozenset]:
    """Bearer tokens from a JSON or YAML file: ``{"tokens": [{"name": ..., "sha256": ... | "token":
    ..., "scopes": ["read", "write"]}]}``. Returns {sha256 of token: scopes}; raw tokens are not kept."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ServiceError(f"token file {p} does not exist")
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ServiceError(f"token file {p} is not valid JSON or YAML: {exc}") from None
    items = doc.get("tokens") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise ServiceError(f"token file {p}: expected a non-empty list under 'tokens'")
    out = {}
    for i, t in enumerate(items, start=1):
        where = f"token file {p}, entry #{i} ({t.get('name', '?') if isinstance(t, dict) else '?'})"
        if not isinstance(t, dict) or (("token" in t) == ("sha256" in t)):
            raise ServiceError(f"{where}: give exactly one of 'token' and 'sha256'")
        scopes = t.get("scopes")
        if not isinstance(scopes, list) or not scopes or any(s not in SCOPES for s in scopes):
            raise ServiceError(f"{where}: 'scopes' must be a non-empty list of {list(SCOPES)}, got {scopes!r}")
        if "token" in t:
            if not isinstance(t["token"], str) or len(t["token"]) < 16:
                raise ServiceError(f"{where}: a token must be a text of at least 16 characters")
            digest = _digest(t["token"])
        else:
            digest = str(t["sha256"]).lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ServiceError(f"{where}: 'sha256' must be 64 hexadecimal digits")
        out[digest] = frozenset(scopes)
    return out


# ----------------------------------------------------------------------------- the store



class ScoreStore:
    """Reads of the published database: one statement per answer, so one version per answer."""

    def __init__(self, url: str):
        import sqlalchemy as sa

        self.url = url
        self.eng = engine(url, create=False)
        self.sqlite = self.eng.dialect.name == "sqlite"
        # lookups on a server database: autocommit (one statement is one snapshot, so one version, without
        # BEGIN/ROLLBACK round trips), no ping per checkout (a dropped connection is retried once instead),
        # a pool as large as the worker's threads
        self.read_eng = self.eng if self.sqlite else sa.create_engine(
            url, isolation_level="AUTOCOMMIT", pool_size=16, max_overflow=24, pool_pre_ping=False, pool_recycle=600)
        self._lookup = sa.text(
            "SELECT s.* FROM customer_key_map m JOIN customer_scores s ON s.customer_key = m.customer_key "
            "WHERE m.source_system = :system AND m.source_id = :id")
        self._direct = DirectConnections(url)
        ph = self._direct.placeholder
        self._lookup_sql = ("SELECT s.score_version, s.* FROM customer_key_map m JOIN customer_scores s "
                            f"ON s.customer_key = m.customer_key WHERE m.source_system = {ph} AND m.source_id = {ph}")
        self._names: dict = {}                            # score_version -> the lookup's column names
        self._version = sa.text(f"SELECT version, published_at FROM {CATALOG} WHERE status = 'current'")
        self._by_key = sa.text("SELECT * FROM customer_scores WHERE customer_key = :k")
        self._offers = sa.text("SELECT rank, product_id, product_name FROM customer_offers WHERE customer_key = :k "
                               "ORDER BY rank")
        self._recent = sa.text("SELECT SUM(contacts) FROM recent_contacts WHERE customer_key = :k "
                               "AND contact_date >= :since AND contact_date <= :at")
        self._tp_contacts = sa.text(
            f"SELECT t.occurred_at FROM {CONTACTS_TABLE} t JOIN customer_key_map m ON m.source_system = t.source_system "
            f"AND m.source_id = t.source_id WHERE m.customer_key = :k AND t.outcome IN {tuple(DELIVERED)}")
        self._policies: dict = {}
        self._models = sa.text("SELECT model_version, decision_version FROM customer_scores LIMIT 1")
        self.ensure_contacts()

    def _read(self, stmt, params=None):
        import sqlalchemy as sa

        for attempt in (0, 1):
            try:
                with self.read_eng.connect() as conn:
                    rows = conn.execute(stmt, params or {}).mappings().all()
                    if self.sqlite:
                        conn.rollback()
                return rows
            except sa.exc.DBAPIError as exc:
                if attempt or not exc.connection_invalidated:
                    raise

    def customer(self, source_system: str, source_id: str) -> dict | None:
        # the driver's cursor (half the cost of a Core statement); the column names are read once per
        # published version: a version's columns never change, and its number leads the row
        row = self._direct.run(self._lookup_sql, (source_system, source_id), self._named_row)
        if row is None:
            return None
        out = score_row(row)
        if out.get("scored_at") is not None and not isinstance(out["scored_at"], str):
            out["scored_at"] = str(out["scored_at"])
        return out

    def _named_row(self, cur) -> dict | None:
        row = cur.fetchone()
        if row is None:
            return None
        names = self._names.get(row[0])
        if names is None:
            names = [d[0] for d in cur.description][1:]
            self._names = {row[0]: names}
        return dict(zip(names, row[1:]))

    def customer_json(self, source_system: str, source_id: str) -> bytes | None:
        """The answer as JSON bytes (as the Redis online store keeps it), or None."""
        row = self.customer(source_system, source_id)
        return None if row is None else json.dumps(row, default=str).encode()

    # ---- decisions at the moment of contact
    def decide(self, at: dt.datetime, basket=(), source_system: str | None = None, source_id: str | None = None,
               customer_key: str | None = None) -> dict | None:
        """The customer's decision now (:func:`crmlab.decisions.decide_now`), from one snapshot of the
        published version (row, offers, contacts, policy) plus the contacts touchpoints recorded
        since the data's end; None when the customer is unknown."""
        import sqlalchemy as sa

        conn = self.eng.connect()
        if not self.sqlite:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")   # one snapshot, one version
        try:
            with conn.begin():                          # SQLite (WAL): the first read fixes the snapshot
                if customer_key is None:
                    row = conn.execute(self._lookup, {"system": source_system, "id": source_id}).mappings().first()
                else:
                    row = conn.execute(self._by_key, {"k": customer_key}).mappings().first()
                if row is None:
                    return None
                row = score_row(row)
                key = row["customer_key"]
                policy = self._policies.get(row["score_version"])
                if policy is None:
                    policy = dict(conn.execute(sa.text("SELECT setting, value FROM decision_policy")).all())
                    self._policies = {row["score_version"]: policy}
                offers = [dict(r) for r in conn.execute(self._offers, {"k": key}).mappings()]
                at = at.astimezone(dt.timezone.utc).replace(tzinfo=None)
                since = at - dt.timedelta(days=int(policy["frequency_days"]))
                published = int(conn.execute(self._recent, {"k": key, "since": since.strftime("%Y-%m-%dT%H:%M:%S"),
                                                            "at": at.strftime("%Y-%m-%dT%H:%M:%S")}).scalar() or 0)
                tp = conn.execute(self._tp_contacts, {"k": key}).scalars().all()
        finally:
            conn.close()
        # touchpoint contacts after the data's end are not in recent_contacts yet: count them here
        start = max(since, dt.datetime.fromisoformat(policy["cutoff"]))
        recorded = 0
        for when in tp:
            t = dt.datetime.fromisoformat(when)
            t = t.astimezone(dt.timezone.utc).replace(tzinfo=None) if t.tzinfo else t
            recorded += start <= t <= at
        return decide_now(row, offers, published + recorded, policy, basket)

    def version(self) -> dict | None:
        import sqlalchemy as sa

        if not sa.inspect(self.eng).has_table(CATALOG):
            return None
        cur = self._read(self._version)
        if not cur:
            return None
        models = self._read(self._models)
        m = dict(models[0]) if models else {}
        return {"version": int(cur[0]["version"]), "published_at": str(cur[0]["published_at"]),
                "model_version": m.get("model_version"), "decision_version": m.get("decision_version")}

    # ---- contacts recorded by touchpoints
    def ensure_contacts(self) -> None:
        import sqlalchemy as sa

        with self.eng.begin() as conn:
            conn.execute(sa.text(
                f"CREATE TABLE IF NOT EXISTS {CONTACTS_TABLE} (contact_id VARCHAR(100) PRIMARY KEY, "
                "campaign_id VARCHAR(100) NOT NULL, source_system VARCHAR(100) NOT NULL, "
                "source_id VARCHAR(100) NOT NULL, channel VARCHAR(40) NOT NULL, ref_code VARCHAR(100), "
                "offer VARCHAR(100), outcome VARCHAR(20) NOT NULL, contact_group VARCHAR(20) NOT NULL, "
                "occurred_at VARCHAR(40) NOT NULL, recorded_at VARCHAR(40) NOT NULL, body_sha256 CHAR(64) NOT NULL)"))
            conn.execute(sa.text(f"CREATE INDEX IF NOT EXISTS ix_{CONTACTS_TABLE}_source ON {CONTACTS_TABLE} "
                                 "(source_system, source_id)"))

    def record_contact(self, c: dict) -> str:
        """Insert one contact (committed before returning): 'created', 'replayed' (same body under
        the same id) or 'conflict' (another body under that id)."""
        import sqlalchemy as sa

        body = hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()
        row = {**c, "recorded_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
               "body_sha256": body}
        cols = ("contact_id", "campaign_id", "source_system", "source_id", "channel", "ref_code", "offer",
                "outcome", "contact_group", "occurred_at", "recorded_at", "body_sha256")
        ins = sa.text(f"INSERT INTO {CONTACTS_TABLE} ({', '.join(cols)}) VALUES ({', '.join(':' + k for k in cols)}) "
                      "ON CONFLICT (contact_id) DO NOTHING")
        with self.eng.begin() as conn:
            done = conn.execute(ins, {k: row[k] for k in cols}).rowcount
            if done:
                return "created"
            old = conn.execute(sa.text(f"SELECT body_sha256 FROM {CONTACTS_TABLE} WHERE contact_id = :i"),
                               {"i": c["contact_id"]}).scalar()
        return "replayed" if old == body else "conflict"

    def close(self) -> None:
        self._direct.close()
        self.eng.dispose()
        if self.read_eng is not self.eng:
            self.read_eng.dispose()


# ----------------------------------------------------------------------------- the app

@dataclass
class ServiceConfig:
    db: str
    tokens: dict = field(default_factory=dict)       # sha256 -> scopes; empty with no_auth only
    no_auth: bool = False
    max_body: int = 16384                             # bytes per request body
    redis: str | None = None                          # Redis online store for lookups (None: the SQL database)
    redis_prefix: str = "crmlab"
    identity_db: str | None = None                   # login that reads the identity index (None: ``db``)
    identity_schema: str = "crmlab_identity"


class _BodyLimit:
    """ASGI middleware: bodies over ``limit`` bytes get 413, from the declared length before the app
    reads anything, else (chunked uploads) as soon as the bytes read pass the limit; the app then sees
    a disconnect and whatever it would answer is dropped."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = {"detail": f"request body over {self.limit} bytes"}
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await _plain(send, 413, too_big)
        seen, answered = 0, False

        async def limited():
            nonlocal seen, answered
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    if not answered:
                        answered = True
                        await _plain(send, 413, too_big)
                    return {"type": "http.disconnect"}
            return msg

        async def guarded(msg):
            if not answered:
                await send(msg)

        await self.app(scope, limited, guarded)


class _AccessLog:
    """ASGI middleware: one line per request with method, the route's template (never the ids in the
    path), the status the client received and the latency."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t, status = time.perf_counter(), 500

        async def capture(msg):
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = getattr(scope.get("route"), "path", "-")
            log.info("%s %s %d %.1f ms", scope.get("method"), route, status, 1e3 * (time.perf_counter() - t))


def _json(body: dict):
    """A JSON answer of plain values, serialised once (FastAPI's encoder walks every value first)."""
    from fastapi.responses import Response

    return Response(json.dumps(body).encode(), media_type="application/json")


async def _plain(send, status: int, body: dict):
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def create_app(cfg: ServiceConfig):
    """The FastAPI app for one published database."""
    from typing import Annotated, Literal

    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse, Response
    from pydantic import BaseModel, ConfigDict, Field as PField, model_validator

    if not cfg.tokens and not cfg.no_auth:
        raise ServiceError("no bearer tokens configured: give a token file (--tokens) or, for a local test only, "
                           "--no-auth")
    store = ScoreStore(cfg.db)                        # contacts, and lookups unless a Redis online store serves them
    reader = RedisStore(cfg.redis, cfg.redis_prefix) if cfg.redis else store
    identifier = Identifier(cfg.identity_db or cfg.db, cfg.identity_schema)
    app = FastAPI(title="crmlab touchpoint service", version="1",
                  description="Recognise, decide and record at the moment of contact, from the published scores.")
    app.state.store = store

    Id = PField(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f]+$")

    class Contact(BaseModel):
        model_config = ConfigDict(extra="forbid")
        contact_id: str = Id
        campaign_id: str = Id
        source_system: str = Id
        source_id: str = Id
        channel: Literal["store", "web", "phone", "mail", "email", "sms", "app"]
        ref_code: str | None = PField(None, max_length=100)
        offer: str | None = PField(None, max_length=100)
        outcome: Literal["contacted", "responded", "declined", "bounced"]
        group: Literal["treatment", "control"] = "treatment"
        occurred_at: dt.datetime

    Text = PField(None, min_length=1, max_length=100, pattern=r"^[^\x00-\x1f]+$")

    class Person(BaseModel):
        """Person fields as the touchpoint has them (raw: crmlab standardises them as in batch)."""
        model_config = ConfigDict(extra="forbid")
        first_name: str | None = Text
        last_name: str | None = Text
        dob: dt.date | None = None
        email: str | None = PField(None, min_length=1, max_length=254, pattern=r"^[^\x00-\x1f]+$")
        # junk a till accepts ("n/a", "tba") is allowed: it standardises to missing, as in batch
        phone: str | None = PField(None, min_length=1, max_length=40, pattern=r"^[A-Za-z0-9+()\-./ ]+$")
        address: str | None = PField(None, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")
        town: str | None = Text
        postcode: str | None = PField(None, min_length=1, max_length=16, pattern=r"^[A-Za-z0-9 /.-]+$")

        @model_validator(mode="after")
        def _enough(self):
            given = [k for k, v in self.model_dump().items() if v is not None and k != "town"]
            if len(given) < 2:
                raise ValueError("give at least two of first_name, last_name, dob, email, phone, address, postcode")
            return self

    def scope(need: str):
        async def check(request: Request) -> frozenset:   # no I/O: on the event loop, no thread hop
            if cfg.no_auth:
                return frozenset(SCOPES)
            auth = request.headers.get("authorization", "")
            kind, _, token = auth.partition(" ")
            if kind.lower() != "bearer" or not token:
                raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
            digest = _digest(token.strip())
            scopes = next((s for d, s in cfg.tokens.items() if hmac.compare_digest(d, digest)), None)
            if scopes is None:
                raise HTTPException(401, "unknown bearer token", headers={"WWW-Authenticate": "Bearer"})
            if need not in scopes:
                raise HTTPException(403, f"this token lacks the '{need}' scope")
            return scopes
        return Depends(check)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        # name the field and the problem, never echo the value (it may be personal data)
        errs = [{"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "problem": e.get("msg")}
                for e in exc.errors()]
        return JSONResponse({"detail": "invalid request", "errors": errs}, status_code=422)

    @app.exception_handler(PublishError)
    async def _unpublished(request, exc):
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.get("/health")
    def health():
        v = reader.version()
        if v is None:
            return JSONResponse({"status": "unavailable", "detail": "nothing published yet"}, status_code=503)
        return {"status": "ok", "version": v["version"]}

    @app.get("/v1/version", dependencies=[scope("read")])
    def version():
        v = reader.version()
        if v is None:
            raise HTTPException(503, "nothing published yet: run the chain (stage 60_publish) first")
        return v

    @app.get("/v1/customers/{source_system}/{source_id}", dependencies=[scope("read")])
    async def customer(source_system: str, source_id: str):
        if len(source_system) > 100 or len(source_id) > 100:
            raise HTTPException(422, "source_system and source_id are at most 100 characters")
        raw = reader.customer_json(source_system, source_id)     # Redis: the stored bytes, never decoded
        if raw is None:
            return JSONResponse({"detail": "unknown customer: this id is not in the published key map"},
                                status_code=404)
        return Response(raw, media_type="application/json")   # the contract's columns: no personal data

    @app.post("/v1/identify")
    async def identify(person: Person, scopes: frozenset = scope("read")):
        """Who is this? The published matcher against the identity index: the customer key, the match
        probability and the evidence per field (levels and weights, never a value). Nobody known
        matches: a provisional key (tokens with the ``write`` scope; the next run reconciles it) or
        ``status: unknown``."""
        # on the event loop: a millisecond of CPU and reads that never wait (WAL / MVCC); in uvicorn's
        # thread pool the request threads fought over the GIL (p99 118 ms at 400 req/s, against 9 ms here)
        data = person.model_dump()
        out = identifier.identify(data, create=False)
        if out["status"] == "unknown" and "write" in scopes:     # a write may wait for a publish: in a thread
            out = await run_in_threadpool(identifier.identify, data, True)
        return _json(out)

    class Decide(BaseModel):
        """A recognised customer (their customer key, or a source system's id) and the context."""
        model_config = ConfigDict(extra="forbid")
        customer_key: str | None = PField(None, min_length=1, max_length=100, pattern=r"^[^\x00-\x1f]+$")
        source_system: str | None = PField(None, min_length=1, max_length=100, pattern=r"^[^\x00-\x1f]+$")
        source_id: str | None = PField(None, min_length=1, max_length=100, pattern=r"^[^\x00-\x1f]+$")
        channel: Literal["store", "web", "phone", "mail", "email", "sms", "app"]
        basket: list[Annotated[str, PField(min_length=1, max_length=100)]] = PField(default_factory=list,
                                                                                    max_length=500)
        campaign_id: str | None = PField(None, min_length=1, max_length=100, pattern=r"^[^\x00-\x1f]+$")
        at: dt.datetime | None = None

        @model_validator(mode="after")
        def _who(self):
            if (self.customer_key is None) == (self.source_system is None or self.source_id is None):
                raise ValueError("give either customer_key or both source_system and source_id")
            if self.at is not None and self.at.tzinfo is None:
                raise ValueError("'at' needs a time zone (e.g. 2026-12-01T10:15:00Z)")
            return self

    @app.post("/v1/decide", dependencies=[scope("read")])
    async def decide(d: Decide):
        """Treatment and next best offer now: the batch's treatment, the best published offer not in
        the basket and not guarded, the frequency cap counted with the contacts recorded so far
        (today's through this service included), the control group drawn as in batch."""
        at = d.at or dt.datetime.now(dt.timezone.utc)
        got = store.decide(at, d.basket, d.source_system, d.source_id, d.customer_key)
        if got is None:
            return JSONResponse({"detail": "unknown customer: not in the published version"}, status_code=404)
        return _json({**got, "channel": d.channel, "campaign_id": d.campaign_id, "at": at.isoformat()})

    @app.post("/v1/contacts", status_code=201, dependencies=[scope("write")])
    def contacts(c: Contact):
        rec = c.model_dump()
        rec["contact_group"] = rec.pop("group")
        rec["occurred_at"] = c.occurred_at.isoformat()
        got = store.record_contact(rec)
        if got == "conflict":
            raise HTTPException(409, "contact_id already recorded with a different body")
        if got == "replayed":
            return JSONResponse({"contact_id": c.contact_id, "status": "already recorded"}, status_code=200)
        return {"contact_id": c.contact_id, "status": "recorded"}

    app.add_middleware(_BodyLimit, limit=cfg.max_body)
    app.add_middleware(_AccessLog)                    # outermost: logs what the client got, 413s included
    return app


def app_from_env():
    """The app of ``crmlab serve`` workers, configured through :data:`ENV`."""
    db = os.environ.get(ENV["db"])
    if not db:
        raise ServiceError(f"{ENV['db']} is not set: start the service with `crmlab serve --db URL`")
    tokens_file = os.environ.get(ENV["tokens"])
    no_auth = os.environ.get(ENV["no_auth"]) == "1"
    tokens = load_tokens(tokens_file) if tokens_file else {}
    return create_app(ServiceConfig(db=db, tokens=tokens, no_auth=no_auth,
                                    max_body=int(os.environ.get(ENV["max_body"], "16384")),
                                    redis=os.environ.get(ENV["redis"]) or None,
                                    redis_prefix=os.environ.get(ENV["redis_prefix"], "crmlab"),
                                    identity_db=os.environ.get(ENV["identity_db"]) or None,
                                    identity_schema=os.environ.get(ENV["identity_schema"], "crmlab_identity")))


def serve(db: str, host: str = "127.0.0.1", port: int = 8080, workers: int = 1, tokens_file=None,
          no_auth: bool = False, max_body: int = 16384, redis: str | None = None, redis_prefix: str = "crmlab",
          identity_db: str | None = None, identity_schema: str = "crmlab_identity") -> None:
    """Run the service under uvicorn until SIGINT/SIGTERM (requests in flight finish first)."""
    import uvicorn

    if tokens_file:
        load_tokens(tokens_file)                      # a bad file fails here, not in each worker
    elif not no_auth:
        raise ServiceError("no bearer tokens configured: give --tokens FILE (or --no-auth for a local test)")
    ScoreStore(db).close()                            # the database must exist
    if redis:
        RedisStore(redis, redis_prefix).close()       # and the online store answer
    # one thread per pool in each worker (Numba, OpenMP, BLAS): a request is a few small kernel calls, where
    # a parallel launch costs more than it saves (identify 1.40 -> 0.94 ms per person in-process, 100k
    # customers); scale with --workers instead
    os.environ.update(threads.environ(1))
    os.environ.update({ENV["db"]: db, ENV["no_auth"]: "1" if no_auth else "0", ENV["max_body"]: str(max_body),
                       ENV["redis"]: redis or "", ENV["redis_prefix"]: redis_prefix,
                       ENV["identity_db"]: identity_db or "", ENV["identity_schema"]: identity_schema})
    if tokens_file:
        os.environ[ENV["tokens"]] = str(Path(tokens_file).resolve())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    log.info("serving %s%s on http://%s:%d with %d worker(s)", _safe(db),
             f" (lookups from the Redis online store {_safe(redis)})" if redis else "", host, port, workers)
    uvicorn.run("crmlab.service:app_from_env", factory=True, host=host, port=port, workers=workers,
                access_log=False, timeout_graceful_shutdown=10, log_level="info")
