"""Every file under a folder, each either to be read or with the reason it is not.

Ingestion (source folders) and the audit (candidate folders) walk their trees
with ``list_files`` so that no file is dropped silently:

* hidden files and folders (``.x.jpg``, ``.thumbnails/``) are listed like any other;
* a symlink (to a file or a folder) that resolves inside the folder is
  followed; a folder link that leads back to a folder enclosing it (a loop)
  is listed once, with the reason, and not followed;
* a symlink that resolves outside the folder, a broken symlink and anything
  that is not a regular file (pipe, socket, device) are listed with a reason
  and not read;
* a sub-folder that cannot be listed is listed itself, with the reason.

Order is stable: within a folder, its files (sorted by name), then its
sub-folders (sorted by name).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

#: Why a listed path is not read, by code (the codes join the quarantine / unverified reasons).
WALK_CODES: dict[str, str] = {
    "outside_source_dir": "a symlink that leads outside the folder being read (not followed)",
    "broken_symlink": "a symlink whose target does not exist",
    "symlink_loop": "a symlinked folder that leads back into a folder enclosing it (not followed)",
    "not_a_file": "not a regular file (a pipe, socket or device)",
    "unreadable_folder": "a sub-folder that cannot be listed (permissions, I/O error)",
}


@dataclass(frozen=True)
class ListedFile:
    """One path under the walked folder: ``problem`` is None when it is to be read."""

    path: Path
    problem: tuple[str, str] | None = None  # (code from WALK_CODES, sentence naming the fix)


def list_files(folder: Path) -> Iterator[ListedFile]:
    """Every file under ``folder`` (recursive, stable order); see the module docstring."""
    folder = Path(folder)
    root = folder.resolve()
    yield from _walk(folder, root, (root,))


def _walk(folder: Path, root: Path, chain: tuple[Path, ...]) -> Iterator[ListedFile]:
    """``chain``: the resolved folders from ``root`` down to ``folder`` (loop protection)."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        yield ListedFile(folder, ("unreadable_folder", f"folder cannot be listed: {exc.strerror or exc}"))
        return
    folders: list[tuple[Path, Path]] = []
    for entry in entries:
        path = Path(entry.path)
        if entry.is_symlink():
            problem, target = _symlink(path, root, chain)
            if problem is not None:
                yield ListedFile(path, problem)
            elif target.is_dir():
                folders.append((path, target))
            else:
                yield ListedFile(path)
        elif entry.is_dir(follow_symlinks=False):
            folders.append((path, path.resolve()))
        elif entry.is_file(follow_symlinks=False):
            yield ListedFile(path)
        else:
            yield ListedFile(path, ("not_a_file", "not a regular file (a pipe, socket or device); nothing to read"))
    for path, target in folders:
        yield from _walk(path, root, (*chain, target))


def _symlink(path: Path, root: Path, chain: tuple[Path, ...]) -> tuple[tuple[str, str] | None, Path]:
    """(problem or None, resolved target) of the symlink ``path``."""
    try:
        target = path.resolve(strict=True)
    except FileNotFoundError:
        return ("broken_symlink", f"symlink to {os.readlink(path)}, which does not exist; "
                                  "fix or remove the link"), path
    except (RuntimeError, OSError) as exc:  # a loop of links resolves to nothing
        return ("symlink_loop", f"symlink cannot be resolved ({exc}); fix or remove the link"), path
    if not target.is_relative_to(root):
        return ("outside_source_dir", f"symlink leads outside the folder (to {target}); not followed — "
                                      "copy the file or folder in, or give its real folder instead"), target
    if target.is_dir() and any(c.is_relative_to(target) for c in chain):
        return ("symlink_loop", f"symlinked folder leads back to {target}, which encloses it (a loop); "
                                "not followed — its files are listed there"), target
    if not (target.is_dir() or target.is_file()):
        return ("not_a_file", f"symlink to {target}, which is not a regular file or folder"), target
    return None, target
