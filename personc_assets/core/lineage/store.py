"""DuckDB lineage store: schema, idempotent upserts, one transaction per write.

DuckDB lets one process at a time open a database file for writing, so the
store never holds a connection for long: every ``transaction()`` and every
``query()`` opens a connection, does its work and closes it, under an
inter-process file lock (``<db>.lock``). Two runs against the same file thus
interleave their writes instead of locking each other out. Rows are upserted
by primary key, so re-running a step with the same inputs never duplicates.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import math
import time
from importlib import resources
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Mapping, Sequence

import duckdb

#: The privacy modes' tables (``personc anonymize`` / ``cancelable`` / ``dp``).
PRIVACY_TABLES = ("privacy_factor_ranking", "privacy_anonymized", "privacy_keys", "privacy_cancelable",
                  "privacy_cancelable_assessment", "privacy_attribute_directions", "privacy_dp_ledger",
                  "privacy_dp_releases")
TABLES = ("runs", "sources", "quarantine", "duplicates", "latents", "factors", "embeddings",
          "indexes", "recipes", "candidates", "verdicts", "candidate_verdicts", "ics", "releases",
          "revocations", "release_audits", "gate_verdicts", *PRIVACY_TABLES)

#: Re-applied after every write to ``releases``: a revoked face stays revoked.
_STICKY_REVOCATIONS = (
    "UPDATE releases SET status = 'revoked', revoked_reason = v.reason, revoked_at = v.revoked_at, "
    "revoked_by_run = v.run_id FROM revocations v WHERE releases.release_id = v.release_id "
    "AND releases.status IS DISTINCT FROM 'revoked'")

Connect = Callable[[], ContextManager[duckdb.DuckDBPyConnection]]

#: How long a writer waits for another process's transaction before giving up.
LOCK_TIMEOUT_S = 600.0


def schema_sql() -> str:
    return resources.files(__package__).joinpath("schema.sql").read_text()


def json_column(value: Any) -> str:
    """``value`` as the JSON text of a ``*_json`` column: sorted keys, non-finite floats as ``null``."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(value), sort_keys=True)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class StoreLockTimeout(TimeoutError):
    """Another process held the database longer than ``LOCK_TIMEOUT_S``."""


@contextlib.contextmanager
def file_lock(path: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Exclusive inter-process lock on ``path`` (created if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreLockTimeout(f"{path} stayed locked for {timeout:.0f} s by another PersonC run")
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Writer:
    """Writes inside one open transaction (see ``LineageStore.transaction``)."""

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self.conn = conn

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
        if table in ("releases", "revocations"):
            self.conn.execute(_STICKY_REVOCATIONS)
        return len(rows)

    def update_many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        """``executemany`` that accepts an empty parameter list."""
        if params:
            self.conn.executemany(sql, [list(p) for p in params])

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self.conn.execute(sql, list(params)).fetchall()

    def supersede_changed_paths(self, current: Mapping[str, str], run_id: str,
                                roots: Sequence[str] | None = None) -> list[str]:
        """Mark sources whose file now holds other pixels (or is gone) as superseded.

        ``current`` maps every path accepted in this run to its content hash.
        Old rows are kept, flagged, and point at the hash that replaced them
        (None when the file vanished or no longer yields a face). Only rows
        under ``roots`` (this run's source folders) are considered, so runs
        over other folders sharing the database leave each other alone.
        Returns the superseded content hashes.
        """
        rows = self.query("SELECT content_hash, path FROM sources WHERE NOT superseded")
        if roots is not None:
            prefixes = tuple(str(Path(r)).rstrip("/") + "/" for r in roots)
            rows = [(h, p) for h, p in rows if p and p.startswith(prefixes)]
        changed = [(h, p) for h, p in rows if current.get(p) != h]
        self.update_many(
            "UPDATE sources SET superseded = TRUE, superseded_by = ?, last_run_id = ?, updated_at = ? "
            "WHERE content_hash = ?", [[current.get(p), run_id, now(), h] for h, p in changed])
        return [h for h, _ in changed]


    def revoke(self, release_id: str, reason: str, run_id: str, audit_key: str | None = None,
               source_set_hash: str | None = None) -> None:
        """Revoke a release for good (see the ``revocations`` table)."""
        self.upsert("revocations", [{"release_id": release_id, "reason": reason, "audit_key": audit_key,
                                     "source_set_hash": source_set_hash, "run_id": run_id,
                                     "revoked_at": now()}])


class LineageStore:
    """PersonC's lineage tables in one DuckDB file."""

    def __init__(self, connect: Connect, lock_path: Path) -> None:
        self._connect = connect
        self._lock_path = Path(lock_path)
        with self._open() as conn:
            conn.execute(schema_sql())

    @classmethod
    def open(cls, db_path: str | Path) -> "LineageStore":
        """A store on ``db_path`` that connects with ``duckdb.connect``."""
        db_path = Path(db_path)
        db_path.parent.mkdir(parents=True, exist_ok=True)

        @contextlib.contextmanager
        def connect() -> Iterator[duckdb.DuckDBPyConnection]:
            conn = duckdb.connect(str(db_path))
            try:
                yield conn
            finally:
                conn.close()

        return cls(connect, db_path.with_name(db_path.name + ".lock"))

    @contextlib.contextmanager
    def _open(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with file_lock(self._lock_path), self._connect() as conn:
            yield conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Writer]:
        """All writes inside happen atomically (commit on success, rollback on error)."""
        with self._open() as conn:
            conn.execute("BEGIN TRANSACTION")
            try:
                yield Writer(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._open() as conn:
            return conn.execute(sql, list(params)).fetchall()

    def begin_run(self, run_id: str, config: Mapping[str, Any], backbone: str | None = None,
                  source_set_hash: str | None = None) -> None:
        """Record that ``run_id`` is running (its start time is kept when called again)."""
        from ..versioning import code_version, config_hash

        t = now()
        with self.transaction() as tx:
            started = tx.query("SELECT started_at FROM runs WHERE run_id = ?", [run_id])
            tx.upsert("runs", [{"run_id": run_id, "started_at": started[0][0] if started else t,
                                "finished_at": None, "code_version": code_version(),
                                "config_hash": config_hash(dict(config)),
                                "config_json": json.dumps(dict(config), sort_keys=True, default=str),
                                "backbone": backbone, "status": "running", "updated_at": t,
                                "source_set_hash": source_set_hash}])

    def finish_run(self, run_id: str, status: str) -> None:
        """Record a run's outcome (``success`` / ``failure`` / ``canceled``)."""
        t = now()
        with self.transaction() as tx:
            tx.update_many("UPDATE runs SET status = ?, finished_at = ?, updated_at = ? WHERE run_id = ?",
                           [[status, t, t, run_id]])

    def embeddings(self, encoder_version: str, hashes: Sequence[str]) -> dict[str, list[float]]:
        """Cached embeddings ``{content_hash: vector}`` of ``hashes`` for one encoder version."""
        return dict(self.query(
            "SELECT content_hash, vector FROM embeddings WHERE encoder_version = ? AND content_hash IN "
            "(SELECT unnest(?::VARCHAR[]))", [encoder_version, list(hashes)]))

    def fetch_df(self, sql: str, params: Sequence[Any] = ()):
        """Run a query and return a pandas DataFrame."""
        with self._open() as conn:
            return conn.execute(sql, list(params)).df()

    def counts(self) -> dict[str, int]:
        with self._open() as conn:
            return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
