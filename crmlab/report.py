"""One report style for every notebook: plain names, formatted tables, page-width charts with descriptions.

Notebooks call ``report.use()`` once (matplotlib style, figure descriptions), show tables with
``report.table(df, formats)`` and label things with ``report.label(name)``. Reviewers read the rendered
``.reviewer.html`` (``crmlab.reviewer``), which keeps the outputs of these helpers and nothing raw.

* ``label``: one mapping from column, feature and field names to plain language, used everywhere.
* ``table``: a pandas Styler without index column, with percentages, percentage points, money (currency from
  ``report.currency`` in params), dates and thousands separators, and "–" for missing values.
* ``figure``: panels in rows of at most three, never wider than the page (``PAGE_INCHES`` at ``DPI``).
* Every figure shown carries a description (alt text) built from its titles and axis labels.
"""
from __future__ import annotations

import base64
import html
import io

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython import get_ipython
from IPython.display import HTML, Markdown, display
from matplotlib.figure import Figure
from pandas.io.formats.style import Styler

from .labels import _CURRENCY, MISSING, _missing, date, inline_markdown, label, money, num, pct, pp
from .labels import LABELS, currency, labels, money_label, rule_label

#: Notebooks use this module alone: the names and formats of crmlab.labels are re-exported.
__all__ = ["DPI", "LABELS", "MISSING", "PAGE_INCHES", "currency", "date", "describe", "figure", "image_html", "label",
           "labels", "money", "money_label", "note", "num", "pct", "pp", "rule_label", "show", "summary", "table", "use"]

DPI = 96
PAGE_INCHES = 11.5          # 1,104 px at DPI: fits a 1280 px window with the report's margins
PANEL_INCHES = (3.7, 3.0)   # one panel of a multi-panel figure


def _formatter(kind, code: str):
    if callable(kind):
        return lambda v: MISSING if _missing(v) else kind(v)
    kind, _, digits = str(kind).partition(":")
    d = int(digits) if digits else None
    return {
        "pct": lambda v: pct(v, 1 if d is None else d),
        "pp": lambda v: pp(v, 1 if d is None else d),
        "money": lambda v: money(v, code, 0 if d is None else d),
        "int": lambda v: num(v, 0),
        "num": lambda v: num(v, 2 if d is None else d),
        "date": date,
        "text": _text,
    }[kind]


