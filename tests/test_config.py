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
