"""Asset values: each round-trips through the JSON the IO manager stores, and a malformed one is
refused with an error that names the bad keys and the asset to re-materialize."""

import json
import math

import pytest

from personc_assets.core.ensemble import TauChoice
from personc_assets.core.pipeline.explaining import ExplainedRelease, IcsReports
from personc_assets.core.pipeline.generation import GeneratedCandidates, SavedCandidate
from personc_assets.core.pipeline.indexing import EmbeddingIndexes, EncoderIndex, SkippedIndex
from personc_assets.core.pipeline.judging import GuardVerdicts, JudgedAttempt, ReleasedFace, UnreleasedSlot
from personc_assets.core.pipeline.modeling import BackboneRef, FactorDecompositions, ProjectedLatents
from personc_assets.core.pipeline.recheck import RecheckOutcome, ReleaseRecheck
from personc_assets.core.pipeline.sources import SourceEntry, SourceSet
from personc_assets.core.privacy.disentangle import CONTEXT, FactorRanking, FactorSensitivity
from personc_assets.core.privacy.dp import PrivacyBudget
from personc_assets.core.privacy.results import (AnonymizedFace, AnonymizedFaces, CancelableTemplate,
                                                 CancelableTemplates, DPRefusal, DPReleasedFace, DPReleases,
                                                 RecordedRanking)
from personc_assets.core.redteam import ENSEMBLE, MissedTrial, RedTeamSummary, VariantRow
from personc_assets.core.values import AssetValue, MalformedValueError

DONOR = SourceEntry("h1", "A", "ann", "/src/A/ann.jpg", "/out/aligned/h1.npz", "A-ann-1")
BACKBONE = BackboneRef("morphable", {"modes": 40}, "/out/backbone/m.npz", "b" * 64)
GRAY = SourceEntry("h2", "B", "bob", "/src/B/bob.jpg", "/out/aligned/h2.npz", "B-bob-1", "protect_only",
                   "grayscale", "grayscale photo: no colour to lend")


def through_json(value: AssetValue) -> AssetValue:
    """``value`` after the trip the IO manager gives it: ``as_dict``, JSON text, ``from_dict``."""
    return type(value).from_dict(json.loads(json.dumps(value.as_dict(), sort_keys=True)))


def test_source_set_round_trips():
    # why: every later step reads the sources back from this JSON, in this run and the next ones
    sset = SourceSet("f" * 64, (DONOR,), demo=False, protect_only=(GRAY,))
    assert through_json(sset) == sset
    assert "role_code" not in DONOR.as_dict(), "a donor's entry stays as it was written before"


def test_source_set_from_an_earlier_version_reads_without_roles():
    # why: state written before protect-only photos existed has no roles; every photo was a donor
    old = {"source_set_hash": "f" * 64, "demo": True, "entries": [
        {k: v for k, v in DONOR.as_dict().items() if k != "role"}]}
    assert SourceSet.from_dict(old) == SourceSet("f" * 64, (DONOR,), demo=True)


def test_malformed_source_set_names_the_bad_keys():
    # why: a hand-edited or truncated state file must say what is wrong and how to fix it
    bad = SourceSet("f" * 64, (DONOR,), demo=False).as_dict()
    bad["entries"][0].pop("aligned_path")
    bad["entries"][0]["aligned"] = "/x.npz"
    with pytest.raises(MalformedValueError, match=r"SourceEntry of source_images lacks 'aligned_path' and has "
                                                  r"unknown 'aligned'.*re-materialize source_images"):
        SourceSet.from_dict(bad)
    with pytest.raises(MalformedValueError, match="must be a JSON object, got list"):
        SourceSet.from_dict([])  # type: ignore[arg-type]


def test_projected_latents_round_trip():
    # why: the factor step rebuilds the fitted backbone from this value
    latents = ProjectedLatents(BACKBONE, {"h1": "/out/latents/h1.npz"}, 1, 0.12, 0.3)
    assert through_json(latents) == latents
    assert through_json(ProjectedLatents(BACKBONE, {}, 0, None, None)).mean_reconstruction_error is None


def test_malformed_projected_latents_names_the_bad_keys():
    # why: a backbone reference without its state hash could load another fit unnoticed
    bad = ProjectedLatents(BACKBONE, {}, 0, None, None).as_dict()
    del bad["backbone"]["state_hash"]
    with pytest.raises(MalformedValueError, match="BackboneRef of projected_latents lacks 'state_hash'"):
        ProjectedLatents.from_dict(bad)


