"""The Redis online store: each published version's lookups as keys of their own, and one pointer.

A version ``N`` is written under ``<prefix>:v<N>:`` (one key per source id -> customer key, one per
customer -> the JSON answer of ``GET /v1/customers``, and a ``meta`` key written last that marks the version
complete). Only then does the pointer ``<prefix>:current`` move to ``N`` (one ``SET``: atomic), so readers see
the old version or the new one, never a half-written one. A lookup reads the pointer and both keys in one
server-side script, so one answer never mixes versions, even while a version is pruned.

The SQL database stays the truth: :func:`sync` makes the store follow it (after ``publish``, ``restore``, or to
repair a store that missed a publish): the current SQL version is filled when missing, the pointer switched,
and versions no longer kept in SQL are deleted.
"""
from __future__ import annotations

import json
import time

import redis
import sqlalchemy as sa

from .errors import CrmlabError
from .publish import _phys, _q, _safe, engine, history, score_row

#: One round trip, one version: the pointer, then the key map entry and the answer of that version.
_LOOKUP = """
local v = redis.call('GET', KEYS[1])
if not v then return {false, false} end
local base = ARGV[1] .. ':v' .. v
local ck = redis.call('GET', base .. ':key:' .. ARGV[2])
if not ck then return {v, false} end
return {v, redis.call('GET', base .. ':cust:' .. ck)}
"""


def _rows(sql_url: str, table: str, version: int, batch: int):
    """The rows of a published version's table, streamed in batches (mappings, as the SQL lookup reads them)."""
    eng = engine(sql_url, create=False)
    try:
        with eng.connect() as conn:
            res = conn.execution_options(stream_results=True, yield_per=batch).execute(
                sa.text(f"SELECT * FROM {_q(eng, _phys(table, version))}"))
            for part in res.mappings().partitions(batch):
                yield from part
    finally:
        eng.dispose()


class OnlineStoreError(CrmlabError):
    """The Redis online store cannot be reached or is not in the expected state."""


def _id_key(source_system: str, source_id: str) -> str:
    return f"{len(source_system)}:{source_system}:{source_id}"    # length-prefixed: ids may hold ':'


