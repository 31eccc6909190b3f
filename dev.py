#!/usr/bin/env python3
"""Set up and run crmlab on a fresh machine (needs only Python >= 3.11 and pip).

    python3 dev.py run     # install into .venv, then run the main job on the bundled sample
    python3 dev.py test    # install into .venv (with test extras), then run every test

Extra arguments are passed on: ``python3 dev.py run --params params/ci.yaml``,
``python3 dev.py test -k sources``. The install is redone only when pyproject.toml changes.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("CRMLAB_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
EXTRAS = "dev,postgres,dask"


def sh(*cmd: str | Path) -> None:
    print("+ " + " ".join(map(str, cmd)), flush=True)
    rc = subprocess.call([str(c) for c in cmd], cwd=ROOT)
    if rc:
        sys.exit(rc)


def install() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"crmlab needs Python >= 3.11; this is {sys.version.split()[0]}")
    stamp = VENV / ".crmlab-installed"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + EXTRAS.encode()).hexdigest()
    if PY.exists() and stamp.exists() and stamp.read_text() == want:
        return
    t0 = time.perf_counter()
    if not PY.exists():
        print(f"creating virtual environment {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    sh(PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    sh(PY, "-m", "pip", "install", "--quiet", "-e", f".[{EXTRAS}]")
    sh(BIN / "crmlab", "kernelspec")
    sh(BIN / "crmlab", "warm")          # compile the kernels once, into the user cache (survives reinstalls)
    stamp.write_text(want)
    print(f"installed in {time.perf_counter() - t0:.0f} s", flush=True)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("run", "test", "install"):
        sys.exit(__doc__)
    cmd, rest = sys.argv[1], sys.argv[2:]
    install()
    if cmd == "run":
        sh(BIN / "crmlab", "warm", "--quiet")          # a no-op when the cache is warm for this code
        sh(BIN / "crmlab", "run", *(rest or ["--params", "params/default.yaml"]))
    elif cmd == "test":
        sh(PY, "-m", "pytest", *(rest or ["-q"]))


if __name__ == "__main__":
    main()
