"""Shared fixtures: the labelled test photos in ../shared/faces and small helpers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_FACES = ROOT.parent / "shared" / "faces"


@pytest.fixture(scope="session", autouse=True)
def test_dagster_home(tmp_path_factory) -> Iterator[Path]:
    """A temporary DAGSTER_HOME for the whole session (subprocesses inherit it): runs through the
    runner are recorded there, never in the checkout's .dagster_home or the user's own home."""
    home = tmp_path_factory.mktemp("dagster_home") / "home"  # created by the first run, as a project's is
    before = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    yield home
    if before is None:
        os.environ.pop("DAGSTER_HOME", None)
    else:
        os.environ["DAGSTER_HOME"] = before


@pytest.fixture(scope="session")
def shared_faces() -> Path:
    """../shared/faces, or skip: those photos are not part of the product or a fresh clone."""
    if not SHARED_FACES.is_dir():
        pytest.skip(f"labelled test photos not found at {SHARED_FACES} (CI provides ../shared/faces)")
    return SHARED_FACES
