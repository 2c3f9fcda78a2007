"""Exact FAISS search: the guard's max similarity must equal brute force exactly."""

import json

import numpy as np
import pytest

from personc_assets.core.encoders.base import l2_normalise
from personc_assets.core.index import EmbeddingIndex, IndexManifest, IndexUnavailableError, source_set_hash


def _vectors(n, d, seed=0):
    return l2_normalise(np.random.default_rng(seed).normal(size=(n, d)))


def test_search_max_equals_brute_force():
    # why: a search that misses the nearest source would let a leak through
    src, q = _vectors(500, 64, 0), _vectors(50, 64, 1)
    ids = [f"s{i}" for i in range(500)]
    index = EmbeddingIndex.build("enc", "v1", ids, src)
    sims, nearest = index.search_max(q)
    brute = q @ src.T
    np.testing.assert_allclose(sims, brute.max(axis=1), atol=1e-5)
    assert nearest == [ids[i] for i in brute.argmax(axis=1)]


def test_save_load_round_trip_and_staleness(tmp_path):
    # why: a reloaded index must be the same one, and an index built for other sources must be refused
    src = _vectors(20, 16)
    ids = [f"s{i}" for i in range(20)]
    index = EmbeddingIndex.build("enc", "v1", ids, src)
    path = tmp_path / "i.faiss"
    index.save(path)
    loaded = EmbeddingIndex.load(path, IndexManifest("enc", "v1", source_set_hash(ids), 20, 16))
    np.testing.assert_allclose(loaded.search_max(src)[0], 1.0, atol=1e-5)
    with pytest.raises(IndexUnavailableError, match="stale"):
        EmbeddingIndex.load(path, IndexManifest("enc", "v1", source_set_hash(ids[:-1]), 19, 16))
    with pytest.raises(IndexUnavailableError, match="stale"):
        EmbeddingIndex.load(path, IndexManifest("enc", "v2", source_set_hash(ids), 20, 16))


def test_missing_or_corrupt_index_is_an_error(tmp_path):
    # why: the guard treats these errors as rejections; they must not look like an empty index
    with pytest.raises(IndexUnavailableError, match="missing"):
        EmbeddingIndex.load(tmp_path / "nothing.faiss")
    index = EmbeddingIndex.build("enc", "v1", ["a", "b"], _vectors(2, 8))
    path = tmp_path / "i.faiss"
    index.save(path)
    path.write_bytes(b"garbage")
    with pytest.raises(IndexUnavailableError, match="cannot be read"):
        EmbeddingIndex.load(path)
    index.save(path)
    manifest = json.loads((tmp_path / "i.faiss.manifest.json").read_text())
    manifest["count"] = 3
    (tmp_path / "i.faiss.manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexUnavailableError, match="does not match"):
        EmbeddingIndex.load(path)


def test_build_rejects_bad_vectors():
    # why: NaN sources would make every similarity NaN and comparisons silently false
    with pytest.raises(ValueError, match="NaN"):
        EmbeddingIndex.build("enc", "v1", ["a"], np.array([[np.nan, 0.0]], np.float32))
    with pytest.raises(ValueError, match="unique"):
        EmbeddingIndex.build("enc", "v1", ["a", "a"], _vectors(2, 4))
