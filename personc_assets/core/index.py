"""Exact maximum-similarity search over source embeddings with FAISS.

Embeddings are L2-normalised, so inner product = cosine. The index keeps its
id map (source content hashes) and a manifest next to it; a loaded index is
checked against the manifest and refuses to be used with another encoder
version or source set (a stale index is an error, never a silent pass).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic import atomic_write_bytes, atomic_write_text


class IndexUnavailableError(RuntimeError):
    """The index is missing, corrupt or stale (fail-closed callers reject)."""


def source_set_hash(ids: Sequence[str]) -> str:
    """Order-independent hash of a set of source content hashes."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


@dataclass(frozen=True)
class IndexManifest:
    encoder: str
    encoder_version: str
    source_set_hash: str
    count: int
    dim: int
    kind: str = "flat_ip"


class EmbeddingIndex:
    """FAISS exact inner-product index ``[N, D]`` with string ids."""

    def __init__(self, manifest: IndexManifest, ids: list[str], index) -> None:
        self.manifest = manifest
        self.ids = ids
        self._index = index

    @classmethod
    def build(cls, encoder: str, encoder_version: str, ids: Sequence[str],
              vectors: np.ndarray) -> "EmbeddingIndex":
        import faiss

        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[0] != len(ids):
            raise ValueError(f"vectors must be [N, D] with N = len(ids) = {len(ids)}, got {vecs.shape}")
        if not np.all(np.isfinite(vecs)):
            raise ValueError("vectors contain NaN or inf")
        if len(set(ids)) != len(ids):
            raise ValueError("ids must be unique")
        index = faiss.IndexFlatIP(vecs.shape[1])
        index.add(vecs)
        manifest = IndexManifest(encoder, encoder_version, source_set_hash(ids), len(ids), vecs.shape[1])
        return cls(manifest, list(ids), index)

    def search_max(self, queries: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
        """Max cosine ``[Q]`` of each query ``[Q, D]`` and the id of its nearest source."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.manifest.dim:
            raise ValueError(f"queries must be [Q, {self.manifest.dim}], got {q.shape}")
        if self.manifest.count == 0:
            return np.full(len(q), -1.0, np.float32), [None] * len(q)
        sims, idx = self._index.search(q, 1)
        return sims[:, 0].copy(), [self.ids[i] if i >= 0 else None for i in idx[:, 0]]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k similarities ``[Q, k]`` and positions ``[Q, k]`` (exact)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        return self._index.search(q, min(k, self.manifest.count))

    def save(self, path: Path) -> None:
        """Write ``path`` (FAISS), ``path.ids.json`` and ``path.manifest.json`` atomically."""
        import faiss

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, faiss.serialize_index(self._index).tobytes())
        atomic_write_text(path.with_suffix(path.suffix + ".ids.json"), json.dumps(self.ids))
        atomic_write_text(path.with_suffix(path.suffix + ".manifest.json"),
                          json.dumps(asdict(self.manifest), indent=2))

    @classmethod
    def load(cls, path: Path, expect: IndexManifest | None = None) -> "EmbeddingIndex":
        """Load an index; raise ``IndexUnavailableError`` if missing, corrupt or not ``expect``."""
        import faiss

        path = Path(path)
        try:
            manifest = IndexManifest(**json.loads(path.with_suffix(path.suffix + ".manifest.json").read_text()))
            ids = json.loads(path.with_suffix(path.suffix + ".ids.json").read_text())
            index = faiss.deserialize_index(np.frombuffer(path.read_bytes(), dtype=np.uint8))
        except FileNotFoundError as exc:
            raise IndexUnavailableError(f"index file missing: {exc.filename}; re-materialize embedding_indexes") from None
        except Exception as exc:  # corrupt files of any kind
            raise IndexUnavailableError(f"index at {path} cannot be read: {exc}") from None
        if index.ntotal != manifest.count or len(ids) != manifest.count or index.d != manifest.dim:
            raise IndexUnavailableError(f"index at {path} does not match its manifest "
                              f"({index.ntotal} vectors, manifest says {manifest.count})")
        if expect is not None and (manifest.encoder_version, manifest.source_set_hash) != (
                expect.encoder_version, expect.source_set_hash):
            raise IndexUnavailableError(f"index at {path} is stale: built for {manifest.encoder_version} over "
                              f"source set {manifest.source_set_hash[:12]}, expected "
                              f"{expect.encoder_version} over {expect.source_set_hash[:12]}")
        return cls(manifest, ids, index)
