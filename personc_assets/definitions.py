"""Dagster definitions: wires assets, checks, jobs, schedules, sensors and resources."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dagster import Definitions, JobDefinition, load_assets_from_modules
from dagster_duckdb import DuckDBResource

from .defs import assets, checks, privacy, redteam, scale, sensors
from .defs.jobs import daily_regeneration, main_job
from .defs.progress import progress_logger
from .defs.resources import PersonCConfig, default_db_path, default_out_dir
from .defs.value_io import AssetValueIOManager


def build_definitions(out_dir: str | None = None, db_path: str | None = None, **config) -> Definitions:
    """Definitions bound to one output folder and DuckDB file (defaults from the environment)."""
    out_dir = out_dir or default_out_dir()
    db_path = db_path or (default_db_path() if out_dir == default_out_dir() else str(Path(out_dir) / "personc.duckdb"))
    return Definitions(
        assets=[*load_assets_from_modules([assets, redteam, sensors]), *privacy.PRIVACY_ASSETS,
                *scale.SCALE_ASSETS],
        asset_checks=[checks.released_faces_below_tau, checks.released_faces_mix_both_groups],
        jobs=[main_job, sensors.refresh_job, *privacy.PRIVACY_JOBS, scale.batch_job()],
        schedules=[daily_regeneration],
        sensors=[sensors.source_folders_changed, sensors.record_run_success, sensors.record_run_failure],
        loggers={"progress": progress_logger},
        resources={
            "personc": PersonCConfig(out_dir=out_dir, **config),
            "duckdb": DuckDBResource(database=db_path),
            "io_manager": AssetValueIOManager(base_dir=str(Path(out_dir) / "state")),
            **scale.batch_resources(out_dir),
        },
    )


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
