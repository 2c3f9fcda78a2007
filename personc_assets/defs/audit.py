"""Auditing the guard (group ``personc_audit``): the red-team report, disguised copies of the run's
sources judged by the guard."""

from dagster import AssetExecutionContext, Definitions, MaterializeResult, MetadataValue, asset

from ..core.atomic import atomic_write_text
from ..core.pipeline.indexing import EmbeddingIndexes
from ..core.pipeline.sources import SourceSet
from ..core.redteam import RedTeamSummary, redteam_sources, render_markdown
from .resources import LineageResource, LoadedModels, PersonCConfig

GROUP = "personc_audit"


@asset(group_name=GROUP, kinds={"python"})
def redteam_report(context: AssetExecutionContext, personc: PersonCConfig, lineage: LineageResource,
                   models: LoadedModels, source_images: SourceSet,
                   embedding_indexes: EmbeddingIndexes) -> MaterializeResult[RedTeamSummary]:
    """Disguises of source faces (second photo held out of the index, mirror, crops, rotations, JPEG q20,
    64 px, brightness/contrast/colour, blur, sunglasses, 70/30 morph) judged by the run's guard:
    rejection rate per variant and encoder, and why (similarity or fail-closed)."""
    cfg = personc.run_config()
    encoders, _ = models.encoders(cfg)
    taus = embedding_indexes.tau_choices()
    encoders = [e for e in encoders if e.name in taus]  # only encoders the run indexed
    witnesses = tuple(cfg.witness_encoders)
    faces = source_images.load_faces()
    report = redteam_sources(faces, encoders, taus, lineage.store(), context.run.run_id, witnesses)
    table = render_markdown(report)
    path = personc.workspace().reports / "redteam.md"
    atomic_write_text(path, "# Red-team report\n\n" + table)
    for t in report.missed():
        context.log.warning(f"red team: {t.variant} of {t.label} passed the guard: {t.verdict.reason}")
    return MaterializeResult(value=report.summary(), metadata={
        "variants": MetadataValue.md(table),
        "all_rejected": report.all_rejected,
        "trials": len(report.trials),
        "missed": len(report.missed()),
        "encoders": MetadataValue.json(list(report.encoders)),
        "report": MetadataValue.path(str(path)),
    })


defs = Definitions(assets=[redteam_report])
