"""The privacy modes (group ``personc_privacy``): assets on the main pipeline's source, factor and
index assets, one job per mode, each a thin call into ``core.privacy.steps``.

``personc anonymize | cancelable | dp`` run these jobs through the same runner as
``personc demo``, the mode's options as the asset's run config (``MODE_ASSETS``).
"""

import os
from pathlib import Path

from dagster import (AssetExecutionContext, AssetSelection, Config, Definitions, MaterializeResult, MetadataValue,
                     asset, define_asset_job, in_process_executor)
from pydantic import Field

from ..core.guard import Guard
from ..core.lineage.store import LineageStore
from ..core.pipeline import judging
from ..core.pipeline.indexing import EmbeddingIndexes
from ..core.pipeline.modeling import FactorDecompositions
from ..core.pipeline.sources import SourceSet
from ..core.privacy import steps
from ..core.privacy.population import Population
from ..core.privacy.results import AnonymizedFaces, CancelableTemplates, DPReleases, RecordedRanking
from .reporting import md_table
from .resources import LineageResource, LoadedModels, PersonCConfig

GROUP = "personc_privacy"


def _population_and_guard(personc: PersonCConfig, models: LoadedModels, store: LineageStore,
                          source_images: SourceSet, factor_decompositions: FactorDecompositions,
                          embedding_indexes: EmbeddingIndexes) -> tuple[Population, Guard]:
    """The run's loaded context as the modes' population, and the run's guard."""
    loaded = models.context(store, source_images, factor_decompositions, embedding_indexes)
    return steps.population(loaded), judging.build_guard(personc.run_config(), embedding_indexes)


class RankingConfig(Config):
    n_probes: int = Field(default=4, description="probe faces (distinct persons)")
    donors_per_probe: int = Field(default=2, description="donor swaps per probe and factor")


@asset(group_name=GROUP, kinds={"python", "duckdb"})
def factor_identity_ranking(context: AssetExecutionContext, config: RankingConfig, personc: PersonCConfig,
                            lineage: LineageResource, models: LoadedModels, source_images: SourceSet,
                            factor_decompositions: FactorDecompositions,
                            embedding_indexes: EmbeddingIndexes) -> MaterializeResult[RecordedRanking]:
    """How much identity each factor carries: identity change (1 - cosine) per population unit of change,
    measured with every encoder by swapping one factor for another person's."""
    store = lineage.store()
    pop, guard = _population_and_guard(personc, models, store, source_images, factor_decompositions,
                                       embedding_indexes)
    out = steps.run_ranking(pop, guard, store, context.run.run_id, config.n_probes, config.donors_per_probe)
    return MaterializeResult(value=out, metadata={"order": MetadataValue.json(list(out.ranking.order())),
                                                  "table": md_table(out.ranking.table())})


class AnonymizeConfig(Config):
    strength: float = Field(default=1.0, description="share of identity replaced, 0..1")
    attempts: int = Field(default=4, description="donor draws tried per face")
    limit: int = Field(default=3, description="source faces to anonymize (0: all) when no inputs are given")
    inputs: list[str] = Field(default_factory=list, description="photos to anonymize instead of source faces")


@asset(group_name=GROUP, kinds={"python", "duckdb"})
def anonymized_faces(context: AssetExecutionContext, config: AnonymizeConfig, personc: PersonCConfig,
                     lineage: LineageResource, models: LoadedModels, source_images: SourceSet,
                     factor_decompositions: FactorDecompositions, embedding_indexes: EmbeddingIndexes,
                     factor_identity_ranking: RecordedRanking) -> MaterializeResult[AnonymizedFaces]:
    """Faces with their identity factors replaced from the population (context kept), released only when
    the guard passes them against every source and the original."""
    store = lineage.store()
    pop, guard = _population_and_guard(personc, models, store, source_images, factor_decompositions,
                                       embedding_indexes)
    out = steps.run_anonymize(pop, guard, personc.workspace(), store, context.run.run_id, factor_identity_ranking,
                              config.strength, config.attempts, config.limit, [Path(p) for p in config.inputs])
    return MaterializeResult(value=out, metadata={"passed": out.passed, "faces": out.faces,
                                                  "outputs": md_table([{"input_hash": o.input_hash, "passed": o.passed,
                                                                        "reason": o.reason} for o in out.outputs])})


class CancelableConfig(Config):
    key_env: str = Field(default="PERSONC_CANCELABLE_KEY",
                         description="environment variable holding the secret key (never put the key in config)")
    context: str = Field(default="own", description="'own' (photo's hair/background) or 'key'")
    limit: int = Field(default=3, description="source faces to enrol (0: all) when no inputs are given")
    inputs: list[str] = Field(default_factory=list, description="photos to enrol instead of source faces")


