"""Reusing a stage of an earlier run when nothing it read has changed (``engine.reuse``, ``crmlab run --from``).

While a stage runs, its :class:`~crmlab.pipeline.StageContext` records what it read: each top-level
parameter section (:class:`TrackedParams`) and each artifact. After the stage, the run stores in its
manifest entry a digest of each of those reads, of the stage notebook and of the code (the crmlab
and kernels sources and the library versions):

* ``fingerprint``: all of them. With ``engine.reuse: true`` a stage whose fingerprint, computed
  from this run's values, equals that of the same stage in an earlier successful run of the same
  ``run_name`` and publish target, is copied from it instead of run again.
* ``basis``: the same without the code. ``crmlab run --from 50_segments`` takes the stages before
  50_segments from the latest run that finished them, after checking their basis: a fix in the code
  is what a resume is for, but changed parameters or inputs refuse it, naming what changed.

An artifact's digest is the fingerprint of the stage that wrote it in this run, so a change
propagates to every stage that read it, and only to those. A stage that published (wrote
``published.json``) is never reused: publishing is a side effect, not a result to copy.

Not covered: 10_identity also reads the previous run's key map (``identity.previous_key_map:
auto``) for stable keys. A copied 10_identity keeps the keys of the run it came from, which is
what rerunning it on unchanged inputs gives, since keys carry over.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from importlib import metadata
from pathlib import Path

from . import kernels

#: Parameter sections that never change a stage's results (where things go, how fast, whether to reuse).
IGNORED = frozenset({"runs_dir", "notebooks_dir", "stages", "engine", "params_file"})
#: Outputs of a stage that make it unrepeatable by copying.
SIDE_EFFECTS = ("published.json",)
READS_DIR = ".stages"                  # under the run folder: what each stage read (written by its kernel)


def digest(obj) -> str:
    """sha256 (16 hex digits) of a JSON-able value, independent of dict order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


_CODE: str | None = None

#: Libraries whose versions a run records and whose change invalidates reuse.
PACKAGES = ("crmlab", "numpy", "pandas", "numba", "scikit-learn", "mlxtend", "pyarrow", "papermill",
            "nbconvert", "ipykernel", "sqlalchemy", "matplotlib")


def library_versions() -> dict[str, str | None]:
    """Python's and each of :data:`PACKAGES`' installed version (None when not installed)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def code_digest() -> str:
    """Digest of every crmlab and kernels source file and of the library versions (computed once)."""
    global _CODE
    if _CODE is None:
        h = hashlib.sha256()
        for pkg in (Path(__file__).parent, Path(kernels.__file__).parent):
            for p in sorted(pkg.rglob("*.py")):
                h.update(str(p.relative_to(pkg.parent)).encode() + b"\0" + p.read_bytes())
        h.update(json.dumps(library_versions(), sort_keys=True).encode())
        _CODE = h.hexdigest()[:16]
    return _CODE


def notebook_digest(path: Path) -> str:
    """Digest of a notebook's cell sources (its stored outputs, if any, do not count)."""
    cells = json.loads(Path(path).read_text())["cells"]
    return digest([(c["cell_type"], "".join(c["source"])) for c in cells])


def artifact_name(rel: str) -> str:
    """The name a stage reads an output by: ``customer_value.parquet`` -> ``customer_value``; ``sources/*`` -> ``sources``."""
    rel = Path(rel).as_posix()
    if rel.startswith("sources/"):
        return "sources"
    return rel[: -len(".parquet")] if rel.endswith(".parquet") else rel


class TrackedParams(dict):
    """The parameter dict of a stage, noting each top-level section read (``on_read(key)``, once per key).

    Whole-dict access (iteration, ``items``, ``copy``) counts as reading every section.
    """

    def __init__(self, params: dict, on_read):
        super().__init__(params)
        self._on_read, self._seen = on_read, set()

    def _note(self, key) -> None:
        if key not in self._seen:
            self._seen.add(key)
            self._on_read(key)

    def _note_all(self) -> None:
        for k in dict.keys(self):
            self._note(k)

    def __getitem__(self, key):
        self._note(key)
        return dict.__getitem__(self, key)

    def get(self, key, default=None):
        self._note(key)
        return dict.get(self, key, default)

    def __iter__(self):
        self._note_all()
        return dict.__iter__(self)

    def keys(self):
        self._note_all()
        return dict.keys(self)

    def items(self):
        self._note_all()
        return dict.items(self)

    def values(self):
        self._note_all()
        return dict.values(self)

    def copy(self):
        self._note_all()
        return dict(dict.items(self))

    def __reduce__(self):                  # pickling / deepcopy: a plain dict, every section read
        self._note_all()
        return (dict, (dict(dict.items(self)),))