def test_factor_decompositions_round_trip():
    # why: generation, judging, the reports and the privacy modes all read the factors from this value
    factors = FactorDecompositions(BACKBONE, {"h1": "/out/latents/h1.factors.npz"}, "/out/mean.factors.npz",
                                   ("geometry", "texture"))
    assert through_json(factors) == factors


def test_malformed_factor_decompositions_names_the_bad_keys():
    # why: the error must point at the asset that wrote the value, not at the one that read it
    bad = FactorDecompositions(BACKBONE, {}, "/m.npz", ()).as_dict()
    del bad["mean"]
    with pytest.raises(MalformedValueError, match="FactorDecompositions of factor_decompositions lacks 'mean'"):
        FactorDecompositions.from_dict(bad)


def encoder_index(name: str, tau: float, source: str = "default") -> EncoderIndex:
    return EncoderIndex(name, f"{name}-v1", f"/out/indexes/{name}.faiss", "flat_ip", True, 4, 128,
                        TauChoice(name, tau, f"why {name}", source))  # type: ignore[arg-type]


def test_embedding_indexes_round_trip_with_their_tau_choices():
    # why: every guard of the run, the recheck and the red team take their taus from this value
    indexes = EmbeddingIndexes((encoder_index("arcface", 0.4, "bare"), encoder_index("dlib", 0.9)),
                               (SkippedIndex("magface", "no weights in weights/"),), "f" * 64, {"h1": "female"})
    assert through_json(indexes) == indexes
    assert indexes.tau_choices()["arcface"] == TauChoice("arcface", 0.4, "why arcface", "bare")
    assert indexes.person_index().encoder == "dlib", "dlib tells people apart when it is in the run"
    assert indexes.get("magface") is None
    stored = indexes.as_dict()["indexes"][1]
    assert (stored["tau"], stored["tau_why"], stored["tau_source"]) == (0.9, "why dlib", "default"), \
        "the stored JSON keeps its flat tau keys"


def test_embedding_indexes_from_before_tau_sources_and_classes():
    # why: values stored before tau sources and donor classes existed still load, as the defaults
    old = EmbeddingIndexes((encoder_index("dlib", 0.9),), (), "f" * 64).as_dict()
    del old["indexes"][0]["tau_source"], old["source_classes"]
    assert EmbeddingIndexes.from_dict(old) == EmbeddingIndexes((encoder_index("dlib", 0.9),), (), "f" * 64)


def test_malformed_embedding_indexes_names_the_bad_keys():
    # why: an index entry without its tau must not be guarded at some other tau
    bad = EmbeddingIndexes((encoder_index("dlib", 0.9),), (), "f" * 64).as_dict()
    del bad["indexes"][0]["tau"]
    with pytest.raises(MalformedValueError, match="EncoderIndex of embedding_indexes lacks 'tau'"):
        EmbeddingIndexes.from_dict(bad)


def test_generated_candidates_round_trip():
    # why: the guard judges exactly the first attempts this value lists
    first = GeneratedCandidates("g" + "1" * 15, (SavedCandidate("c1", 0, 0, "r1", "/out/c1.png", ("h1", "h2")),))
    assert through_json(first) == first


def test_malformed_generated_candidates_names_the_bad_keys():
    # why: a candidate without its slot cannot be retried in the right slot
    bad = GeneratedCandidates("g1", (SavedCandidate("c1", 0, 0, "r1", "/c1.png", ()),)).as_dict()
    del bad["candidates"][0]["slot"]
    with pytest.raises(MalformedValueError, match="SavedCandidate of generated_candidates lacks 'slot'"):
        GeneratedCandidates.from_dict(bad)


def judged(slot: int, attempt: int, verdict: str, sim: float | None) -> JudgedAttempt:
    return JudgedAttempt(slot, attempt, f"c{slot}{attempt}", verdict, "dlib: reaches tau" if verdict != "PASS" else "",
                         f"r{slot}{attempt}", {"dlib": sim}, {"dlib": "h1" if sim is not None else None},
                         {"dlib": 0.9})


