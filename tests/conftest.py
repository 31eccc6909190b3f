import contextlib
import shutil
import sys
from pathlib import Path

import pytest

from crmlab import synth

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
sys.modules.setdefault("rfc3987_syntax", None)      # see crmlab.pipeline._lean_imports


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """A 2,000-customer synthetic world in Parquet (read-only for tests: copy before changing)."""
    out = tmp_path_factory.mktemp("world")
    synth.generate(synth.WorldSpec(customers=2000, seed=3), out, fmt="parquet")
    return out


@pytest.fixture
def sample_copy(tmp_path) -> Path:
    """A writable copy of the bundled CSV sample (without its truth folder)."""
    dst = tmp_path / "data"
    shutil.copytree(SAMPLE, dst, ignore=shutil.ignore_patterns("truth"))
    return dst


def _reachable(url: str) -> str | None:
    try:
        import psycopg  # noqa: F401
        import sqlalchemy as sa

        eng = sa.create_engine(url, connect_args={"connect_timeout": 3})
        with eng.connect():
            pass
        eng.dispose()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _start_throwaway_postgres(tmp: Path):
    """Start a private PostgreSQL server (initdb + pg_ctl from PATH or Debian's folders); None if impossible."""
    import glob
    import os
    import socket
    import subprocess

    bins = [os.path.dirname(p) for p in [shutil.which("pg_ctl") or ""] if p]
    bins += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for b in bins:
        initdb, pg_ctl = Path(b) / "initdb", Path(b) / "pg_ctl"
        if not (initdb.exists() and pg_ctl.exists()) or os.geteuid() == 0:
            continue
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        data = tmp / "pgdata"
        try:
            subprocess.run([initdb, "-D", data, "-A", "trust", "-U", "postgres"], check=True, capture_output=True)
            subprocess.run([pg_ctl, "-D", data, "-o", f"-p {port} -k {tmp} -h 127.0.0.1", "-w", "start",
                            "-l", tmp / "pg.log"], check=True, capture_output=True)
            subprocess.run([Path(b) / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "test"],
                           check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError):
            continue
        return f"postgresql+psycopg://postgres@127.0.0.1:{port}/test", lambda: subprocess.run(
            [pg_ctl, "-D", data, "-m", "fast", "stop"], capture_output=True)
    return None


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """URL of a PostgreSQL server: $CRMLAB_TEST_POSTGRES or 127.0.0.1:5432/test; when none answers,
    a private server started for the session; else the test is skipped saying why."""
    import os

    url = os.environ.get("CRMLAB_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    why = _reachable(url)
    if why is None:
        yield url
        return
    started = _start_throwaway_postgres(tmp_path_factory.mktemp("pg"))
    if started is None:
        pytest.skip(f"no PostgreSQL server at {url} ({why}) and none could be started here "
                    "(needs initdb/pg_ctl and a non-root user); set CRMLAB_TEST_POSTGRES to a server's URL")
    url, stop = started
    try:
        yield url
    finally:
        stop()


@contextlib.contextmanager
def fresh_schema(server_url: str):
    """A fresh schema on a PostgreSQL server: (URL whose search_path points at it, name); dropped afterwards."""
    import uuid

    import sqlalchemy as sa

    schema = f"crmlab_t_{uuid.uuid4().hex[:10]}"
    eng = sa.create_engine(server_url)
    with eng.begin() as c:
        c.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in server_url else "?"
    try:
        yield f"{server_url}{sep}options=-csearch_path%3D{schema}", schema
    finally:
        with eng.begin() as c:
            c.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        eng.dispose()


@pytest.fixture
def postgres_schema(postgres_server):
    """A fresh schema on the test server; the URL's search_path points at it. Dropped afterwards."""
    with fresh_schema(postgres_server) as got:
        yield got


def pytest_collection_modifyitems(items):
    """Tests that may install the browser first (apt-get, up to 3 x 900 s) get longer than the suite's
    15-minute limit for a hung test (pyproject: ``timeout``)."""
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(3600))


@pytest.fixture(scope="session")
def browser() -> str:
    """A headless Chromium for report tests: the one on this machine, else Debian's chromium-headless-shell
    installed with apt-get where this user may; otherwise the test is skipped saying why."""
    import os
    import subprocess

    from crmlab.report_check import find_browser

    path = find_browser()
    apt = shutil.which("apt-get")
    if path is None and apt and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = [apt, "install", "-y", "-q", "chromium-headless-shell"]
        if subprocess.run(cmd, env=env, capture_output=True, timeout=900).returncode != 0:
            subprocess.run([apt, "update", "-q"], env=env, capture_output=True, timeout=900)   # no package lists yet
            subprocess.run(cmd, env=env, capture_output=True, timeout=900)
        path = find_browser()
    if path is None:
        pytest.skip("no headless Chromium here and it cannot be installed (needs root and apt-get: "
                    "apt-get install chromium-headless-shell), or set CRMLAB_BROWSER to a Chromium binary")
    return path


@pytest.fixture(scope="session")
def redis_server():
    """URL of a Redis server: $CRMLAB_TEST_REDIS or redis://127.0.0.1:6379/0; when none answers, a private
    redis-server started for the session (nothing kept on disk); else the test is skipped saying why."""
    import os
    import socket
    import subprocess
    import time

    import redis

    url = os.environ.get("CRMLAB_TEST_REDIS", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        yield url
        return
    except (redis.RedisError, ValueError) as exc:
        why = f"{type(exc).__name__}: {exc}"
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip(f"no Redis server at {url} ({why}) and no redis-server here to start one; "
                    "set CRMLAB_TEST_REDIS to a server's URL")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        try:
            redis.Redis.from_url(url, socket_connect_timeout=1).ping()
            break
        except redis.RedisError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.skip(f"no Redis server at {url} ({why}) and the private redis-server did not start")
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


READ, WRITE = "r" * 8 + "-read-token-0001", "w" * 8 + "-write-token-0001"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def start_service(url: str, tmp: Path, *extra: str):
    """``crmlab serve`` over ``url`` on a free loopback port with a read token (READ) and a read+write
    token (WRITE); yields (base URL, log file). Stopped with SIGTERM: it must shut down gracefully."""
    import json
    import signal
    import subprocess
    import sys
    import time

    import httpx

    from crmlab import service

    tok = tmp / "tokens.yaml"
    tok.write_text(json.dumps({"tokens": [
        {"name": "call-centre screen", "token": READ, "scopes": ["read"]},
        {"name": "campaign manager", "sha256": service._digest(WRITE), "scopes": ["read", "write"]}]}))
    port = free_port()
    logf = open(tmp / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "crmlab", "serve", "--db", url, "--port", str(port),
                             "--tokens", str(tok), *extra], stdout=logf, stderr=subprocess.STDOUT, cwd=tmp)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            logf.seek(0)
            pytest.fail(f"the service exited: {logf.read()[-2000:]}")
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("the service did not answer /health within 30 s")
    try:
        yield base, tmp / "server.log"
    finally:
        proc.send_signal(signal.SIGTERM)                  # graceful shutdown, then uvicorn re-raises the signal
        code = proc.wait(timeout=20)
        logf.seek(0)
        log = logf.read()
        logf.close()
    assert code in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in log
