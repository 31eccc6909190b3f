"""The reviewer's copy of an executed notebook: outputs only, in one light page style.

Left out: code, the parameter cells, the notebook-test cells (``# NBVAL_CHECK_OUTPUT``), warnings and progress
bars and other printed streams. Figures keep the description ``crmlab.report`` attached to them (alt text). The page
is a few kilobytes of CSS around the outputs, not JupyterLab's page template.
"""
from __future__ import annotations

import html
from pathlib import Path

SKIP_TAGS = {"parameters", "injected-parameters", "remove-output", "reviewer-skip"}
SKIP_MARKERS = ("# NBVAL_CHECK_OUTPUT", "# NBVAL_IGNORE_OUTPUT", "# reviewer: skip")

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2430; margin: 0;
       background: #fff; line-height: 1.45; }
main { max-width: 1140px; margin: 0 auto; padding: 16px 24px 48px; }
header.crmlab { max-width: 1140px; margin: 0 auto; padding: 12px 24px 0; color: #5b6472; font-size: 13px; }
header.crmlab a { color: #2a6f97; }
h1 { font-size: 26px; margin: .4em 0 .3em; } h2 { font-size: 20px; margin: 1.4em 0 .4em;
  border-bottom: 1px solid #e3e6ea; padding-bottom: .2em; } h3 { font-size: 16px; }
p, li { max-width: 72em; }
img { max-width: 100%; height: auto; display: block; margin: .4em 0; }
table { border-collapse: collapse; margin: .4em 0 .8em; font-size: 13px; max-width: 100%; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e4e4e4; text-align: left; vertical-align: top;
         overflow-wrap: break-word; }
th { border-bottom: 1px solid #999; font-weight: 600; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; font-size: 12.5px; background: #f6f7f9; padding: 6px 10px; }
code { font-size: 92%; background: #f3f4f6; padding: 0 3px; overflow-wrap: break-word; }
.jp-OutputArea-output { overflow-x: visible; }
.jp-InputArea, .jp-InputPrompt, .jp-OutputPrompt { display: none; }
"""


def _skip_cell(cell) -> bool:
    tags = set(cell.get("metadata", {}).get("tags", []))
    src = cell.get("source", "")
    return bool(tags & SKIP_TAGS) or (cell.get("cell_type") == "code" and src.lstrip().startswith(SKIP_MARKERS))


def _nbformat():
    """nbformat, imported when a report is read (its JSON-schema validator costs ~2 s to import; the stage
    kernels that import the pipeline never need it)."""
    import nbformat

    return nbformat


def read(notebook):
    """A notebook node from a path (read and validated once), or the node itself."""
    if isinstance(notebook, (str, Path)):
        return _nbformat().read(notebook, as_version=4)
    return notebook


def _reviewer_outputs(outputs: list) -> list:
    """Keep what a reviewer reads: tables, figures, text the notebook displays. Streams (progress lines, warnings,
    test printouts) are left out: notebooks show content with ``display``, not ``print``."""
    keep = []
    for out in outputs:
        if out.get("output_type") == "stream":
            continue
        if out.get("output_type") in ("display_data", "execute_result"):
            data = out.get("data", {})
            if "image/png" in data:
                alt = (out.get("metadata", {}).get("image/png", {}) or {}).get("alt") or "Chart"
                data = {"text/html": f'<img src="data:image/png;base64,{data["image/png"].strip()}" '
                                     f'alt="{html.escape(alt)}">'}
                out = _nbformat().from_dict({**out, "data": data, "metadata": {}})
            elif "text/html" not in data and "text/markdown" not in data and list(data) == ["text/plain"]:
                txt = data["text/plain"]
                if txt.startswith("<Figure size") or txt.startswith("<matplotlib."):
                    continue                                   # the repr of a figure object, not content
        keep.append(out)
    return keep


def stage_summary(notebook) -> dict | None:
    """The summary a report opened with (``crmlab.report.summary``): points, warnings and headline figures.
    ``notebook``: a path or the notebook already read."""
    nb = read(notebook)
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            found = (out.get("metadata") or {}).get("crmlab", {}).get("summary")
            if found is not None:
                return {"points": list(found.get("points", [])), "warnings": list(found.get("warnings", [])),
                        "figures": dict(found.get("figures", {}))}
    return None


def reviewer_notebook(nb):
    """A copy of ``nb`` with only what a reviewer should read."""
    nb = _nbformat().from_dict(nb)
    cells = []
    for cell in nb.cells:
        if _skip_cell(cell):
            continue
        if cell.cell_type == "code":
            cell.outputs = _reviewer_outputs(cell.get("outputs", []))
            if not cell.outputs:
                continue
        cells.append(cell)
    nb.cells = cells
    return nb


def render(notebook, out: Path, header: str = "") -> Path:
    """Render ``notebook`` (executed; a path or the notebook already read) as the reviewer's page at ``out``."""
    from nbconvert import HTMLExporter      # heavy: imported when a report is rendered

    nb = reviewer_notebook(read(notebook))
    exporter = HTMLExporter(template_name="basic", exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True, anchor_link_text="")
    stem = Path(out).name.split(".")[0]
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": stem}})
    title = next((c.source.splitlines()[0].lstrip("# ").strip() for c in nb.cells
                  if c.cell_type == "markdown" and c.source.startswith("# ")), stem)
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f'<header class="crmlab">{header}</header><main>{body}</main></body></html>')
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
