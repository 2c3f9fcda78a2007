"""Every file under a source or candidate folder is listed: hidden files, links, loops, pipes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from personc_assets.core.faces.ingest import ingest_folders
from personc_assets.core.faces.walk import WALK_CODES, list_files


def tiny_png(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32, 3), shade, np.uint8)).save(path)


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """A folder with every kind of entry a user's folder can hold, and a folder outside it."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    tiny_png(root / "a.png", 10)
    tiny_png(root / ".hidden.png", 20)
    tiny_png(root / ".thumbs" / "b.png", 30)
    tiny_png(root / "sub" / "c.png", 40)
    tiny_png(outside / "x.png", 50)
    (root / "link_inside.png").symlink_to(root / "sub" / "c.png")
    (root / "linked_sub").symlink_to(root / "sub")
    (root / "sub" / "loop").symlink_to(root)
    (root / "link_outside.png").symlink_to(outside / "x.png")
    (root / "linked_outside").symlink_to(outside)
    (root / "broken.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(root / "pipe")
    return root


EXPECTED = {
    ".hidden.png": None, "a.png": None, "link_inside.png": None,
    "broken.png": "broken_symlink", "link_outside.png": "outside_source_dir", "linked_outside": "outside_source_dir",
    "pipe": "not_a_file",
    ".thumbs/b.png": None, "linked_sub/c.png": None, "linked_sub/loop": "symlink_loop",
    "sub/c.png": None, "sub/loop": "symlink_loop",
}


def test_every_entry_is_listed_to_be_read_or_with_its_reason(tree):
    # why: a file dropped by the walk is neither checked nor reported — the audit called such folders clear
    listed = {str(f.path.relative_to(tree)): f.problem for f in list_files(tree)}
    assert {k: (p[0] if p else None) for k, p in listed.items()} == EXPECTED
    assert all(code in WALK_CODES for code in (p[0] for p in listed.values() if p))
    assert str(tree.parent / "outside") in listed["linked_outside"][1], "the reason names where the link leads"


def test_ingest_gives_every_file_an_outcome(tree):
    # why: the README promises every source file ends accepted, duplicate or quarantined with a reason
    result = ingest_folders({"A": tree}, workers=1)
    seen = {str(Path(q.path).relative_to(tree)): q.code for q in result.quarantined}
    seen |= {str(Path(d.path).relative_to(tree)): "duplicate" for d in result.duplicates}
    seen |= {str(Path(f.path).relative_to(tree)): "ok" for f in result.faces}
    assert set(seen) == set(EXPECTED)
    for name, code in EXPECTED.items():  # the walk's reason, else what reading the file found
        assert seen[name] == (code or "no_face"), name
