"""Errors that end a run with a clear message instead of a traceback."""
from __future__ import annotations


class CrmlabError(Exception):
    """Base class: the message is meant for the user; the CLI prints it and exits non-zero."""

    exit_code = 2


class ConfigError(CrmlabError):
    """A parameter file is invalid (unknown key, wrong type, missing file)."""


#: Person fields masked wherever rows are shown (errors, reports); ``report.show_personal_data``
#: (a private review) switches masking off for a run.
PERSONAL_FIELDS = ("first_name", "last_name", "name", "dob", "email", "phone", "address", "town", "postcode",
                   "email_std", "phone_std", "postcode_std", "address_std")
SHOW_PERSONAL_DATA = False


def mask_value(v) -> str:
    """A person field for display: the first character, then letters and digits as '*' with the
    punctuation kept, so formats stay visible ('jane.doe@x.org' -> 'j***.***@*.***'); a date shows its
    year only; missing stays empty. Unchanged when SHOW_PERSONAL_DATA is set."""
    if v is None or (isinstance(v, float) and v != v) or str(v) in ("", "<NA>", "NaT", "nan", "None"):
        return ""
    if SHOW_PERSONAL_DATA:
        return str(v)
    if hasattr(v, "year") and hasattr(v, "month"):
        return f"{v.year}-**-**"
    t = str(v)
    return t[:1] + "".join("*" if ch.isalnum() else ch for ch in t[1:])


def _base_field(col: str) -> str:
    return col.split(" (")[0]


def masked(rows):
    """A copy of ``rows`` with person fields masked (unless SHOW_PERSONAL_DATA)."""
    if SHOW_PERSONAL_DATA:
        return rows
    out = rows.copy()
    for c in out.columns:
        if _base_field(str(c)) in PERSONAL_FIELDS:
            out[c] = [mask_value(v) for v in out[c]]
    return out


class SourceError(CrmlabError):
    """An input table is invalid.

    Parameters
    ----------
    table, column : where the problem is (column may be None for table-level problems).
    problem : one sentence.
    rows : a few offending rows (a DataFrame) shown under the message.
    path : the file or URL the table was read from.
    """

    def __init__(self, table, column, problem, rows=None, path=None, n_bad=None):
        self.table, self.column, self.problem, self.path = table, column, problem, path
        self.rows, self.n_bad = rows, n_bad
        where = f"table '{table}'" + (f", column '{column}'" if column else "")
        src = f" (file {path})" if path else ""
        count = f" [{n_bad:,} rows]" if n_bad else ""
        msg = f"{where}{src}: {problem}{count}"
        if rows is not None and len(rows):
            with_pd = masked(rows.head(5)).to_string(max_colwidth=40)
            msg += "\n  first offending rows:\n    " + with_pd.replace("\n", "\n    ")
        super().__init__(msg)


class StageError(CrmlabError):
    """A pipeline stage (notebook) failed."""

    exit_code = 1
