"""Command line: ``crmlab run | generate | validate | lookup | versions | restore | runs | warm | kernelspec``."""
from __future__ import annotations

import argparse
import os
import sys
import time

from .errors import CrmlabError


def _cmd_run(a) -> int:
    from . import pipeline

    pipeline.run(a.params, a.set, quiet=a.quiet, from_stage=a.from_stage)
    return 0


def _cmd_generate(a) -> int:
    from . import synth

    if a.partitions is not None and a.partitions < 1:
        raise CrmlabError(f"--partitions must be >= 1, got {a.partitions}")
    chunk = a.chunk or (-(-a.customers // a.partitions) if a.partitions else None)
    spec = synth.WorldSpec(customers=a.customers, seed=a.seed, **({"chunk": chunk} if chunk else {}))
    t0 = time.perf_counter()
    say = (lambda m: None) if a.quiet else (lambda m: print(f"[{time.perf_counter() - t0:6.1f} s] {m}",
                                                            file=sys.stderr, flush=True))
    counts = synth.generate(spec, a.out, fmt=a.format, progress=say, partitioned=bool(a.partitions))
    if not a.quiet:
        print(f"wrote {a.out} in {time.perf_counter() - t0:.1f} s: "
              + ", ".join(f"{k} {v:,}" for k, v in counts.items()), file=sys.stderr)
    return 0


def _cmd_validate(a) -> int:
    from . import config, sources

    if a.params:
        src = sources.load_params(config.load(a.params, a.set))
    else:
        src = sources.load(a.data, a.url)
    print("valid: " + ", ".join(f"{k} {v:,}" for k, v in src.row_counts().items()))
    return 0


def _publish_target(a) -> tuple[str, str | None]:
    """The database URL (and Parquet folder) from --url, else from the parameter file's publish section."""
    from . import config
    from .publish import default_url

    if a.url:
        return a.url, None
    P = config.load(a.params, a.set)["publish"]
    return P["url"] or default_url(P["dir"]), P["dir"]


def _redis_target(a) -> tuple[str | None, str]:
    """The Redis online store (URL, key prefix) from --redis, else from the parameter file's publish section."""
    from . import config

    if getattr(a, "redis", None):
        return a.redis, a.redis_prefix or "crmlab"
    if getattr(a, "url", None):
        return None, "crmlab"
    P = config.load(a.params, a.set)["publish"]
    return P["redis"], getattr(a, "redis_prefix", None) or P["redis_prefix"]


def _cmd_lookup(a) -> int:
    import json

    from .publish import Lookup

    url, _ = _publish_target(a)
    t0 = time.perf_counter()
    with Lookup(url) as lk:
        t1 = time.perf_counter()
        row = lk.get(a.source, a.id)
        t2 = time.perf_counter()
        if row is None:
            print(f"crmlab lookup: no customer with {a.source} id {a.id!r} in the published key map "
                  f"(systems: {', '.join(lk.systems())})", file=sys.stderr)
            return 1
    print(json.dumps(row, indent=1, default=str))
    if a.timing:
        print(f"connect {1e3 * (t1 - t0):.1f} ms, lookup {1e3 * (t2 - t1):.2f} ms", file=sys.stderr)
    return 0


def _cmd_versions(a) -> int:
    from .publish import history, sync_parquet

    url, folder = _publish_target(a)
    h = history(url)
    if h.empty:
        print("nothing published yet")
    else:
        print(h.drop(columns=["tables"]).to_string(index=False))
    if a.check:
        if not folder:
            print("crmlab versions --check: needs the Parquet folder (from --params), not --url", file=sys.stderr)
            return 2
        st = sync_parquet(url, folder, repair=True)
        if st["problem"]:
            print(f"crmlab versions --check: SQL is at version {st['sql']}, Parquet at {st['parquet']}: "
                  f"{st['problem']}", file=sys.stderr)
            return 1
        print(f"SQL and Parquet agree on version {st['sql']}" + (" (Parquet CURRENT repaired)" if st["repaired"] else ""))
    return 0


def _cmd_restore(a) -> int:
    from .publish import restore

    url, folder = _publish_target(a)
    restore(url, a.version, folder)
    print(f"version {a.version} is current again")
    redis_url, prefix = _redis_target(a)
    if redis_url:
        from .online_store import sync

        sync(url, redis_url, prefix, progress=print)
        print(f"Redis online store: version {a.version} is current there too")
    return 0


def _cmd_runs(a) -> int:
    from . import config, runs

    P = config.load(a.params, a.set)
    t = runs.table(P["runs_dir"])
    if a.name:
        t = t[t["run_name"] == a.name]
    if t.empty:
        print(f"no runs under {P['runs_dir']}")
        return 0
    t = t.head(a.last).astype(object)
    t = t.where(t.notna(), "")
    print(t.to_string(index=False))
    return 0


def _cmd_warm(a) -> int:
    from . import warm

    say = (lambda m: None) if a.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    warm.warm(customers=a.customers, force=a.force, say=say)
    return 0


def _cmd_serve(a) -> int:
    from . import service

    url, _ = _publish_target(a)
    redis_url, prefix = _redis_target(a)
    service.serve(url, host=a.host, port=a.port, workers=a.workers, tokens_file=a.tokens, no_auth=a.no_auth,
                  max_body=a.max_body, redis=redis_url, redis_prefix=prefix, identity_db=a.identity_db,
                  identity_schema=a.identity_schema)
    return 0


def _cmd_check_reports(a) -> int:
    from pathlib import Path

    from . import report_check
    from .errors import CrmlabError

    run_dir = Path(a.run_dir)
    if not (run_dir / "index.html").exists():
        raise CrmlabError(f"{run_dir}: not a run folder (no index.html)")
    try:
        checks = report_check.check_run(run_dir, a.browser)
    except FileNotFoundError as exc:
        raise CrmlabError(str(exc)) from None
    bad = 0
    for c in checks:
        print(f"{'ok  ' if c.ok else 'FAIL'} {Path(c.page).name} ({c.images} images)")
        for p in c.problems:
            print(f"       {p}")
        bad += not c.ok
    print(f"screenshots of each first screen in {run_dir / 'screenshots'}")
    return 1 if bad else 0


def _cmd_kernelspec(a) -> int:
    from .pipeline import ensure_kernelspec

    print(f"Jupyter kernel 'crmlab' installed in {ensure_kernelspec(user=a.user)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crmlab", description="crmlab: customer-analytics workbench")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="validate inputs, execute the notebook chain, render reports")
    r.add_argument("--params", default="params/default.yaml", help="parameter file (YAML)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter, e.g. --set data.dir=/data/crm (repeatable)")
    r.add_argument("--from", dest="from_stage", metavar="STAGE",
                   help="resume: take the stages before STAGE from the latest run that finished them "
                        "(refused when their parameters or inputs changed), run STAGE and the rest")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    r.set_defaults(func=_cmd_run)

    g = sub.add_parser("generate", help="write a synthetic CRM world with planted truth")
    g.add_argument("--customers", type=int, default=5000)
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--out", default="data/generated")
    g.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    g.add_argument("--chunk", type=int, default=None, help="customers per chunk (memory bound)")
    g.add_argument("--partitions", type=int, default=None,
                   help="write the large tables as folders of N Parquet parts (one per chunk of customers)")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=_cmd_generate)

    v = sub.add_parser("validate", help="check the input tables without running anything")
    v.add_argument("--params", help="parameter file whose data section names the inputs")
    v.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    v.add_argument("--data", help="folder with the input tables")
    v.add_argument("--url", help="SQLAlchemy URL of a database holding the input tables")
    v.set_defaults(func=_cmd_validate)

    def target(p):
        p.add_argument("--params", default="params/default.yaml", help="parameter file naming the publish target")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
        p.add_argument("--url", help="SQLAlchemy URL of the published database (overrides --params)")

    lk = sub.add_parser("lookup", help="current scores of a customer, by any source system's id")
    lk.add_argument("--source", required=True, help="source system, e.g. web, store, callcentre")
    lk.add_argument("--id", required=True, help="the customer's id in that system")
    lk.add_argument("--timing", action="store_true", help="print connect and lookup times")
    target(lk)
    lk.set_defaults(func=_cmd_lookup)

    ve = sub.add_parser("versions", help="published versions (current, kept, pruned)")
    ve.add_argument("--check", action="store_true",
                    help="check that SQL and the Parquet copy name the same current version (repairs CURRENT)")
    target(ve)
    ve.set_defaults(func=_cmd_versions)

    rs = sub.add_parser("restore", help="make a kept published version current again")
    rs.add_argument("version", type=int)
    target(rs)
    rs.add_argument("--redis", help="switch this Redis online store too (default: publish.redis of --params)")
    rs.add_argument("--redis-prefix", help="its key prefix (default: publish.redis_prefix)")
    rs.set_defaults(func=_cmd_restore)

    ru = sub.add_parser("runs", help="the runs under runs_dir: status, age, published version (marks killed runs aborted)")
    ru.add_argument("--params", default="params/default.yaml", help="parameter file naming runs_dir")
    ru.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ru.add_argument("--name", help="only runs of this run_name")
    ru.add_argument("--last", type=int, default=20, help="at most this many, newest first")
    ru.set_defaults(func=_cmd_runs)

    w = sub.add_parser("warm", help="compile every kernel into the user's Numba cache (once per code version)")
    w.add_argument("--force", action="store_true", help="compile again even if warm for this code")
    w.add_argument("--customers", type=int, default=800, help="size of the generated world it runs on")
    w.add_argument("--quiet", action="store_true")
    w.set_defaults(func=_cmd_warm)

    sv = sub.add_parser("serve", help="the touchpoint service (HTTP, JSON; OpenAPI at /docs) over the published scores")
    target(sv)
    sv.add_argument("--db", dest="url", help="SQLAlchemy URL of the published database (same as --url)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8080)
    sv.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    sv.add_argument("--tokens", help="JSON/YAML file of bearer tokens and their scopes (read, write)")
    sv.add_argument("--no-auth", action="store_true", help="accept requests without a token (local tests only)")
    sv.add_argument("--max-body", type=int, default=16384, help="largest request body in bytes (larger: 413)")
    sv.add_argument("--redis", help="read lookups from this Redis online store (default: publish.redis of --params)")
    sv.add_argument("--redis-prefix", help="its key prefix (default: publish.redis_prefix)")
    sv.add_argument("--identity-db", help="SQLAlchemy URL (a login of the identity reader role) for POST /v1/identify; "
                                          "default: --db")
    sv.add_argument("--identity-schema", default="crmlab_identity", help="PostgreSQL schema of the identity index")
    sv.set_defaults(func=_cmd_serve)

    cr = sub.add_parser("check-reports", help="open a run's index.html and reviewer reports in headless Chromium at "
                                               "1280 px: scrolling, clipped text, raw values, alt text; screenshots")
    cr.add_argument("run_dir", help="the run folder (runs/<run id>)")
    cr.add_argument("--browser", help="Chromium binary (default: chromium-headless-shell, chromium, $CRMLAB_BROWSER)")
    cr.set_defaults(func=_cmd_check_reports)

    k = sub.add_parser("kernelspec", help="install the 'Python (crmlab)' Jupyter kernel")
    k.add_argument("--user", action="store_true", help="install for the user, not this environment")
    k.set_defaults(func=_cmd_kernelspec)
    return p


def main(argv: list[str] | None = None) -> int:
    os.umask(0o077)                 # run folders, databases and Parquet copies: owner only (documented)
    args = build_parser().parse_args(argv)
    if args.command == "validate" and not (args.params or args.data or args.url):
        build_parser().error("validate needs --params, --data or --url")
    try:
        return args.func(args)
    except CrmlabError as exc:
        print(f"crmlab {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"crmlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a database that does not answer, a bad file: one line, no traceback
        import sqlalchemy as sa

        if not isinstance(exc, (sa.exc.SQLAlchemyError, OSError, UnicodeDecodeError)):
            raise
        from .publish import _safe

        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"crmlab {args.command}: error: {type(exc).__name__}: {_safe(first)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
