"""Red team on real photos (../shared/faces): every disguise of a source must be REJECTED.

With only dlib's weights present, dlib is the ensemble. The per-variant table
is printed (``pytest -s``) and says for each rejection whether similarity
reached tau or the guard failed closed (e.g. no face found at 64 px).
"""

import math

import numpy as np
import pytest

from personc_assets.core.encoders import ENCODERS
from personc_assets.core.faces.detect import face_from_landmarks
from personc_assets.core.faces.ingest import ingest_file
from personc_assets.core.guard import Guard, GuardMember
from personc_assets.core.index import EmbeddingIndex
from personc_assets.core.redteam import (ENSEMBLE, VARIANTS, FaceImage, Target, make_variants, render_markdown,
                                         run_redteam)

PEOPLE = ["id01", "id02", "id03", "id04", "id05", "id06", "id07"]
#: (target, morph partner): the people with the most photos, each with a second photo kept out of the index
TARGETS = [("id01", "id03"), ("id02", "id05"), ("id05", "id02"), ("id03", "id01")]


@pytest.fixture(scope="module")
def report(shared_faces):
    photos = {p: sorted((shared_faces / p).glob(f"{p}_0*.jpg")) for p in PEOPLE}
    sources = {p: ingest_file(photos[p][0], "A", p) for p in PEOPLE}
    encoder = ENCODERS.create("dlib")
    vectors = encoder.embed([face_from_landmarks(f.aligned, f.landmarks) for f in sources.values()])
    index = EmbeddingIndex.build("dlib", encoder.version, [f.content_hash for f in sources.values()], vectors)
    guard = Guard([GuardMember(encoder, index, encoder.default_tau)])
    targets = []
    for person, partner in TARGETS:
        second = ingest_file(photos[person][1], "A", person)
        s, m = sources[person], sources[partner]
        targets.append(Target(s.content_hash, person, FaceImage(s.aligned, s.landmarks), second.aligned,
                              FaceImage(m.aligned, m.landmarks)))
    rep = run_redteam(guard, targets)
    print("\n" + render_markdown(rep))
    return rep


def test_every_variant_of_a_source_is_rejected_by_the_ensemble(report):
    # why: the guard's promise — no disguise of a source person may pass at the default tau
    assert {t.variant for t in report.trials} == set(VARIANTS), "a variant was not generated"
    missed = [(t.variant, t.label, t.verdict.reason) for t in report.missed()]
    assert report.all_rejected, f"variants that passed the guard: {missed}\n{render_markdown(report)}"


def test_every_rejection_says_why(report):
    # why: a rejection by the fail-closed rule (no face left) is not evidence that the encoder saw the person;
    # the table must keep the two apart
    for row in report.ensemble_rows:
        assert row.rejected == row.by_similarity + sum(row.fail_closed.values()), row
    by = {r.variant: r for r in report.ensemble_rows}
    assert by["original"].by_similarity == by["original"].trials  # control: the source itself is recognised
    assert by["second_photo"].by_similarity == by["second_photo"].trials


def test_unknown_variant_is_named():
    # why: a typo in a variant list must not silently shrink the red team
    target = Target("x", "x", FaceImage(np.zeros((8, 8, 3), np.uint8), np.zeros((68, 2), np.float32)))
    with pytest.raises(ValueError, match="unknown red-team variant.*sunglases.*known: original"):
        make_variants(target, ["sunglases"])
    # a target without a second photo or morph partner simply lacks those variants
    assert make_variants(target, ["second_photo", "morph_70_30"]) == {}


class _FixedEncoder:
    """Stand-in encoder: every face embeds to the same unit vector."""

    name, version, dim, default_tau, tau_rationale = "fixed", "fixed-1", 4, 0.5, "test"

    def embed(self, faces):
        return np.tile(np.array([[1.0, 0, 0, 0]], np.float32), (len(faces), 1))


def test_tally_separates_similarity_from_fail_closed():
    # why: the per-variant rates must count fail-closed rejections under their reason, not as recognitions
    from personc_assets.core.types import FaceObservation

    def detector(image):  # images under 100 px have "no face"
        if max(image.shape[:2]) < 100:
            return []
        return [FaceObservation(image, np.zeros((68, 2), np.float32), (0, 0, 10, 10), 1.0)]

    enc = _FixedEncoder()
    index = EmbeddingIndex.build("fixed", enc.version, ["s"], np.array([[1.0, 0, 0, 0]], np.float32))
    guard = Guard([GuardMember(enc, index, 0.5)], detector=detector)
    lm = np.tile(np.array([[60.0, 60.0]], np.float32), (68, 1)) + np.random.default_rng(0).uniform(0, 40, (68, 2))
    target = Target("s", "p", FaceImage(np.full((160, 160, 3), 128, np.uint8), lm.astype(np.float32)))
    rep = run_redteam(guard, [target], ["original", "resize_64"])
    rows = {(r.variant, r.encoder): r for r in rep.rows}
    assert rows[("original", ENSEMBLE)].by_similarity == 1
    assert rows[("resize_64", ENSEMBLE)].fail_closed == {"no face found": 1}
    assert rows[("resize_64", "fixed")].min_similarity is None
    assert math.isclose(rows[("original", "fixed")].min_similarity, 1.0, abs_tol=1e-6)
    assert "1 no face found" in render_markdown(rep)
