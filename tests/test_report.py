"""Reviewer reports: one style (plain names, formatted tables, page-wide figures with descriptions), the reviewer
copy without code or test cells, and the data-quality flags for implausible dates and placeholder values."""
import base64

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
from bs4 import BeautifulSoup  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from crmlab import labels, quality, report, reviewer  # noqa: E402
from crmlab.sources import Sources  # noqa: E402


def test_one_mapping_gives_plain_names():
    assert report.label("num__recency_days") == "Days since last order"
    assert report.label("cat__first_channel_store") == "First order channel: store"
    assert report.label("orders_90d") == "Orders, last 90 days"
    assert report.label("clv_12m") == "Customer value, next 12 months"
    assert report.label("dob_str") == "Date of birth"
    assert report.rule_label("last_name_std & postcode_sector") == "Last name & Postcode sector"
    assert report.label("something_new") == "Something new"          # unknown names still read as words


def test_numbers_read_as_people_write_them():
    labels._CURRENCY["code"] = "GBP"
    assert report.money(1234.5) == "£1,234" and report.money(-3.456, digits=2) == "-£3.46"
    assert report.money(10, "CHF") == "10 CHF"
    assert report.pp(0.05) == "+5.0 pp" and report.pct(0.1234) == "12.3%"
    assert report.date(pd.Timestamp("2026-06-29")) == "29 Jun 2026"
    assert report.pct(np.nan) == report.MISSING and report.date(pd.NaT) == report.MISSING


def test_tables_have_no_index_no_raw_values_and_plain_headers():
    df = pd.DataFrame({"customer_key": ["K1", "K2", None], "attrition_risk": [0.5, np.nan, 0.25],
                       "spend": [1144.0, 12.0, 3.0], "created_at": pd.to_datetime(["2026-01-02", None, "2026-03-04"]),
                       "flag": [True, False, True]}, index=[10, 11, 12])
    soup = BeautifulSoup(report.table(df, {"attrition_risk": "pct:0", "spend": "money"}).to_html(), "html.parser")
    heads = [th.get_text(strip=True) for th in soup.select("thead th")]
    assert heads == ["Customer key", "Attrition risk", "Spend", "Sign-up date", "Flag"]   # no index column
    cells = [td.get_text(strip=True) for td in soup.select("tbody td")]
    flat = " ".join(cells)
    for raw in ("nan", "NaN", "NaT", "None", "00:00:00", "1144.000000", "True"):
        assert raw not in flat, raw
    assert "£1,144" in cells and "50%" in cells and "02 Jan 2026" in cells and "yes" in cells
    assert len(cells) == 15 and not soup.select("tbody th")


def test_figures_shown_are_page_wide_at_most_and_described():
    report.use({"report": {"currency": "EUR"}})
    fig, axes = plt.subplots(1, 6, figsize=(25, 3))                          # the 2,511 px chart of the issue
    axes[0].set(title="Attrition", xlabel="drop in ROC AUC")
    data, meta = report._png_with_alt(fig)
    width = Image.open(__import__("io").BytesIO(data)).size[0]
    assert width <= report.PAGE_INCHES * report.DPI + 2
    assert meta["alt"].startswith("Chart: Attrition (x: drop in ROC AUC")
    assert report.money_label("value") == "value (€)"
    fig2, axes2 = report.figure(5, per_row=3)
    assert len(axes2) == 5 and fig2.get_size_inches()[0] <= report.PAGE_INCHES
    plt.close("all")
    labels._CURRENCY["code"] = "GBP"


def _nb():
    nb = nbformat.v4.new_notebook()
    png = base64.b64encode(b"\x89PNG fake").decode()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# 99 · A report"),
        nbformat.v4.new_code_cell("params_file = 'x'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("report.summary(...)", outputs=[
            nbformat.v4.new_output("display_data", data={"text/html": "<div>Summary</div>"},
                                   metadata={"crmlab": {"summary": {"points": ["**1** thing"], "warnings": ["look"]}}}),
            nbformat.v4.new_output("stream", name="stdout", text="progress 3/5\n"),
            nbformat.v4.new_output("stream", name="stderr", text="UserWarning: ...\n")]),
        nbformat.v4.new_code_cell("fig", outputs=[nbformat.v4.new_output(
            "display_data", data={"image/png": png, "text/plain": "<Figure size 640x480 with 1 Axes>"},
            metadata={"image/png": {"alt": "Chart: Orders by month"}})]),
        nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(1)", outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="customers: 5\n")]),
    ]
    return nb


def test_reviewer_copy_keeps_outputs_only(tmp_path):
    path = tmp_path / "99_report.ipynb"
    nbformat.write(_nb(), path)
    out = reviewer.render(path, tmp_path / "99.reviewer.html", header="crmlab")
    page = out.read_text()
    assert "Summary" in page and 'alt="Chart: Orders by month"' in page
    for gone in ("params_file", "NBVAL", "customers: 5", "progress 3/5", "UserWarning", "<Figure size", "report.summary"):
        assert gone not in page, gone
    assert len(page) < 20_000                                              # no JupyterLab page template
    assert reviewer.stage_summary(path) == {"points": ["**1** thing"], "warnings": ["look"], "figures": {}}


def _sources(customers, orders):
    return Sources({"customers": customers, "orders": orders}, ["web"])


def test_quality_flags_implausible_dates_and_placeholders():
    customers = pd.DataFrame({
        "source_system": ["web"] * 5, "source_id": list("abcde"),
        "created_at": pd.to_datetime(["2025-01-01", "2026-02-01", "2025-01-01", "2027-01-01", "2025-01-01"]),
        "dob": pd.to_datetime(["1980-01-01", "2015-01-01", "1890-01-01", "1970-01-01", None]),
        "email": ["a@x.org", "test@test", "N/A", "b@x.org", "unknown"],
        "phone": ["07700900000", "0", "01234", None, "07700900001"]})
    orders = pd.DataFrame({"source_system": "web", "source_id": list("abcde"),
                           "order_date": pd.to_datetime(["2026-01-10"] * 5)})
    src = _sources(customers, orders)
    d = quality.implausible_dates(src).set_index("check")
    assert d.loc["sign-up after the record's last order", "rows"] == 2          # b (Feb 2026) and d (2027)
    assert d.loc["sign-up after the last order in the data", "rows"] == 2      # both after 10 Jan 2026
    assert d.loc["birth date: younger than 16 at the last order date", "rows"] == 1
    assert d.loc["birth date: older than 110 at the last order date", "rows"] == 1
    assert "web b" in d.loc["sign-up after the record's last order", "examples"]
    p = quality.placeholders(customers).set_index("field")
    assert p.loc["email", "records"] == 3 and p.loc["phone", "records"] == 2
    assert '"test@test"' in p.loc["email", "examples"]
