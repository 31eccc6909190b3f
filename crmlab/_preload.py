"""Run by a stage kernel as it starts (``IPKernelApp.exec_lines``), while the previous stage is still
executing: the imports its notebook is about to make, so they cost nothing on the critical path.

:mod:`crmlab.pipeline` starts each stage's kernel one stage early; ``CRMLAB_STAGE`` names the stage.
Nothing here changes what a cell computes: a module imported twice is imported once.
"""
import importlib
import os

_stage = os.environ.get("CRMLAB_STAGE", "")
_module = _stage.split("_", 1)[1] if "_" in _stage else ""
for _name in ("numpy", "pandas", "matplotlib.pyplot", "IPython.display", "crmlab.pipeline", "crmlab.report",
              "crmlab.quality" if _module == "data_quality" else "",
              f"crmlab.stages.{_module}" if _module and _module != "data_quality" else ""):
    if _name:
        try:
            importlib.import_module(_name)
        except ImportError:            # a stage without its own module, say: the notebook imports what it needs
            pass
