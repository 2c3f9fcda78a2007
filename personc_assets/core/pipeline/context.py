"""The fitted backbone and the sources it was fitted on, loaded once for every step that renders.

Generation, the guard's retries, the ICS reports and the privacy modes all
work on the same things: the fitted backbone, each donor's factors and the
population mean, the donor faces, who is who (photos grouped into persons by
embedding) and the donor descriptions the recipe sampler deals from.
``load_context`` reads them from the asset values; ``ContextCache`` keeps the
last ones by ``context_key`` (the backbone state hash and the values they
were read from), so the steps of one in-process run load them once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping

import numpy as np

from ..backbones.base import Backbone
from ..faces.occluders import occluders
from ..lineage.store import LineageStore
from ..recipes import DonorInfo, describe_donors
from ..types import Factors, SourceFace
from ..versioning import config_hash
from .indexing import EmbeddingIndexes, persons_by_embedding, source_embeddings
from .modeling import BackboneRef, FactorDecompositions
from .sources import SourceSet


@dataclass(frozen=True)
class LoadedContext:
    """What the rendering steps share, loaded from the ``source_images``, ``factor_decompositions``
    and ``embedding_indexes`` values. Read-only: steps copy before they change anything."""

    ref: BackboneRef
    backbone: Backbone                                          # fitted, in the main pipeline's frame
    faces: tuple[SourceFace, ...] = field(repr=False)           # donors, in ``SourceSet`` order
    factors: Mapping[str, Factors] = field(repr=False)          # content hash -> factors
    mean: Factors = field(repr=False)                           # the population mean's factors
    embeddings: Mapping[str, np.ndarray] = field(repr=False)    # content hash -> person encoder's [D] vector
    persons: Mapping[str, str] = field(repr=False)              # content hash -> person key
    classes: Mapping[str, str] = field(repr=False)              # content hash -> gender class ({}: no labeller)

    @property
    def state_hash(self) -> str:
        return self.ref.state_hash

    @cached_property
    def donors(self) -> tuple[DonorInfo, ...]:
        """Each donor described for the recipe sampler (persons, appearance clusters, occluders)."""
        return tuple(describe_donors(self.faces, self.factors, labels=self.persons, embeddings=self.embeddings,
                                     classes=dict(self.classes) or None,
                                     covered={f.content_hash: occluders(f.aligned, f.landmarks) for f in self.faces},
                                     appearance_factors=self.backbone.factor_roles.appearance))


def load_context(store: LineageStore, sources: SourceSet, decompositions: FactorDecompositions,
                 indexes: EmbeddingIndexes) -> LoadedContext:
    """Load the fitted backbone, factors, faces and persons (embeddings from the lineage's cache)."""
    embeddings = source_embeddings(store, sources, indexes)
    return LoadedContext(
        ref=decompositions.backbone, backbone=decompositions.backbone.load(), faces=tuple(sources.load_faces()),
        factors=decompositions.load_factors(), mean=decompositions.load_mean(), embeddings=embeddings,
        persons=persons_by_embedding(embeddings, indexes.person_index().tau),
        classes=dict(indexes.source_classes))


def context_key(sources: SourceSet, decompositions: FactorDecompositions, indexes: EmbeddingIndexes) -> str:
    """The backbone state hash and a hash of everything else ``load_context`` reads."""
    person = indexes.person_index()
    return decompositions.backbone.state_hash + ":" + config_hash({
        "sources": sources.as_dict(), "factors": decompositions.as_dict(),
        "person_encoder": [person.encoder_version, person.tau], "classes": dict(indexes.source_classes)})


class ContextCache:
    """The last ``maxsize`` loaded contexts by ``context_key`` (thread-safe; one load per key)."""

    def __init__(self, maxsize: int = 1) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self.loads = 0  # contexts loaded so far (a test counts them)
        self._items: OrderedDict[str, LoadedContext] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, store: LineageStore, sources: SourceSet, decompositions: FactorDecompositions,
            indexes: EmbeddingIndexes) -> LoadedContext:
        key = context_key(sources, decompositions, indexes)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            loaded = load_context(store, sources, decompositions, indexes)
            self.loads += 1
            self._items[key] = loaded
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
            return loaded

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


#: The process's contexts: what ``shared_context`` and ``CandidateFactory`` read through.
SHARED_CONTEXTS = ContextCache()


def shared_context(store: LineageStore, sources: SourceSet, decompositions: FactorDecompositions,
                   indexes: EmbeddingIndexes) -> LoadedContext:
    """``load_context`` through the process's cache: loaded once per backbone state and sources."""
    return SHARED_CONTEXTS.get(store, sources, decompositions, indexes)
