"""Load benchmark of the touchpoint service (#20): lookups at fixed request rates, per backend.

For each backend (SQLite, PostgreSQL when a server answers, the Redis online store) a published database of
``--customers`` customers (two source ids each) is served by ``crmlab serve`` on a loopback port, and an
open-loop client sends ``GET /v1/customers/{system}/{id}`` at fixed rates (``--rates``) for ``--seconds`` each:
requests leave on schedule whether or not earlier ones have answered, and each latency is measured from its
scheduled time (queueing included, no coordinated omission). The key mix: 90% known ids, a fifth of them
"regulars" asked for again and again, 10% unknown ids (404). Reported per rate: achieved throughput, p50,
p99 and max latency, errors. Bounded: every run stops after its seconds and a drain of at most 5 s.

    python benchmarks/service_bench.py [--customers 200000] [--rates 500 1000 2000] [--seconds 8]
        [--workers 2] [--out benchmarks/results/service_bench.txt]

The client is raw asyncio sockets with prepared requests (HTTP/1.1 keep-alive over --connections
connections), so that it takes as little of the machine's two cores as possible from the server.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crmlab import online_store, publish  # noqa: E402

TOKEN = "bench-read-token-000000000001"
_LEN = re.compile(rb"content-length:\s*(\d+)", re.I)


def tables(n: int, seed: int = 0) -> dict:
    """customer_scores and customer_key_map of ``n`` customers, each known to the web shop and the store."""
    rng = np.random.default_rng(seed)
    keys = np.array([f"K{i:09d}" for i in range(n)], dtype=object)
    scores = pd.DataFrame({
        "customer_key": keys, "segment_id": rng.integers(0, 6, n), "segment": "Active web shoppers",
        "value_band": rng.choice(["low", "medium", "high"], n), "risk_band": rng.choice(["low", "medium", "high"], n),
        "value_risk_cell": "high value / low risk", "value": rng.gamma(2, 20, n), "p_alive": rng.random(n),
        "expected_purchases_365d": rng.gamma(2, 1, n), "attrition_risk": rng.random(n),
        "propensity_food": rng.random(n), "propensity_drinks": rng.random(n), "response_propensity": rng.random(n),
        "next_best_offer": "P0001", "next_best_offer_name": "Bananas", "preferred_channel": "web",
        "preferred_medium": "email", "treatment": "newsletter", "rule": "default", "contact": True,
        "contact_reason": None, "control": False, "model_version": "bench", "decision_version": "bench"})
    km = pd.DataFrame({"source_system": np.repeat(["web", "store"], n),
                       "source_id": np.r_[[f"W{i}" for i in range(n)], [f"S{i}" for i in range(n)]],
                       "customer_key": np.r_[keys, keys], "match_confidence": 1.0})
    # what POST /v1/decide reads: 5 offers per customer, a tenth contacted in the last 30 days, the policy
    offers = pd.DataFrame({"customer_key": np.repeat(keys, 5), "rank": np.tile(np.arange(1, 6), n),
                           "product_id": [f"P{i:04d}" for i in rng.integers(0, 2000, 5 * n)],
                           "product_name": "Bananas", "nbo_score": rng.random(5 * n)})
    offers = offers.drop_duplicates(["customer_key", "product_id"])
    offers["rank"] = offers.groupby("customer_key").cumcount() + 1
    hit = keys[rng.random(n) < 0.1]
    recent = pd.DataFrame({"customer_key": hit, "contact_date": pd.Timestamp("2026-06-20"), "contacts": 1})
    policy = pd.DataFrame({"setting": ["decision_version", "control_share", "frequency_cap", "frequency_days",
                                       "no_contact_treatments", "guarded_products", "cutoff"],
                           "value": ["bench", "0.1", "2", "30", '["no_action"]', '["P0007"]', "2026-06-30T00:00:00"]})
    return {"customer_scores": scores, "customer_key_map": km, "customer_offers": offers,
            "recent_contacts": recent, "decision_policy": policy}


def ids(n: int, count: int, seed: int = 1) -> list[tuple[str, str]]:
    """The key mix: 90% known ids (a fifth of them from 1,000 regulars), 10% unknown."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        u = rng.random()
        if u < 0.1:
            out.append(("web", f"X{rng.integers(0, 10**9)}"))
        else:
            i = int(rng.integers(0, 1000)) if u < 0.28 else int(rng.integers(0, n))
            system = "web" if rng.random() < 0.5 else "store"
            out.append((system, f"{'W' if system == 'web' else 'S'}{i}"))
    return out