RELEASED = ReleasedFace("pc-1", "c01", "/out/released/pc-1.png", 0, 1, "p" * 64, "r01", ("h1", "h2"),
                        {"texture": "h1", "eyes": "h2"}, {"dlib": 0.71, "arcface": None},
                        {"dlib": "h1", "arcface": None}, {"dlib": 0.9, "arcface": 0.4})


def test_guard_verdicts_round_trip_and_derive_pass_rate_and_unreleased_slots():
    # why: the checks, the reports and the demo's summary read the releases from this value
    verdicts = GuardVerdicts("g1", (RELEASED,), (judged(0, 0, "REJECT", 0.93), judged(0, 1, "PASS", 0.71),
                                                 judged(1, 0, "REJECT", 0.95), judged(1, 1, "REJECT", None)),
                             {"arcface": 0.0}, {"arcface": 1}, num_samples=2, max_attempts=2)
    assert through_json(verdicts) == verdicts
    assert verdicts.pass_rate == 0.25
    assert verdicts.unreleased == (UnreleasedSlot(1, 2, "dlib: reaches tau"),)
    stored = verdicts.as_dict()
    assert stored["pass_rate"] == 0.25 and stored["unreleased"] == [
        {"slot": 1, "attempts": 2, "last_reason": "dlib: reaches tau"}], "the stored JSON keeps its keys"
    assert not RELEASED.reaches_tau("dlib") and not RELEASED.reaches_tau("arcface")


def test_guard_verdicts_from_before_unreleased_slots():
    # why: values stored before unreleased slots were reported still load, and now report them
    old = GuardVerdicts("g1", (), (judged(0, 0, "REJECT", 0.93),), {}, {}, 1, 1).as_dict()
    del old["unreleased"]
    assert GuardVerdicts.from_dict(old).unreleased == (UnreleasedSlot(0, 1, "dlib: reaches tau"),)


def test_malformed_guard_verdicts_names_the_bad_keys():
    # why: a release without its taus cannot be re-checked or reported
    bad = GuardVerdicts("g1", (RELEASED,), (), {}, {}, 1, 1).as_dict()
    del bad["released"][0]["tau"]
    with pytest.raises(MalformedValueError, match="ReleasedFace of guard_verdicts lacks 'tau'"):
        GuardVerdicts.from_dict(bad)


def test_ics_reports_round_trip():
    # why: the demo's summary names the manifest this value points at
    explained = ExplainedRelease("pc-1", "/out/released/pc-1.png", "/out/reports/pc-1.html", None,
                                 {"normalisation": "share = phi / sum(|phi|)", "undetected_coalitions": [["eyes"]],
                                  "scores": {"dlib": {"A-ann-1": {"v_full": 0.7, "share": {"eyes": 0.5}}}}},
                                 ("eyes carry half of the likeness to A-ann-1",), "| factor | share |", 1.5, 0.25)
    reports = IcsReports((explained,), "/out/manifest.json", "m" * 64, "/out/reports/index.html", 0.5, "![pc-1]")
    assert through_json(reports) == reports


def test_malformed_ics_reports_names_the_bad_keys():
    # why: a report list without the manifest's path would hide where the releases are listed
    bad = IcsReports((), "/out/manifest.json", "m", "/r.html", 0.0, "").as_dict()
    del bad["manifest"]
    with pytest.raises(MalformedValueError, match="IcsReports of ics_reports lacks 'manifest'"):
        IcsReports.from_dict(bad)


def test_release_recheck_round_trips_and_derives_its_counts():
    # why: the recheck's counts must agree with its outcomes, in the run and when read back
    kept = RecheckOutcome("pc-1", "/out/released/pc-1.png", "PASS", "", {"dlib": 0.7}, {"dlib": "/src/A/ann.jpg"})
    revoked = RecheckOutcome("pc-2", "/out/released/pc-2.png", "REJECT", "recheck against source set ffff: "
                             "dlib: reaches tau", {"dlib": 0.93}, {"dlib": "/src/B/bob new.jpg"})
    recheck = ReleaseRecheck("k" * 20, "f" * 64, 3, (kept, revoked), ("/out/manifest.json",), ())
    assert through_json(recheck) == recheck
    assert (recheck.rechecked, recheck.kept, recheck.revoked) == (2, 1, (revoked,))
    stored = recheck.as_dict()
    assert (stored["rechecked"], stored["kept"], stored["revoked"]) == (2, 1, [revoked.as_dict()])


