"""Install layout, environment.yml in sync with pyproject.toml, README commands, kernel spec."""
import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"psycopg[binary]": "psycopg", "redis": "redis-py", "uvicorn[standard]": "uvicorn-standard",
               "dask[distributed]": "dask"}   # PyPI name -> conda-forge name where they differ
MIRRORED_EXTRAS = ("dev", "postgres", "dask")


def _split(req: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+(?:\[[^\]]+\])?)\s*(.*)$", req)
    name, spec = m.group(1).lower(), m.group(2).replace(" ", "")
    return CONDA_NAMES.get(name, name), spec


def test_kernels_installed_as_crmlab_kernels():
    import crmlab.kernels

    assert Path(crmlab.kernels.__file__).resolve().parent.name == "kernels"
    assert "kernels" not in sys.modules or sys.modules["kernels"] is not crmlab.kernels


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(_split(r) for r in project["dependencies"])
    for extra in MIRRORED_EXTRAS:
        wanted.update(_split(r) for r in project["optional-dependencies"][extra])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    have = dict(_split(d) for d in conda if not d.startswith(("python", "pip")))
    assert have == wanted, {"missing in environment.yml": sorted(set(wanted.items()) - set(have.items())),
                            "not in pyproject": sorted(set(have.items()) - set(wanted.items()))}
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip
    assert f">={project['requires-python'].lstrip('>=')}" in next(d for d in conda if d.startswith("python"))


def test_readme_has_the_two_setup_commands_and_ci_uses_one():
    readme = (ROOT / "README.md").read_text()
    assert "python3 dev.py run" in readme and "python3 dev.py test" in readme
    assert "dev.py test" in (ROOT / ".ci" / "run").read_text()


def test_kernelspec_points_at_this_interpreter():
    from jupyter_client.kernelspec import KernelSpecManager

    from crmlab.pipeline import KERNEL_NAME, ensure_kernelspec

    ensure_kernelspec()
    spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    assert spec.argv[0] == sys.executable
    assert spec.display_name == "Python (crmlab)"


def test_notebooks_are_committed_without_outputs():
    import nbformat

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata["kernelspec"]["name"] == "crmlab", path.name
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: exactly one cell tagged 'parameters'"
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"
