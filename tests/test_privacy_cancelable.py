"""Cancelable templates on real photos: the measured properties, the gate that refuses when they fall
short, and irreversibility on every template made."""

from __future__ import annotations

import numpy as np
import pytest

from privacy_fixtures import build_world
from personc_assets.core.privacy.cancelable import (ASSESSMENT_KEYS, CancelableEnroller, CancelableKeyError,
                                                    CancelableUnavailableError)

pytestmark = [pytest.mark.shared_faces, pytest.mark.slow]
#: Measured on ../shared/faces (7 people x 2 photos, assessment keys, dlib tau 0.90) at this change;
#: docs/privacy_modes.md has the table. These are defect reports: strict, so a fix turns them into failures.
SHORTFALL = ("measured on the embedded morphable backbone: keyed reflections keep factor-space distances "
             "exactly, but dlib finds the backbone's synthetic faces 0.85-0.94 alike whoever they come from, so "
             "{} (docs/privacy_modes.md); the mode refuses instead of making such templates")


@pytest.fixture(scope="module")
def measured(shared_faces):
    world = build_world(shared_faces)
    enroller = CancelableEnroller(world.pop, world.guard, world.probe)
    assessment = enroller.assess()  # every person with two photos, two keys: the gate's own measurement
    templates = list(assessment.templates)
    by = {p.prop: p for p in assessment.scores}
    print()
    for p in assessment.scores:
        print(p.describe())
    print("templates passing the guard:", sum(t.passed for t in templates), "of", len(templates))
    print("assessment:", assessment.reason())
    return world, enroller, assessment, by, templates


def test_properties_are_measured_on_real_templates(measured):
    # why: a property is only as good as its measurement; every pair of every person must be scored
    world, _, _, by, templates = measured
    n = len({t.input_hash for t in templates}) // 2
    assert n == len(world.pop.person_keys()) and len(templates) == 4 * n
    want = {"consistency": 2 * n, "unlinkability": 2 * n, "revocability": 2 * n, "irreversibility": 4 * n,
            "discriminability": n * (n - 1)}
    assert {p: len(s.scores) for p, s in by.items()} == want
    assert all(np.isfinite(s.scores).all() for s in by.values()), "a template showed no face"
    assert len({t.template_id for t in templates}) == len(templates), "one template per photo and key"


def test_enrol_refuses_with_the_measured_reason_exactly_when_a_property_falls_short(measured):
    # why: if the backbone cannot reach the properties, the mode must say so with figures, never produce
    # templates silently; if it can, it must enrol
    world, enroller, assessment, _, _ = measured
    face = world.pop.faces[0]
    if assessment.passed:
        assert enroller.enroll(face, "a fresh key for this test").key_id
        return
    with pytest.raises(CancelableUnavailableError) as err:
        enroller.enroll(face, "a fresh key for this test")
    for failing in assessment.failures():
        assert failing.describe() in str(err.value)


def test_irreversibility_on_every_template(measured):
    # why: nothing that passes may match the person or any source; a template that does must be refused
    # and say why. Checked on all templates made, against embeddings computed apart from the guard
    world, _, _, by, templates = measured
    own = world.person_embeddings()["dlib"]
    every = world.source_embeddings["dlib"]
    close = 0
    for t in templates:
        e = t.embeddings["dlib"]
        to_person = float((own[world.pop.persons[t.input_hash]] @ e).max())
        to_sources = float((every @ e).max())
        if t.passed:
            assert to_person < world.tau, (t.template_id, to_person)
            assert to_sources < world.tau, (t.template_id, to_sources)
        else:
            assert "reaches tau" in t.reason
        close += to_sources >= world.tau
    assert close == sum(not t.passed for t in templates), "the guard and the recomputed maxima disagree"
    print("irreversibility over all templates:", by["irreversibility"].describe())


@pytest.mark.xfail(strict=True, reason=SHORTFALL.format("two photos of one person under one key score "
                                                        "0.865-0.937 (86% at or above tau)"))
def test_identity_consistency(measured):
    # why: two photos of one person under one key must still match, or the template is useless
    _, _, _, by, _ = measured
    assert by["consistency"].ok_rate == 1.0


@pytest.mark.xfail(strict=True, reason=SHORTFALL.format("one face under two keys scores 0.849-0.934 (86% below "
                                                        "tau), old template vs re-enrolment 0.827-0.937 (79%)"))
def test_unlinkability_and_revocability(measured):
    # why: templates under two keys must not be linkable, so a leaked template can be replaced
    _, _, _, by, _ = measured
    assert by["unlinkability"].ok_rate == 1.0
    assert by["revocability"].ok_rate == 1.0


@pytest.mark.xfail(strict=True, reason=SHORTFALL.format("two people under one key score 0.816-0.917 "
                                                        "(90% below tau)"))
def test_discriminability_under_one_key(measured):
    # why: templates that make two people match cannot tell people apart
    _, _, _, by, _ = measured
    assert by["discriminability"].ok_rate == 1.0


def test_revoked_key_is_refused(measured):
    # why: after revocation the old key must not make new templates
    world, enroller, _, _, _ = measured
    face = world.pop.faces[0]
    with pytest.raises(CancelableKeyError, match="revoked"):
        enroller.enroll(face, ASSESSMENT_KEYS[0], revoked=[enroller.transform(ASSESSMENT_KEYS[0]).key_id])


def test_the_pipeline_step_records_the_measurement_and_makes_nothing_when_refused(measured, tmp_path):
    # why: the step behind `personc cancelable enroll` and the Dagster asset must refuse loudly with the
    # figures (recorded in the lineage), never write templates the properties do not back
    from personc_assets.core.lineage.store import LineageStore
    from personc_assets.core.pipeline.config import Workspace
    from personc_assets.core.privacy import steps

    world, _, assessment, _, _ = measured
    ws = Workspace(tmp_path)
    store = LineageStore.open(ws.db_path)
    if assessment.passed:
        out = steps.run_cancelable(world.pop, world.guard, ws, store, "cxl-run", "a fresh key for this test",
                                   limit=2)
        assert out.faces == 2
        return
    with pytest.raises(CancelableUnavailableError, match="refused"):
        steps.run_cancelable(world.pop, world.guard, ws, store, "cxl-run", "a fresh key for this test", limit=2)
    rows = store.query("SELECT property, ok_rate, passed FROM privacy_cancelable_assessment WHERE run_id = 'cxl-run'")
    assert {r[0] for r in rows} == {"consistency", "unlinkability", "revocability", "irreversibility",
                                    "discriminability"}
    assert {r[0] for r in rows if not r[2]} == {p.prop for p in assessment.failures()}
    assert store.query("SELECT count(*) FROM privacy_cancelable")[0][0] == 0
    assert not (tmp_path / "privacy" / "cancelable").exists()