def crmlab_requests(keys) -> list[bytes]:
    return [f"GET /v1/customers/{s}/{i} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
            for s, i in keys]


def decide_requests(keys, seed: int = 2) -> list[bytes]:
    """POST /v1/decide for the key mix's known ids, with a basket of 0-5 products, at the data's end."""
    rng = np.random.default_rng(seed)
    out = []
    for s, i in keys:
        if i.startswith("X"):
            continue
        body = json.dumps({"source_system": s, "source_id": i, "channel": "web", "at": "2026-06-30T12:00:00Z",
                           "basket": [f"P{j:04d}" for j in rng.integers(0, 2000, rng.integers(0, 6))]})
        out.append((f"POST /v1/decide HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode())
    return out


def feast_requests(keys, features: list[str]) -> list[bytes]:
    out = []
    for s, i in keys:
        body = json.dumps({"features": [f"customer_scores:{f}" for f in features],
                           "entities": {"source_ref": [f"{s}:{i}"]}})
        out.append((f"POST /get-online-features HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
    return out


async def _load(port: int, rate: int, seconds: float, requests: list[bytes], connections: int):
    queue: asyncio.Queue = asyncio.Queue()
    results: list[tuple[float, float, int]] = []
    errors = [0]
    kinds: dict[str, int] = {}

    async def conn():
        reader = writer = None
        while True:
            item = await queue.get()
            if item is None:
                break
            due, req = item
            for attempt in (0, 1):                 # a keep-alive connection the server closed: reopen, resend once
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(req)
                    head = await reader.readuntil(b"\r\n\r\n")
                    m = _LEN.search(head)
                    if m:
                        await reader.readexactly(int(m.group(1)))
                    results.append((due, time.perf_counter(), int(head[9:12])))
                    break
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                    if writer is not None:
                        writer.close()
                    reader = writer = None
                    kinds[type(exc).__name__] = kinds.get(type(exc).__name__, 0) + 1
                    if attempt:
                        errors[0] += 1
        if writer is not None:
            writer.close()

    workers = [asyncio.create_task(conn()) for _ in range(connections)]
    await asyncio.sleep(0.2)
    n = int(rate * seconds)
    t0 = time.perf_counter() + 0.05
    i = 0
    while i < n:
        now = time.perf_counter()
        due_n = min(n, int((now - t0) * rate) + 1)
        while i < due_n:
            queue.put_nowait((t0 + i / rate, requests[i % len(requests)]))
            i += 1
        await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
    end = t0 + seconds
    deadline = end + 5.0
    while len(results) + errors[0] < n and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    for _ in workers:
        queue.put_nowait(None)
    done, pending = await asyncio.wait(workers, timeout=1)
    for t in pending:
        t.cancel()
    lat = np.array([(d - s) * 1e3 for s, d, _ in results])
    last = max((d for _, d, _ in results), default=end)
    status = pd.Series([c for _, _, c in results]).value_counts().to_dict()
    bad = sum(v for k, v in status.items() if k not in (200, 404))
    return {"rate": rate, "sent": n, "answered": len(results), "errors": n - len(results) + bad,
            "throughput": len(results) / max(last - t0, 1e-9),
            "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            "max": float(lat.max()) if len(lat) else float("nan"), "status": status, "failures": kinds}


def identify_world(tmp: Path, customers: int, urls: list[str], schema: str) -> tuple[list[bytes], list[str]]:
    """A synthetic world of ``customers`` customers, matched as stage 10 does and published with its
    identity index to each of ``urls``; returns the POST /v1/identify requests (the world's held-back
    person records: known customers and people who are not customers) and report lines, including
    recall and precision against the planted truth, measured in-process on the same records."""
    from crmlab import identity, identity_index, sources, synth
    from crmlab.truth import record_truth

    lines = []
    world = tmp / "world"
    t = time.perf_counter()
    synth.generate(synth.WorldSpec(customers=customers, seed=11), world)
    src = sources.load(world)
    rec = src.customers
    m = identity.RecordMatcher(random_state=11).fit(rec)
    km = m.predict(rec)
    lines.append(f"# identify: world of {customers:,} customers ({len(rec):,} source records) generated, loaded and "
                 f"matched in {time.perf_counter() - t:.0f} s")
    keys = km["customer_key"].unique()
    scores = tables(len(keys))["customer_scores"].assign(customer_key=keys)      # the lookups' answers
    for url in urls:
        t = time.perf_counter()
        publish.publish({"customer_key_map": km.astype({"source_id": str}), "customer_scores": scores}, url,
                        identity=identity_index.identity_tables(identity_index.index_rows(rec, km, m), km, m,
                                                                schema=schema, role=None))
        lines.append(f"# identify: identity index published to {url.split(':')[0]} in {time.perf_counter() - t:.1f} s")
    hold = pd.read_parquet(world / "truth" / "identify_holdout.parquet")
    fields = list(identity_index.PERSON_FIELDS)
    bodies = []
    for r in hold[fields].astype(object).where(hold[fields].notna(), None).to_dict("records"):
        if r["dob"] is not None:
            r["dob"] = str(r["dob"])[:10]
        bodies.append({k: v for k, v in r.items() if v is not None})
    owner = pd.DataFrame({"key": km["customer_key"], "cid": record_truth(world, km)}) \
        .groupby("key")["cid"].agg(lambda x: x.value_counts().index[0])
    idf = identity_index.Identifier(urls[0], schema)
    got = [idf.identify(b, create=False) for b in bodies]
    idf.close()
    known = hold["customer_id"].notna().to_numpy()
    matched = np.array([g["status"] == "matched" for g in got])
    right = np.array([g["status"] == "matched" and str(owner.get(g["customer_key"])) == str(c)
                      for g, c in zip(got, hold["customer_id"])])
    lines.append(f"# identify: held-back records {known.sum():,} known + {(~known).sum():,} not customers: recall "
                 f"{right[known].mean():.4f}, precision {right.sum() / max(matched.sum(), 1):.4f}, "
                 f"non-customers given a key {int((matched & ~known).sum())}")
    reqs = []
    for b in bodies:
        body = json.dumps(b)
        reqs.append((f"POST /v1/identify HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body.encode())}\r\n\r\n{body}").encode())
    return reqs, lines


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(proc, port: int, what: str, seconds: float):
    """(proc, port) once GET /health answers 200; stops the process and raises if it does not in ``seconds``."""
    import httpx

    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{what} did not answer /health within {seconds:g} s")


def serve(url: str, workers: int, tmp: Path, redis_url: str | None = None, prefix: str = "crmlab",
          identity_schema: str | None = None):
    tok = tmp / "tokens.yaml"
    tok.write_text(f"tokens:\n  - name: bench\n    token: {TOKEN}\n    scopes: [read]\n")
    port = _port()
    cmd = [sys.executable, "-m", "crmlab", "serve", "--db", url, "--port", str(port), "--tokens", str(tok),
           "--workers", str(workers)]
    if redis_url:
        cmd += ["--redis", redis_url, "--redis-prefix", prefix]
    if identity_schema:
        cmd += ["--identity-schema", identity_schema]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp)
    return _healthy(proc, port, f"the service over {publish._safe(url)}", 30)


FEAST_TYPES = {"f": "Float64", "i": "Int64", "b": "Bool", "O": "String"}


def feast_repo(tmp: Path, data: dict, feast_bin: str, online: str, redis_url: str) -> tuple[Path, list[str], float]:
    """A Feast feature repository holding the same answers: one row per source id (``source_ref`` =
    "system:id", as touchpoints ask) with every customer_scores column, materialised into Feast's online store
    (``online``: sqlite or redis). Returns (repo, feature names, seconds to apply and materialise)."""
    repo = tmp / f"feast_{online}"
    (repo / "data").mkdir(parents=True)
    km, sc = data["customer_key_map"], data["customer_scores"]
    df = km.merge(sc, on="customer_key")
    df.insert(0, "source_ref", df["source_system"] + ":" + df["source_id"])
    df = df.drop(columns=["source_system", "source_id", "match_confidence"])
    for c in df.columns:
        if df[c].dtype == object or str(df[c].dtype).startswith("str"):
            df[c] = df[c].astype(object).where(df[c].notna(), "")
    df["event_timestamp"] = pd.Timestamp.now(tz="UTC").floor("s") - pd.Timedelta(days=1)
    df.to_parquet(repo / "data" / "scores.parquet", index=False)
    features = [c for c in df.columns if c not in ("source_ref", "event_timestamp")]
    fields = ",\n        ".join(f'Field(name="{c}", dtype={FEAST_TYPES.get(df[c].dtype.kind, "String")})'
                                 for c in features)
    store = ("  type: sqlite\n  path: data/online_store.db" if online == "sqlite" else
             f"  type: redis\n  connection_string: \"{redis_url.split('//', 1)[1].rsplit('/', 1)[0]}\"")
    (repo / "feature_store.yaml").write_text(
        f"project: crmlab_bench_{online}\nregistry: data/registry.db\nprovider: local\nonline_store:\n{store}\n"
        "entity_key_serialization_version: 3\n")
    (repo / "features.py").write_text(f"""from datetime import timedelta
from feast import Entity, FeatureView, Field, FileSource
from feast.types import Bool, Float64, Int64, String

ref = Entity(name="source_ref", join_keys=["source_ref"])
source = FileSource(path="data/scores.parquet", timestamp_field="event_timestamp")
customer_scores = FeatureView(
    name="customer_scores", entities=[ref], ttl=timedelta(days=3650), online=True, source=source,
    schema=[
        {fields}
    ])
""")
    t = time.perf_counter()
    for cmd in (["apply"], ["materialize", "2000-01-01T00:00:00", pd.Timestamp.now().strftime("%Y-%m-%dT%H:%M:%S")]):
        r = subprocess.run([feast_bin, *cmd], cwd=repo, capture_output=True, text=True, timeout=1800)
        if r.returncode:
            raise RuntimeError(f"feast {cmd[0]} failed: {r.stderr[-1500:]}")
    return repo, features, time.perf_counter() - t


def feast_serve(repo: Path, feast_bin: str, workers: int):
    port = _port()
    proc = subprocess.Popen([feast_bin, "serve", "-h", "127.0.0.1", "-p", str(port), "-w", str(workers),
                             "--no-access-log"], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return _healthy(proc, port, "feast serve", 60)



def _postgres_url() -> str | None:
    url = os.environ.get("CRMLAB_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    try:
        import sqlalchemy as sa

        eng = sa.create_engine(url, connect_args={"connect_timeout": 3})
        with eng.connect():
            pass
        eng.dispose()
        return url
    except Exception:  # noqa: BLE001 - no server: the backend is left out and the report says so
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--customers", type=int, default=200_000)
    ap.add_argument("--rates", type=int, nargs="+", default=[500, 1000, 2000])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--workers", type=int, default=2, help="uvicorn worker processes of the service")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--redis", default=os.environ.get("CRMLAB_TEST_REDIS", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--backends", nargs="+", default=["sqlite", "postgresql", "redis", "feast-sqlite", "decide-sqlite",
                                                     "decide-postgresql"])
    ap.add_argument("--feast", default=str(ROOT / ".bench" / "feast" / "bin" / "feast"),
                    help="the feast command of its own environment (python -m venv .bench/feast && "
                         ".bench/feast/bin/pip install feast)")
    ap.add_argument("--identify-customers", type=int, default=100_000,
                    help="customers of the world whose identity index POST /v1/identify is measured on (0: none)")
    ap.add_argument("--identify-rates", type=int, nargs="+", default=[250, 500, 1000])
    ap.add_argument("--out")
    a = ap.parse_args()
    lines = [f"# python benchmarks/service_bench.py --customers {a.customers} --rates {' '.join(map(str, a.rates))} "
             f"--seconds {a.seconds:g} --workers {a.workers}",
             f"# {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs; client and service on the same "
             "machine (loopback); open loop, latency from each request's scheduled time"]
    keys = ids(a.customers, 50_000)
    requests = crmlab_requests(keys)
    with tempfile.TemporaryDirectory(prefix="crmlab-svc-") as tmpd:
        tmp = Path(tmpd)
        data = tables(a.customers)
        backends = []
        sqlite_url = publish.default_url(tmp / "sqlite")
        t = time.perf_counter()
        publish.publish(data, sqlite_url)
        lines.append(f"# published {a.customers:,} customers / {2 * a.customers:,} ids to SQLite in {time.perf_counter() - t:.1f} s")
        backends.append(("sqlite", lambda: serve(sqlite_url, a.workers, tmp), requests))
        backends.append(("decide-sqlite", lambda: serve(sqlite_url, a.workers, tmp), decide_requests(keys)))
        pg = _postgres_url()
        schema = None
        if pg:
            import sqlalchemy as sa

            schema = f"crmlab_bench_{uuid.uuid4().hex[:8]}"
            eng = sa.create_engine(pg)
            with eng.begin() as c:
                c.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            pg_url = f"{pg}?options=-csearch_path%3D{schema}"
            t = time.perf_counter()
            publish.publish(data, pg_url)
            lines.append(f"# published to PostgreSQL in {time.perf_counter() - t:.1f} s")
            backends.append(("postgresql", lambda: serve(pg_url, a.workers, tmp), requests))
            backends.append(("decide-postgresql", lambda: serve(pg_url, a.workers, tmp), decide_requests(keys)))
        else:
            lines.append("# PostgreSQL: no server answered; left out")
        prefix = f"crmlab-bench-{uuid.uuid4().hex[:8]}"
        try:
            t = time.perf_counter()
            online_store.sync(sqlite_url, a.redis, prefix)
            lines.append(f"# Redis online store filled from SQLite in {time.perf_counter() - t:.1f} s")
            backends.append(("redis", lambda: serve(sqlite_url, a.workers, tmp, a.redis, prefix), requests))
        except Exception as exc:  # noqa: BLE001
            lines.append(f"# Redis: {exc}; left out")
        if "feast-sqlite" in a.backends and Path(a.feast).exists():
            try:
                repo, features, secs = feast_repo(tmp, data, a.feast, "sqlite", a.redis)
                ver = re.sub(r"\x1b\[[0-9;]*m", "", subprocess.run([a.feast, "version"], capture_output=True,
                                                                text=True).stdout).split(":")[-1].strip().strip('"')
                lines.append(f"# Feast {ver}: same {2 * a.customers:,} ids and columns (entity source_ref = 'system:id'), "
                             f"SQLite online store, apply + materialize in {secs:.1f} s; feast serve with {a.workers} workers")
                backends.append(("feast-sqlite", lambda: feast_serve(repo, a.feast, a.workers),
                                 feast_requests(keys, features)))
            except Exception as exc:  # noqa: BLE001 - reported, the rest still runs
                lines.append(f"# Feast: {exc}; left out")
        elif "feast-sqlite" in a.backends:
            lines.append(f"# Feast: no {a.feast}; left out")
        id_schema = f"crmlab_bench_id_{uuid.uuid4().hex[:8]}"
        if a.identify_customers:
            id_sqlite = publish.default_url(tmp / "identify")
            id_pg = None
            if pg:
                with eng.begin() as c:
                    c.execute(sa.text(f'CREATE SCHEMA "{id_schema}_main"'))
                id_pg = f"{pg}?options=-csearch_path%3D{id_schema}_main"
            id_reqs, more = identify_world(tmp, a.identify_customers, [id_sqlite] + ([id_pg] if pg else []), id_schema)
            lines += more
            backends.append(("identify-sqlite", lambda: serve(id_sqlite, a.workers, tmp, identity_schema=id_schema),
                             id_reqs))
            if pg:
                backends.append(("identify-postgresql",
                                 lambda: serve(id_pg, a.workers, tmp, identity_schema=id_schema), id_reqs))
        lines.append(f"{'backend':19s} {'rate/s':>7s} {'answered':>9s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} "
                     f"{'max ms':>8s} {'errors':>7s}")
        try:
            wanted = set(a.backends) | ({"identify-sqlite", "identify-postgresql"} if a.identify_customers else set())
            for name, start, reqs in [b for b in backends if b[0] in wanted]:
                proc, port = start()
                try:
                    asyncio.run(_load(port, 200, 2.0, reqs, a.connections))              # warm-up
                    for rate in (a.identify_rates if name.startswith(("identify", "decide")) else a.rates):
                        r = asyncio.run(_load(port, rate, a.seconds, reqs, a.connections))
                        line = (f"{name:19s} {rate:7d} {r['answered']:9,d} {r['throughput']:8.0f} {r['p50']:8.2f} "
                                f"{r['p99']:8.2f} {r['max']:8.1f} {r['errors']:7d}")
                        print(line, r["status"], flush=True)
                        lines.append(line)
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=30)
        finally:
            if schema:
                with eng.begin() as c:
                    for sch in (schema, id_schema, f"{id_schema}_main"):
                        c.execute(sa.text(f'DROP SCHEMA IF EXISTS "{sch}" CASCADE'))
            import redis

            r = redis.Redis.from_url(a.redis)
            left = list(r.scan_iter(match=f"{prefix}:*", count=10_000))
            for i in range(0, len(left), 10_000):
                r.unlink(*left[i:i + 10_000])
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
