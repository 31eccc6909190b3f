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
