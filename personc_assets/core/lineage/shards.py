"""Lineage that many writers feed: Parquet shards per partition, read back as the store's tables.

One DuckDB file has one writer at a time (``store.py`` takes turns under a
file lock), which is fine on one machine and wrong for many. In shard mode a
partition's writes never touch the database file: each committed
transaction becomes one folder of Parquet files, one per table it wrote::

    <root>/<partition>/<txn digest>/<table>.parquet

The folder is written under a temporary name and renamed into place, so a
reader sees all of a transaction or nothing; its name is the digest of the
rows, so a retry that writes the same rows lands on the same folder. A retry
that writes other values for the same keys (a new run id, a new timestamp)
adds a folder; readers keep one row per primary key, the newest.

``ShardSet.connect`` gives a DuckDB connection on which every lineage table
is a view: the rows of the database file (attached read-only, the
unpartitioned upstream: sources, latents, embeddings, ...) and the shards,
deduplicated by primary key, shard rows first, revocations applied. The
README's queries (and ``views.sql``'s ``release_manifest``) run unchanged on
it. ``consolidate`` upserts the same rows into the DuckDB file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import duckdb

from .store import TABLES, LineageStore, file_lock, now, schema_sql

#: Columns a shard adds to its table's columns.
WRITTEN_AT = "_written_at"
PARTITION = "_partition"
_PARTITION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,127}$")


def views_sql() -> str:
    from importlib import resources

    return resources.files(__package__).joinpath("views.sql").read_text()


@dataclass(frozen=True)
class TableSchema:
    """A lineage table's columns (in schema order, with DuckDB types) and primary key."""

    name: str
    columns: tuple[tuple[str, str], ...]
    key: tuple[str, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.columns)


def table_schemas() -> dict[str, TableSchema]:
    """Every lineage table's schema, read from ``schema.sql`` applied to an empty database."""
    with duckdb.connect() as conn:
        conn.execute(schema_sql())
        out = {}
        for table in TABLES:
            cols = tuple((c, t) for c, t in conn.execute(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ? "
                "ORDER BY column_index", [table]).fetchall())
            key = conn.execute("SELECT constraint_column_names FROM duckdb_constraints() "
                               "WHERE table_name = ? AND constraint_type = 'PRIMARY KEY'", [table]).fetchall()
            if not key:
                raise ValueError(f"lineage table {table} has no primary key: shards could not be deduplicated")
            out[table] = TableSchema(table, cols, tuple(key[0][0]))
        return out


def check_partition(partition: str) -> str:
    if not _PARTITION_NAME.match(partition):
        raise ValueError(f"partition key {partition!r} cannot name a shard folder: use letters, digits, "
                         "'_', '.', '=' and '-' (at most 128 characters, not starting with a punctuation mark)")
    return partition


