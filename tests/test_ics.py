"""Identity Contribution Scores: exact Shapley values over factor coalitions.

Most tests use a tiny synthetic backbone (each factor paints one band of a
64x64 image) and a toy "encoder" (band means), so they run in milliseconds and
do not depend on the real backbone. One test uses the default (embedded
morphable) backbone with dlib on ../shared/faces: it skips only when those
photos are absent, and fails when the default backbone does not import.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from personc_assets.core.explain.coalitions import NeutralFrameImages, SynthesizedImages, coalition_images
from personc_assets.core.explain.ics import (
    CallableSimilarity, EncoderSimilarity, ICSUndefinedError, build_coalition_table,
    build_coalition_table_reference, coalition_factors, coalition_masks, compute_ics,
    identity_contribution_scores, shapley_values, shapley_values_reference,
)
from personc_assets.core.types import FaceObservation
from test_morphable import faces, fitted  # noqa: F401  (drawn faces and their fitted morphable model)

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "faces"

FACTORS = ("geometry", "texture", "eyes", "nose")
DIM = 3  # per-factor vector length


class BandBackbone:
    """Synthetic backbone: factor i paints horizontal band i with its 3-vector as RGB."""

    name = "bands"
    factor_names = FACTORS
    image_size = 64

    def __init__(self) -> None:
        self.synthesized = 0

    def population_mean(self) -> dict[str, np.ndarray]:
        return {f: np.full(DIM, 0.5, np.float32) for f in FACTORS}

    def compose(self, factors):
        return {k: np.asarray(v, np.float32) for k, v in factors.items()}

    def synthesize(self, latents):
        out = []
        for lat in latents:
            img = np.zeros((64, 64, 3), np.uint8)
            for i, f in enumerate(FACTORS):
                img[i * 16:(i + 1) * 16] = np.clip(lat[f] * 255, 0, 255).round().astype(np.uint8)
            bg = lat.get("_background")
            if bg is not None:  # context: a thin left column
                img[:, :2] = np.clip(bg * 255, 0, 255).astype(np.uint8)
            out.append(img)
            self.synthesized += 1
        return out


def band_embedding(images: Sequence[np.ndarray]) -> np.ndarray:
    """Toy encoder ``[N, 12]``: centred band colours, L2-normalised."""
    rows = []
    for img in images:
        v = np.concatenate([img[i * 16:(i + 1) * 16, 2:].reshape(-1, 3).mean(0) / 255 - 0.5
                            for i in range(len(FACTORS))])
        rows.append(v / max(np.linalg.norm(v), 1e-9))
    return np.asarray(rows, np.float32)


def random_factors(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {f: rng.uniform(0.05, 0.95, DIM).astype(np.float32) for f in FACTORS}


def toy_similarity(donors: dict[str, dict[str, np.ndarray]]) -> CallableSimilarity:
    bb = BandBackbone()
    ids = list(donors)
    targets = band_embedding(bb.synthesize([donors[d] for d in ids]))
    return CallableSimilarity(lambda imgs: band_embedding(imgs) @ targets.T, ids, name="toy")


def test_single_factor_face_puts_all_likeness_on_that_factor():
    """The issue's validation: mean everywhere except one factor from donor d → d's likeness is on that factor."""
    rng = np.random.default_rng(0)
    bb = BandBackbone()
    donors = {"A-07": random_factors(rng), "B-03": random_factors(rng)}
    sim = toy_similarity(donors)
    for factor in FACTORS:
        face = dict(bb.population_mean())
        face[factor] = donors["A-07"][factor]
        ics = identity_contribution_scores(bb, face, sim)
        i = FACTORS.index(factor)
        share = ics.share[0, ics.donor_ids.index("A-07")]
        assert share[i] > 0.99, (factor, share)
        assert ics.top_factor("toy", "A-07")[0] == factor
        assert f"% of the likeness to A-07 (toy) comes through {factor} (+" in ics.sentence("toy", "A-07")


def test_every_coalition_rendered_and_scored_once():
    """Cost control: 2**k renders and 2**k similarity rows in total, whatever the number of donors."""
    rng = np.random.default_rng(1)
    bb = BandBackbone()
    donors = {f"D{i}": random_factors(rng) for i in range(5)}
    sim = toy_similarity(donors)
    calls: list[int] = []
    inner = sim._fn
    sim._fn = lambda imgs: (calls.append(len(imgs)), inner(imgs))[1]
    identity_contribution_scores(bb, random_factors(rng), sim, batch_size=5)
    assert bb.synthesized == 2 ** len(FACTORS)
    assert sum(calls) == 2 ** len(FACTORS)


def test_fast_shapley_matches_permutation_reference():
    """The weight-matrix fast path must equal the k!-orders definition (parity of fast and reference path)."""
    rng = np.random.default_rng(2)
    for k in (1, 3, 5):
        v = rng.normal(size=(2 ** k, 2, 3))
        np.testing.assert_allclose(shapley_values(v), shapley_values_reference(v), atol=1e-12)


def test_shapley_axioms_on_rendered_faces():
    """Efficiency (phi sums to v(all) - v(empty)) and |share| summing to 1 hold on real coalition tables."""
    rng = np.random.default_rng(3)
    bb = BandBackbone()
    donors = {"A": random_factors(rng), "B": random_factors(rng)}
    face = {f: 0.5 * donors["A"][f] + 0.5 * donors["B"][f] for f in FACTORS}
    ics = identity_contribution_scores(bb, face, toy_similarity(donors))
    np.testing.assert_allclose(ics.phi.sum(-1), ics.v_full - ics.v_empty, atol=1e-5)
    np.testing.assert_allclose(np.abs(ics.share).sum(-1), 1.0, atol=1e-5)
    assert ics.phi.shape == ics.share.shape == ics.drop.shape == (1, 2, len(FACTORS))


def test_sentence_admits_when_no_factor_adds_likeness():
    """A donor the face resembles less than the mean face does gets no 'N% through X' claim."""
    bb = BandBackbone()
    mean = bb.population_mean()
    donor = {f: np.array([0.5, 0.5, 0.9], np.float32) for f in FACTORS}  # close to the mean
    face = {f: np.array([0.1, 0.9, 0.2], np.float32) for f in FACTORS}   # moved away from it
    ics = identity_contribution_scores(bb, face, toy_similarity({"A": donor}))
    assert ics.v_full[0, 0] < ics.v_empty[0, 0]
    assert ics.sentence("toy", "A").startswith("no factor adds likeness to A (toy)")


def test_drop_score_read_from_same_table():
    """The first-version drop score equals v(all) minus the render with that one factor at the mean."""
    rng = np.random.default_rng(4)
    bb = BandBackbone()
    donors = {"A": random_factors(rng)}
    face = random_factors(rng)
    sim = toy_similarity(donors)
    ics = identity_contribution_scores(bb, face, sim)
    for i, f in enumerate(FACTORS):
        without = dict(face)
        without[f] = bb.population_mean()[f]
        direct = sim(bb.synthesize([face, without])).values["toy"][:, 0]
        assert ics.drop[0, 0, i] == pytest.approx(direct[0] - direct[1], abs=1e-6)


def test_context_entries_are_kept_in_every_coalition():
    """'_' context (hair, background) is never swapped for the mean: it is not an identity factor."""
    bb = BandBackbone()
    face = dict(bb.population_mean())
    face["_background"] = np.array([1.0, 0.0, 0.0], np.float32)
    seen = []
    sim = CallableSimilarity(lambda imgs: (seen.extend(imgs), np.ones((len(imgs), 1)))[1], ["d"])
    build_coalition_table(bb, face, sim)
    assert all((img[:, :2] == [255, 0, 0]).all() for img in seen)


def test_unknown_factor_names_are_refused_with_the_known_ones():
    """A typo in a factor name must not silently score nothing."""
    bb = BandBackbone()
    face = dict(bb.population_mean(), gemoetry=np.zeros(3))
    sim = CallableSimilarity(lambda imgs: np.ones((len(imgs), 1)), ["d"])
    with pytest.raises(ValueError, match="gemoetry.*geometry"):
        identity_contribution_scores(bb, face, sim)
    with pytest.raises(ValueError, match="not factors of backbone"):
        identity_contribution_scores(bb, bb.population_mean(), sim, factor_names=["hair"])


def _no_face_when(rule):
    """A similarity that reports 'no face' for coalitions matching ``rule(image)``."""
    rng = np.random.default_rng(5)
    donors = {"A": random_factors(rng)}
    inner = toy_similarity(donors)

    def fn(imgs):
        out = inner._fn(imgs)
        for i, img in enumerate(imgs):
            if rule(img):
                out[i] = np.nan
        return out

    return donors, CallableSimilarity(fn, ["A"], name="toy")


def test_undetected_coalitions_scored_as_baseline_and_recorded():
    """A coalition without a detectable face counts as v(empty), is listed, and marks the result incomplete."""
    bb = BandBackbone()
    mean = bb.population_mean()
    # "no face" whenever eyes come from the released face but the nose is still the mean
    face = {f: np.array([0.9, 0.1, 0.2], np.float32) for f in FACTORS}
    eyes_px = (face["eyes"] * 255).round().astype(np.uint8)
    mean_px = (mean["nose"] * 255).round().astype(np.uint8)
    donors, sim = _no_face_when(lambda img: (img[40, 10] == eyes_px).all() and (img[56, 10] == mean_px).all())
    table = build_coalition_table(bb, face, sim)
    ics = compute_ics(table, "baseline")
    assert not ics.complete
    assert len(ics.undetected) == 4 and all("eyes" in c and "nose" not in c for c in ics.undetected)
    np.testing.assert_allclose(ics.phi.sum(-1), ics.v_full - ics.v_empty, atol=1e-5)
    with pytest.raises(ICSUndefinedError, match="missing_face='baseline'"):
        compute_ics(table, "error")


def test_mean_face_without_face_is_undefined():
    """If the population-mean face itself is not detected there is no baseline: refuse, say why."""
    bb = BandBackbone()
    mean_px = (bb.population_mean()["geometry"] * 255).round().astype(np.uint8)
    _, sim = _no_face_when(lambda img: (img[8, 10] == mean_px).all() and (img[24, 10] == mean_px).all()
                           and (img[40, 10] == mean_px).all() and (img[56, 10] == mean_px).all())
    rng = np.random.default_rng(6)
    with pytest.raises(ICSUndefinedError, match="empty coalition"):
        identity_contribution_scores(bb, random_factors(rng), sim)
    with pytest.raises(ValueError, match="missing_face must be one of"):
        identity_contribution_scores(bb, random_factors(rng), sim, missing_face="zero")


class CountingEncoder:
    """Fake encoder: embeds the mean colour of the top band; counts embedded faces."""

    name, version, dim, default_tau, tau_rationale = "fake", "fake-1", 3, 0.5, "test"

    def __init__(self) -> None:
        self.embedded = 0

    def embed(self, faces: Sequence[FaceObservation]) -> np.ndarray:
        self.embedded += len(faces)
        v = np.array([f.image[:16].reshape(-1, 3).mean(0) - 100 for f in faces], np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_encoder_similarity_detects_once_and_embeds_once_per_encoder():
    """With several encoders, each coalition image is located once and embedded once per encoder."""
    located: list[int] = []

    def locate(img):
        located.append(1)
        lm = np.zeros((68, 2), np.float32)
        return [FaceObservation(img, lm, (0, 0, 63, 63), 1.0)]

    e1, e2 = CountingEncoder(), CountingEncoder()
    e2.name = "fake2"
    bb = BandBackbone()
    targets = np.eye(3, dtype=np.float32)[:2]
    sim = EncoderSimilarity([e1, e2], {"fake": targets, "fake2": targets}, ["A", "B"], locate=locate)
    rng = np.random.default_rng(7)
    ics = identity_contribution_scores(bb, random_factors(rng), sim)
    n = 2 ** len(FACTORS)
    assert len(located) == n and e1.embedded == n and e2.embedded == n
    assert ics.encoder_names == ("fake", "fake2") and ics.phi.shape == (2, 2, len(FACTORS))
    with pytest.raises(ValueError, match="L2-normalised"):
        EncoderSimilarity([e1], {"fake": 2 * targets}, ["A", "B"], locate=locate)


def test_masks_enumerate_all_coalitions():
    """Bit i of the row index says whether factor i is in the coalition."""
    m = coalition_masks(3)
    assert m.shape == (8, 3) and not m[0].any() and m[7].all() and m[5].tolist() == [True, False, True]


# --------------------------------------------------------------------------- fast path on the morphable backbone


def _mixed(backbone, sources) -> dict[str, np.ndarray]:
    """A face whose factors come from three different faces, as a recipe mixes them."""
    f = [backbone.decompose(p.latent) for p in backbone.project(sources[:3])]
    mixed = dict(f[0])
    for name, src in (("symmetry", 1), ("texture", 2), ("eyes", 1), ("nose", 2), ("mouth", 1)):
        mixed[name] = f[src][name]
    return mixed


def _coalitions(backbone, released) -> list[dict[str, np.ndarray]]:
    mean, players = backbone.population_mean(), backbone.factor_names
    return [coalition_factors(released, mean, players, m) for m in coalition_masks(len(players))]


class PatchEncoder:
    """Fake encoder that sees every pixel of the face: mean colours of 8x8 patches of the image."""

    name, version, dim, default_tau, tau_rationale = "patches", "patches-1", 8 * 8 * 3, 0.5, "test"

    def embed(self, faces: Sequence[FaceObservation]) -> np.ndarray:
        v = np.stack([f.image.reshape(8, 32, 8, 32, 3).mean((1, 3)).reshape(-1) - 128.0 for f in faces])
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _one_face(image: np.ndarray) -> list[FaceObservation]:
    return [FaceObservation(image, np.zeros((68, 2), np.float32), (0, 0, 255, 255), 1.0)]


@pytest.mark.parametrize("threads", [1, 3])
def test_staged_neutral_renders_equal_the_backbone_render_bit_for_bit(fitted, faces, threads):
    # why: coalitions share shapes and appearances; a shared stage that drifted by one rounding step
    # would change the scores (the reference renders every coalition whole)
    from concurrent.futures import ThreadPoolExecutor

    factors = _coalitions(fitted, _mixed(fitted, faces))
    with ThreadPoolExecutor(threads) as pool:
        staged = coalition_images(fitted, factors, pool if threads > 1 else None)
        assert isinstance(staged, NeutralFrameImages) and len(staged) == 64
        images = list(pool.map(staged.image, range(len(staged))))
    reference = fitted.synthesize([fitted.compose(f) for f in factors])
    assert all(np.array_equal(a, b) for a, b in zip(images, reference))


@pytest.mark.parametrize("knobs", [{"periphery_fade": 0.0}, {"closed_mouth": False}, {"closed_mouth": True}])
def test_staged_render_follows_the_knobs_of_the_render(faces, knobs):
    # why: with the rim fade off the staged texture must skip it too; with open mouths the shape
    # depends on the mouth factor as well, and coalitions share fewer shapes
    from personc_assets.core.backbones import BACKBONES

    bb = BACKBONES.create("morphable", **knobs)
    bb.fit(faces)
    factors = _coalitions(bb, _mixed(bb, faces))[::3]
    staged = coalition_images(bb, factors)
    assert isinstance(staged, NeutralFrameImages)
    reference = bb.synthesize([bb.compose(f) for f in factors])
    assert all(np.array_equal(staged.image(i), reference[i]) for i in range(len(factors)))


def test_backbones_without_shared_stages_synthesize_each_coalition(faces):
    # why: the staged render restates the neutral frame only; the context frame (and any other
    # backbone) must render through synthesize
    from personc_assets.core.backbones import BACKBONES

    bb = BACKBONES.create("morphable", frame="context")
    bb.fit(faces)
    factors = _coalitions(bb, _mixed(bb, faces))[:3]
    assert isinstance(coalition_images(bb, factors), SynthesizedImages)
    assert isinstance(coalition_images(BandBackbone(), [BandBackbone().population_mean()]), SynthesizedImages)


@pytest.mark.parametrize("workers", [1, 2])
def test_fast_table_equals_the_reference_table(fitted, faces, workers):
    # why: the fast path (shared stages, threads, one embedding batch) must score exactly what the
    # reference path scores, coalition by coalition
    released = _mixed(fitted, faces)
    donors = [fitted.decompose(p.latent) for p in fitted.project(faces[3:5])]
    enc = PatchEncoder()
    targets = enc.embed([_one_face(im)[0] for im in fitted.synthesize([fitted.compose(d) for d in donors])])
    sim = EncoderSimilarity([enc], {"patches": targets}, ["D1", "D2"], locate=_one_face)
    fast = build_coalition_table(fitted, released, sim, keep_images=True, workers=workers)
    reference = build_coalition_table_reference(fitted, released, sim, keep_images=True)
    assert all(np.array_equal(a, b) for a, b in zip(fast.images, reference.images))
    np.testing.assert_allclose(fast.values, reference.values, rtol=0, atol=1e-6)
    assert np.array_equal(fast.face_counts, reference.face_counts)
    a, b = compute_ics(fast), compute_ics(reference)
    for name in ("phi", "share", "drop", "v_full", "v_empty"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=0, atol=1e-6, err_msg=name)


# --------------------------------------------------------------------------- real backbone


def load_sources(root: Path, per_person: int = 2) -> list:
    """Aligned SourceFaces from ../shared/faces: people id01-id04 → A, id05-id07 → B."""
    from personc_assets.core.faces.align import align_face
    from personc_assets.core.faces.detect import detect_faces
    from personc_assets.core.faces.loading import decode_image
    from personc_assets.core.types import SourceFace

    out = []
    for person in sorted(p for p in root.iterdir() if p.name.startswith("id")):
        taken = 0
        for path in sorted(person.glob("*.jpg")):
            if taken == per_person or "mirrored" in path.name:
                continue
            img = decode_image(path)
            faces = detect_faces(img.pixels)
            if len(faces) != 1:
                continue
            aligned, lm, _ = align_face(img.pixels, faces[0].landmarks)
            group = "A" if person.name <= "id04" else "B"
            out.append(SourceFace(img.content_hash, group, person.name, str(path), aligned, lm))
            taken += 1
    return out


def _default_backbone():
    """A fresh instance of the backbone runs use by default.

    Not a skip condition: when the default backbone does not import, PersonC cannot run, and this
    test must fail saying so.
    """
    from personc_assets.core.backbones import BACKBONES
    from personc_assets.core.pipeline.config import RunConfig

    return BACKBONES.create(RunConfig().backbone)


@pytest.mark.slow
@pytest.mark.shared_faces
@pytest.mark.skipif(not FACES.is_dir(), reason=f"test photos not found at {FACES}")
def test_single_factor_face_on_embedded_backbone_with_dlib(tmp_path):
    """Same validation on the real embedded backbone and dlib: the one donor factor carries the likeness."""
    from personc_assets.core.encoders import ENCODERS

    bb = _default_backbone()
    sources = load_sources(FACES, per_person=2)
    bb.fit(sources)
    donor = sources[0]
    latent = bb.project([donor])[0].latent
    donor_factors = bb.decompose(latent)
    enc = ENCODERS.create("dlib")
    from personc_assets.core.faces.detect import detect_faces
    obs = detect_faces(donor.aligned)[0]
    sim = EncoderSimilarity([enc], {"dlib": enc.embed([obs])}, [donor.source_id])
    mean = bb.population_mean()
    face = {k: (donor_factors[k] if k.startswith("_") else mean[k]) for k in donor_factors}
    face["geometry"] = donor_factors["geometry"]
    t0 = time.perf_counter()
    ics = identity_contribution_scores(bb, face, sim)
    elapsed = time.perf_counter() - t0
    share = dict(zip(ics.factor_names, ics.share[0, 0].tolist()))
    print(f"ICS on the embedded backbone: {elapsed:.1f} s (render {ics.render_seconds:.1f} s, "
          f"detect+embed {ics.similarity_seconds:.1f} s); shares {share}")
    assert share["geometry"] > 0.95


@pytest.mark.slow
@pytest.mark.shared_faces
@pytest.mark.skipif(not FACES.is_dir(), reason=f"test photos not found at {FACES}")
def test_fast_ics_equals_the_reference_on_the_embedded_backbone_with_dlib():
    """The scores a run stores (fast path) equal the reference path's to 1e-6, on real photos and dlib."""
    from personc_assets.core.encoders import ENCODERS
    from personc_assets.core.faces.detect import face_from_landmarks

    bb = _default_backbone()
    sources = load_sources(FACES, per_person=1)
    bb.fit(sources)
    released = _mixed(bb, sources)
    enc = ENCODERS.create("dlib")
    donors = sources[:3]
    emb = enc.embed([face_from_landmarks(d.aligned, d.landmarks) for d in donors])
    sim = EncoderSimilarity([enc], {"dlib": emb}, [d.source_id for d in donors])
    image = bb.synthesize([bb.compose(released)])[0]
    t0 = time.perf_counter()
    fast = build_coalition_table(bb, released, sim, released_image=image, keep_images=True)
    t1 = time.perf_counter()
    reference = build_coalition_table_reference(bb, released, sim, released_image=image, keep_images=True)
    t2 = time.perf_counter()
    print(f"coalition table: fast {t1 - t0:.1f} s, reference {t2 - t1:.1f} s")
    assert fast.full_render_max_diff == reference.full_render_max_diff == 0
    assert all(np.array_equal(a, b) for a, b in zip(fast.images, reference.images))
    assert np.array_equal(fast.face_counts, reference.face_counts) and fast.face_counts.min() >= 1
    a, b = compute_ics(fast), compute_ics(reference)
    for name in ("phi", "share", "drop", "v_full", "v_empty"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=0, atol=1e-6, err_msg=name)
    # the pipeline locates coalition faces without the pyramid levels below the released face's size
    from personc_assets.core.explain.ics import coalition_locator

    skipping = EncoderSimilarity([enc], {"dlib": emb}, [d.source_id for d in donors], locate=coalition_locator(image))
    quick = build_coalition_table(bb, released, skipping, released_image=image)
    assert np.array_equal(quick.face_counts, fast.face_counts)
    np.testing.assert_array_equal(quick.values, fast.values)
