"""The main pipeline's assets (group ``personc``): each a thin call into a core pipeline step."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from ...core.pipeline import explaining, generation, indexing, judging, modeling, sources
from ...core.pipeline.explaining import IcsReports
from ...core.pipeline.generation import GeneratedCandidates
from ...core.pipeline.indexing import EmbeddingIndexes
from ...core.pipeline.judging import GuardVerdicts
from ...core.pipeline.modeling import FactorDecompositions, ProjectedLatents
from ...core.pipeline.sources import SourceSet
from ..gpu import GPU_POOL, GPU_TAGS
from ..reporting import md_table, progress_reporter
from ..resources import LineageResource, LoadedModels, PersonCConfig

GROUP = "personc"


@asset(group_name=GROUP, kinds={"python", "duckdb"})
def source_images(context: AssetExecutionContext, personc: PersonCConfig,
                  lineage: LineageResource) -> MaterializeResult[SourceSet]:
    """Photos of groups A and B, validated, EXIF-oriented, with exactly one face each, aligned to
    the canonical frame and content-hashed. Donor photos lend factors and protect their person;
    protect-only photos (grayscale, small face) are indexed by the guard but never mixed; files
    that cannot be embedded are quarantined with a reason."""
    cfg = personc.run_config()
    store = lineage.store()
    sset, result = sources.ingest_sources(cfg, personc.workspace(), store, context.run.run_id,
                                          progress_reporter(context, "ingest"))
    quarantine = [{"file": q.path, "group": q.group, "code": q.code, "reason": q.reason}
                  for q in result.quarantined]
    return MaterializeResult(value=sset, metadata={
        "sources": len(sset.entries),
        "protect_only": len(sset.protect_only),
        "group_A": sum(e.group == "A" for e in sset.entries),
        "group_B": sum(e.group == "B" for e in sset.entries),
        "quarantined": len(quarantine),
        "duplicates": len(result.duplicates),
        "demo_sources": sset.demo,
        "quarantine_reasons": md_table(quarantine),
        "protect_only_reasons": md_table([{"file": e.path, "group": e.group, "code": e.role_code,
                                           "reason": e.role_reason} for e in sset.protect_only]),
        "source_set_hash": sset.source_set_hash,
    })


@asset(group_name=GROUP, kinds={"python"}, tags=GPU_TAGS, pool=GPU_POOL)
def projected_latents(context: AssetExecutionContext, personc: PersonCConfig, lineage: LineageResource,
                      source_images: SourceSet) -> MaterializeResult[ProjectedLatents]:
    """Each aligned source face projected into the selected backbone's latent space, with its
    reconstruction error."""
    cfg = personc.run_config()
    store = lineage.store()
    out = modeling.fit_and_project(cfg, personc.workspace(), store, source_images,
                                   context.run.run_id, progress_reporter(context, "project", every=5))
    return MaterializeResult(value=out, metadata={
        "backbone": cfg.backbone, "backbone_state": out.backbone.state_hash[:16],
        "latents": len(out.latents), "projected_now": out.projected_now,
        "mean_reconstruction_error": float(out.mean_reconstruction_error or 0.0)})


@asset(group_name=GROUP, kinds={"python"})
def factor_decompositions(context: AssetExecutionContext, personc: PersonCConfig, lineage: LineageResource,
                          projected_latents: ProjectedLatents) -> MaterializeResult[FactorDecompositions]:
    """Each latent split into named factors: geometry, symmetry, texture and local features."""
    store = lineage.store()
    out = modeling.decompose_all(personc.workspace(), store, projected_latents, context.run.run_id)
    return MaterializeResult(value=out, metadata={"factors": MetadataValue.json(list(out.factor_names)),
                                                  "sources": len(out.factors)})


@asset(group_name=GROUP, kinds={"python", "faiss"})
def embedding_indexes(context: AssetExecutionContext, personc: PersonCConfig, lineage: LineageResource,
                      source_images: SourceSet) -> MaterializeResult[EmbeddingIndexes]:
    """Per encoder, the embeddings of every source face in a FAISS inner-product index (exact, or
    certified IVF for very large source sets: rescored exactly wherever it could matter)."""
    cfg = personc.run_config()
    store = lineage.store()
    out = indexing.build_indexes(cfg, personc.workspace(), store, source_images,
                                 context.run.run_id, progress_reporter(context, "embed"))
    for skipped in out.skipped:
        context.log.info(f"encoder {skipped.encoder} skipped: {skipped.reason}")
    return MaterializeResult(value=out, metadata={
        "encoders": md_table([{"encoder": i.encoder, "version": i.encoder_version, "sources": i.count,
                               "tau": i.tau, "why": i.tau_choice.why} for i in out.indexes]),
        "skipped_encoders": md_table([s.as_dict() for s in out.skipped])})


@asset(group_name=GROUP, kinds={"python"}, tags=GPU_TAGS, pool=GPU_POOL)
def generated_candidates(context: AssetExecutionContext, personc: PersonCConfig, lineage: LineageResource,
                         models: LoadedModels, source_images: SourceSet, factor_decompositions: FactorDecompositions,
                         embedding_indexes: EmbeddingIndexes) -> MaterializeResult[GeneratedCandidates]:
    """First candidates: seeded recipes that take each factor from a different donor (A and B
    both represented), composed and synthesized by the backbone."""
    cfg = personc.run_config()
    store = lineage.store()
    loaded = models.context(store, source_images, factor_decompositions, embedding_indexes)
    out = generation.generate_first_attempts(cfg, personc.workspace(), store, source_images,
                                             factor_decompositions, embedding_indexes, context.run.run_id, loaded)
    return MaterializeResult(value=out, metadata={"generation_id": out.generation_id,
                                                  "candidates": len(out.candidates)})


@asset(group_name=GROUP, kinds={"python", "duckdb"}, tags=GPU_TAGS, pool=GPU_POOL)
def guard_verdicts(context: AssetExecutionContext, personc: PersonCConfig, lineage: LineageResource,
                   models: LoadedModels, source_images: SourceSet, factor_decompositions: FactorDecompositions,
                   embedding_indexes: EmbeddingIndexes,
                   generated_candidates: GeneratedCandidates) -> MaterializeResult[GuardVerdicts]:
    """Each candidate embedded by every encoder and searched against every source; rejected
    (fail closed) at tau, on no single face, or on any error; rejected slots are regenerated."""
    cfg = personc.run_config()
    store = lineage.store()
    models.context(store, source_images, factor_decompositions, embedding_indexes)  # the retries' factory reads it
    out = judging.judge_and_release(cfg, personc.workspace(), store, source_images,
                                    factor_decompositions, embedding_indexes, generated_candidates,
                                    context.run.run_id, progress_reporter(context, "released", every=1))
    return MaterializeResult(value=out, metadata={
        "released": len(out.released), "requested": cfg.num_samples, "candidates_judged": len(out.attempts),
        "pass_rate": float(out.pass_rate),
        "witness_leakage_rate": MetadataValue.json(dict(out.witness_leakage_rate)),
        "witness_unverified": MetadataValue.json(dict(out.witness_unverified)),
        "attempts": md_table([{"slot": a.slot, "attempt": a.attempt, "verdict": a.verdict,
                               **{f"sim_{k}": round(v, 3) if v is not None else None
                                  for k, v in a.similarity.items()}, "reason": a.reason[:80]}
                              for a in out.attempts])})


@asset(group_name=GROUP, kinds={"python", "html"}, tags=GPU_TAGS, pool=GPU_POOL)
def ics_reports(context: AssetExecutionContext, personc: PersonCConfig, lineage: LineageResource,
                models: LoadedModels, source_images: SourceSet, factor_decompositions: FactorDecompositions,
                embedding_indexes: EmbeddingIndexes, guard_verdicts: GuardVerdicts) -> MaterializeResult[IcsReports]:
    """Identity Contribution Scores per released face, donor and factor; reports, gallery and
    the release manifest."""
    cfg = personc.run_config()
    store = lineage.store()
    out = explaining.explain_releases(cfg, personc.workspace(), store, source_images,
                                      factor_decompositions, embedding_indexes, guard_verdicts, context.run.run_id,
                                      progress_reporter(context, "explain", every=1),
                                      models.context(store, source_images, factor_decompositions, embedding_indexes))
    meta = explaining.dagster_metadata(out)
    for key in ("gallery", "ics"):
        meta[key] = MetadataValue.md(meta[key])
    for key in ("manifest", "run_report"):
        meta[key] = MetadataValue.path(meta[key])
    return MaterializeResult(value=out, metadata=meta)