def test_malformed_release_recheck_names_the_bad_keys():
    # why: an outcome without its verdict cannot say whether the release was kept
    bad = ReleaseRecheck("k", "f", 0, (RecheckOutcome("pc-1", "/x.png", "PASS", "", {}, {}),), (), ()).as_dict()
    del bad["outcomes"][0]["verdict"]
    with pytest.raises(MalformedValueError, match="RecheckOutcome of release_recheck lacks 'verdict'"):
        ReleaseRecheck.from_dict(bad)


def test_redteam_summary_round_trips_and_derives_all_rejected():
    # why: "all rejected" must follow from the ensemble's rows, not from a flag that could disagree
    rows = (VariantRow("mirror", ENSEMBLE, True, 2, 2, 2, {}, None, None),
            VariantRow("mirror", "dlib", True, 2, 2, 2, {}, 0.91, 0.9),
            VariantRow("blur", ENSEMBLE, True, 2, 1, 0, {"no face found": 1}, None, None),
            VariantRow("blur", "arcface", False, 2, 0, 0, {}, 0.2, 0.4))
    summary = RedTeamSummary(("dlib", "arcface"), rows, (MissedTrial("blur", "bob", "B-bob-1", "PASS"),))
    assert through_json(summary) == summary
    assert not summary.all_rejected and RedTeamSummary(("dlib",), rows[:2], ()).all_rejected
    assert summary.as_dict()["rows"][0]["rate"] == 1.0, "the stored JSON keeps each row's rate"


def test_malformed_redteam_summary_names_the_bad_keys():
    # why: a row without its trial count cannot give a rejection rate
    bad = RedTeamSummary(("dlib",), (VariantRow("mirror", "dlib", True, 1, 1, 1, {}, 0.9, 0.9),), ()).as_dict()
    del bad["rows"][0]["trials"]
    with pytest.raises(MalformedValueError, match="VariantRow of redteam_report lacks 'trials'"):
        RedTeamSummary.from_dict(bad)


def test_recorded_ranking_round_trips_with_the_context_rows_unmeasured_units():
    # why: the anonymizer works from this value; the context row has no unit (NaN, stored as null)
    rows = (FactorSensitivity("eyes", "dlib", 0.4, 0.2, 0.05, 0.5, 4, 0),
            FactorSensitivity("texture", "dlib", 0.1, 0.1, 0.02, 1.0, 4, 1),
            FactorSensitivity(CONTEXT, "dlib", math.nan, 0.05, 0.01, math.nan, 4, 0))
    recorded = RecordedRanking("rank-1", FactorRanking(rows, "b" * 64, ("h1", "h2"), 2))
    back = through_json(recorded)
    assert back.ranking_id == "rank-1" and back.ranking.rows[:2] == rows[:2]
    assert math.isnan(back.ranking.rows[2].per_unit) and back.ranking.rows[2].n == 4
    assert back.ranking.order() == ("eyes", "texture") and recorded.as_dict()["order"] == ["eyes", "texture"]


def test_malformed_recorded_ranking_names_the_bad_keys():
    # why: a ranking row without its encoder cannot be told apart from the others
    rows = (FactorSensitivity("eyes", "dlib", 0.4, 0.2, 0.05, 0.5, 4, 0),)
    bad = RecordedRanking("rank-1", FactorRanking(rows, "b", (), 1)).as_dict()
    del bad["rows"][0]["encoder"]
    with pytest.raises(MalformedValueError, match="FactorSensitivity of factor_identity_ranking lacks 'encoder'"):
        RecordedRanking.from_dict(bad)


def test_anonymized_faces_round_trip_and_count_what_passed():
    # why: the asset's counts must follow from the outputs it lists
    passed = AnonymizedFace("an-1", "h1", True, "", 0.8, 2, "female", "female", 31, 28, "/out/privacy/an-1.png",
                            {"dlib": 0.6}, {"dlib": 0.7})
    refused = AnonymizedFace("an-2", "h2", False, "dlib: reaches tau", 1.0, 4, None, None, None, None, None,
                             {"dlib": 0.95}, {"dlib": 0.95})
    faces = AnonymizedFaces(1.0, (passed, refused))
    assert through_json(faces) == faces and (faces.passed, faces.faces) == (1, 2)