def rows_digest(tables: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """The digest of a transaction's rows (tables in name order, rows in write order)."""
    text = json.dumps({t: [dict(r) for r in rows] for t, rows in sorted(tables.items())},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class ShardSet:
    """The shard folders under ``root``: written by partitions, read as the lineage tables."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.schemas = table_schemas()

    def write(self, partition: str, tables: Mapping[str, Sequence[Mapping[str, Any]]]) -> Path | None:
        """Commit one transaction's rows of ``partition``: all tables appear together or not at all.

        Returns the transaction's folder (None when no rows). Writing the same rows again is a no-op.
        """
        check_partition(partition)
        tables = {t: rows for t, rows in tables.items() if rows}
        if not tables:
            return None
        for table in tables:
            if table not in self.schemas:
                raise ValueError(f"unknown table {table!r}; tables: {', '.join(TABLES)}")
        final = self.root / partition / rows_digest(tables)
        if final.is_dir():
            return final
        tmp = self.root / partition / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir(parents=True)
        try:
            written_at = now()
            with duckdb.connect() as conn:
                conn.execute(schema_sql())
                for table, rows in tables.items():
                    self._write_table(conn, table, rows, tmp / f"{table}.parquet", partition, written_at)
            try:
                os.rename(tmp, final)  # atomic; fails when a twin retry renamed the same rows first
            except OSError:
                if not final.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def _write_table(self, conn: duckdb.DuckDBPyConnection, table: str, rows: Sequence[Mapping[str, Any]],
                     path: Path, partition: str, written_at: Any) -> None:
        schema = self.schemas[table]
        cols = list(rows[0])
        unknown = set(cols) - set(schema.column_names)
        if unknown:
            raise ValueError(f"table {table} has no column(s) {', '.join(sorted(unknown))}")
        missing_key = set(schema.key) - set(cols)
        if missing_key:
            raise ValueError(f"rows for {table} lack its key column(s) {', '.join(sorted(missing_key))}")
        conn.executemany(f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
                         [[row[c] for c in cols] for row in rows])
        conn.execute(f"COPY (SELECT *, ?::VARCHAR AS {PARTITION}, ?::TIMESTAMP AS {WRITTEN_AT} FROM {table}) "
                     f"TO '{_sql_path(path)}' (FORMAT parquet)", [partition, written_at])
        conn.execute(f"DELETE FROM {table}")

    def files(self, table: str) -> list[Path]:
        """Every committed shard file of ``table`` (temporary folders start with a dot: never listed)."""
        return sorted(self.root.glob(f"[!.]*/[!.]*/{table}.parquet"))

    def partitions(self) -> list[str]:
        return sorted(p.name for p in self.root.glob("[!.]*") if p.is_dir()) if self.root.is_dir() else []

    @contextlib.contextmanager
    def connect(self, base_db: str | Path | None = None, base_lock: str | Path | None = None
                ) -> Iterator[duckdb.DuckDBPyConnection]:
        """An in-memory DuckDB connection whose lineage tables are views over the shards and,
        when given, the rows of ``base_db`` (attached read-only under its writers' ``base_lock``)."""
        base = Path(base_db) if base_db is not None and Path(base_db).exists() else None
        lock = file_lock(Path(base_lock)) if base is not None and base_lock is not None else contextlib.nullcontext()
        with lock, duckdb.connect() as conn:
            conn.execute("ATTACH ':memory:' AS typed")
            conn.execute("USE typed")
            conn.execute(schema_sql())
            conn.execute("USE memory")
            if base is not None:
                conn.execute(f"ATTACH '{_sql_path(base)}' AS base (READ_ONLY)")
            for table in sorted(TABLES, key=lambda t: t == "releases"):  # releases reads revocations
                conn.execute(f"CREATE VIEW {table} AS {self.table_sql(table, base is not None)}")
            conn.execute(views_sql())
            yield conn

    def table_sql(self, table: str, with_base: bool) -> str:
        """One row per primary key: shard rows (newest first) before the database file's rows."""
        schema = self.schemas[table]
        cols = ", ".join(schema.column_names)
        parts = [f"SELECT {cols}, 2 AS _prio, NULL::TIMESTAMP AS _at, '' AS _file FROM typed.{table}"]
        files = self.files(table)
        if files:
            listed = ", ".join(f"'{_sql_path(f)}'" for f in files)
            parts.append(f"SELECT {cols}, 0 AS _prio, {WRITTEN_AT} AS _at, filename AS _file "
                         f"FROM read_parquet([{listed}], union_by_name = true, filename = true)")
        if with_base:
            parts.append(f"SELECT {cols}, 1 AS _prio, NULL::TIMESTAMP AS _at, '' AS _file FROM base.{table}")
        union = " UNION ALL BY NAME ".join(parts)
        ranked = (f"SELECT {cols} FROM ({union}) QUALIFY row_number() OVER (PARTITION BY "
                  f"{', '.join(schema.key)} ORDER BY _prio, _at DESC NULLS LAST, _file DESC) = 1")
        if table != "releases":
            return ranked
        # a revoked face stays revoked (as store.py's sticky revocations do in the database file)
        return (f"SELECT r.* REPLACE (CASE WHEN v.release_id IS NULL THEN r.status ELSE 'revoked' END AS status, "
                f"coalesce(v.reason, r.revoked_reason) AS revoked_reason) FROM ({ranked}) r "
                f"LEFT JOIN revocations v USING (release_id)")

    def consolidate(self, store: LineageStore, tables: Sequence[str] = TABLES) -> dict[str, int]:
        """Upsert the shards' rows (one per key, newest) into ``store``'s database; returns rows per table.

        Idempotent: consolidating twice, or after a retried partition, writes each key once.
        """
        counts: dict[str, int] = {}
        with self.connect() as reader:
            data = {t: reader.execute(f"SELECT * FROM {t}").df() for t in tables if self.files(t)}
        with store.transaction() as tx:
            for table, df in data.items():
                rows = df.astype(object).where(df.notna(), None).to_dict("records")
                counts[table] = tx.upsert(table, [{k: _plain(v) for k, v in r.items()} for r in rows])
        return counts


def _plain(value: Any) -> Any:
    """A DataFrame cell as DuckDB takes it back (numpy arrays as lists, pandas timestamps as datetimes)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "to_pydatetime"):
        return value.to_pydatetime()
    return value


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


class ShardWriter:
    """Buffers one transaction's upserts; ``ShardedLineageStore`` commits them as one shard folder."""

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self.conn = conn
        self.tables: dict[str, list[dict[str, Any]]] = {}

    def upsert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> int:
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; tables: {', '.join(TABLES)}")
        self.tables.setdefault(table, []).extend(dict(r) for r in rows)
        return len(rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Reads the committed rows (this transaction's own rows are not visible until it commits)."""
        return self.conn.execute(sql, list(params)).fetchall()

    def update_many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError("shard lineage is append-only: an UPDATE cannot be sharded; run this step "
                                  "against the DuckDB store (lineage='duckdb') or upsert whole rows")


class ShardedLineageStore:
    """``LineageStore``'s reads and writes for one partition: writes go to Parquet shards of
    ``partition``; reads see the database file (read-only) and every partition's shards."""

    def __init__(self, shards: ShardSet, partition: str, base_db: str | Path | None = None) -> None:
        self.shards = shards
        self.partition = check_partition(partition)
        self.base_db = Path(base_db) if base_db is not None else None
        self.base_lock = self.base_db.with_name(self.base_db.name + ".lock") if self.base_db is not None else None

    @contextlib.contextmanager
    def _open(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self.shards.connect(self.base_db, self.base_lock) as conn:
            yield conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[ShardWriter]:
        """The rows upserted inside are committed as one shard folder on success, dropped on error."""
        with self._open() as conn:
            writer = ShardWriter(conn)
            yield writer
        self.shards.write(self.partition, writer.tables)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._open() as conn:
            return conn.execute(sql, list(params)).fetchall()

    def fetch_df(self, sql: str, params: Sequence[Any] = ()):
        with self._open() as conn:
            return conn.execute(sql, list(params)).df()

    def embeddings(self, encoder_version: str, hashes: Sequence[str]) -> dict[str, list[float]]:
        return dict(self.query(
            "SELECT content_hash, vector FROM embeddings WHERE encoder_version = ? AND content_hash IN "
            "(SELECT unnest(?::VARCHAR[]))", [encoder_version, list(hashes)]))

    def counts(self) -> dict[str, int]:
        with self._open() as conn:
            return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
