from pathlib import Path

import pytest

from crmlab import config
from crmlab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_default_params_load_and_resolve_paths():
    p = config.load(ROOT / "params" / "default.yaml")
    assert Path(p["data"]["dir"]) == ROOT / "data" / "sample"
    assert Path(p["runs_dir"]) == ROOT / "runs"
    assert p["report"]["html"] is True          # default filled in


def test_every_params_file_is_valid():
    for f in sorted((ROOT / "params").glob("*.yaml")):
        config.load(f)


def test_unknown_key_is_rejected_with_suggestion(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("data:\n  dri: x\n")
    with pytest.raises(ConfigError, match=r"unknown parameter 'data.dri' \(did you mean 'dir'\?\)"):
        config.load(f)


def test_wrong_type_is_rejected(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("seed: forty-two\n")
    with pytest.raises(ConfigError, match="'seed' must be int"):
        config.load(f)
    f.write_text("report:\n  html: 1\n")
    with pytest.raises(ConfigError, match="true or false"):
        config.load(f)


def test_overrides_are_validated_too(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("run_name: x\n")
    assert config.load(f, ["quality.examples=9"])["quality"]["examples"] == 9
    with pytest.raises(ConfigError, match="unknown parameter 'quality.exmples'"):
        config.load(f, ["quality.exmples=9"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.yaml")
    f = tmp_path / "bad.yaml"
    f.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(f)


# --- reliability findings (#14): values checked when the file loads
@pytest.mark.parametrize("override,match", [
    ("identity.threshold=-5", r"identity.threshold' must lie in \(0, 1\)"),
    ("identity.threshold=1.5", "identity.threshold"),
    ("publish.keep=0", r"publish.keep' must lie in \[1, inf\]"),
    ("value.model=bgnbdd", "value.model' must be one of bgnbd, mbgnbd, pareto.*did you mean 'bgnbd'"),
    ("seed.x=1", "command line --set seed.x=1: parameter 'seed' must be int"),
    ("run_name=x/../../y", "run_name .* must be a plain name"),
    ("run_name=..", "run_name"),
    ("publish.dir=/etc/crmlab", "publish.dir' points into the system folder"),
    ("segments.k_min=9", "k_min .* exceeds"),
    ("value.discount_rate=.nan", "value.discount_rate"),
])
def test_bad_values_rejected_at_load(override, match):
    with pytest.raises(ConfigError, match=match):
        config.load(ROOT / "params" / "ci.yaml", [override])


def test_set_values_are_named_as_command_line():
    with pytest.raises(ConfigError, match="command line --set identity.threshold=high"):
        config.load(ROOT / "params" / "ci.yaml", ["identity.threshold=high"])
    p = config.load(ROOT / "params" / "default.yaml", ["identity.threshold=0.8"])
    assert p["identity"]["threshold"] == 0.8


@pytest.mark.parametrize("rules,match", [
    ("[]", "decisions.rules' must be a non-empty list"),
    ("[{name: a, when: 'x > 1'}]", r"decisions.rules #1 \('a'\) must have exactly name, when and treatment; missing \['treatment'\]"),
    ("[{name: a, when: 'x > 1', treatment: t, seed: 3}]", r"unknown \['seed'\]"),
    ("[{name: a, when: 'value_band ==', treatment: t}]", r"decisions.rules #1 \('a'\): 'when' is not a valid expression"),
    ("[{name: a, when: 'x > 1', treatment: t}, {name: a, when: 'y', treatment: u}]", "#2: the name 'a' is used"),
    ("[{name: a, when: '', treatment: t}]", "'when' must be a non-empty text"),
    ("[oops]", "#1 must be a mapping"),
])
def test_decision_rules_checked_when_the_file_loads(tmp_path, rules, match):
    """#16: a broken rule stops the run at load, naming the file and rule, not minutes later at stage 60."""
    f = tmp_path / "p.yaml"
    f.write_text(f"decisions:\n  rules: {rules}\n")
    with pytest.raises(ConfigError, match=str(f).replace(".", r"\.") + ": (parameter 'decisions.rules'|decisions.rules)") as e:
        config.load(f)
    assert e.match(match)
    with pytest.raises(ConfigError, match="command line --set"):          # the same check for --set values
        config.load(ROOT / "params" / "ci.yaml", [f"decisions.rules={rules}"])


def test_relative_paths_in_set_are_relative_to_the_current_folder(tmp_path, monkeypatch):
    """#16: a path in the file is relative to the file; the same path given with --set, to where you typed it."""
    monkeypatch.chdir(tmp_path)
    p = config.load(ROOT / "params" / "ci.yaml", ["runs_dir=here/runs", "data.dir=mine"])
    assert p["runs_dir"] == str(tmp_path / "here" / "runs") and p["data"]["dir"] == str(tmp_path / "mine")
    q = config.load(ROOT / "params" / "ci.yaml")
    assert Path(q["data"]["dir"]).is_relative_to(ROOT)


def test_passwords_never_stored_but_stages_still_connect(tmp_path, monkeypatch):
    url = "postgresql+psycopg://crm:hunter2@127.0.0.1:5432/test"
    p = config.load(ROOT / "params" / "ci.yaml", [f"publish.url={url}"])
    safe = config.redacted(p)
    stored = tmp_path / "params.yaml"
    config.dump({k: v for k, v in safe.items() if k != "params_file"}, stored)
    assert "hunter2" not in stored.read_text() and "${CRMLAB_PUBLISH_URL_PASSWORD}" in stored.read_text()
    again = config.load(stored)                                  # what a stage kernel does
    assert again["publish"]["url"] == url
    assert config.mask_url(f"connection to {url} failed") == ("connection to postgresql+psycopg://crm:***@"
                                                              "127.0.0.1:5432/test failed")
    monkeypatch.delenv("CRMLAB_PUBLISH_URL_PASSWORD")
    with pytest.raises(ConfigError, match="CRMLAB_PUBLISH_URL_PASSWORD, which is not set"):
        config.load(stored)
