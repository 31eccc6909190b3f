"""The run folders under ``runs_dir``: list them, find the latest good one, mark dead ones aborted.

A run's manifest records its process (host and pid) while it is ``running``. A run whose process
has gone (killed from outside: SIGKILL, out of memory, a reboot) cannot write its own end, so the
next run, ``crmlab runs`` and every lookup of a previous run mark it ``aborted``.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import socket
from pathlib import Path

import pandas as pd

from .publish import default_url

#: Folders under runs_dir that are not runs.
NOT_RUNS = ("published", "interactive")


def _read(manifest: Path) -> dict | None:
    try:
        return json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:                                               # a reused pid running something else is not our run
        return b"python" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def mark_if_dead(manifest_path: Path, m: dict) -> dict:
    """Mark a 'running' run aborted when its process on this host is gone; returns the manifest."""
    proc = m.get("process") or {}
    if m.get("status") != "running" or proc.get("host") != socket.gethostname() or not proc.get("pid"):
        return m
    if _alive(int(proc["pid"])):
        return m
    for st in m.get("stages", []):
        if st.get("status") == "running":
            st["status"] = "aborted"
    m.update(status="aborted", error=f"the run's process {proc['pid']} ended without finishing (killed from "
                                     "outside); marked aborted by a later look at the runs",
             marked_aborted_at=dt.datetime.now().isoformat(timespec="seconds"))
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(m, indent=2, default=str))
    os.replace(tmp, manifest_path)
    return m


def manifests(runs_dir: str | Path, exclude: Path | None = None):
    """(run folder, manifest) for each run under runs_dir, newest first, dead runs marked aborted."""
    root = Path(runs_dir)
    out = []
    for p in root.glob("*/manifest.json"):
        if p.parent.name in NOT_RUNS or (exclude is not None and p.parent.resolve() == Path(exclude).resolve()):
            continue
        m = _read(p)
        if m is not None:
            out.append((p.parent, mark_if_dead(p, m)))
    out.sort(key=lambda t: (t[1].get("started_at", ""), t[0].name), reverse=True)
    return out


def publish_target(params: dict) -> str:
    """Where a run's parameters publish (the URL, or the default SQLite file in publish.dir), for matching runs."""
    pub = params.get("publish", {})
    return pub.get("url") or default_url(pub.get("dir") or "")


def latest_ok(runs_dir: str | Path, run_name: str | None = None, target: str | None = None,
              exclude: Path | None = None, need: str | None = None) -> Path | None:
    """The newest successful run (of ``run_name`` publishing to ``target``, when given) that holds
    the artifact ``need`` (e.g. ``customer_key_map``), or None."""
    for folder, m in manifests(runs_dir, exclude):
        if m.get("status") != "ok":
            continue
        p = m.get("params", {})
        if run_name is not None and p.get("run_name") != run_name:
            continue
        if target is not None and publish_target(p) != target:
            continue
        if need is not None and not (folder / "artifacts" / f"{need}.parquet").exists():
            continue
        return folder
    return None


def table(runs_dir: str | Path) -> pd.DataFrame:
    """One row per run: id, name, status, age, duration, published version, failing stage."""
    now = dt.datetime.now()
    rows = []
    for folder, m in manifests(runs_dir):
        try:
            age = now - dt.datetime.fromisoformat(m["started_at"])
            age_s = f"{age.days} d" if age.days else f"{age.seconds // 3600} h {age.seconds % 3600 // 60} min"
        except (KeyError, ValueError):
            age_s = ""
        failed = next((s["name"] for s in m.get("stages", []) if s.get("status") in ("failed", "aborted")), "")
        rows.append({"run_id": folder.name, "run_name": m.get("params", {}).get("run_name", ""),
                     "status": m.get("status", ""), "age": age_s,
                     "seconds": m.get("seconds"), "published_version": (m.get("published") or {}).get("version"),
                     "stopped_at": failed})
    return pd.DataFrame(rows, columns=["run_id", "run_name", "status", "age", "seconds", "published_version",
                                       "stopped_at"])
