"""The run chain: validate inputs, execute the stage notebooks with papermill, render reports.

``run("params/default.yaml")`` creates ``runs/<run_id>/`` holding

* ``params.yaml``: the parameters as resolved (defaults merged, paths absolute);
* ``artifacts/``: Parquet outputs (``sources/`` holds the validated, standardised inputs);
* ``notebooks/``: executed notebooks; ``reports/``: HTML with code and a ``.reviewer.html`` without;
* ``manifest.json``: parameters, input fingerprints, package versions, per-stage timings, row
  counts and status; ``index.html`` links it all.

A failing step stops the run (non-zero exit from the CLI) with the notebook and cell named; the
run folder keeps what happened, and nothing outside it is written.
"""
from __future__ import annotations

import datetime as dt
import html
import json
import os
import platform
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import config, engine, events, events_dask, reuse, reviewer, runs, sources_dask, threads
from . import errors as errors_mod
from .errors import ConfigError, CrmlabError, StageError
from .labels import inline_markdown
from .table_parts import TableParts
from .sources import (PROVISIONAL_SYSTEM, TOUCHPOINT_CONTACTS, Sources, SourcesInvalid, fingerprint, input_files,
                      load_params, read_provisional_persons, read_touchpoint_contacts, touchpoint_digest,
                      touchpoints_url)

KERNEL_NAME = "crmlab"


# ----------------------------------------------------------------------------- stage side

#: The stage that writes each artifact a later stage reads (a test checks this against the notebooks).
ARTIFACT_STAGES = {
    "customer_key_map": "10_identity", "identity_model": "10_identity",
    **{name: "10_identity" for name in events.ARTIFACTS},
    "affinity_rules": "20_affinity", "customer_recommendations": "20_affinity",
    "customer_value": "30_value",
    "customer_propensity": "40_propensity",
    "customer_segments": "50_segments", "segment_profiles": "50_segments",
    "contact_responses": "70_measure", "campaign_lift": "70_measure",
}


