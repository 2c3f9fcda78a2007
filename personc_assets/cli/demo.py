"""``personc demo``: run the whole asset graph in-process and print the releases."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .run_options import add_deprecated_flag, add_run_options, run_config_from_args

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="generate identity-safe faces end to end",
                              description="Runs the PersonC asset graph in-process: ingest A and B, fit the "
                              "backbone, build the guard's indexes, generate, guard, release and explain. "
                              "Every run setting has a flag here and a field in the Dagster resource "
                              "'personc' (RunConfig).")
    add_run_options(p)
    add_deprecated_flag(p, "--weights", "--backbone-weights", "backbone_weights", type=Path)
    p.add_argument("--db", type=Path, help="DuckDB file (default OUT/personc.duckdb)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..runner import run_pipeline

    try:
        config = run_config_from_args(args)
    except ValueError as exc:
        print(f"personc demo: {exc}", file=sys.stderr)
        return 2
    result = run_pipeline(config, db_path=args.db)
    if args.json:
        print(json.dumps(result.as_dict(), indent=1))
    else:
        print(result.render_table())
    if not result.success:
        print(f"personc demo: {result.message}", file=sys.stderr)
        return 1
    return 0
