"""Shared fixtures: the labelled test photos in ../shared/faces and small helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_FACES = ROOT.parent / "shared" / "faces"


@pytest.fixture(scope="session")
def shared_faces() -> Path:
    """../shared/faces, or skip: those photos are not part of the product or a fresh clone."""
    if not SHARED_FACES.is_dir():
        pytest.skip(f"labelled test photos not found at {SHARED_FACES} (CI provides ../shared/faces)")
    return SHARED_FACES
