"""The Dagster definitions: one module per domain in defs/, merged and bound to resources by definitions.py."""

from __future__ import annotations

import pytest
from dagster import Definitions

from personc_assets.definitions import DOMAINS, build_definitions
from personc_assets.defs.resources import LineageResource, LoadedModels

MAIN = {"source_images", "projected_latents", "factor_decompositions", "embedding_indexes",
        "generated_candidates", "guard_verdicts", "ics_reports"}
UPSTREAM = {"source_images", "projected_latents", "factor_decompositions", "embedding_indexes"}


def test_each_domain_brings_its_own_assets():
    # why: definitions.py only wires; an asset belongs to one domain module, found by its name
    found = {d.__name__.rsplit(".", 1)[-1]: {k.to_user_string() for a in d.defs.assets for k in a.keys}
             for d in DOMAINS}
    assert found == {"main": MAIN, "lifecycle": {"release_recheck"}, "audit": {"redteam_report"},
                     "privacy": {"factor_identity_ranking", "anonymized_faces", "cancelable_templates",
                                 "dp_attribute_releases"},
                     "scale": {"batch_candidates", "batch_verdicts", "batch_reports", "lineage_consolidated"}}


def test_definitions_bind_the_lineage_store_and_the_loaded_models(tmp_path):
    # why: every asset reads the lineage and the shared models through a resource, bound once here
    defs = build_definitions(out_dir=str(tmp_path / "out"))
    Definitions.validate_loadable(defs)
    assert isinstance(defs.resources["lineage"], LineageResource)
    assert defs.resources["lineage"].database == str(tmp_path / "out" / "personc.duckdb")
    assert isinstance(defs.resources["models"], LoadedModels)


@pytest.mark.parametrize("job, mode", [("personc_anonymize", {"factor_identity_ranking", "anonymized_faces"}),
                                       ("personc_cancelable", {"cancelable_templates"}),
                                       ("personc_dp", {"dp_attribute_releases"})])
def test_privacy_jobs_are_the_main_pipelines_first_steps_and_the_mode(tmp_path, job, mode):
    # why: a privacy mode is new assets on the same upstream assets, not a second chain of them
    defs = build_definitions(out_dir=str(tmp_path / "out"))
    assert {n.name for n in defs.resolve_job_def(job).nodes} == UPSTREAM | mode