class RedisStore:
    """Published versions in Redis under ``prefix`` (keep one prefix per publish target)."""

    def __init__(self, url: str, prefix: str = "crmlab", timeout: float = 5.0):
        self.url, self.prefix = url, prefix
        try:
            self.r = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
            self.r.ping()
        except (redis.RedisError, ValueError) as exc:
            raise OnlineStoreError(f"Redis online store {_safe(url)} does not answer: {type(exc).__name__}: {exc}") from None
        self._lookup = self.r.register_script(_LOOKUP)
        self.pointer = f"{prefix}:current"

    def _base(self, version: int) -> str:
        return f"{self.prefix}:v{int(version)}"

    # ---- writing
    def fill(self, sql_url: str, version: int, batch: int = 20_000, progress=None) -> dict:
        """Write version ``version`` (not yet current) from its tables in the published SQL database: every
        customer's answer (the row the SQL lookup returns, as JSON) and every source id's customer key."""
        say = progress or (lambda m: None)
        base, t0 = self._base(version), time.perf_counter()
        if self.current() != int(version):
            self.drop(version)                              # a half-written earlier attempt
        n_c = n_k = 0
        first = None
        try:
            pipe = self.r.pipeline(transaction=False)
            for i, row in enumerate(_rows(sql_url, "customer_scores", version, batch)):
                rec = score_row(row)
                first = first or rec
                pipe.set(f"{base}:cust:{rec['customer_key']}", json.dumps(rec, default=str))
                n_c += 1
                if (i + 1) % batch == 0:
                    pipe.execute()
            for i, row in enumerate(_rows(sql_url, "customer_key_map", version, batch)):
                pipe.set(f"{base}:key:{_id_key(str(row['source_system']), str(row['source_id']))}",
                         str(row["customer_key"]))
                n_k += 1
                if (i + 1) % batch == 0:
                    pipe.execute()
            pipe.execute()
            first = first or {}
            meta = {"version": int(version), "customers": n_c, "ids": n_k, "model_version": first.get("model_version"),
                    "decision_version": first.get("decision_version"), "published_at": first.get("scored_at")}
            self.r.set(f"{base}:meta", json.dumps(meta, default=str))    # last: the version is complete
        except redis.RedisError as exc:
            raise OnlineStoreError(f"writing version {version} to {_safe(self.url)} failed: {exc}; the current "
                                   "version there is unchanged") from None
        say(f"Redis online store: version {version} written ({n_c:,} customers, {n_k:,} ids, "
            f"{time.perf_counter() - t0:.1f} s)")
        return meta

    def switch(self, version: int) -> None:
        """Make a complete version current (one SET: readers move at once)."""
        if not self.r.exists(f"{self._base(version)}:meta"):
            raise OnlineStoreError(f"version {version} is not complete in the Redis online store; not switched")
        self.r.set(self.pointer, int(version))

    def drop(self, version: int) -> int:
        """Delete a version's keys (never the current one's)."""
        if self.current() == int(version):
            raise OnlineStoreError(f"version {version} is current in the Redis online store; not dropped")
        n = 0
        batch = []
        for k in self.r.scan_iter(match=f"{self._base(version)}:*", count=10_000):
            batch.append(k)
            if len(batch) >= 10_000:
                n += self.r.unlink(*batch)
                batch = []
        if batch:
            n += self.r.unlink(*batch)
        return n

    def versions(self) -> list[int]:
        """Complete versions held (those with their meta key)."""
        out = []
        for k in self.r.scan_iter(match=f"{self.prefix}:v*:meta", count=1000):
            try:
                out.append(int(k.decode().rsplit(":", 2)[-2][1:]))
            except ValueError:
                continue
        return sorted(out)

    # ---- reading
    def current(self) -> int | None:
        v = self.r.get(self.pointer)
        return int(v) if v is not None else None

    def customer_json(self, source_system: str, source_id: str) -> bytes | None:
        """The current answer for a touchpoint's id as stored (JSON bytes; pointer and keys read in one script,
        so one version), for the service to send without decoding it."""
        _v, raw = self._lookup(keys=[self.pointer], args=[self.prefix, _id_key(source_system, source_id)])
        return raw or None

    def customer(self, source_system: str, source_id: str) -> dict | None:
        """The current answer for a touchpoint's id, as a dict."""
        raw = self.customer_json(source_system, source_id)
        return json.loads(raw) if raw else None

    def version(self) -> dict | None:
        v = self.current()
        if v is None:
            return None
        raw = self.r.get(f"{self._base(v)}:meta")
        meta = json.loads(raw) if raw else {"version": v}
        return {"version": v, "published_at": meta.get("published_at"), "model_version": meta.get("model_version"),
                "decision_version": meta.get("decision_version"), "store": "redis"}

    def close(self) -> None:
        self.r.close()


def sync(sql_url: str, redis_url: str, prefix: str = "crmlab", progress=None) -> int | None:
    """Make the Redis online store follow the published SQL database: fill its current version when missing,
    switch the pointer to it, delete versions SQL no longer keeps. Returns the current version (None when
    nothing is published)."""
    h = history(sql_url)
    if h.empty or not (h["status"] == "current").any():
        return None
    current = int(h.loc[h["status"] == "current", "version"].iloc[0])
    kept = set(h.loc[h["status"].isin(["current", "kept"]), "version"].astype(int))
    store = RedisStore(redis_url, prefix)
    try:
        if current not in store.versions():
            store.fill(sql_url, current, progress=progress)
        store.switch(current)
        for v in store.versions():
            if v not in kept:
                store.drop(v)
    finally:
        store.close()
    return current