def _text(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    return MISSING if _missing(v) else str(v)


def _auto_kind(s: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(s):
        return "text"
    if pd.api.types.is_datetime64_any_dtype(s):
        return "date"
    if pd.api.types.is_integer_dtype(s):
        return "int"
    if pd.api.types.is_float_dtype(s):
        v = s.dropna()
        return "int" if len(v) and (v == v.round()).all() and v.abs().max() >= 100 else "num:3"
    return "text"


def use(params: dict | None = None) -> None:
    """Apply the report style in this notebook: matplotlib sizes, a description on every figure shown, and
    the currency of ``params["report"]["currency"]``."""
    code = ((params or {}).get("report") or {}).get("currency")
    if code:
        _CURRENCY["code"] = code
    mpl.rcParams.update({
        "figure.dpi": DPI, "savefig.dpi": DPI, "figure.figsize": (PAGE_INCHES * 0.7, 3.6),
        "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
        "legend.fontsize": 9, "axes.spines.top": False, "axes.spines.right": False,
        "figure.constrained_layout.use": False, "savefig.bbox": "tight",
    })
    ip = get_ipython()
    if ip is not None and hasattr(ip, "display_formatter"):
        ip.display_formatter.formatters["image/png"].for_type(Figure, _png_with_alt)


def _png_with_alt(fig: Figure):
    """PNG of a figure, at most page-wide, with its description in the output's metadata (``alt``)."""
    w, h = fig.get_size_inches()
    if w > PAGE_INCHES:                          # never wider than the page: shrink, keeping the proportions
        fig.set_size_inches(PAGE_INCHES, h * PAGE_INCHES / w)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    data = buf.getvalue()
    return data, {"alt": describe(fig)}


def describe(fig: Figure) -> str:
    """A description of a figure for readers who cannot see it: its title and each panel's title and axes."""
    parts = []
    sup = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) else ""
    if sup:
        parts.append(sup)
    for ax in fig.axes:
        if not ax.get_visible() or ax.get_label() == "<colorbar>":
            continue
        t, x, y = ax.get_title(), ax.get_xlabel(), ax.get_ylabel()
        bits = [b for b in (t, f"x: {x}" if x else "", f"y: {y}" if y else "") if b]
        if bits:
            parts.append(" (".join([bits[0], ", ".join(bits[1:]) + ")"]) if len(bits) > 1 else bits[0])
    text = "; ".join(parts) or "Chart"
    return "Chart: " + text


def figure(panels: int = 1, per_row: int = 3, height: float | None = None, width: float | None = None, **kw):
    """A figure of ``panels`` axes in rows of at most ``per_row``, page-wide at most; returns (fig, flat axes)."""
    ncols = min(panels, per_row)
    nrows = int(np.ceil(panels / ncols))
    w = min(PAGE_INCHES, width or PANEL_INCHES[0] * ncols + 0.6)
    h = (height or PANEL_INCHES[1]) * nrows
    fig, axes = plt.subplots(nrows, ncols, figsize=(w, h), squeeze=False, **kw)
    flat = list(axes.ravel())
    for ax in flat[panels:]:
        ax.set_visible(False)
    return fig, flat[:panels]


# ----------------------------------------------------------------------------- tables

_TABLE_CSS = [
    {"selector": "th", "props": "text-align:left; font-weight:600; padding:4px 10px; border-bottom:1px solid #999;"},
    {"selector": "td", "props": "padding:3px 10px; border-bottom:1px solid #e4e4e4;"},
]


def table(df: pd.DataFrame, formats: dict | None = None, names: bool = True, caption: str | None = None,
          max_rows: int | None = 30, index: bool = False):
    """A formatted Styler: no index column (unless ``index``), plain column names, "–" for missing values.

    ``formats`` maps columns to a kind: ``pct``, ``pp``, ``money``, ``int``, ``num``, ``date``, ``text`` (an
    optional ``:digits``, e.g. ``num:2``) or a callable; other columns are formatted by their dtype.
    """
    d = df.reset_index() if index else df
    if max_rows is not None and len(d) > max_rows:
        d = d.head(max_rows)
    d = d.copy()
    formats = dict(formats or {})
    cur = _CURRENCY["code"]
    kinds = [formats.get(c) or _auto_kind(d[c]) for c in d.columns]
    out = pd.DataFrame(index=d.index)
    for col, kind in zip(d.columns, kinds):
        f = _formatter(kind, cur)
        out[col] = [f(v) for v in d[col].tolist()]
    if names:
        out.columns = [label(c) for c in out.columns]
    numeric = [j for j, k in enumerate(kinds) if str(k).split(":")[0] in ("pct", "pp", "money", "int", "num")]
    css = _TABLE_CSS + [{"selector": f"td.col{j}, th.col_heading.col{j}", "props": "text-align:right;"}
                        for j in numeric]                # one rule per column, not one per cell
    sty = Styler(out, cell_ids=False).hide(axis="index").set_table_styles(css)
    if caption:
        sty = sty.set_caption(html.escape(caption))
    return sty


def show(df: pd.DataFrame, formats: dict | None = None, **kw) -> None:
    display(table(df, formats, **kw))


# ----------------------------------------------------------------------------- summaries

def summary(points: list[str], warnings: list[str] | None = None, title: str = "Summary",
            figures: dict | None = None, ctx=None) -> None:
    """The box a reviewer reads first: what happened, what changed since the previous run, what to look at.

    ``figures``: the stage's headline numbers ({"customers": 5146, ...}); kept with the run (manifest,
    index.html) and, given the stage's ``ctx``, compared with the same figures of the previous successful run.
    """
    points, warnings = list(points), list(warnings or [])
    figures = {str(k): float(v) for k, v in (figures or {}).items() if not _missing(v)}
    prev = ctx.previous_figures() if (ctx is not None and figures) else None
    if prev is not None:
        run_id, old = prev
        changes = [f"{k} {_figure(v)}" + (" (unchanged)" if old[k] == v else f" (was {_figure(old[k])})")
                   for k, v in figures.items() if k in old]
        if changes:
            points.append(f"Since the previous run ({run_id}): " + "; ".join(changes) + ".")
    elif ctx is not None and figures and not getattr(ctx, "interactive", False):
        points.append("No earlier successful run of these parameters with figures to compare with.")
    items = "".join(f"<li>{inline_markdown(p)}</li>" for p in points)
    warn = "".join(f"<li>{inline_markdown(w)}</li>" for w in warnings)
    box = (f'<div class="crmlab-summary" style="border-left:4px solid #2a6f97;background:#f3f8fb;padding:.6em 1em;'
           f'margin:.5em 0 1em 0"><b>{html.escape(title)}</b><ul style="margin:.3em 0">{items}</ul>'
           + (f'<b style="color:#9a3412">Look at</b><ul style="margin:.3em 0">{warn}</ul>' if warn else "")
           + "</div>")
    display(HTML(box), metadata={"crmlab": {"summary": {"points": points, "warnings": warnings, "figures": figures}}})


def _figure(v: float) -> str:
    return f"{v:,.0f}" if v == round(v) or abs(v) >= 100 else f"{v:.3g}"


def note(text: str) -> None:
    display(Markdown(text))


def image_html(fig: Figure) -> str:
    """A figure as an <img> with its description (for HTML built outside a notebook)."""
    data, meta = _png_with_alt(fig)
    return (f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}" '
            f'alt="{html.escape(meta["alt"])}" style="max-width:100%">')
