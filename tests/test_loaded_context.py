"""The loaded context (fitted backbone, factors, persons, donors) that the rendering steps of a run share."""

from __future__ import annotations

from dataclasses import replace

import pytest

from personc_assets.core.ensemble import TauChoice
from personc_assets.core.pipeline import context
from personc_assets.core.pipeline.context import ContextCache
from personc_assets.core.pipeline.indexing import EmbeddingIndexes, EncoderIndex
from personc_assets.core.pipeline.modeling import BackboneRef, FactorDecompositions
from personc_assets.core.pipeline.sources import SourceEntry, SourceSet

ENTRY = SourceEntry("h1", "A", "ann", "/src/A/ann.jpg", "/out/aligned/h1.npz", "A-ann-1")
SOURCES = SourceSet("f" * 64, (ENTRY,), False)
INDEXES = EmbeddingIndexes((EncoderIndex("dlib", "dlib-v1", "/i.faiss", "flat_ip", True, 1, 128,
                                         TauChoice("dlib", 0.9, "default", "default")),), (), "f" * 64)


def decompositions(state: str) -> FactorDecompositions:
    return FactorDecompositions(BackboneRef("morphable", {}, f"/b/{state}.npz", state * 64),
                                {"h1": "/f/h1.npz"}, "/f/mean.npz", ("geometry",))


def test_context_cache_loads_once_per_backbone_state(monkeypatch):
    # why: generation, the guard's retries, the reports and the privacy modes of one run share the fitted
    # backbone and factors; a refit (new state hash) or other sources must load afresh
    loaded = []
    monkeypatch.setattr(context, "load_context", lambda store, s, d, i: loaded.append(d.backbone.state_hash) or d)
    cache = ContextCache(maxsize=1)
    first = cache.get(None, SOURCES, decompositions("a"), INDEXES)
    assert cache.get(None, SOURCES, decompositions("a"), INDEXES) is first and cache.loads == 1
    cache.get(None, SOURCES, decompositions("b"), INDEXES)
    cache.get(None, replace(SOURCES, source_set_hash="e" * 64), decompositions("b"), INDEXES)
    cache.get(None, SOURCES, decompositions("a"), INDEXES)  # evicted by the others (maxsize 1)
    assert loaded == ["a" * 64, "b" * 64, "b" * 64, "a" * 64] and cache.loads == 4
    cache.clear()
    cache.get(None, SOURCES, decompositions("a"), INDEXES)
    assert cache.loads == 5
    with pytest.raises(ValueError, match="maxsize must be >= 1"):
        ContextCache(maxsize=0)