@asset(group_name=GROUP, kinds={"python", "duckdb"})
def cancelable_templates(context: AssetExecutionContext, config: CancelableConfig, personc: PersonCConfig,
                         lineage: LineageResource, models: LoadedModels, source_images: SourceSet,
                         factor_decompositions: FactorDecompositions,
                         embedding_indexes: EmbeddingIndexes) -> MaterializeResult[CancelableTemplates]:
    """Keyed synthetic templates (key never stored, only its id), guard-checked, revocable. Fails, with the
    measured figures, when the backbone cannot give templates their properties (nothing is made then)."""
    key = os.environ.get(config.key_env)
    if not key:
        raise ValueError(f"environment variable {config.key_env} is not set: export the secret key there "
                         "(at least 12 characters) before materializing cancelable_templates")
    store = lineage.store()
    pop, guard = _population_and_guard(personc, models, store, source_images, factor_decompositions,
                                       embedding_indexes)
    out = steps.run_cancelable(pop, guard, personc.workspace(), store, context.run.run_id, key, config.context,
                               config.limit, [Path(p) for p in config.inputs])
    return MaterializeResult(value=out, metadata={"key_id": out.key_id, "passed": out.passed, "faces": out.faces,
                                                  "assessment": md_table([dict(r) for r in out.assessment])})


class DPConfig(Config):
    attributes: list[str] = Field(default_factory=lambda: ["gender"], description="'gender' and/or 'age'")
    epsilon: float = Field(default=1.0, description="epsilon per attribute and face")
    mechanism: str = Field(default="laplace", description="'laplace' or 'gaussian'")
    delta: float = Field(default=0.0, description="delta (Gaussian only)")
    width: float = Field(default=2.0, description="clip range: +-width coordinate sd around the boundary")
    epsilon_per_face: float = Field(default=4.0, description="budget per face over all runs")
    delta_per_face: float = Field(default=1e-5, description="delta budget per face")
    limit: int = Field(default=3, description="source faces to release (0: all)")


@asset(group_name=GROUP, kinds={"python", "duckdb"})
def dp_attribute_releases(context: AssetExecutionContext, config: DPConfig, personc: PersonCConfig,
                          lineage: LineageResource, models: LoadedModels, source_images: SourceSet,
                          factor_decompositions: FactorDecompositions,
                          embedding_indexes: EmbeddingIndexes) -> MaterializeResult[DPReleases]:
    """Faces whose position along learned age/gender directions is released with OpenDP noise after
    clipping (real sensitivity), with directions fitted without the released person; every charge is in the
    DuckDB privacy ledger, which refuses once spent. Releases are watermarked, marked synthetic and listed in
    the manifest; epsilon covers the attribute coordinates only (see the guarantee metadata)."""
    store = lineage.store()
    loaded = models.context(store, source_images, factor_decompositions, embedding_indexes)
    out = steps.run_dp(steps.population(loaded), personc.workspace(), store, context.run.run_id, config.attributes,
                       config.epsilon, config.mechanism, config.delta, config.width, config.epsilon_per_face,
                       config.delta_per_face, limit=config.limit)
    return MaterializeResult(value=out, metadata={"released": len(out.releases), "refused": len(out.refused),
                                                  "run_epsilon_spent": out.run_epsilon_spent,
                                                  "releases": md_table([r.as_dict() for r in out.releases]),
                                                  "guarantee": MetadataValue.json(dict(out.guarantee))})


def _job(name: str, keys: list[str], description: str):
    return define_asset_job(name, selection=AssetSelection.assets(*keys).upstream(),
                            executor_def=in_process_executor, description=description)


anonymize_job = _job("personc_anonymize", ["anonymized_faces"],
                     "Sources, backbone, indexes, factor ranking and guard-checked anonymized faces.")
cancelable_job = _job("personc_cancelable", ["cancelable_templates"],
                      "Sources, backbone, indexes and keyed cancelable templates (key from the environment).")
dp_job = _job("personc_dp", ["dp_attribute_releases"],
              "Sources, backbone, attribute directions and differentially private attribute releases.")

#: Each mode's job and the asset whose run config holds the mode's options.
MODE_ASSETS: dict[str, str] = {"personc_anonymize": "anonymized_faces", "personc_cancelable": "cancelable_templates",
                               "personc_dp": "dp_attribute_releases"}

defs = Definitions(
    assets=[factor_identity_ranking, anonymized_faces, cancelable_templates, dp_attribute_releases],
    jobs=[anonymize_job, cancelable_job, dp_job],
)
