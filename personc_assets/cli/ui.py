"""``personc ui``: start ``dagster dev`` with a project-local Dagster home.

Without ``DAGSTER_HOME`` Dagster keeps run history in a temporary folder and
downstream runs lose their inputs, so this command sets it to
``.dagster_home`` (telemetry off) unless the user has set one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

DAGSTER_YAML = """\
# Written by `personc ui`: a project-local Dagster home.
telemetry:
  enabled: false
# Steps that run the generator (pool "gpu") never share one GPU: at most one at a time.
concurrency:
  pools:
    default_limit: 1
"""


def ensure_dagster_home(root: Path) -> Path:
    """Create ``root/.dagster_home`` with telemetry off (idempotent) and return it."""
    home = root / ".dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    return home


def register(subparsers) -> None:
    p = subparsers.add_parser("ui", help="open the Dagster web UI on this project (dagster dev)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    root = Path.cwd()
    if not (root / "workspace.yaml").is_file():
        print("personc ui: run this from the project folder (the one with workspace.yaml)")
        return 2
    env = dict(os.environ)
    env.setdefault("DAGSTER_HOME", str(ensure_dagster_home(root)))
    dagster = shutil.which("dagster")
    if dagster is None:
        print("personc ui: the 'dagster' command is not installed; pip install -e .")
        return 2
    cmd = [dagster, "dev", "-w", "workspace.yaml", "-h", args.host, "-p", str(args.port)]
    print(f"DAGSTER_HOME={env['DAGSTER_HOME']}\n$ {' '.join(cmd)}")
    return subprocess.call(cmd, env=env)
