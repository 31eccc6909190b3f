"""Where a run computes: in the stage's own process (``engine.kind: local``, the default) or on a Dask
cluster (``engine.kind: dask``): a scheduler at ``engine.address``, or a LocalCluster of
``engine.workers`` processes started for the run.

The run starts (or joins) the cluster once, before its first stage, writes the dashboard link into its
log and manifest and hands the scheduler's address to every stage kernel (``CRMLAB_DASK_SCHEDULER``);
a stage reaches it through :func:`client`. Each worker runs one task at a time with Numba, OpenMP and
BLAS at one thread and the run's Numba cache, so kernels neither oversubscribe the cores nor recompile.
``dask[distributed]`` is the ``dask`` extra (``pip install 'crmlab[dask]'``), imported only here.
"""
from __future__ import annotations

import atexit
import os
from asyncio import CancelledError
from dataclasses import dataclass, field

from . import compile_cache, threads
from .errors import ConfigError, CrmlabError

#: The scheduler a run started or joined, for its stage kernels.
ENV_SCHEDULER = "CRMLAB_DASK_SCHEDULER"
#: Seconds to wait for a scheduler named by ``engine.address`` before the run stops.
CONNECT_TIMEOUT_S = 10


class EngineError(CrmlabError):
    """The Dask cluster cannot be started or reached."""


@dataclass
class Cluster:
    """A Dask cluster a run started (``local`` holds the LocalCluster) or joined; :meth:`close` ends
    what the run started and leaves a joined scheduler running."""

    client: object
    address: str
    dashboard: str | None
    workers: int
    local: object | None = None
    _spilled: dict = field(default_factory=dict, init=False, repr=False)   # per worker: bytes at the last usage()

    def describe(self) -> dict:
        """What the manifest records."""
        return {"kind": "dask", "scheduler": self.address, "dashboard": self.dashboard, "workers": self.workers,
                "started_for_run": self.local is not None}

    def usage(self) -> dict:
        """For the manifest, at the end of a stage: the busiest worker's peak resident memory so far (MB)
        and the bytes the workers wrote to disk spilling since the previous call (the stage's)."""
        try:
            got = self.client.run(_worker_usage)
        except Exception:                                   # noqa: BLE001 - a report, never a failure
            return {}
        spilled = sum(max(0, v[1] - self._spilled.get(w, 0)) for w, v in got.items())   # a new worker starts at 0
        self._spilled = {w: v[1] for w, v in got.items()}
        return {"workers_peak_mb": round(max((v[0] for v in got.values()), default=0.0), 1),
                "spilled_bytes": int(spilled)}

    def close(self) -> None:
        self.client.close()
        if self.local is not None:
            self.local.close()


def _worker_usage(dask_worker=None) -> tuple[float, int]:
    """A worker's peak resident memory (MB) and the bytes it has written to disk spilling since it started
    (Dask's cumulative ``disk-write`` metrics; its spill buffer only tells what lies on disk now)."""
    import resource

    digests = getattr(dask_worker, "digests_total", None) or {}
    spilled = sum(v for k, v in digests.items() if isinstance(k, tuple) and k[-2:] == ("disk-write", "bytes"))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, int(spilled)


def _distributed():
    try:
        import distributed
    except ImportError as exc:
        raise ConfigError("engine.kind 'dask' needs dask.distributed, which is not installed here: "
                          "pip install 'crmlab[dask]'") from exc
    return distributed


def _worker_setup(cache: str | None) -> int:
    """Run on every worker: one thread per pool, the run's Numba cache."""
    if cache:
        os.environ["NUMBA_CACHE_DIR"] = cache
        compile_cache.configure()
    return threads.limit(1)


