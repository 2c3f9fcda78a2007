"""Every photo of a source person protects that person: a photo that cannot be a donor
(here grayscale) is still embedded and indexed by the guard, and the lineage says which role
each photo has."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from personc_assets.core.guard import PASS, REJECT, Guard, GuardMember
from personc_assets.core.index import EmbeddingIndex
from personc_assets.core.lineage.store import LineageStore
from personc_assets.core.pipeline.config import RunConfig, Workspace
from personc_assets.core.pipeline.indexing import build_encoders, build_indexes
from personc_assets.core.pipeline.judging import build_guard
from personc_assets.core.pipeline.sources import ingest_sources

pytestmark = pytest.mark.shared_faces

GRAY = "id01/id01_04.jpg"          # the only photo of id01 among the sources, stored grayscale
SECOND = "id01/id01_07.jpg"        # another photo of id01: a release looking like this must be rejected
OTHERS = {"A": ["id02/id02_02.jpg"], "B": ["id05/id05_01.jpg", "id03/id03_06.jpg"]}


def copy_photo(src: Path, dst: Path, mode: str = "RGB", max_side: int = 900) -> None:
    image = Image.open(src).convert("RGB")
    image.thumbnail((max_side, max_side))
    image.convert(mode).save(dst, quality=92)


def photo_pixels(src: Path, max_side: int = 900) -> np.ndarray:
    image = Image.open(src).convert("RGB")
    image.thumbnail((max_side, max_side))
    return np.asarray(image)


@pytest.fixture(scope="module")
def run(shared_faces, tmp_path_factory):
    """Sources of two groups, one of them a grayscale photo; ingested and indexed like a pipeline run."""
    root = tmp_path_factory.mktemp("roles")
    for group, files in OTHERS.items():
        (root / group).mkdir()
        for rel in files:
            copy_photo(shared_faces / rel, root / group / Path(rel).name)
    copy_photo(shared_faces / GRAY, root / "A" / "id01_gray.jpg", mode="L")
    ws = Workspace(root / "out")
    store = LineageStore.open(ws.db_path)
    cfg = RunConfig(out_dir=str(ws.root), sources_a=str(root / "A"), sources_b=str(root / "B"), encoders=("dlib",))
    sset, result = ingest_sources(cfg, ws, store, "run-roles", workers=1)
    indexes = build_indexes(cfg, ws, store, sset, "run-roles")
    return {"root": root, "cfg": cfg, "store": store, "sset": sset, "result": result, "indexes": indexes}


def test_grayscale_photo_protects_but_is_no_donor(run):
    # why: colour is needed to lend skin texture, not to recognise a person; dropping the photo
    # left its person out of the guard's indexes
    sset, store = run["sset"], run["store"]
    gray = str(run["root"] / "A" / "id01_gray.jpg")
    assert [e.path for e in sset.protect_only] == [gray]
    assert sset.protect_only[0].role_code == "grayscale"
    assert gray not in [e.path for e in sset.entries], "a protect-only photo never lends factors"
    assert not run["result"].quarantined
    roles = dict(store.query("SELECT path, role FROM sources"))
    assert roles[gray] == "protect_only" and sum(r == "donor" for r in roles.values()) == 3
    assert store.query("SELECT role_reason FROM sources WHERE path = ?", [gray])[0][0].startswith("grayscale photo")
    assert run["indexes"].indexes[0].count == 4, "the guard indexes donors and protect-only photos"


def test_grayscale_photo_makes_the_guard_reject_a_second_photo_of_its_person(run, shared_faces):
    # why: every photo of a source person must protect that person, whatever its colour
    cfg, sset, store = run["cfg"], run["sset"], run["store"]
    candidate = [("second", photo_pixels(shared_faces / SECOND))]
    verdict = build_guard(cfg, run["indexes"]).check(candidate)[0]
    assert verdict.verdict == REJECT and "reaches tau" in verdict.reason
    assert verdict.per_encoder[0].nearest_source == sset.protect_only[0].content_hash

    # control: the donors alone do not catch it, so the rejection is the grayscale photo's doing
    encoder = build_encoders(cfg)[0][0]
    cached = store.embeddings(encoder.version, sset.hashes())
    donors_only = EmbeddingIndex.build("dlib", encoder.version, sset.hashes(),
                                       np.stack([np.asarray(cached[h], np.float32) for h in sset.hashes()]))
    control = Guard([GuardMember(encoder, donors_only, encoder.default_tau)]).check(candidate)[0]
    assert control.verdict == PASS, control.reason


def test_an_index_over_another_source_set_rejects_every_candidate(run, shared_faces):
    # why: an index that matches its own summary but not the current sources protects the wrong people
    candidate = [("second", photo_pixels(shared_faces / SECOND))]
    verdict = build_guard(run["cfg"], run["indexes"], source_set_hash="0" * 64).check(candidate)[0]
    assert verdict.verdict == REJECT and "stale" in verdict.reason
    current = build_guard(run["cfg"], run["indexes"], run["sset"].source_set_hash).check(candidate)[0]
    assert "stale" not in current.reason
