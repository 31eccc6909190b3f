"""Reusing unchanged stages (engine.reuse), resuming a failed run (--from) and notebooks opened on
their own (#15). Small stage notebooks keep these fast; what they read decides what is reused."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pandas as pd
import papermill as pm
import pytest

from crmlab import pipeline, reuse
from crmlab.errors import ConfigError, CrmlabError, StageError

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / "params" / "ci.yaml"

HEAD = """\
from pathlib import Path
import pandas as pd
from crmlab.pipeline import StageContext
ctx = StageContext.open(params_file, run_dir)
with open(Path(ctx.params["runs_dir"]) / "ran.txt", "a") as fh:
    fh.write(Path(__import__("os").environ["CRMLAB_STAGE"]).name + "\\n")
"""
STAGES = {
    # reads the inputs and the identity section
    "10_a": "n = len(ctx.sources()['orders'])\n"
            "ctx.write_artifact('a', pd.DataFrame({'n': [n], 't': [ctx.params['identity']['threshold']]}))",
    # reads a and the affinity section
    "20_b": "a = ctx.read_artifact('a')\n"
            "ctx.write_artifact('b', a.assign(lift=ctx.params['affinity']['min_lift']))",
    # reads b and the value section; fails while a marker file exists
    "30_c": "b = ctx.read_artifact('b')\n"
            "if (Path(ctx.params['runs_dir']) / 'fail_c').exists(): raise RuntimeError('planted failure')\n"
            "ctx.write_artifact('c', b.assign(m=ctx.params['value']['margin']))",
    # reads only a
    "40_d": "ctx.write_artifact('d', ctx.read_artifact('a'))",
    # publishes (a side effect: never copied)
    "50_pub": "(ctx.run_dir / 'artifacts' / 'published.json').write_text('{\"version\": 1}')",
}


def _notebooks(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, code in STAGES.items():
        nb = nbformat.v4.new_notebook(cells=[
            nbformat.v4.new_code_cell("params_file = None\nrun_dir = None", metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell(HEAD + code)])
        nb.metadata["kernelspec"] = {"name": "crmlab", "display_name": "Python (crmlab)", "language": "python"}
        nbformat.write(nb, folder / f"{name}.ipynb")


class Chain:
    def __init__(self, tmp: Path, data: Path):
        self.tmp, self.runs, self.data = tmp, tmp / "runs", data
        _notebooks(tmp / "notebooks")
        self.base = [f"notebooks_dir={tmp / 'notebooks'}", f"runs_dir={self.runs}", f"data.dir={data}",
                     f"stages=[{', '.join(STAGES)}]", "report.html=false", "engine.reuse=true"]

    def run(self, *sets: str, from_stage: str | None = None) -> tuple[Path, dict, list[str]]:
        ran = self.runs / "ran.txt"
        before = ran.read_text().split() if ran.exists() else []
        run_dir = pipeline.run(CI, self.base + list(sets), quiet=True, from_stage=from_stage)
        after = ran.read_text().split()
        return run_dir, json.loads((run_dir / "manifest.json").read_text()), after[len(before):]


def _reused(manifest: dict) -> dict[str, str | None]:
    return {s["name"]: s.get("reused_from") for s in manifest["stages"]}


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Chain:
    tmp = tmp_path_factory.mktemp("reuse")
    data = tmp / "data"
    shutil.copytree(ROOT / "data" / "sample", data, ignore=shutil.ignore_patterns("truth"))
    return Chain(tmp, data)


def test_unchanged_stages_are_reused_and_changed_reads_rerun(chain):
    first, m1, ran = chain.run()
    assert ran == list(STAGES) and m1["status"] == "ok"
    assert all(s.get("fingerprint") for s in m1["stages"][:-1])

    second, m2, ran = chain.run()
    assert ran == ["50_pub"]                           # everything but the publishing stage copied
    assert _reused(m2) == {"load_sources": first.name, "10_a": first.name, "20_b": first.name,
                           "30_c": first.name, "40_d": first.name, "50_pub": None}
    for name in "abcd":
        pd.testing.assert_frame_equal(pd.read_parquet(second / "artifacts" / f"{name}.parquet"),
                                      pd.read_parquet(first / "artifacts" / f"{name}.parquet"))
    assert (second / "notebooks" / "20_b.ipynb").exists()

    # a parameter only 20_b reads: 20_b and 30_c (which reads b) rerun; 10_a and 40_d (reads a) do not
    third, m3, ran = chain.run("affinity.min_lift=2.5")
    assert ran == ["20_b", "30_c", "50_pub"]
    assert _reused(m3)["40_d"] == second.name and _reused(m3)["10_a"] == second.name
    assert pd.read_parquet(third / "artifacts" / "c.parquet")["lift"].tolist() == [2.5]

    # the same again with engine.reuse off: every stage runs
    _, _, ran = chain.run("affinity.min_lift=2.5", "engine.reuse=false")
    assert ran == list(STAGES)


def test_changed_input_file_or_code_reruns(chain, monkeypatch):
    chain.run()
    orders = chain.data / "orders.csv"
    lines = orders.read_text().splitlines(keepends=True)
    orders.write_text("".join(lines) + "\n")            # other bytes (a trailing blank line), same orders
    try:
        _, m, ran = chain.run()
        assert ran == list(STAGES) and not any(_reused(m).values())
        monkeypatch.setattr(reuse, "_CODE", "a-different-checkout")
        _, m, ran = chain.run()
        assert ran == list(STAGES)
    finally:
        orders.write_text("".join(lines))


def test_resume_from_a_failed_stage(chain):
    marker = chain.runs / "fail_c"
    marker.write_text("")
    with pytest.raises(StageError, match="planted failure"):
        chain.run("engine.reuse=false", "value.margin=0.31")
    failed = sorted(p for p in chain.runs.iterdir() if (p / "manifest.json").exists())[-1]
    marker.unlink()
    run_dir, m, ran = chain.run("engine.reuse=false", "value.margin=0.31", from_stage="30_c")
    assert ran == ["30_c", "40_d", "50_pub"] and m["status"] == "ok" and m["resumed_from"] == failed.name
    assert _reused(m)["10_a"] == failed.name and _reused(m)["load_sources"] == failed.name
    assert pd.read_parquet(run_dir / "artifacts" / "c.parquet")["m"].tolist() == [0.31]

    # a changed parameter of an earlier stage refuses the resume, naming the stage and the section
    with pytest.raises(ConfigError, match=r"stage 10_a, parameters 'identity' changed"):
        chain.run("identity.threshold=0.7", from_stage="30_c")
    with pytest.raises(ConfigError, match="not a stage"):
        chain.run(from_stage="35_nope")
    with pytest.raises(ConfigError, match="50_pub.*published"):   # publishing is repeated, never copied
        pipeline.run(CI, chain.base + ["stages=[10_a, 50_pub, 40_d]"], quiet=True, from_stage="40_d")


def test_tracked_params_note_sections_read():
    seen = []
    p = reuse.TrackedParams({"a": 1, "b": {"x": 2}, "c": 3}, seen.append)
    assert p["b"]["x"] == 2 and p.get("a") == 1 and seen == ["b", "a"]
    dict(p)
    assert sorted(seen) == ["a", "b", "c"]


def test_artifact_stages_match_the_notebooks():
    """ARTIFACT_STAGES (used for 'run stage X first') names the notebook that writes each artifact."""
    import re

    from crmlab import events

    written = {}
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        code = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"])
        for mod in re.findall(r"from crmlab\.stages\.(\w+) import", code):      # the stage function it calls
            code += (ROOT / "crmlab" / "stages" / f"{mod}.py").read_text()
        for name in re.findall(r"write_artifact\(\s*[\"']([\w/]+)", code):
            written[name] = nb.stem
        if "write_events(" in code:
            written.update(dict.fromkeys(events.ARTIFACTS, nb.stem))
    assert {k: written.get(k) for k in pipeline.ARTIFACT_STAGES} == pipeline.ARTIFACT_STAGES


def test_interactive_context_reads_the_latest_successful_run(chain, monkeypatch, tmp_path):
    run_dir, _, _ = chain.run()
    params = tmp_path / "p.yaml"
    params.write_text(f"run_name: ci\nruns_dir: {chain.runs}\ndata:\n  dir: {chain.data}\n")
    ctx = pipeline.StageContext.open(str(params))
    assert ctx.interactive and ctx.basis == run_dir
    pd.testing.assert_frame_equal(ctx.read_artifact("a"), pd.read_parquet(run_dir / "artifacts" / "a.parquet"))
    assert len(ctx.sources()["orders"]) == ctx.read_artifact("a")["n"].iloc[0]
    with pytest.raises(CrmlabError, match="customer_value.*written by 30_value.*crmlab run"):
        ctx.read_artifact("customer_value")


def test_real_notebook_alone_stops_naming_the_stage_to_run(tmp_path):
    """30_value opened on its own with no run yet: a clear stop naming 10_identity, not 6,794 'customers'."""
    params = tmp_path / "p.yaml"
    params.write_text(f"run_name: alone\nruns_dir: {tmp_path / 'runs'}\ndata:\n  dir: {ROOT / 'data' / 'sample'}\n")
    with pytest.raises(pm.PapermillExecutionError, match="artifact .(customer_key_map|events_orders). .*written by 10_identity"):
        pm.execute_notebook(str(ROOT / "notebooks" / "30_value.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"params_file": str(params)}, kernel_name="crmlab", progress_bar=False)
