"""The guard on real photos (../shared/faces): what must be rejected is rejected."""

from pathlib import Path

import numpy as np
import pytest

from personc_assets.core.backbones import BACKBONES
from personc_assets.core.encoders import ENCODERS
from personc_assets.core.faces.detect import face_from_landmarks
from personc_assets.core.faces.ingest import ingest_file
from personc_assets.core.guard import PASS, REJECT, Guard, GuardMember
from personc_assets.core.index import EmbeddingIndex

PEOPLE = ["id01", "id02", "id03", "id04", "id05", "id06", "id07"]


@pytest.fixture(scope="module")
def world(shared_faces):
    photos = {p: sorted((shared_faces / p).glob(f"{p}_0*.jpg")) for p in PEOPLE}
    sources = [ingest_file(photos[p][0], "A" if i < 4 else "B", p) for i, p in enumerate(PEOPLE)]
    encoder = ENCODERS.create("dlib")
    vectors = encoder.embed([face_from_landmarks(f.aligned, f.landmarks) for f in sources])
    index = EmbeddingIndex.build("dlib", encoder.version, [f.content_hash for f in sources], vectors)
    guard = Guard([GuardMember(encoder, index, encoder.default_tau)])
    return {"photos": photos, "sources": sources, "guard": guard, "shared": shared_faces}


def test_second_photo_of_a_source_person_is_rejected(world):
    # why: a new photo of someone in A or B is that person, whatever the pixels
    others = [ingest_file(world["photos"][p][1], "A", p) for p in ("id01", "id02", "id05")]
    verdicts = world["guard"].check([(f.label, f.aligned) for f in others])
    by_hash = {f.content_hash: f.label for f in world["sources"]}
    for face, v in zip(others, verdicts):
        assert v.verdict == REJECT, f"{face.label}: {v.reason}"
        assert by_hash[v.per_encoder[0].nearest_source] == face.label


def test_mirrored_photo_is_rejected(world):
    # why: mirroring is the cheapest disguise and keeps identity (cosine ~0.99)
    mirrored = ingest_file(world["shared"] / "id01" / "id01_mirrored.jpg", "A", "id01")
    v = world["guard"].check([("mirror", mirrored.aligned)])[0]
    assert v.verdict == REJECT


def test_recomposition_from_one_person_is_rejected(world):
    # why: mixing factors that all come from one donor must give that donor back, and the guard must see it
    backbone = BACKBONES.create("morphable")
    backbone.fit(world["sources"])
    donor = world["sources"][2]
    factors = backbone.decompose(backbone.project([donor])[0].latent)
    image = backbone.synthesize([backbone.compose(factors)])[0]
    v = world["guard"].check([("self-mix", image)])[0]
    assert v.verdict == REJECT
    assert v.per_encoder[0].nearest_source == donor.content_hash


def test_a_stranger_passes(world):
    # why: the guard must not reject everything — a person absent from the sources passes
    sources = [f for f in world["sources"] if f.label != "id04"]
    guard = world["guard"]
    encoder = guard.members[0].encoder
    vectors = encoder.embed([face_from_landmarks(f.aligned, f.landmarks) for f in sources])
    index = EmbeddingIndex.build("dlib", encoder.version, [f.content_hash for f in sources], vectors)
    stranger = ingest_file(world["photos"]["id04"][1], "A", "id04")
    v = Guard([GuardMember(encoder, index, encoder.default_tau)]).check([("stranger", stranger.aligned)])[0]
    assert v.verdict == PASS, v.reason
