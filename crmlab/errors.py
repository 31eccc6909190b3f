"""Errors that end a run with a clear message instead of a traceback."""
from __future__ import annotations


class CrmlabError(Exception):
    """Base class: the message is meant for the user; the CLI prints it and exits non-zero."""

    exit_code = 2


class ConfigError(CrmlabError):
    """A parameter file is invalid (unknown key, wrong type, missing file)."""


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
            with_pd = rows.head(5).to_string(max_colwidth=40)
            msg += "\n  first offending rows:\n    " + with_pd.replace("\n", "\n    ")
        super().__init__(msg)


class StageError(CrmlabError):
    """A pipeline stage (notebook) failed."""

    exit_code = 1
