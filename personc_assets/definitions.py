"""Dagster definitions: merges each domain's definitions in ``defs/`` and binds the resources.

Domains: ``main`` (the pipeline from sources to ICS reports, its checks, job and
schedule), ``privacy`` (the privacy modes' assets and jobs), ``lifecycle`` (the
release recheck, the refresh job and the sensors), ``audit`` (the red-team
report) and ``scale`` (release batches as partitions on a Dask executor).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dagster import Definitions, JobDefinition

from .defs import audit, lifecycle, main, privacy, scale
from .defs.progress import progress_logger
from .defs.resources import LineageResource, LoadedModels, PersonCConfig, default_db_path, default_out_dir
from .defs.value_io import AssetValueIOManager

DOMAINS = (main, privacy, lifecycle, audit, scale)


def build_definitions(out_dir: str | None = None, db_path: str | None = None, **config) -> Definitions:
    """Definitions bound to one output folder and DuckDB file (defaults from the environment)."""
    out_dir = out_dir or default_out_dir()
    db_path = db_path or (default_db_path() if out_dir == default_out_dir() else str(Path(out_dir) / "personc.duckdb"))
    return Definitions.merge(*(domain.defs for domain in DOMAINS), Definitions(
        loggers={"progress": progress_logger},
        resources={
            "personc": PersonCConfig(out_dir=out_dir, **config),
            "lineage": LineageResource(database=db_path),
            "models": LoadedModels(),
            "io_manager": AssetValueIOManager(base_dir=str(Path(out_dir) / "state")),
            **scale.batch_resources(out_dir),
        },
    ))


def job_for(name: str, out_dir: str | None = None, db_path: str | None = None,
            config_json: str = "{}") -> JobDefinition:
    """Job ``name`` of ``build_definitions(out_dir, db_path, **json.loads(config_json))``.

    The reconstructor for executors that run steps in other processes when the
    definitions were built with explicit arguments::

        build_reconstructable_job("personc_assets.definitions", "job_for",
                                  reconstructable_kwargs={"name": "personc_refresh", "out_dir": ...})
    """
    config: dict[str, Any] = json.loads(config_json)
    return build_definitions(out_dir, db_path, **config).resolve_job_def(name)


defs = build_definitions()