@dataclass
class StageContext:
    """What a stage notebook needs: its parameters and the run folder it reads from and writes to.

    In a run, everything is read from and written to the run folder, and what the stage reads is
    recorded for :mod:`crmlab.reuse`. Opened interactively (no run folder), a notebook writes into
    ``<runs_dir>/interactive`` and reads the artifacts of the latest successful run of the same
    ``run_name`` and publish target (``basis``), or the newer copy written interactively; an artifact
    found in neither stops with the stage to run, never a silent recomputation on another basis.
    """

    params: dict
    run_dir: Path
    interactive: bool = False
    basis: Path | None = None
    log: "reuse.ReadLog | None" = None

    @classmethod
    def open(cls, params_file: str, run_dir: str | None = None) -> "StageContext":
        """Load parameters; without a run folder (interactive use) work in ``<runs_dir>/interactive``."""
        params = config.load(params_file)
        threads.limit(params["engine"]["threads"])       # Numba, OpenMP and BLAS together, never oversubscribed
        pd.set_option("styler.format.escape", "html")      # names from the data never run as HTML in reports
        interactive = not run_dir
        log, basis = None, None
        if interactive:
            run_dir = Path(params["runs_dir"]) / "interactive"
            basis = runs.latest_ok(params["runs_dir"], params["run_name"], runs.publish_target(params))
            _say(f"interactive: reading the artifacts of run {basis.name}" if basis else
                 f"interactive: no successful run of '{params['run_name']}' under {params['runs_dir']} yet; "
                 "artifacts come only from notebooks run here")
        else:
            run_dir = Path(run_dir)
            if os.environ.get("CRMLAB_STAGE"):
                log = reuse.ReadLog(run_dir, os.environ["CRMLAB_STAGE"])
                params = reuse.TrackedParams(params, log.param)
        errors_mod.SHOW_PERSONAL_DATA = bool(params["report"]["show_personal_data"])
        (run_dir / "artifacts").mkdir(parents=True, exist_ok=True)
        return cls(params, run_dir, interactive, basis, log)

    def previous_figures(self) -> tuple[str, dict] | None:
        """The headline figures this stage reported (``report.summary(figures=...)``) in the latest earlier
        successful run of the same run_name and publish target: (run id, figures); None interactively or when
        there is none. Not a tracked read: the comparison is part of the report, not of the stage's outputs."""
        stage = os.environ.get("CRMLAB_STAGE")
        if self.interactive or not stage:
            return None
        raw = dict(dict.items(self.params))
        prev = runs.latest_ok(raw["runs_dir"], raw["run_name"], runs.publish_target(raw), exclude=self.run_dir)
        if prev is None:
            return None
        try:
            m = json.loads((prev / "manifest.json").read_text())
        except (OSError, ValueError):
            return None
        for s in m.get("stages", []):
            if s.get("name") == stage and (s.get("summary") or {}).get("figures"):
                return prev.name, s["summary"]["figures"]
        return None

    def _read(self, name: str) -> None:
        if self.log is not None:
            self.log.artifact(name)

    def artifact_path(self, name: str) -> Path:
        """Where artifact ``name`` is read from (interactively: the newer of this folder's and the basis run's)."""
        self._read(name)
        own = self._own_path(name)
        if self.interactive and self.basis is not None:
            theirs = _artifact_at(self.basis / "artifacts", name)
            if theirs.exists() and (not own.exists() or theirs.stat().st_mtime >= own.stat().st_mtime):
                return theirs
        return own

    def _own_path(self, name: str) -> Path:
        return _artifact_at(self.run_dir / "artifacts", name)

    def write_artifact(self, name: str, df: "pd.DataFrame | TableParts") -> Path:
        """Write a Parquet artifact atomically (a reader never sees half a file): a frame as one file, a
        table left on Dask workers (:class:`~crmlab.table_parts.TableParts`) as a folder of parts, each
        written by the worker holding it."""
        parts = self.run_dir / "artifacts" / name                   # names may hold a sub-folder
        file = parts.with_name(f"{parts.name}.parquet")
        parts.parent.mkdir(parents=True, exist_ok=True)
        tmp = parts.with_name(f"{parts.name}.{uuid.uuid4().hex[:8]}.tmp")
        if parts.is_dir() and not _parts_only(parts):
            raise CrmlabError(f"artifact '{name}': {parts} is a folder of other files, not of this artifact's parts")
        if isinstance(df, TableParts):
            tmp.mkdir()
            df.write(tmp)
            old = parts.with_name(f"{parts.name}.{uuid.uuid4().hex[:8]}.old")
            if parts.is_dir():
                os.replace(parts, old)
            os.replace(tmp, parts)
            shutil.rmtree(old, ignore_errors=True)
            file.unlink(missing_ok=True)                 # an earlier file of this run: no longer read
            return parts
        df.to_parquet(tmp, index=False)
        os.replace(tmp, file)
        if parts.is_dir():
            shutil.rmtree(parts)
        return file

    def read_artifact(self, name: str, columns: list | None = None) -> pd.DataFrame:
        """An artifact of an earlier stage (only those of ``columns`` it has: a check of the table then
        names what is missing); a clear error naming that stage when it is not there."""
        path = self.artifact_file(name)
        if path.is_dir():
            return events.read_parts(path, columns=columns)
        return pd.read_parquet(path, columns=None if columns is None else events.present(path, columns))

    def artifact_file(self, name: str) -> Path:
        """Where :meth:`read_artifact` reads (a Parquet file, or a folder of parts), for code that has it
        read elsewhere (Dask workers); the same error when it is not there."""
        path = self.artifact_path(name)
        if not path.exists():
            writer = ARTIFACT_STAGES.get(name, "the stage that writes it")
            if self.interactive:
                how = (f"no successful run of '{self.params['run_name']}' has it yet: run "
                       f"`crmlab run --params {self.params['params_file']}`, or open notebooks/{writer}.ipynb first")
            else:
                how = f"run {writer} before this stage (add it to 'stages' in {self.params['params_file']})"
            raise CrmlabError(f"artifact '{name}' not found in {path.parent}: it is written by {writer}; {how}")
        return path

    def optional_artifact(self, name: str, file: bool = False, columns: list | None = None) -> pd.DataFrame | Path | None:
        """An artifact whose stage the parameter file may leave out ('stages'): None when it is left out,
        else as :meth:`read_artifact` (a missing artifact of a listed stage is an error, not a fallback);
        ``file``: as :meth:`artifact_file`."""
        writer = ARTIFACT_STAGES.get(name)
        if writer is not None and writer not in self.params["stages"]:
            self._read(name)
            return None
        return self.artifact_file(name) if file else self.read_artifact(name, columns)

    def events(self) -> events.CustomerEvents:
        """The run's keyed events (:mod:`crmlab.events`): written by 10_identity with its key map; when
        matching is not among the stages, built from record keys by the first stage that asks, once."""
        if "10_identity" not in self.params["stages"] and not self.artifact_path("events_orders").exists():
            ev = events.CustomerEvents.from_sources(self.sources(), None)
            self.write_events(ev)
            return ev

        client = engine.client(self.params["engine"])
        orders = self.artifact_path("events_orders")
        if orders.is_dir() and client is not None:      # built by the workers: the lines stay there
            for name in events.ARTIFACTS[1:]:
                self._read(name)
            return events_dask.PartedEvents(client, orders.parent)

        def table(name):
            if name == "events_contacts" and not self.artifact_path(name).exists():
                return None                         # the inputs have no contacts (10_identity wrote none)
            return self.read_artifact(name)
        return events.CustomerEvents.from_artifacts(table)

    def report_sources(self) -> tuple[Sources, float]:
        """The run's inputs for a report and the share of the customer records they hold: all of them
        here; in Dask mode, where the workers hold the inputs as parts, a sample of about
        ``quality.sample_records`` records with their orders, lines and contacts
        (:func:`crmlab.sources_dask.record_sample`; row counts stay the whole tables')."""
        src = self.sources()
        client = engine.client(self.params["engine"])
        if client is None:
            return src, 1.0
        return sources_dask.record_sample(client, src, self.params["quality"]["sample_records"])

    def write_events(self, ev: events.CustomerEvents) -> None:
        """Write the run's events, one artifact per table (see :data:`crmlab.events.ARTIFACTS`)."""
        for name, df in ev.artifacts().items():
            self.write_artifact(name, df)

    def sources(self) -> Sources:
        """The validated inputs of this run (interactively: the basis run's while the input files are
        unchanged, else loaded and validated here)."""
        self._read("sources")
        folders = [self.run_dir / "artifacts" / "sources"]
        if self.interactive and self.basis is not None:
            folders.insert(0, self.basis / "artifacts" / "sources")
        for folder in folders:
            if (folder / "sources.json").is_file():
                cached = Sources.read_artifacts(folder)
                if not self.interactive or _unchanged(cached):
                    return cached                  # interactive: re-read when an input file changed
        if self.interactive and self.basis is not None:
            _say(f"interactive: the input files changed since run {self.basis.name}; loading them here "
                 "(artifacts of that run describe the old inputs)")
        src = load_params(self.params)
        src.write(folders[-1])
        return src


