import shutil
import sys
from pathlib import Path

import pytest

from crmlab import synth

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
sys.modules.setdefault("rfc3987_syntax", None)      # see crmlab.pipeline._lean_imports


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """A 2,000-customer synthetic world in Parquet (read-only for tests: copy before changing)."""
    out = tmp_path_factory.mktemp("world")
    synth.generate(synth.WorldSpec(customers=2000, seed=3), out, fmt="parquet")
    return out


@pytest.fixture
def sample_copy(tmp_path) -> Path:
    """A writable copy of the bundled CSV sample (without its truth folder)."""
    dst = tmp_path / "data"
    shutil.copytree(SAMPLE, dst, ignore=shutil.ignore_patterns("truth"))
    return dst