def test_malformed_anonymized_faces_names_the_bad_keys():
    # why: an output without its verdict cannot be counted as passed or refused
    bad = AnonymizedFaces(1.0, (AnonymizedFace("an-1", "h1", True, "", 1.0, 1, None, None, None, None, None, {},
                                               {}),)).as_dict()
    del bad["outputs"][0]["passed"]
    with pytest.raises(MalformedValueError, match="AnonymizedFace of anonymized_faces lacks 'passed'"):
        AnonymizedFaces.from_dict(bad)


def test_cancelable_templates_round_trip_and_count_what_passed():
    # why: the asset reports how many faces were enrolled under the key, and the measured properties
    templates = CancelableTemplates("key-1", (CancelableTemplate("t-1", "h1", "signed-permutation/v2", True, "",
                                                                 "/out/privacy/t-1.png", {"dlib": 0.3}),),
                                    ({"encoder": "dlib", "property": "unlinkability", "passed": True},))
    assert through_json(templates) == templates and (templates.passed, templates.faces) == (1, 1)


def test_malformed_cancelable_templates_names_the_bad_keys():
    # why: templates without their key id cannot be revoked
    bad = CancelableTemplates("key-1", (), ()).as_dict()
    del bad["key_id"]
    with pytest.raises(MalformedValueError, match="CancelableTemplates of cancelable_templates lacks 'key_id'"):
        CancelableTemplates.from_dict(bad)


def test_dp_releases_round_trip():
    # why: the DP summary carries the spend and what the epsilon covers; none of it may be lost
    releases = DPReleases({"ann": {"gender": {"direction_id": "dir-gender-1", "cv_accuracy": 0.9}}},
                          (DPReleasedFace("dp-1", "h1", 1.0, 0.0, "female", "male", 30, 33,
                                          "/out/privacy/dp/dp-1.png", "ann", "ab" * 8),),
                          (DPRefusal("h2", "budget", "face h2 would spend 5 of 4"),), 1.0, "laplace", 0.0, 2.0, 1.0,
                          0.0, PrivacyBudget(4.0, 1e-5, None), {"covers": "the attribute coordinates"},
                          "/out/manifest.json", "m" * 64)
    assert through_json(releases) == releases


def test_malformed_dp_releases_names_the_bad_keys():
    # why: a budget without its per-face epsilon would hide how much a face may spend
    bad = DPReleases({}, (), (), 1.0, "laplace", 0.0, 2.0, 0.0, 0.0, PrivacyBudget(), {}, None, None).as_dict()
    del bad["budget"]["epsilon_per_face"]
    with pytest.raises(MalformedValueError, match="PrivacyBudget of dp_attribute_releases lacks 'epsilon_per_face'"):
        DPReleases.from_dict(bad)


def test_io_manager_hands_typed_values_downstream_in_this_run_and_the_next(tmp_path):
    # why: assets take and return typed values, while the state files keep their JSON, so a job that
    # starts half-way (the refresh, a re-run of the last steps) reads values stored by an earlier run
    from dagster import AssetKey, MaterializeResult, asset, materialize

    from personc_assets.defs.value_io import AssetValueIOManager

    sset = SourceSet("f" * 64, (DONOR,), demo=False, protect_only=(GRAY,))
    seen = {}

    @asset
    def source_images() -> MaterializeResult[SourceSet]:
        return MaterializeResult(value=sset)

    @asset
    def typed(source_images: SourceSet) -> None:
        seen["typed"] = source_images

    @asset
    def raw(source_images: dict) -> None:
        seen["raw"] = source_images

    io = {"io_manager": AssetValueIOManager(base_dir=str(tmp_path / "state"))}
    assert materialize([source_images, typed, raw], resources=io).success
    stored = json.loads((tmp_path / "state" / "source_images.json").read_text())
    assert stored == sset.as_dict() and seen == {"typed": sset, "raw": sset.as_dict()}

    seen.clear()
    assert materialize([source_images, typed], resources=io, selection=[AssetKey("typed")]).success
    assert seen == {"typed": sset}, "a later run loads the stored value as its type"

    (tmp_path / "state" / "source_images.json").write_text(json.dumps({"entries": []}))
    with pytest.raises(MalformedValueError, match="lacks 'source_set_hash', 'demo'"):
        materialize([source_images, typed], resources=io, selection=[AssetKey("typed")])
