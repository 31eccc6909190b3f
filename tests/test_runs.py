"""The nightly run as an operator sees it (#15): threads capped in every kernel, separate publish
targets per parameter file, previous key maps from the same run only, killed runs marked aborted,
and a manifest that says where, when and how much."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from crmlab import config, pipeline, runs, threads
from crmlab.stages import identity as stage_identity
from crmlab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / "params" / "ci.yaml"
DEFAULT = ROOT / "params" / "default.yaml"


def _notebook(folder: Path, name: str, code: str) -> None:
    folder.mkdir(exist_ok=True)
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("params_file = None\nrun_dir = None", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {"name": "crmlab", "display_name": "Python (crmlab)", "language": "python"}
    nbformat.write(nb, folder / f"{name}.ipynb")


THREADS_CELL = """\
import json, os
from pathlib import Path
from crmlab import threads
from crmlab.pipeline import StageContext
env = {k: os.environ.get(k) for k in threads.ENV_VARS}
import numpy as np, sklearn.ensemble                      # loads BLAS and OpenMP in the kernel
np.ones((200, 200)) @ np.ones((200, 200))
ctx = StageContext.open(params_file, run_dir)
Path(run_dir, "threads.json").write_text(json.dumps({"env": env, "pools": threads.current()}))
"""


@pytest.fixture(scope="module")
def threads_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("threads")
    _notebook(tmp / "notebooks", "99_threads", THREADS_CELL)
    before = {k: os.environ.get(k) for k in threads.ENV_VARS}
    run_dir = pipeline.run(CI, [f"notebooks_dir={tmp / 'notebooks'}", f"runs_dir={tmp / 'runs'}",
                                "stages=[99_threads]", "engine.threads=1"], quiet=True)
    assert {k: os.environ.get(k) for k in threads.ENV_VARS} == before      # the caller's environment restored
    return run_dir


def test_kernel_sees_the_thread_setting(threads_run):
    """Numba, OpenMP and BLAS in the stage kernel all run engine.threads threads (1 here)."""
    got = json.loads((threads_run / "threads.json").read_text())
    assert set(got["env"].values()) == {"1"}, got["env"]             # set before the kernel's libraries load
    assert got["pools"]["numba"] == 1
    assert got["pools"] and all(n == 1 for n in got["pools"].values()), got["pools"]
    assert json.loads((threads_run / "manifest.json").read_text())["threads"] == 1


@pytest.mark.parametrize("pool", ["not started", "started"])
def test_a_kernel_compiles_after_the_thread_variable_changed(pool):
    """A Dask worker imports Numba before its nanny sets NUMBA_NUM_THREADS to 1; the worker's limit(1)
    must leave Numba able to compile a kernel missing from the cache (before, every compilation failed:
    "Cannot set NUMBA_NUM_THREADS to a different value once the threads have been launched"), with one
    thread whether or not its pool had started."""
    code = textwrap.dedent(f"""
        import os
        os.environ["NUMBA_NUM_THREADS"] = "2"
        import numba
        if {pool == "started"}:
            numba.set_num_threads(2)
        os.environ["NUMBA_NUM_THREADS"] = "1"
        from crmlab import threads
        threads.limit(1)
        f = numba.njit(lambda x: x + 1)
        print(f(1), numba.get_num_threads())
    """)
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr[-2000:]
    assert got.stdout.split() == ["2", "1"]


def test_threads_resolved_to_the_available_cores(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    assert threads.resolve(None) == 2 and threads.resolve(8) == 2 and threads.resolve(1) == 1
    with pytest.raises(ConfigError, match="engine.threads"):
        config.load(CI, ["engine.threads=0"])
    with pytest.raises(ConfigError, match="engine.threads.*number"):
        config.load(CI, ["engine.threads=many"])


def test_limit_caps_pools_already_loaded():
    code = ("import numpy, numba, sklearn.ensemble\nfrom crmlab import threads\n"
            "threads.limit(1)\nimport json; print(json.dumps(threads.current()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    pools = json.loads(out.stdout.strip().splitlines()[-1])
    assert pools["numba"] == 1 and all(n == 1 for n in pools.values()), pools


def test_manifest_says_where_when_and_how_much(threads_run):
    m = json.loads((threads_run / "manifest.json").read_text())
    assert m["process"]["pid"] > 0 and m["process"]["host"]
    assert m["git"] is None or len(m["git"]["commit"]) == 40
    for st in m["stages"]:
        assert st["started_at"] <= st["finished_at"]
    nb = m["stages"][-1]
    assert nb["peak_rss_mb"] and 30 < nb["peak_rss_mb"] < 4000          # the kernel's own peak, sampled
    assert "published version" in (threads_run / "index.html").read_text()
    assert (threads_run / "kernels.log").exists()        # the kernels' own stderr, kept off the console
    assert m["stages"][0]["name"] == "load_sources" and m["stages"][0]["peak_rss_mb"] > 30   # the loading process


def test_ci_and_default_publish_to_separate_targets():
    ci, default = config.load(CI), config.load(DEFAULT)
    assert runs.publish_target(ci) != runs.publish_target(default)
    assert Path(ci["publish"]["dir"]).name == "ci" and Path(default["publish"]["dir"]).name == "default"


def _fake_run(runs_dir: Path, run_id: str, run_name: str, status: str, started: str, target_dir: str) -> Path:
    folder = runs_dir / run_id
    (folder / "artifacts").mkdir(parents=True)
    pd.DataFrame({"source_system": ["web"], "source_id": ["W1"], "customer_key": [run_id]}).to_parquet(
        folder / "artifacts" / "customer_key_map.parquet")
    (folder / "manifest.json").write_text(json.dumps({
        "status": status, "started_at": started,
        "params": {"run_name": run_name, "publish": {"url": None, "dir": target_dir}}}))
    return folder


def test_previous_key_map_only_from_the_same_run_name_and_target(tmp_path):
    """A CI run (or a run publishing elsewhere) newer than the last default run never lends its keys."""
    r = tmp_path / "runs"
    pub = str(r / "published" / "default")
    _fake_run(r, "a", "default", "ok", "2026-12-01T01:00:00", pub)
    _fake_run(r, "b", "default", "failed", "2026-12-01T02:00:00", pub)
    _fake_run(r, "c", "ci", "ok", "2026-12-01T03:00:00", str(r / "published" / "ci"))
    _fake_run(r, "d", "default", "ok", "2026-12-01T04:00:00", "/elsewhere")
    params = {"runs_dir": str(r), "run_name": "default", "publish": {"url": None, "dir": pub}}
    assert stage_identity.find_previous_key_map(params) == r / "a" / "artifacts" / "customer_key_map.parquet"
    assert stage_identity.find_previous_key_map(params, exclude=r / "a") is None


def test_run_killed_from_outside_is_marked_aborted(tmp_path):
    """SIGKILL leaves no chance to write the manifest: the next look at the runs marks it aborted."""
    _notebook(tmp_path / "notebooks", "99_slow", "import time\ntime.sleep(120)")
    r = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "crmlab", "run", "--params", str(CI), "--set",
                             f"notebooks_dir={tmp_path / 'notebooks'}", "--set", f"runs_dir={r}", "--set",
                             "stages=[99_slow]", "--quiet"], start_new_session=True)
    try:
        for _ in range(600):
            ms = list(r.glob("*/manifest.json"))
            if ms and any(s["name"] == "99_slow" for s in json.loads(ms[0].read_text())["stages"]):
                break
            time.sleep(0.1)
        assert runs.table(r)["status"].tolist() == ["running"]        # alive: left alone
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    t = runs.table(r)
    assert t["status"].tolist() == ["aborted"] and t["stopped_at"].tolist() == ["99_slow"]
    m = json.loads(ms[0].read_text())
    assert m["status"] == "aborted" and "killed from outside" in m["error"]
    out = subprocess.run([sys.executable, "-m", "crmlab", "runs", "--params", str(CI), "--set", f"runs_dir={r}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "aborted" in out.stdout


def test_progress_bars_in_kernels_heartbeat_and_reports(tmp_path):
    """crmlab.progress draws in a notebook kernel (silent under pytest); the heartbeat repeats the
    running cell's latest bar; the HTML report keeps only the bar's final line."""
    import papermill as pm

    from crmlab import progress

    assert progress.bar(range(3)).disable                        # nobody watches a test
    _notebook(tmp_path / "nb", "bars", "from crmlab.progress import bar\nfor _ in bar(range(4), 'fitting', unit='fit'):\n"
              "    pass")
    out = tmp_path / "out.ipynb"
    pm.execute_notebook(str(tmp_path / "nb" / "bars.ipynb"), str(out), kernel_name="crmlab", progress_bar=False,
                        parameters={"params_file": str(CI)})
    nb = json.loads(out.read_text())
    text = "".join("".join(o.get("text", "")) for o in nb["cells"][-1]["outputs"])
    assert "fitting: 100%" in text and "4/4" in text
    html = pipeline.render_html(out, tmp_path / "out.html").read_text()
    assert html.count("fitting:") == 1 and "4/4" in html

    nb["cells"][-1]["metadata"]["papermill"] = {"status": "running"}
    nb["cells"][-1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["fitting 4 models\n"]},
                                  {"output_type": "stream", "name": "stderr", "text": "\rfitting:  25%| 1/4"},
                                  {"output_type": "stream", "name": "stderr", "text": ["\rfitting:  50%| 2/4"]}]
    out.write_text(json.dumps(nb))
    n_code = sum(c["cell_type"] == "code" for c in nb["cells"])
    assert pipeline._running_cell(out) == f"cell {n_code} of {n_code} [fitting:  50%| 2/4]"


def test_stage_memory_is_its_kernels_not_a_dask_worker_started_during_the_stage():
    """The stage monitor samples the run's Jupyter kernels among its child processes, never another child
    (a Dask worker a nanny started anew after one was lost showed up as the stage's 4.9 GB peak)."""
    sleep = [sys.executable, "-c", "import time; time.sleep(30)"]
    worker = subprocess.Popen(sleep)
    kernel = subprocess.Popen(sleep + ["-m", "ipykernel_launcher"])          # what a kernel's command line holds
    try:
        until = time.monotonic() + 20                   # a child shows its own command line once it has exec'd
        while b"ipykernel" not in Path(f"/proc/{kernel.pid}/cmdline").read_bytes() and time.monotonic() < until:
            time.sleep(0.05)
        got = pipeline._kernels(os.getpid())
        assert kernel.pid in got and worker.pid not in got
    finally:
        worker.kill()
        kernel.kill()
