"""One thread setting for every pool in a process: Numba, OpenMP (scikit-learn) and BLAS.

Each of them defaults to every core of the machine, and several in one process (or several
processes on one machine) oversubscribe it: a cell that took 11 s took 845 s with 21 threads on
2 cores. ``engine.threads`` (default: the cores this process may use) caps them together.
"""
from __future__ import annotations

import os

#: Environment variables read by the thread pools when their library loads (child processes).
ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
            "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS")


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's cpuset), not the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve(threads: int | None) -> int:
    """The thread count for a setting: None or 0 = every available core; never more than those."""
    cores = available_cores()
    if threads is None or threads == 0:
        return cores
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    return min(threads, cores)


def environ(threads: int | None) -> dict[str, str]:
    """Environment for a child process (a stage kernel) so that its pools start at this size."""
    return {k: str(resolve(threads)) for k in ENV_VARS}


def limit(threads: int | None) -> int:
    """Cap Numba, OpenMP and BLAS in this process (and the children it starts) to ``threads``.

    Returns the count applied. Pools already loaded are resized (threadpoolctl); those loaded later
    read the environment.
    """
    n = resolve(threads)
    os.environ.update(environ(n))
    import numba
    from threadpoolctl import threadpool_limits

    # Numba reads NUMBA_NUM_THREADS again before every compilation and fails ("Cannot set
    # NUMBA_NUM_THREADS to a different value once the threads have been launched") when it differs from
    # the size its pool started at: a Dask worker that imported Numba before its nanny set this
    # variable could not compile a kernel missing from the cache. Read it now, so that a pool not yet
    # started starts at n; a pool already started keeps its size, and the variable says that size.
    try:
        numba.config.reload_config()
    except RuntimeError:
        os.environ["NUMBA_NUM_THREADS"] = str(numba.config.NUMBA_NUM_THREADS)
    # Numba first: starting its OpenMP threading layer sets OpenMP's thread count to
    # NUMBA_NUM_THREADS, which would undo a limit applied before it (seen as 2 threads after limit(1))
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    threadpool_limits(n)                              # no context: stays in force for the process
    return n


def current() -> dict[str, int]:
    """Threads each pool of this process would use now (for the manifest and the tests)."""
    import numba
    from threadpoolctl import threadpool_info

    out = {"numba": numba.get_num_threads()}
    for pool in threadpool_info():
        out[f"{pool['user_api']}:{pool['internal_api']}"] = pool["num_threads"]
    return out
