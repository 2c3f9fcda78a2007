"""The embedding cache: unchanged sources are never embedded twice, stale vectors never served."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from personc_assets.core.encoders import cache as cache_mod
from personc_assets.core.encoders.cache import EmbeddingCache, embed_cached
from personc_assets.core.types import FaceObservation

KEYS = [f"{i:064x}" for i in range(1, 5)]


class CountingEncoder:
    """Stand-in encoder: a fixed vector per face, counting how many faces it embedded."""

    name = "fake"
    dim = 8
    default_tau = 0.5
    tau_rationale = "test"

    def __init__(self, version: str = "fake-v1") -> None:
        self.version = version
        self.embedded = 0

    def embed(self, faces):
        self.embedded += len(faces)
        return np.stack([np.full(self.dim, f.detector_score, np.float32) for f in faces])


def _faces(n: int) -> list[FaceObservation]:
    image = np.zeros((4, 4, 3), np.uint8)
    return [FaceObservation(image, np.zeros((68, 2), np.float32), (0, 0, 1, 1), float(i)) for i in range(n)]


def test_roundtrip_and_misses(tmp_path):
    # why: the basic contract — what was put comes back bit-identical, the rest is absent
    cache = EmbeddingCache(tmp_path, "dlib-abc-torch", 8)
    vectors = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)
    cache.put_many(KEYS[:2], vectors)
    got = cache.get_many(KEYS)
    assert set(got) == set(KEYS[:2])
    np.testing.assert_array_equal(got[KEYS[1]], vectors[1])
    assert (cache.hits, cache.misses) == (2, 2)
    assert len(EmbeddingCache(tmp_path, "dlib-abc-torch", 8)) == 2  # a later run sees them


def test_encoder_versions_are_isolated(tmp_path):
    # why: new weights or another engine must not be served the old vectors
    EmbeddingCache(tmp_path, "dlib-abc-torch", 8).put_many(KEYS[:1], np.ones((1, 8)))
    assert EmbeddingCache(tmp_path, "dlib-abc-dlib", 8).get_many(KEYS[:1]) == {}


def test_unsafe_keys_and_versions_are_rejected(tmp_path):
    # why: keys become file names; a crafted key must not escape the cache folder
    cache = EmbeddingCache(tmp_path, "v1-test", 8)
    with pytest.raises(ValueError, match="not usable as a file name"):
        cache.get_many(["../../etc/passwd"])
    with pytest.raises(ValueError, match="encoder version"):
        EmbeddingCache(tmp_path, "a/b", 8)


def test_bad_vectors_are_refused(tmp_path):
    # why: a wrong-shaped or NaN vector in the cache would poison every later guard check
    cache = EmbeddingCache(tmp_path, "v1-test", 8)
    with pytest.raises(ValueError, match=r"\[2, 8\]"):
        cache.put_many(KEYS[:2], np.zeros((2, 7)))
    with pytest.raises(ValueError, match="non-finite"):
        cache.put_many(KEYS[:1], np.full((1, 8), np.nan))


def test_damaged_entries_are_misses_and_never_unpickled(tmp_path, caplog):
    # why: a truncated file or a pickle planted in the folder must not load (or run code)
    cache = EmbeddingCache(tmp_path, "v1-test", 8)
    cache.put_many(KEYS[:3], np.ones((3, 8)))
    cache._path(KEYS[0]).write_bytes(cache._path(KEYS[0]).read_bytes()[:20])
    np.save(cache._path(KEYS[1]), np.array([object()], dtype=object), allow_pickle=True)
    np.save(cache._path(KEYS[2]), np.ones(8, np.float64))
    with caplog.at_level(logging.WARNING):
        assert cache.get_many(KEYS[:3]) == {}
    assert caplog.text.count("treating as a miss") == 3


def test_writes_are_atomic(tmp_path, monkeypatch):
    # why: a crash mid-write must leave no half-written vector and no stray temp file
    cache = EmbeddingCache(tmp_path, "v1-test", 8)

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(cache_mod.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        cache.put_many(KEYS[:1], np.ones((1, 8)))
    monkeypatch.setattr(cache_mod.os, "replace", os.replace)
    assert list(cache.folder.rglob("*")) == [cache._path(KEYS[0]).parent]


def test_embed_cached_embeds_only_misses(tmp_path):
    # why: the point of the cache — a second run over unchanged sources embeds nothing
    encoder = CountingEncoder()
    faces = _faces(4)
    cache = EmbeddingCache.for_encoder(tmp_path, encoder)
    first = embed_cached(encoder, cache, KEYS[:2], faces[:2])
    assert encoder.embedded == 2
    again = embed_cached(encoder, EmbeddingCache.for_encoder(tmp_path, encoder), KEYS, faces)
    assert encoder.embedded == 4  # only the two new faces
    np.testing.assert_array_equal(again[:2], first)
    np.testing.assert_array_equal(again[:, 0], [0, 1, 2, 3])
    other = CountingEncoder("fake-v2")
    with pytest.raises(ValueError, match="use EmbeddingCache.for_encoder"):
        embed_cached(other, cache, KEYS, faces)
