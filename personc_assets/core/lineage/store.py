"""DuckDB lineage store: schema, idempotent upserts, one transaction per step.

The store wraps a ``duckdb`` connection (opened by the caller, e.g. through
Dagster's ``DuckDBResource``). Rows are upserted by primary key, so
re-running a step with the same inputs never duplicates rows.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from importlib import resources
from typing import Any, Iterator, Mapping, Sequence

import duckdb

TABLES = ("runs", "sources", "quarantine", "duplicates", "latents", "factors", "embeddings",
          "indexes", "recipes", "candidates", "verdicts", "candidate_verdicts", "ics", "releases")


def schema_sql() -> str:
    return resources.files(__package__).joinpath("schema.sql").read_text()


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class LineageStore:
    """Typed writes and reads of PersonC's lineage tables."""

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self.conn = conn
        self.conn.execute(schema_sql())

    @contextlib.contextmanager
    def transaction(self) -> Iterator["LineageStore"]:
        """All writes inside happen atomically (commit on success, rollback on error)."""
        self.conn.execute("BEGIN TRANSACTION")
        try:
            yield self
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def upsert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert or replace ``rows`` (dicts with the same keys) into ``table``."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; tables: {', '.join(TABLES)}")
        if not rows:
            return 0
        cols = list(rows[0])
        sql = (f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) "
               f"VALUES ({', '.join('?' for _ in cols)})")
        self.conn.executemany(sql, [[row[c] for c in cols] for row in rows])
        return len(rows)

    def update_many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        """``executemany`` that accepts an empty parameter list."""
        if params:
            self.conn.executemany(sql, [list(p) for p in params])

    def supersede_changed_paths(self, current: Mapping[str, str], run_id: str) -> list[str]:
        """Mark sources whose file now holds other pixels (or is gone) as superseded.

        ``current`` maps every path seen in this run to its content hash. Old
        rows are kept, flagged, and point at the hash that replaced them.
        Returns the superseded content hashes.
        """
        rows = self.conn.execute(
            "SELECT content_hash, path FROM sources WHERE NOT superseded").fetchall()
        changed = [(h, p) for h, p in rows if current.get(p) != h]
        for content_hash, path in changed:
            self.conn.execute(
                "UPDATE sources SET superseded = TRUE, superseded_by = ?, last_run_id = ?, updated_at = ? "
                "WHERE content_hash = ?", [current.get(path), run_id, now(), content_hash])
        return [h for h, _ in changed]

    def fetch_df(self, sql: str, params: Sequence[Any] = ()):
        """Run a query and return a pandas DataFrame."""
        return self.conn.execute(sql, list(params)).df()

    def counts(self) -> dict[str, int]:
        return {t: self.conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