def _parts_only(folder: Path) -> bool:
    """Whether ``folder`` holds only an artifact's parts (``part-*.parquet``)."""
    return all(p.is_file() and p.name.startswith("part-") and p.suffix == ".parquet" for p in folder.iterdir())


def _artifact_at(folder: Path, name: str) -> Path:
    """Artifact ``name`` in ``folder``: a folder of parts where the workers wrote it by parts, else one file."""
    parts = folder / name
    return parts if parts.is_dir() else folder / f"{name}.parquet"


def _unchanged(src: Sources) -> bool:
    """True when every input file a cached Sources was read from still has the same fingerprint."""
    if not src.fingerprints:
        return False
    try:
        return all(fingerprint(src.origin[k]) == v for k, v in src.fingerprints.items())
    except (OSError, KeyError):
        return False


# ----------------------------------------------------------------------------- kernel

def ensure_kernelspec(user: bool = False) -> str:
    """Install (or refresh) the 'crmlab' Jupyter kernel for this interpreter; returns its folder.

    Installed into this environment (``sys.prefix``) so JupyterLab started from it lists
    "Python (crmlab)"; ``user=True`` installs for the user instead.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    ksm = KernelSpecManager()
    try:
        spec = ksm.get_kernel_spec(KERNEL_NAME)
        if spec.argv and spec.argv[0] == sys.executable:
            return spec.resource_dir
    except Exception:  # noqa: BLE001 - not installed yet
        pass
    from ipykernel.kernelspec import install

    kwargs = {"user": True} if user else {"prefix": sys.prefix}
    return install(kernel_name=KERNEL_NAME, display_name="Python (crmlab)", **kwargs)


def _lean_imports() -> None:
    """Skip the optional rfc3987-syntax grammar that jsonschema builds at import (about 1.4 s per
    process, measured); nbformat's schema uses no IRI formats, so validation is unchanged."""
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)