def start(engine: dict) -> Cluster | None:
    """The cluster ``engine`` (the ``engine`` parameters) asks for, started or joined; None for local."""
    if engine.get("kind", "local") == "local":
        return None
    distributed = _distributed()
    cache = str(compile_cache.configure() or "") or None
    address = engine.get("address")
    if address:
        try:
            client = distributed.Client(address, timeout=f"{CONNECT_TIMEOUT_S}s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise EngineError(f"engine.address {address}: no Dask scheduler answered within {CONNECT_TIMEOUT_S} s "
                              f"({type(exc).__name__}: {exc}); start one (`dask scheduler`) or leave "
                              "engine.address empty for a LocalCluster") from None
        local = None
    else:
        n = engine.get("workers") or threads.available_cores()
        env = {**threads.environ(1), **({"NUMBA_CACHE_DIR": cache} if cache else {})}
        try:
            local = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                             memory_limit=engine.get("memory_limit") or "auto",
                                             dashboard_address="127.0.0.1:0", host="127.0.0.1",
                                             silence_logs=40, env=env)
        except (OSError, ValueError, TypeError) as exc:
            raise EngineError(f"could not start a Dask LocalCluster of {n} workers "
                              f"(memory_limit {engine.get('memory_limit') or 'auto'}): {exc}") from None
        client = distributed.Client(local)
    client.run(_worker_setup, cache)
    workers = len(client.scheduler_info().get("workers", {}))
    return Cluster(client, client.scheduler.address, getattr(client, "dashboard_link", None), workers, local)


def _lost_errors() -> tuple:
    """What a computation raises when the cluster lost a worker, and with it data scattered to it."""
    distributed = _distributed()
    from distributed.comm.core import CommClosedError

    return tuple({getattr(distributed.client, "FutureCancelledError", CancelledError), CancelledError,
                  distributed.scheduler.KilledWorker, CommClosedError})


def scatter(client, data, broadcast: bool = False):
    """``client.scatter(data)`` under fresh keys. Dask names scattered data by a hash of its content, so
    data equal to data released a moment before (the same parts sent by two steps in a row, or again
    after a lost worker) got the released key back; the release travels on another channel and could
    reach the scheduler after the new data, which it then forgot: tasks on it were cancelled ("lost
    dependencies") or waited forever (dask/distributed#8576; a CI run hung on it)."""
    return client.scatter(data, broadcast=broadcast, hash=False)


def retry_lost(fn, what: str, again=None):
    """``fn()``, and once more (after ``again()``, e.g. scattering the data anew) when a worker was lost
    on the way; lost twice, an :class:`EngineError` naming the stage and ``what``. The data come from
    the stage's process, so a worker that died (out of memory, killed) costs a recomputation, not the run."""
    errors = _lost_errors()
    try:
        return fn()
    except errors as exc:
        print(f"dask: a worker was lost while computing {what} ({type(exc).__name__}); computing it again", flush=True)
    if again is not None:
        again()
    try:
        return fn()
    except errors as exc:
        stage = os.environ.get("CRMLAB_STAGE")
        raise EngineError(f"{f'stage {stage}: ' if stage else ''}Dask workers were lost twice while computing "
                          f"{what} ({type(exc).__name__}: {exc}); nothing of it was written. Check the workers' "
                          "memory (engine.memory_limit, the dashboard) and rerun, e.g. crmlab run --from "
                          f"{stage or 'STAGE'}") from None


_CLIENT: dict = {}


def client(engine: dict):
    """The Dask client of this process for ``engine``: the run's scheduler (``CRMLAB_DASK_SCHEDULER``),
    else, opened interactively with ``engine.kind: dask``, a cluster started for this process (closed at
    exit); None for ``engine.kind: local``."""
    if engine.get("kind", "local") == "local":
        return None
    if "cluster" not in _CLIENT:
        address = os.environ.get(ENV_SCHEDULER)
        if address:
            cluster = start({**engine, "address": address})
        else:
            cluster = start(engine)
            print(f"dask: {cluster.workers} workers, dashboard {cluster.dashboard}", flush=True)
        atexit.register(cluster.close)
        _CLIENT["cluster"] = cluster
    return _CLIENT["cluster"].client
