"""``personc ui``: start ``dagster dev`` with a project-local Dagster home.

Without ``DAGSTER_HOME`` Dagster keeps run history in a temporary folder and
downstream runs lose their inputs, so this command sets it to
``.dagster_home`` (telemetry off) unless the user has set one: the home that
``personc demo`` and the privacy modes record their runs in (``instance.py``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

from ..instance import WORKSPACE_FILE, ensure_dagster_home


def register(subparsers) -> None:
    p = subparsers.add_parser("ui", help="open the Dagster web UI on this project (dagster dev)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    root = Path.cwd()
    if not (root / WORKSPACE_FILE).is_file():
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
