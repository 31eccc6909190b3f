"""Command line: ``crmlab run | generate | validate | kernelspec``."""
from __future__ import annotations

import argparse
import sys
import time

from .errors import CrmlabError


def _cmd_run(a) -> int:
    from . import pipeline

    pipeline.run(a.params, a.set, quiet=a.quiet)
    return 0


def _cmd_generate(a) -> int:
    from . import synth

    spec = synth.WorldSpec(customers=a.customers, seed=a.seed, **({"chunk": a.chunk} if a.chunk else {}))
    t0 = time.perf_counter()
    say = (lambda m: None) if a.quiet else (lambda m: print(f"[{time.perf_counter() - t0:6.1f} s] {m}",
                                                            file=sys.stderr, flush=True))
    counts = synth.generate(spec, a.out, fmt=a.format, progress=say)
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
    r.add_argument("--quiet", action="store_true", help="no progress output")
    r.set_defaults(func=_cmd_run)

    g = sub.add_parser("generate", help="write a synthetic CRM world with planted truth")
    g.add_argument("--customers", type=int, default=5000)
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--out", default="data/generated")
    g.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    g.add_argument("--chunk", type=int, default=None, help="customers per chunk (memory bound)")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=_cmd_generate)

    v = sub.add_parser("validate", help="check the input tables without running anything")
    v.add_argument("--params", help="parameter file whose data section names the inputs")
    v.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    v.add_argument("--data", help="folder with the input tables")
    v.add_argument("--url", help="SQLAlchemy URL of a database holding the input tables")
    v.set_defaults(func=_cmd_validate)

    k = sub.add_parser("kernelspec", help="install the 'Python (crmlab)' Jupyter kernel")
    k.add_argument("--user", action="store_true", help="install for the user, not this environment")
    k.set_defaults(func=_cmd_kernelspec)
    return p


def main(argv: list[str] | None = None) -> int:
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


if __name__ == "__main__":
    sys.exit(main())
