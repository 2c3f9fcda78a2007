"""What every domain's assets share: progress messages in the run log, tables as metadata."""

from __future__ import annotations

from typing import Any, Callable

import pandas as pd
from dagster import AssetExecutionContext, MetadataValue


def progress_reporter(context: AssetExecutionContext, what: str, every: int = 10) -> Callable[[int, int, str], None]:
    """The ``(done, total, item)`` callback a core step reports through, logged every ``every`` items."""
    def report(done: int, total: int, item: str) -> None:
        if done == total or done % every == 0:
            context.log.info(f"{what}: {done}/{total} ({item})")
    return report


def md_table(rows: list[dict[str, Any]]) -> MetadataValue:
    return MetadataValue.md(pd.DataFrame(rows).to_markdown(index=False) if rows else "_none_")
