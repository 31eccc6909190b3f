"""Per-thread DB-API connections for the statements on a request's path.

A lookup or an identification is one small statement; through SQLAlchemy's Core it costs more in
Python than in the database (result metadata rebuilt per statement: 0.50 ms per PostgreSQL lookup
against 0.27 ms on the driver's cursor, 200k customers). :class:`DirectConnections` keeps one
driver connection per thread, outside the engine's pool (a server's request threads each keep
one; a pool smaller than the thread count made requests wait forever under load), in autocommit so
that each statement reads the current published version, and retries a statement once on a fresh
connection when the server dropped the old one.
"""
from __future__ import annotations

import threading


def _is_disconnect(exc: Exception) -> bool:
    """A dropped server connection (worth one retry on a fresh one), not a bad statement."""
    name = type(exc).__name__
    return name in ("OperationalError", "InterfaceError") and "no such" not in str(exc)


class DirectConnections:
    """``run(sql, params, consume)``: ``consume(cursor)`` after ``cursor.execute(sql, params)`` on this
    thread's connection. ``placeholder`` is the driver's parameter marker (``?`` or ``%s``)."""

    def __init__(self, url: str):
        import sqlalchemy as sa

        self._eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
        self.placeholder = "?" if self._eng.dialect.paramstyle == "qmark" else "%s"
        self._server = self._eng.dialect.name != "sqlite"
        self._local = threading.local()

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._eng.raw_connection()
            if self._server:
                conn.driver_connection.autocommit = True
            self._local.conn = conn
        return conn

    def run(self, sql: str, params, consume):
        for attempt in (0, 1):
            conn = self._conn()
            try:
                cur = conn.cursor()
                try:
                    cur.execute(sql, params)
                    return consume(cur)
                finally:
                    cur.close()
            except Exception as exc:  # noqa: BLE001 - the driver's own error classes; re-raised unless a disconnect
                self._local.conn = None
                try:
                    conn.invalidate()
                except Exception:  # noqa: BLE001 - already gone
                    pass
                if attempt or not _is_disconnect(exc):
                    raise

    def fetchall(self, sql: str, params) -> list:
        return self.run(sql, params, lambda cur: cur.fetchall())

    def close(self) -> None:
        """Closes this thread's connection (the others close with their threads) and the engine."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        self._eng.dispose()
