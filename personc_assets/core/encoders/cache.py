"""On-disk cache of face embeddings, keyed by content hash and encoder version.

Layout: ``root/<encoder version>/<key[:2]>/<key>.npy``, one ``float32 [dim]``
vector per file. A new encoder version (other weights, other engine) starts
an empty folder, so stale vectors are never served. Files are written to a
temporary name and moved into place with ``os.replace`` (readers never see a
half-written vector) and read with ``allow_pickle=False``. A damaged entry
counts as a miss and is rewritten by the next ``put_many``.
"""

from __future__ import annotations

import io
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from ..types import FaceObservation
from .base import Encoder

log = logging.getLogger(__name__)

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{3,127}$")


def _check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not _SAFE.match(value) or ".." in value:
        raise ValueError(f"{what} {value!r} is not usable as a file name: use 4-128 characters "
                         "from A-Z a-z 0-9 . _ - (a sha256 hex digest is ideal)")
    return value


class EmbeddingCache:
    """Embeddings of one encoder version under ``root`` (created on first write)."""

    def __init__(self,
                 root: Path,             # cache folder shared by all encoder versions
                 encoder_version: str,   # ``Encoder.version``: weights hash (+ engine)
                 dim: int,               # embedding length, checked on every read and write
                 ) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.folder = Path(root) / _check_name(encoder_version, "encoder version")
        self.version = encoder_version
        self.dim = dim
        self.hits = 0
        self.misses = 0

    @classmethod
    def for_encoder(cls, root: Path, encoder: Encoder) -> "EmbeddingCache":
        return cls(root, encoder.version, encoder.dim)

    def _path(self, key: str) -> Path:
        _check_name(key, "cache key")
        return self.folder / key[:2] / f"{key}.npy"

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors ``float32 [dim]`` of those ``keys`` that are present."""
        found: dict[str, np.ndarray] = {}
        for key in keys:
            path = self._path(key)
            try:
                vector = np.load(path, allow_pickle=False)
            except FileNotFoundError:
                self.misses += 1
                continue
            except (OSError, ValueError, EOFError) as exc:
                log.warning("embedding cache: unreadable entry %s (%s); treating as a miss", path, exc)
                self.misses += 1
                continue
            if vector.shape != (self.dim,) or vector.dtype != np.float32 or not np.all(np.isfinite(vector)):
                log.warning("embedding cache: entry %s has %s %s, expected float32 [%d]; "
                            "treating as a miss", path, vector.dtype, vector.shape, self.dim)
                self.misses += 1
                continue
            found[key] = vector
            self.hits += 1
        return found

    def put_many(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Store ``vectors`` ``[N, dim]`` under ``keys`` (N of them), atomically per entry."""
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape != (len(keys), self.dim):
            raise ValueError(f"vectors must be [{len(keys)}, {self.dim}] for {len(keys)} keys, "
                             f"got {vectors.shape}")
        if not np.all(np.isfinite(vectors)):
            raise ValueError("refusing to cache non-finite embeddings")
        for key, vector in zip(keys, vectors.astype(np.float32, copy=False)):
            path = self._path(key)
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(vector), allow_pickle=False)
            _atomic_write(path, buffer.getvalue())

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("*/*.npy")) if self.folder.is_dir() else 0


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def embed_cached(encoder: Encoder, cache: EmbeddingCache | None, keys: Sequence[str],
                 faces: Sequence[FaceObservation]) -> np.ndarray:
    """``[N, dim]`` embeddings of ``faces``, computing only those not cached under ``keys``.

    The misses go through ``encoder.embed`` in one batch and are stored. With
    ``cache=None`` this is ``encoder.embed(faces)``.
    """
    if len(keys) != len(faces):
        raise ValueError(f"{len(keys)} keys for {len(faces)} faces")
    if cache is None:
        return encoder.embed(faces)
    if cache.version != encoder.version or cache.dim != encoder.dim:
        raise ValueError(f"cache holds {cache.version} [{cache.dim}] but the encoder is "
                         f"{encoder.version} [{encoder.dim}]; use EmbeddingCache.for_encoder")
    out = np.zeros((len(faces), encoder.dim), np.float32)
    cached = cache.get_many(keys)
    todo = [i for i, key in enumerate(keys) if key not in cached]
    for i, key in enumerate(keys):
        if key in cached:
            out[i] = cached[key]
    if todo:
        fresh = np.asarray(encoder.embed([faces[i] for i in todo]), np.float32)
        if fresh.shape != (len(todo), encoder.dim):
            raise ValueError(f"encoder returned {fresh.shape}, expected {(len(todo), encoder.dim)}")
        out[todo] = fresh
        first = {key: i for i, key in reversed(list(enumerate(keys)))}  # one write per key
        new_keys = [keys[i] for i in todo if first[keys[i]] == i]
        cache.put_many(new_keys, out[[first[k] for k in new_keys]])
    return out
