"""The Redis online store: filled per published version from the SQL database, switched with one pointer,
read in one round trip; it follows publishes, restores and pruning, and the service reads it over HTTP while
versions change, never mixing two."""
import subprocess
import sys
import time
import uuid

import httpx
import pytest
import redis

from crmlab import online_store, publish
from crmlab.cli import main
from crmlab.online_store import OnlineStoreError, RedisStore
from crmlab.service import ScoreStore
from test_publish import tables
from conftest import free_port
from test_service import stream_answers


@pytest.fixture
def target(redis_server, tmp_path):
    """(SQLite URL, Parquet folder, Redis URL, a key prefix of this test's own); its keys deleted afterwards."""
    prefix = f"crmlab-test-{uuid.uuid4().hex[:10]}"
    yield publish.default_url(tmp_path), tmp_path / "published", redis_server, prefix
    r = redis.Redis.from_url(redis_server)
    keys = list(r.scan_iter(match=f"{prefix}:*", count=10_000))
    if keys:
        r.unlink(*keys)


def test_sync_fills_switches_and_answers_exactly_as_sql(target):
    url, folder, rurl, prefix = target
    assert online_store.sync(url, rurl, prefix) is None                  # nothing published: nothing to follow
    v = publish.publish(tables(1), url, folder)
    assert online_store.sync(url, rurl, prefix) == v == 1
    store, sql = RedisStore(rurl, prefix), ScoreStore(url)
    try:
        assert store.current() == 1 and store.versions() == [1]
        for system, sid in (("web", "W0"), ("store", "S17"), ("web", "W2009")):
            assert store.customer(system, sid) == sql.customer(system, sid) is not None
        assert store.customer("web", "nobody") is None and store.customer("nowhere", "W0") is None
        meta = store.version()
        assert meta["version"] == 1 and meta["store"] == "redis" and meta["model_version"] == "m1"
    finally:
        store.close()
        sql.close()


def test_the_store_follows_publishes_restores_and_pruning(target):
    url, folder, rurl, prefix = target
    for tag in (1, 2, 3):
        publish.publish(tables(tag), url, folder, keep=2)
        online_store.sync(url, rurl, prefix)
    store = RedisStore(rurl, prefix)
    try:
        assert store.current() == 3 and store.versions() == [2, 3]       # version 1 pruned in SQL, then here
        assert store.customer("web", "W5")["treatment"] == "offer_3"
        assert main(["restore", "2", "--url", url, "--redis", rurl, "--redis-prefix", prefix]) == 0
        assert store.current() == 2 and store.customer("web", "W5")["treatment"] == "offer_2"
        with pytest.raises(OnlineStoreError, match="current"):
            store.drop(2)                                                # never the version readers use
        store.r.delete(f"{prefix}:v3:meta")                             # a version left half-written
        with pytest.raises(OnlineStoreError, match="not complete"):
            store.switch(3)
        assert store.current() == 2
        online_store.sync(url, rurl, prefix)                             # SQL says 2: nothing to switch
        assert store.current() == 2
    finally:
        store.close()
    with pytest.raises(OnlineStoreError, match="does not answer"):
        RedisStore("redis://127.0.0.1:1/0", prefix, timeout=0.5)


def test_service_reads_the_online_store_while_versions_change(target):
    """``crmlab serve --redis``: answers come from Redis (the version endpoint says so); publishing versions 2
    and 3 (each followed by a sync) and restoring 2 while a client keeps asking: no failed request, no answer
    mixing versions, the new version served within a second of its switch."""
    url, folder, rurl, prefix = target
    publish.publish(tables(1), url, folder)
    online_store.sync(url, rurl, prefix)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "crmlab", "serve", "--db", url, "--redis", rurl,
                             "--redis-prefix", prefix, "--port", str(port), "--no-auth"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert httpx.get(f"{base}/v1/version").json()["store"] == "redis"
        assert httpx.get(f"{base}/v1/customers/web/nobody").status_code == 404
        th, seen, errors, stop = stream_answers(f"{base}/v1/customers/store/S3")
        marks = {}
        for tag in (2, 3):
            publish.publish(tables(tag), url, folder)
            online_store.sync(url, rurl, prefix)
            marks[tag] = time.perf_counter()
            time.sleep(1.0)
        publish.restore(url, 2, folder)
        online_store.sync(url, rurl, prefix)
        marks["restore"] = time.perf_counter()
        time.sleep(1.0)
        stop.set()
        th.join()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert not errors and len(seen) > 50
    assert all(t == f"offer_{v}" for _, v, t in seen)                    # never a mix of versions
    for v in (2, 3):
        later = [t for t, ver, _ in seen if ver == v and t > marks[v]]
        assert later and later[0] - marks[v] < 1.0
    assert {v for t, v, _ in seen if t > marks["restore"] + 0.5} == {2}
