"""Asset checks on the released faces."""


import pandas as pd
from dagster import AssetCheckResult, AssetCheckSeverity, AssetIn, MetadataValue, asset_check

from ...core.pipeline import judging
from ...core.pipeline.indexing import EmbeddingIndexes
from ...core.pipeline.judging import GuardVerdicts
from ...core.pipeline.sources import SourceSet
from ..resources import PersonCConfig


@asset_check(asset="guard_verdicts", blocking=True,
             additional_ins={"embedding_indexes": AssetIn("embedding_indexes"),
                             "source_images": AssetIn("source_images")})
def released_faces_below_tau(personc: PersonCConfig, guard_verdicts: GuardVerdicts,
                             embedding_indexes: EmbeddingIndexes, source_images: SourceSet) -> AssetCheckResult:
    """Every released PNG, re-read from disk, passes the whole guard again: a coherent face, no
    reused source photo, below tau for every encoder under every benign transform."""
    rows = judging.recheck_released_files(personc.run_config(), personc.workspace(), source_images,
                                          embedding_indexes, guard_verdicts.released)
    failed = [r for r in rows if r["verdict"] != "PASS"]
    return AssetCheckResult(
        passed=not failed, severity=AssetCheckSeverity.ERROR,
        metadata={"released": len(rows), "failed": len(failed),
                  "details": MetadataValue.md(pd.DataFrame(rows).to_markdown(index=False) if rows else "_none_")})


@asset_check(asset="guard_verdicts", additional_ins={"source_images": AssetIn("source_images")})
def released_faces_mix_both_groups(guard_verdicts: GuardVerdicts, source_images: SourceSet) -> AssetCheckResult:
    """Every released face has donors from both group A and group B."""
    rows = judging.donor_groups(source_images, guard_verdicts.released)
    bad = [r for r in rows if r["groups"] != ["A", "B"]]
    return AssetCheckResult(passed=not bad, metadata={"released": len(rows), "single_group": len(bad)})
