"""The package is layered: no import cycle, and no import hidden inside a function to dodge one (#16)."""
import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The command line imports lazily so that ``crmlab --help`` starts fast; nothing imports it.
LAZY_OK = {"crmlab.cli"}


def _modules() -> dict[str, Path]:
    mods = {"crmlab." + ".".join(p.relative_to(ROOT / "crmlab").with_suffix("").parts): p
            for p in (ROOT / "crmlab").rglob("*.py") if p.stem not in ("__init__", "__main__")}
    mods.update({f"crmlab.{p.parent.name}": p for p in (ROOT / "crmlab").glob("*/__init__.py")})
    mods.update({f"crmlab.kernels.{p.stem}": p for p in (ROOT / "kernels").glob("*.py") if p.stem != "__init__"})
    return mods


def _imports(name: str, path: Path) -> list[tuple[str, bool]]:
    """(imported crmlab module, whether the import sits inside a function) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    inside = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(n) for n in ast.walk(fn) if n is not fn)
    out = []
    mods = _modules()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            target = f"{base}.{node.module}" if node.module else base
            for alias in node.names:
                full = f"{target}.{alias.name}"
                out.append((full if full in mods else target, id(node) in inside))
        elif isinstance(node, ast.Import):
            out += [(a.name, id(node) in inside) for a in node.names if a.name.startswith("crmlab.")]
    return [(m, lazy) for m, lazy in out if m in mods]


def test_no_import_cycle_and_no_hidden_imports():
    graph, hidden = {}, []
    for name, path in _modules().items():
        deps = _imports(name, path)
        graph[name] = {m for m, _ in deps if m != name}
        hidden += [f"{name} imports {m} inside a function" for m, lazy in deps if lazy and name not in LAZY_OK]
    assert not hidden, "\n".join(hidden)
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None
    # each module imports on its own, lowest layer first, in a fresh interpreter
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    r = subprocess.run([sys.executable, "-c", code, *order], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_events_layer_sits_below_the_stages():
    graph = {name: {m for m, _ in _imports(name, path)} for name, path in _modules().items()}
    below = {"crmlab.errors"}
    assert graph["crmlab.events"] <= below, graph["crmlab.events"]
    for stage in ("crmlab.features", "crmlab.value", "crmlab.truth", "crmlab.measure", "crmlab.targets"):
        assert "crmlab.events" in graph[stage] or any("crmlab.events" in graph[m] for m in graph[stage]), stage
