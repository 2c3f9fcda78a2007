"""Step 7: identity contribution scores, attribution maps, reports and the manifest."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..explain.ics import EncoderSimilarity, identity_contribution_scores
from ..lineage.store import LineageStore
from ..recipes import mix_factors
from .config import RunConfig, Workspace
from .generation import CandidateFactory
from .indexing import build_encoders, persons_by_embedding, embed_sources
from .sources import SourceSet

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]


def explain_releases(cfg: RunConfig, ws: Workspace, store: LineageStore, sources: SourceSet,
                     factors_summary: dict[str, Any], index_summary: dict[str, Any],
                     verdicts: dict[str, Any], run_id: str, progress: Progress | None = None) -> dict[str, Any]:
    """ICS of every released face towards each of its donors and its nearest sources."""
    encoders, _ = build_encoders(cfg)
    factory = CandidateFactory(cfg, ws, sources, factors_summary,
                               persons_by_embedding(store, sources, index_summary))
    faces = {f.content_hash: f for f in sources.load_faces()}
    source_ids = {e["content_hash"]: e["source_id"] for e in sources.entries}
    out = []
    for done, rel in enumerate(verdicts["released"], 1):
        t0 = time.perf_counter()
        recipe = factory.recipe(rel["slot"], rel["attempt"])
        mixed = mix_factors(recipe, factory.factors, factory.mean)
        targets = list(dict.fromkeys([*recipe.donors(), *[h for h in rel["nearest"].values() if h]]))
        donor_emb = {enc.name: embed_sources(enc, [faces[h] for h in targets], store, run_id)
                     for enc in encoders}
        similarity = EncoderSimilarity(encoders, donor_emb, [source_ids[h] for h in targets])
        ics = identity_contribution_scores(factory.backbone, mixed, similarity)
        rows = []
        for r in ics.rows():
            for method, score, share in (("shapley", r["phi"], r["share"]), ("drop", r["drop"], None)):
                rows.append({"release_id": rel["release_id"], "encoder": r["encoder"], "donor": r["donor"],
                             "factor": r["factor"], "method": method, "score": score, "share": share,
                             "run_id": run_id})
        with store.transaction() as tx:
            tx.upsert("ics", rows)
        seconds = time.perf_counter() - t0
        out.append({"release_id": rel["release_id"], "file": rel["file"], "ics": ics.summary(),
                    "sentences": [ics.sentence(e, source_ids[d]) for e in ics.encoder_names
                                  for d in recipe.donors() if d in source_ids],
                    "seconds": seconds})
        if progress:
            progress(done, len(verdicts["released"]), rel["release_id"])
    return {"explained": out}


def dagster_metadata(out: dict[str, Any]) -> dict[str, Any]:
    """Plain values/markdown for the asset's metadata (wrapped by the Dagster layer)."""
    lines = ["| release | strongest factor per donor |", "|---|---|"]
    for e in out["explained"]:
        lines.append(f"| {e['release_id']} | " + "<br>".join(e["sentences"][:6]) + " |")
    return {"released": len(out["explained"]), "ics": "\n".join(lines)}