class ReadLog:
    """What a stage's kernel read, kept in ``<run>/.stages/<stage>.json`` (rewritten at each new read)."""

    def __init__(self, run_dir: Path, stage: str):
        self.path = Path(run_dir) / READS_DIR / f"{stage}.json"
        self.params: list[str] = []
        self.artifacts: list[str] = []

    def param(self, key: str) -> None:
        if key not in self.params:
            self.params.append(key)
            self._save()

    def artifact(self, name: str) -> None:
        if name not in self.artifacts:
            self.artifacts.append(name)
            self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"params": self.params, "artifacts": self.artifacts}))
        os.replace(tmp, self.path)


def read_log(run_dir: Path, stage: str) -> dict | None:
    try:
        return json.loads((Path(run_dir) / READS_DIR / f"{stage}.json").read_text())
    except (OSError, ValueError):
        return None


def reads_record(params: dict, sections, artifacts, artifact_fps: dict[str, str], **extra) -> dict:
    """The digests of what a stage read, from this run's values (``artifact_fps``: name -> fingerprint)."""
    rec = {"params": {k: digest(params.get(k)) for k in sorted(sections) if k not in IGNORED},
           "artifacts": {a: artifact_fps.get(a, "absent") for a in sorted(artifacts)}}
    rec.update(extra)
    return rec


def fingerprints(reads: dict, code: str) -> tuple[str, str]:
    """(fingerprint, basis) of a stage from its reads record and the code digest."""
    basis = digest(reads)
    return digest([basis, code]), basis


def differences(old: dict, new: dict) -> list[str]:
    """What differs between two reads records, in words (for a refused resume or a recomputed stage)."""
    out = []
    if old.get("notebook") != new.get("notebook"):
        out.append("the notebook changed")
    for kind, label in (("params", "parameters"), ("inputs", "input file"), ("artifacts", "artifact")):
        a, b = old.get(kind, {}), new.get(kind, {})
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                out.append(f"{label} '{k}' changed")
    return out


def outputs_exist(run_dir: Path, stage: dict) -> bool:
    return all((Path(run_dir) / "artifacts" / rel).exists() for rel in stage.get("outputs", []))


def reusable(stage: dict) -> bool:
    """Whether a stage record can be copied into another run at all."""
    return (stage.get("status") == "ok" and stage.get("reads") is not None and stage.get("fingerprint")
            and not any(Path(rel).name in SIDE_EFFECTS for rel in stage.get("outputs", [])))


def record_for(params: dict, old: dict, artifact_fps: dict[str, str], notebook: Path | None,
               inputs: dict | None) -> dict:
    """This run's reads record for a stage, over the reads that ``old`` (its earlier run's record) made."""
    extra = {}
    if notebook is not None:
        extra["notebook"] = notebook_digest(notebook)
    if inputs is not None:
        extra["inputs"] = inputs
    return reads_record(params, old["reads"].get("params", {}), old["reads"].get("artifacts", {}),
                        artifact_fps, **extra)


def stage_of(manifest: dict, name: str) -> dict | None:
    return next((s for s in manifest.get("stages", []) if s.get("name") == name), None)


def find(candidates, name: str, params: dict, artifact_fps: dict[str, str], notebook: Path | None,
         inputs: dict | None, code: str):
    """The first (run folder, manifest, stage record) among ``candidates`` (run folder, manifest),
    newest first, whose stage ``name`` has this run's fingerprint; else (None, reasons the newest differs)."""
    why = None
    for folder, m in candidates:
        old = stage_of(m, name)
        if old is None or not reusable(old):
            continue
        new = record_for(params, old, artifact_fps, notebook, inputs)
        fp, _ = fingerprints(new, code)
        if fp == old["fingerprint"] and outputs_exist(folder, old):
            return (folder, m, old), None
        if why is None:
            why = differences(old["reads"], new) or (["the code changed"] if old.get("code") != code else
                                                     ["its outputs are gone"])
    return None, why


def copy_outputs(src_run: Path, dst_run: Path, stage: dict) -> None:
    """Copy a stage's outputs (and executed notebook) from one run folder into another."""
    for rel in stage.get("outputs", []):
        dst = Path(dst_run) / "artifacts" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(src_run) / "artifacts" / rel, dst)     # a copy: never two runs sharing one file
    if stage.get("notebook") and (Path(src_run) / stage["notebook"]).exists():
        shutil.copy2(Path(src_run) / stage["notebook"], Path(dst_run) / stage["notebook"])