def _kernel_manager_class(log: Path | None = None):
    """Kernel manager for stage kernels; ``log``: where the kernel process's own stderr goes (its
    start-up and shutdown chatter, e.g. "KeyboardInterrupt caught in kernel"), not the operator's console.
    What a cell prints still goes into the notebook."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import Unicode

    class IPCKernelManager(AsyncKernelManager):
        """Local kernels over IPC sockets: no TCP ports, no 'running without encryption' warning."""

        transport = Unicode("ipc" if os.name != "nt" else "tcp")

        def __init__(self, **kw):
            super().__init__(**kw)
            if self.transport == "ipc":              # own sockets: two kernels may be up at once (prefetch)
                import tempfile

                self.ip = os.path.join(tempfile.gettempdir(), f"crmlab-kernel-{uuid.uuid4().hex[:12]}")

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            if log is None:
                return await super()._async_launch_kernel(kernel_cmd, **kw)
            with open(log, "ab") as fh:             # the started process keeps its own copy
                kw["stderr"] = fh
                return await super()._async_launch_kernel(kernel_cmd, **kw)

    return IPCKernelManager


class _Kernels:
    """Stage kernels started one stage early: while stage N runs, stage N+1's kernel boots and
    imports what its notebook will (:mod:`crmlab._preload`), off the critical path. Each stage still
    gets a fresh kernel of its own, with its own ``CRMLAB_STAGE``; unused ones are shut down."""

    def __init__(self, km_class, run_dir: Path):
        self.km_class, self.run_dir = km_class, run_dir
        self.ready: dict[str, object] = {}

    def start(self, name: str) -> None:
        if name in self.ready:
            return
        from jupyter_core.utils import run_sync

        km = self.km_class(kernel_name=KERNEL_NAME)
        try:
            run_sync(km.start_kernel)(cwd=str(self.run_dir), env=dict(os.environ, CRMLAB_STAGE=name),
                                      extra_arguments=["--IPKernelApp.exec_lines=import crmlab._preload"])
        except Exception:  # noqa: BLE001 - papermill starts one itself when the stage comes
            return
        self.ready[name] = km

    def take(self, name: str):
        """The started kernel manager for ``name`` (None: papermill starts one)."""
        return self.ready.pop(name, None)

    @staticmethod
    def stop(km) -> None:
        from jupyter_core.utils import run_sync

        try:
            run_sync(km.shutdown_kernel)(now=False)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def close(self) -> None:
        for km in self.ready.values():
            self.stop(km)
        self.ready.clear()


class _Reports:
    """Stage reports rendered on a background thread while the next stage runs (the orchestrator
    mostly waits on the kernel); :meth:`collect` waits for them and records the files in the stages."""

    def __init__(self, params: dict, run_dir: Path, say):
        from concurrent.futures import ThreadPoolExecutor

        self.params, self.run_dir, self.say = params, run_dir, say
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="crmlab-reports")
        self.jobs: list = []

    def submit(self, out_nb: Path, name: str, stage: dict) -> None:
        if out_nb.exists() and self.params["report"]["html"]:
            self.jobs.append((name, stage, self.pool.submit(_render_files, self.params, self.run_dir, out_nb, name)))

    def collect(self) -> None:
        for name, stage, job in self.jobs:
            try:
                stage.update(job.result())
            except Exception as exc:  # noqa: BLE001 - the run's results stand; the report's absence is said
                stage["report_error"] = f"{type(exc).__name__}: {exc}"
                self.say(f"      report of {name} not rendered: {stage['report_error']}")
        self.jobs = []


# ----------------------------------------------------------------------------- reports

def render_html(notebook, out: Path) -> Path:
    """Render an executed notebook (a path, or the notebook already read) to HTML with its code."""
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor

    exporter = HTMLExporter(template_name="lab")
    exporter.register_preprocessor(CoalesceStreamsPreprocessor, enabled=True)   # a progress bar: its last line
    nb = reviewer.read(notebook)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": Path(out).name.split(".")[0]}})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(body, encoding="utf-8")
    return out


def _artifact_rows(folder: Path, outputs: list[str]) -> dict[str, int]:
    """Row counts of the Parquet files among a stage's ``outputs`` (paths relative to ``folder``)."""
    import pyarrow.parquet as pq

    return {str(Path(rel).with_suffix("")): pq.ParquetFile(folder / rel).metadata.num_rows
            for rel in outputs if rel.endswith(".parquet")}


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def write_index(run_dir: Path, manifest: dict) -> Path:
    """index.html: status, published version, each stage's headline figures and warnings, links to the reports,
    inputs and package versions. Plain HTML and CSS (no JavaScript)."""
    esc = html.escape
    rows, heads = [], []
    for s in manifest["stages"]:
        num, _, rest = s["name"].partition("_")
        title = f"{num} · {rest.replace('_', ' ')}" if num.isdigit() else s["name"].replace("_", " ")
        links = " &middot; ".join(f'<a href="{esc(s[k])}">{label}</a>' for k, label in
                                  (("reviewer_html", "report"), ("html", "with code"), ("notebook", "notebook"))
                                  if s.get(k))
        arts = ", ".join(f"{esc(k.split('/')[-1].replace('_', ' '))} ({v:,})" for k, v in s.get("artifacts", {}).items())
        err = f'<div class="err">{esc(s["error"])}</div>' if s.get("error") else ""
        summ = s.get("summary") or {}
        n_warn = len(summ.get("warnings", []))
        flag = f' <span class="warn">{n_warn} to look at</span>' if n_warn else ""
        rows.append(f"<tr class='{esc(s['status'])}'><td><a href='#{esc(s['name'])}'>{esc(title)}</a></td>"
                    f"<td>{esc(s['status'])}{flag}</td><td class='num'>{s.get('seconds', 0):,.1f} s"
                    + (f"<br><small title='reused from run {esc(s['reused_from'])}'>reused: "
                       f"{s.get('original_seconds') or 0:,.0f} s saved</small>" if s.get("reused_from") else "")
                    + "</td>"
                    f"<td>{links}</td><td>{arts}{err}</td></tr>")
        if summ:
            pts = "".join(f"<li>{inline_markdown(p)}</li>" for p in summ.get("points", []))
            warn = "".join(f"<li>{inline_markdown(w)}</li>" for w in summ.get("warnings", []))
            heads.append(f"<section id='{esc(s['name'])}'><h3>{esc(title)}</h3><ul>{pts}</ul>"
                         + (f"<p class='warn'>Look at:</p><ul class='warn'>{warn}</ul>" if warn else "")
                         + (f"<p><a href='{esc(s['reviewer_html'])}'>Open the report</a></p>" if s.get("reviewer_html") else "")
                         + "</section>")
    inputs = "".join(f"<tr><td>{esc(k)}</td><td class='num'>{v.get('rows', 0) or 0:,}</td>"
                     f"<td><code>{esc(v.get('path', '') or '')}</code></td>"
                     f"<td><code title='{esc(v.get('sha256', '') or '')}'>{esc((v.get('sha256', '') or '')[:12])}</code></td></tr>"
                     for k, v in manifest.get("inputs", {}).items())
    versions = ", ".join(f"{k} {v}" for k, v in manifest["packages"].items() if v)
    pub = manifest.get("published") or {}
    published = (f"<b>{esc(str(pub['version']))}</b>" if pub.get("version") is not None
                 else "<b>none</b> (nothing published by this run)")
    eng = manifest.get("engine")
    engine_line = ("" if not eng else
                   f" &middot; Dask: {eng.get('workers', '?')} workers at <code>{esc(str(eng.get('scheduler')))}</code>"
                   + (f" (dashboard <code>{esc(str(eng['dashboard']))}</code> while the run lasted)"
                      if eng.get("dashboard") and eng.get("started_for_run") else
                      f" (<a href=\"{esc(str(eng['dashboard']))}\">dashboard</a>)" if eng.get("dashboard") else ""))
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>crmlab run {esc(manifest['run_id'])}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;margin:0;color:#1d2430;line-height:1.45}}
main{{max-width:1140px;margin:0 auto;padding:16px 24px 48px}} table{{border-collapse:collapse;max-width:100%}}
td,th{{border-bottom:1px solid #ddd;padding:.3em .8em;text-align:left;vertical-align:top;overflow-wrap:anywhere}}
td.num{{text-align:right;white-space:nowrap}} td:first-child{{white-space:nowrap}} tr.failed td{{background:#fde8e8}} .err{{color:#a11;white-space:pre-wrap}}
.status-ok{{color:#176b2c}} .status-failed,.status-aborted{{color:#a11}} .warn{{color:#9a3412}}
.banner{{border-left:4px solid #2a6f97;background:#f3f8fb;padding:.6em 1em;margin:.6em 0 1em}}
section{{border-top:1px solid #e3e6ea;margin-top:.8em}} code{{overflow-wrap:anywhere}} h3{{margin:.6em 0 .2em}}</style>
</head><body><main>
<h1>crmlab run <code>{esc(manifest['run_id'])}</code></h1>
<div class="banner">Status: <b class="status-{esc(manifest['status'])}">{esc(manifest['status'])}</b> &middot;
published version: {published} &middot; parameters <code>{esc(manifest['params_file'])}</code> &middot;
started {esc(str(manifest['started_at']))} &middot; {manifest.get('seconds', 0):,.1f} s{engine_line} &middot;
<a href="manifest.json">manifest.json</a></div>
<h2>Stages</h2><table><tr><th>stage</th><th>status</th><th>time</th><th>reports</th><th>outputs (rows)</th></tr>
{''.join(rows)}</table>
<h2>Headlines</h2>{''.join(heads) or '<p>No stage summaries in this run.</p>'}
<h2>Inputs</h2><table><tr><th>table</th><th>rows</th><th>read from</th><th>sha256 (first 12)</th></tr>{inputs}</table>
<p><small>{esc(versions)}</small></p></main></body></html>"""
    path = run_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- observing a stage

def _kernels(pid: int) -> list[int]:
    """The Jupyter kernels among the child processes of ``pid`` (Linux /proc): the stage's, and the next
    stage's started early; not the Dask workers of a LocalCluster the run started, nor their
    replacements after a worker was lost."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children = [int(c) for c in task.read_text().split()]
        except OSError:
            continue
        for c in children:
            try:
                if b"ipykernel" in Path(f"/proc/{c}/cmdline").read_bytes():
                    out.append(c)
            except OSError:
                pass
    return out


def _peak_rss_mb(pid: int) -> float | None:
    """A process's peak resident memory so far (VmHWM), in MB; None where /proc has no answer."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _running_cell(notebook: Path) -> str | None:
    """'cell 7 of 15' for the cell papermill marks running in the output notebook (saved at each cell
    start and every 30 s), with the latest progress line that cell wrote (``crmlab.progress``)."""
    try:
        cells = [c for c in json.loads(notebook.read_text())["cells"] if c.get("cell_type") == "code"]
    except (OSError, ValueError, KeyError):
        return None
    for i, c in enumerate(cells, start=1):
        if c.get("metadata", {}).get("papermill", {}).get("status") == "running":
            text = "".join("".join(o.get("text", "")) for o in c.get("outputs", [])   # str, or list of lines on disk
                           if o.get("output_type") == "stream")
            last = next((ln.strip() for ln in reversed(text.replace("\r", "\n").splitlines()) if ln.strip()), "")
            return f"cell {i} of {len(cells)}" + (f" [{last[:100]}]" if last else "")
    return None


class StageMonitor(threading.Thread):
    """While a stage runs: samples its kernel's peak memory every ``sample_s`` and, every
    ``heartbeat_s``, says which cell is running and for how long (long stages are never silent)."""

    def __init__(self, name: str, notebook: Path, say, sample_s: float = 1.0, heartbeat_s: float = 60.0):
        super().__init__(daemon=True)
        self.name_, self.notebook, self.say = name, notebook, say
        self.sample_s, self.heartbeat_s = sample_s, heartbeat_s
        self.peak_mb: float | None = None
        self._done = threading.Event()
        self._t0 = time.time()

    def run(self) -> None:
        last = self._t0
        while not self._done.wait(self.sample_s):
            for pid in _kernels(os.getpid()):
                mb = _peak_rss_mb(pid)
                if mb is not None and (self.peak_mb is None or mb > self.peak_mb):
                    self.peak_mb = mb
            if time.time() - last >= self.heartbeat_s:
                last = time.time()
                cell = _running_cell(self.notebook)
                self.say(f"      ... {self.name_}: {cell or 'starting'}, {time.time() - self._t0:.0f} s"
                         + (f", kernel peak {self.peak_mb:,.0f} MB" if self.peak_mb else ""))

    def stop(self) -> float | None:
        self._done.set()
        self.join(5)
        return None if self.peak_mb is None else round(self.peak_mb, 1)


def _own_peak_mb() -> float | None:
    """This process's peak resident memory so far, in MB (the loading step runs here, not in a kernel)."""
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    except (ImportError, OSError):
        return None


def _git_commit() -> dict | None:
    """The commit of the crmlab checkout this runs from (and whether it has local changes), if any."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return {"commit": sha, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return None


# ----------------------------------------------------------------------------- the chain

def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def new_run_id(run_name: str) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{run_name}-{uuid.uuid4().hex[:6]}"


def check_stages(params: dict) -> list[Path]:
    """The stage notebooks, in order; a missing one is a parameter error (found before any kernel starts)."""
    nb_dir = Path(params["notebooks_dir"])
    paths = [nb_dir / f"{s}.ipynb" for s in params["stages"]]
    missing = [p for p in paths if not p.exists()]
    if missing:
        have = sorted(p.stem for p in nb_dir.glob("*.ipynb")) if nb_dir.is_dir() else []
        raise ConfigError(f"stage notebook(s) not found: {', '.join(map(str, missing))}; "
                          f"available in {nb_dir}: {', '.join(have) or 'none'}")
    return paths


class RunAborted(CrmlabError):
    """The run was stopped from outside (SIGTERM, Ctrl-C): its manifest says 'aborted'."""

    exit_code = 143


class _Reuse:
    """The reuse decisions of one run: automatic (``engine.reuse``) and the resume of ``--from``."""

    def __init__(self, params: dict, notebooks: list[Path], from_stage: str | None):
        self.params, self.auto = params, bool(params["engine"]["reuse"])
        self.code = reuse.code_digest()
        self.fps: dict[str, str] = {}                  # artifact name -> fingerprint of the stage that wrote it here
        self.before: list[str] = []                    # stages taken from the base run (--from)
        self.base = None
        target = runs.publish_target(params)
        self.candidates = [(f, m) for f, m in runs.manifests(params["runs_dir"])
                           if m.get("params", {}).get("run_name") == params["run_name"]
                           and runs.publish_target(m.get("params", {})) == target]
        if from_stage is None:
            return
        names = [nb.stem for nb in notebooks]
        if from_stage not in names:
            raise ConfigError(f"--from {from_stage}: not a stage of {params['params_file']} "
                              f"(stages: {', '.join(names)})")
        self.before = ["load_sources"] + names[:names.index(from_stage)]
        for folder, m in self.candidates:
            if all((st := reuse.stage_of(m, n)) is not None and st.get("status") == "ok" for n in self.before):
                self.base = (folder, m)
                break
        if self.base is None:
            raise ConfigError(f"--from {from_stage}: no earlier run of '{params['run_name']}' (publishing to "
                              f"{config.mask_url(target)}) finished the stages before it "
                              f"({', '.join(self.before)}); run without --from")

    def lookup(self, name: str, notebook: Path | None, inputs: dict | None):
        """(run folder, manifest, stage record) to copy stage ``name`` from, or None (with a reason, or None)."""
        if name in self.before:
            folder, m = self.base
            old = reuse.stage_of(m, name)
            if not reuse.reusable(old):
                why = ("it published (publishing is repeated, never copied)" if old.get("reads") else
                       "what it read was not recorded (inputs from a database, or a run of an older crmlab)")
                raise ConfigError(f"--from: stage {name} of run {folder.name} cannot be copied: {why}; "
                                  f"resume from {name}")
            new = reuse.record_for(self.params, old, self.fps, notebook, inputs)
            if reuse.fingerprints(new, self.code)[1] != old["basis"]:
                raise ConfigError(f"--from: cannot resume from run {folder.name}: for stage {name}, "
                                  + "; ".join(reuse.differences(old["reads"], new) or ["its reads differ"])
                                  + "; run without --from")
            if not reuse.outputs_exist(folder, old):
                raise ConfigError(f"--from: the outputs of stage {name} in run {folder.name} are gone; "
                                  "run without --from")
            return (folder, m, old), None
        if not self.auto:
            return None, None
        return reuse.find(self.candidates, name, self.params, self.fps, notebook, inputs, self.code)

    def adopt(self, hit, run_dir: Path, stage: dict) -> None:
        """Copy a stage's outputs from an earlier run and record it as this run's."""
        folder, _m, old = hit
        reuse.copy_outputs(folder, run_dir, old)
        for k in ("reads", "code", "fingerprint", "basis", "outputs", "artifacts", "peak_rss_mb", "summary"):
            if k in old:
                stage[k] = old[k]
        stage.update(status="ok", reused_from=folder.name,
                     original_seconds=old.get("original_seconds", old.get("seconds")))
        self.note(stage)

    def record(self, stage: dict, reads: dict | None, outputs: list[str]) -> None:
        """Record what a stage that ran read and wrote (no reads record: the stage is never reused)."""
        stage["outputs"] = outputs
        if reads is not None:
            stage["reads"], stage["code"] = reads, self.code
            stage["fingerprint"], stage["basis"] = reuse.fingerprints(reads, self.code)
        self.note(stage)

    def note(self, stage: dict) -> None:
        fp = stage.get("fingerprint") or reuse.digest([stage["name"], _now()])   # unknown reads: never equal
        for rel in stage.get("outputs", []):
            self.fps[reuse.artifact_name(rel)] = fp


def _input_digests(params: dict) -> dict | None:
    """sha256 of each input file (None for inputs read from a database: those are never reused)."""
    if params["data"]["url"]:
        return None
    out = {name: fingerprint(p) for name, p in input_files(params["data"]["dir"]).items()}
    url = touchpoints_url(params)
    tp = read_touchpoint_contacts(url) if url else None
    if tp is not None and len(tp):
        out[TOUCHPOINT_CONTACTS] = touchpoint_digest(tp)             # new contacts: the load is redone
    persons = read_provisional_persons(url, params["publish"]["identity_schema"]) if url else None
    if persons is not None:
        out[f"customers_{PROVISIONAL_SYSTEM}"] = touchpoint_digest(persons)   # so are new provisional persons
    return out


def _outputs(folder: Path, since: float) -> list[str]:
    """Files under ``folder`` written since ``since`` (relative paths)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and p.stat().st_mtime >= since and not p.name.endswith(".tmp"))


def run(params_file: str | Path, overrides: list[str] | None = None, quiet: bool = False,
        from_stage: str | None = None) -> Path:
    """Execute the chain for a parameter file; returns the run folder. Raises CrmlabError on failure.

    ``from_stage``: resume, taking the stages before it from the latest run that finished them
    (see :mod:`crmlab.reuse`); ``engine.reuse: true`` copies every stage whose reads are unchanged.
    """
    say = (lambda m: None) if quiet else _say
    params = config.load(params_file, overrides)            # unknown keys rejected here, before any kernel
    errors_mod.SHOW_PERSONAL_DATA = bool(params["report"]["show_personal_data"])
    notebooks = check_stages(params)
    plan = _Reuse(params, notebooks, from_stage)              # also marks runs killed from outside aborted
    run_id = new_run_id(params["run_name"])
    run_dir = Path(params["runs_dir"]) / run_id
    for sub in ("artifacts", "notebooks", "reports"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    stored = {k: v for k, v in config.redacted(params).items() if k != "params_file"}
    config.dump(stored, run_dir / "params.yaml")
    manifest = {"run_id": run_id, "status": "running", "params_file": params["params_file"],
                "params": stored, "started_at": _now(),
                "packages": reuse.library_versions(), "git": _git_commit(),
                "host": {"platform": platform.platform(), "cpus": os.cpu_count(), "cores": threads.available_cores()},
                "process": {"host": socket.gethostname(), "pid": os.getpid()},
                "threads": threads.resolve(params["engine"]["threads"]),
                "resumed_from": plan.base[0].name if plan.base else None,
                "inputs": {}, "stages": [], "published": None}
    t_run = time.perf_counter()
    total = len(notebooks) + 1
    say(f"crmlab run {run_id} -> {run_dir}" + (f" (stages before {from_stage} from run {plan.base[0].name})"
                                               if plan.base else ""))

    reports = _Reports(params, run_dir, say)

    def finish(status: str, error: str | None = None) -> None:
        reports.collect()
        manifest.update(status=status, finished_at=_now(),
                        seconds=round(time.perf_counter() - t_run, 2))
        if error:
            manifest["error"] = config.mask_url(error)
        _write_json(run_dir / "manifest.json", manifest)
        write_index(run_dir, manifest)

    def _terminate(signum, _frame):
        raise RunAborted(f"terminated by signal {signal.Signals(signum).name}")

    def reused(stage: dict, hit) -> None:
        plan.adopt(hit, run_dir, stage)
        stage["seconds"] = round(time.time() - t0, 2)
        stage["finished_at"] = _now()
        say(f"      reused from run {hit[0].name} (nothing it read changed; {stage['original_seconds'] or 0:.0f} s saved)")

    saved_env = {k: os.environ.get(k) for k in (*threads.ENV_VARS, "CRMLAB_STAGE", engine.ENV_SCHEDULER)}
    os.environ.update(threads.environ(params["engine"]["threads"]))   # inherited by every stage kernel
    in_main = threading.current_thread() is threading.main_thread()
    kernels = cluster = None
    old_handler = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        if params["engine"]["kind"] == "dask":             # started or joined once, before any stage
            try:
                cluster = engine.start(params["engine"])
            except CrmlabError as exc:
                (run_dir / "error.txt").write_text(config.mask_url(exc) + "\n")
                finish("failed", str(exc))
                raise
            os.environ[engine.ENV_SCHEDULER] = cluster.address          # every stage kernel joins it
            manifest["engine"] = cluster.describe()
            say(f"Dask cluster: {cluster.workers} workers at {cluster.address}, dashboard {cluster.dashboard}")
        # step 1: inputs
        t0 = time.time()
        say(f"[1/{total}] load and validate inputs from {config.mask_url(params['data']['url'] or params['data']['dir'])}")
        stage = {"name": "load_sources", "status": "running", "started_at": _now()}
        manifest["stages"].append(stage)
        try:
            inputs = _input_digests(params)
            hit, why = plan.lookup("load_sources", None, inputs)
            if hit is not None:
                reused(stage, hit)
                manifest["inputs"] = hit[1].get("inputs", {})
            else:
                if why:
                    say(f"      not reused: {'; '.join(why)}")
                src = None
                if cluster is not None:                     # read, checked and written by the workers
                    src = sources_dask.load_params(cluster.client, params, run_dir / "artifacts" / "sources", inputs)
                src = src or load_params(params, inputs)    # the files are hashed once
        except RunAborted:
            raise
        except (SourcesInvalid, CrmlabError) as exc:
            stage.update(status="failed", seconds=round(time.time() - t0, 2), error=config.mask_url(exc))
            (run_dir / "error.txt").write_text(config.mask_url(exc) + "\n")
            finish("failed", str(exc))
            raise
        if hit is None:
            on_workers = bool(src.counts)                   # written part by part by the workers already
            written = list(src.tables) if on_workers else src.write(run_dir / "artifacts" / "sources")
            counts = src.row_counts()
            per_system = (src.counts if on_workers else
                          src.customers["source_system"].value_counts().rename(lambda s: f"customers_{s}"))
            manifest["inputs"] = {
                name: {"path": path, "sha256": src.fingerprints.get(name),
                       "rows": int(per_system.get(name, 0)) if name.startswith("customers_")
                       else counts.get(name)}           # touchpoint_contacts: inside contacts
                for name, path in src.origin.items()}
            stage.update(status="ok", seconds=round(time.time() - t0, 2), finished_at=_now(),
                         artifacts={f"sources/{k}": counts[k] for k in written}, peak_rss_mb=_own_peak_mb())
            if cluster is not None:                     # the workers read, checked and wrote the sources
                stage["dask"] = cluster.usage()
            plan.record(stage, None if inputs is None else reuse.reads_record(params, ["data"], [], {}, inputs=inputs),
                        _outputs(run_dir / "artifacts", t0))
            say(f"      ok in {stage['seconds']:.1f} s: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
            for name, why in src.set_aside.items():
                say(f"      {name}: {why}")
            if src.set_aside:
                stage["set_aside"] = dict(src.set_aside)
            del src
        _write_json(run_dir / "manifest.json", manifest)

        # step 2..: notebooks
        _lean_imports()
        import papermill as pm
        from papermill.exceptions import PapermillExecutionError

        ensure_kernelspec()
        km_class = _kernel_manager_class(run_dir / "kernels.log")
        kernels = _Kernels(km_class, run_dir)
        show_bar = not quiet and sys.stderr.isatty()
        for i, nb in enumerate(notebooks, start=2):
            name = nb.stem
            out_nb = run_dir / "notebooks" / nb.name
            stage = {"name": name, "status": "running", "notebook": f"notebooks/{nb.name}", "started_at": _now()}
            manifest["stages"].append(stage)
            _write_json(run_dir / "manifest.json", manifest)
            say(f"[{i}/{total}] {name}")
            t0 = time.time()
            try:
                hit, why = plan.lookup(name, nb, None)
            except CrmlabError as exc:                  # a refused resume: the run says so and stops
                stage.update(status="failed", error=str(exc))
                finish("failed", str(exc))
                raise
            if hit is not None:
                reused(stage, hit)
                reports.submit(out_nb, name, stage)
                continue
            if why:
                say(f"      not reused: {'; '.join(why)}")
            error = None
            monitor = StageMonitor(name, out_nb, say)
            monitor.start()
            os.environ["CRMLAB_STAGE"] = name                 # the kernel records what it reads (crmlab.reuse)
            km = kernels.take(name)
            if i - 1 < len(notebooks):                        # i - 2 is this stage's index: start the next's kernel
                kernels.start(notebooks[i - 1].stem)
            try:
                pm.execute_notebook(
                    str(nb), str(out_nb), parameters={"params_file": str(run_dir / "params.yaml"),
                                                      "run_dir": str(run_dir)},
                    kernel_name=KERNEL_NAME, progress_bar=show_bar, cwd=str(run_dir),
                    execution_timeout=params["report"]["cell_timeout"], kernel_manager_class=km_class,
                    report_mode=False, **({"km": km} if km is not None else {}))
            except PapermillExecutionError as exc:
                error = (f"stage '{name}' failed in cell {exc.exec_count} (cell #{exc.cell_index + 1} of "
                         f"{nb.name}): {exc.ename}: {exc.evalue}")
            except RunAborted:
                raise
            except Exception as exc:  # noqa: BLE001 - kernel died, timeout, ...: report, do not hide
                error = f"stage '{name}' failed ({nb.name}): {type(exc).__name__}: {exc}"
            finally:
                stage["peak_rss_mb"] = monitor.stop()
                if km is not None:                             # papermill shuts down only kernels it started
                    kernels.stop(km)
            stage["seconds"] = round(time.time() - t0, 2)
            stage["finished_at"] = _now()
            if cluster is not None:                            # workers' peak so far and bytes spilled
                stage["dask"] = cluster.usage()
            outputs = _outputs(run_dir / "artifacts", t0)
            stage["artifacts"] = _artifact_rows(run_dir / "artifacts", outputs)
            published = run_dir / "artifacts" / "published.json"
            if published.exists() and published.stat().st_mtime >= t0:
                manifest["published"] = json.loads(published.read_text())
            reports.submit(out_nb, name, stage)
            if error:
                error = config.mask_url(error)
                stage.update(status="failed", error=error)
                msg = f"{error}\n  executed notebook: {out_nb}"
                (run_dir / "error.txt").write_text(msg + "\n")
                finish("failed", error)
                raise StageError(msg)
            log = reuse.read_log(run_dir, name)
            reads = None if log is None else reuse.reads_record(
                params, log["params"], log["artifacts"], plan.fps, notebook=reuse.notebook_digest(nb))
            plan.record(stage, reads, outputs)
            stage["status"] = "ok"
            say(f"      ok in {stage['seconds']:.1f} s"
                + (f", kernel peak {stage['peak_rss_mb']:,.0f} MB" if stage.get("peak_rss_mb") else "")
                + (f", Dask workers' peak {stage['dask']['workers_peak_mb']:,.0f} MB, spilled "
                   f"{stage['dask']['spilled_bytes'] / 2**20:,.0f} MB" if stage.get("dask") else ""))
    except (RunAborted, KeyboardInterrupt) as exc:
        why = str(exc) or "interrupted"
        for st in manifest["stages"]:
            if st.get("status") == "running":
                st["status"] = "aborted"
        finish("aborted", why)
        raise RunAborted(f"run {run_id} aborted: {why}; nothing was published by the unfinished stage") from None
    finally:
        if kernels is not None:
            kernels.close()
        if cluster is not None:
            cluster.close()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if in_main:
            signal.signal(signal.SIGTERM, old_handler)
    finish("ok")
    say(f"done in {manifest['seconds']:.1f} s: open {run_dir / 'index.html'}")
    return run_dir


def _render_files(params: dict, run_dir: Path, out_nb: Path, name: str) -> dict:
    """The stage's HTML reports (with code, and without for reviewers), as the parameters ask."""
    nb = reviewer.read(out_nb)                                   # read once for all three
    out = {"html": str(render_html(nb, run_dir / "reports" / f"{name}.html").relative_to(run_dir))}
    if params["report"]["reviewer_html"]:
        out["reviewer_html"] = str(reviewer.render(
            nb, run_dir / "reports" / f"{name}.reviewer.html",
            header=f'crmlab &middot; run {html.escape(run_dir.name)} &middot; <a href="../index.html">all reports</a>'
        ).relative_to(run_dir))
    summary = reviewer.stage_summary(nb)
    if summary is not None:
        out["summary"] = summary
    return out
