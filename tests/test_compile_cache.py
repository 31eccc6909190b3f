"""The Numba cache lives in the user cache folder, survives a fresh environment, and warm is once per code (#15)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from crmlab import compile_cache, warm


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.cache_dir() == tmp_path / "xdg" / "crmlab" / "numba"
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    assert compile_cache.cache_dir() == tmp_path / "mine"


def test_unwritable_cache_folder_leaves_numba_its_default(monkeypatch, tmp_path):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file" / "below"))      # cannot be created
    assert compile_cache.configure() is None and "NUMBA_CACHE_DIR" not in os.environ


def test_kernels_compile_into_the_user_cache_and_load_from_it(tmp_path):
    """A fresh process compiles a kernel into the cache folder; a second one loads it without compiling."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    code = ("import numpy as np, crmlab\nfrom crmlab.kernels import segments as s\n"
            "from numba.core import config\nprint(config.CACHE_DIR)\n"
            "z = np.zeros((4, 2)); c = np.ones((2, 2))\n"
            "s.nearest_center(z, np.zeros(2), np.zeros(2, bool), np.zeros(2), np.ones(2), c, np.ones((2, 2)), np.zeros(2))\n"
            "print(len(s._nearest.stats.cache_misses), len(s._nearest.stats.cache_hits))")
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    folder = Path(first.stdout.split()[0])
    assert folder == tmp_path / "cache" / "crmlab" / "numba"
    assert list(folder.rglob("*.nbi")), "no Numba index written into the user cache"
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert first.stdout.split()[1:] == ["1", "0"], first.stdout             # compiled (a miss) ...
    assert second.returncode == 0 and second.stdout.split()[1:] == ["0", "1"], second.stdout + second.stderr  # ... then loaded


def test_warm_is_once_per_code(monkeypatch, tmp_path):
    from crmlab import reuse

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    assert not warm.is_warm()
    (tmp_path / "warm.json").write_text(json.dumps({"code": reuse.code_digest(), "root": "/another/checkout"}))
    assert not warm.is_warm()                          # Numba's cache is per source path
    (tmp_path / "warm.json").write_text(json.dumps({"code": reuse.code_digest(), "root": str(warm._root())}))
    assert warm.is_warm()
    assert warm.warm(say=lambda m: None) is None          # nothing to do
    monkeypatch.setattr(reuse, "_CODE", "changed")
    assert not warm.is_warm()
