"""The privacy modes' DuckDB tables (``privacy_schema.sql`` beside this file) on the lineage store.

The shared ``LineageStore`` only upserts its own tables; these helpers create
the privacy tables on first use and upsert into them inside the store's
transactions (same file lock, same database file).
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Mapping, Sequence

from .store import LineageStore, Writer

PRIVACY_TABLES: tuple[str, ...] = (
    "privacy_factor_ranking", "privacy_anonymized", "privacy_keys", "privacy_cancelable",
    "privacy_cancelable_assessment", "privacy_attribute_directions", "privacy_dp_ledger", "privacy_dp_releases")


def privacy_schema_sql() -> str:
    return resources.files(__package__).joinpath("privacy_schema.sql").read_text()


def ensure_privacy_schema(store: LineageStore) -> LineageStore:
    """Create the privacy tables when absent (idempotent); returns ``store``."""
    with store.transaction() as tx:
        tx.conn.execute(privacy_schema_sql())
    return store


def upsert(tx: Writer, table: str, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert or replace ``rows`` (dicts with the same keys) into a privacy table."""
    if table not in PRIVACY_TABLES:
        raise ValueError(f"unknown privacy table {table!r}; tables: {', '.join(PRIVACY_TABLES)}")
    if not rows:
        return 0
    cols = list(rows[0])
    sql = f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
    tx.conn.executemany(sql, [[row[c] for c in cols] for row in rows])
    return len(rows)
