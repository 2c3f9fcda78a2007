"""The Dagster home that command-line runs are recorded in, and that ``personc ui`` opens.

``DAGSTER_HOME`` when set; otherwise the project's own ``.dagster_home`` (the
folder with ``workspace.yaml``: the working directory or one above it, else the
checkout the package is installed from), created with telemetry off. So the
runs of ``personc demo`` and of the privacy modes, their materializations and
their asset metadata, show in ``personc ui``. Outside any project the runs use
a temporary instance.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from dagster import DagsterInstance

log = logging.getLogger(__name__)

DAGSTER_YAML = """\
# Written by PersonC (`personc ui`, `personc demo`): a project-local Dagster home.
telemetry:
  enabled: false
# Steps that run the generator (pool "gpu") never share one GPU: at most one at a time.
concurrency:
  pools:
    default_limit: 1
"""
#: The file that marks a PersonC project folder (``dagster dev -w workspace.yaml``).
WORKSPACE_FILE = "workspace.yaml"
#: Tags of a command-line run: the process that runs it (see ``release_abandoned_runs``).
PID_TAG, HOST_TAG = "personc/pid", "personc/host"


def ensure_dagster_home(root: Path) -> Path:
    """Create ``root/.dagster_home`` with telemetry off (idempotent) and return it."""
    return _ensure_home(root / ".dagster_home")


def _ensure_home(home: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    return home


def project_root(start: Path | None = None) -> Path | None:
    """The PersonC project folder: ``start`` (default the working directory) or the nearest folder
    above it holding ``workspace.yaml``, else the checkout this package runs from; None outside both."""
    start = (start or Path.cwd()).resolve()
    checkout = Path(__file__).resolve().parents[1]
    for folder in (start, *start.parents, checkout):
        if (folder / WORKSPACE_FILE).is_file():
            return folder
    return None


def dagster_home(start: Path | None = None) -> Path | None:
    """``DAGSTER_HOME`` (created, like a project's, when missing), else the project's ``.dagster_home``;
    None outside a project."""
    if os.environ.get("DAGSTER_HOME"):
        home = Path(os.environ["DAGSTER_HOME"]).expanduser()
        return home if home.is_dir() else _ensure_home(home)  # a home of the user's own is left as it is
    root = project_root(start)
    return ensure_dagster_home(root) if root is not None else None


@contextlib.contextmanager
def open_instance(home: Path | None = None) -> Iterator["DagsterInstance"]:
    """The instance at ``home`` (default ``dagster_home()``): temporary when there is none."""
    from dagster import DagsterInstance

    home = home or dagster_home()
    if home is None:
        log.info("no PersonC project here and DAGSTER_HOME unset: this run is not kept in a Dagster instance")
        with DagsterInstance.ephemeral() as instance:
            yield instance
        return
    with DagsterInstance.from_config(str(home)) as instance:
        release_abandoned_runs(instance)
        yield instance


def run_tags() -> dict[str, str]:
    """Tags naming this process, so a later run can tell that it died."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def release_abandoned_runs(instance: "DagsterInstance") -> list[str]:
    """Mark command-line runs whose process on this host is gone (killed) as failed and free the
    GPU pool slots they held, which would otherwise stop every later run. Returns their run ids."""
    from dagster import DagsterRunStatus, RunsFilter

    host = socket.gethostname()
    runs = instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING],
                                                tags={HOST_TAG: host}))
    gone = [r for r in runs if r.tags.get(PID_TAG, "").isdigit() and not _alive(int(r.tags[PID_TAG]))]
    for run in gone:
        instance.report_run_failed(run, f"process {run.tags[PID_TAG]} ended without finishing the run")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        log.warning("run %s was abandoned by its process; marked failed and its pool slots freed", run.run_id)
    return [r.run_id for r in gone]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
