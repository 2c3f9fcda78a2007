"""Steps 2 and 3: fit the backbone, project sources to latents, split factors."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..atomic import atomic_save_npz, load_npz
from ..backbones import BACKBONES, Backbone
from ..lineage.store import LineageStore
from ..versioning import code_version
from .config import RunConfig, Workspace
from .sources import SourceSet

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class BackboneRef:
    """How to rebuild the fitted backbone in another step (JSON-serialisable)."""

    name: str
    options: dict[str, Any]
    state_path: str
    state_hash: str

    def load(self) -> Backbone:
        backbone = BACKBONES.create(self.name, **self.options)
        backbone.load_state(Path(self.state_path))
        if backbone.state_hash() != self.state_hash:
            raise RuntimeError(f"backbone state at {self.state_path} changed since it was fitted "
                               f"({backbone.state_hash()[:12]} != {self.state_hash[:12]}); "
                               "re-materialize projected_latents")
        return backbone


def fit_and_project(cfg: RunConfig, ws: Workspace, store: LineageStore, sources: SourceSet, run_id: str,
                    progress: Progress | None = None) -> dict[str, Any]:
    """Fit the configured backbone on the sources and project each of them."""
    faces = sources.load_faces()
    options = dict(cfg.backbone_options)
    backbone = BACKBONES.create(cfg.backbone, **options)
    backbone.fit(faces)
    state_hash = backbone.state_hash()
    state_path = ws.backbone / f"{cfg.backbone}-{state_hash[:16]}.npz"
    if not state_path.exists():
        state_path.parent.mkdir(parents=True, exist_ok=True)
        backbone.save_state(state_path)
    ref = BackboneRef(cfg.backbone, options, str(state_path), state_hash)
    latents: dict[str, str] = {}
    rows = []
    todo = []
    for face in faces:
        path = ws.latents / state_hash[:16] / f"{face.content_hash}.npz"
        latents[face.content_hash] = str(path)
        if not path.exists():
            todo.append((face, path))
    for done, (face, path) in enumerate(todo, 1):
        if progress:
            progress(done, len(todo), face.source_id)
        proj = backbone.project([face])[0]
        atomic_save_npz(path, **proj.latent)
        rows.append({"content_hash": face.content_hash, "backbone": cfg.backbone, "backbone_state": state_hash,
                     "latent_path": str(path), "reconstruction_error": float(proj.reconstruction_error),
                     "extras_json": json.dumps(proj.extras), "run_id": run_id, "code_version": code_version()})
    with store.transaction() as tx:
        tx.upsert("latents", rows)
    errors = store.query(
        "SELECT avg(reconstruction_error), max(reconstruction_error) FROM latents WHERE backbone_state = ?",
        [state_hash])[0]
    return {"backbone": ref.__dict__, "latents": latents, "projected_now": len(rows),
            "mean_reconstruction_error": errors[0], "max_reconstruction_error": errors[1]}


def decompose_all(ws: Workspace, store: LineageStore, latents_summary: dict[str, Any],
                  run_id: str) -> dict[str, Any]:
    """Split each latent into named factors; save per-source factors and the population mean."""
    ref = BackboneRef(**latents_summary["backbone"])
    backbone = ref.load()
    factors_paths: dict[str, str] = {}
    rows = []
    for content_hash, latent_path in latents_summary["latents"].items():
        factors = backbone.decompose(load_npz(Path(latent_path)))
        path = Path(latent_path).with_suffix(".factors.npz")
        atomic_save_npz(path, **factors)
        factors_paths[content_hash] = str(path)
        for name in backbone.factor_names:
            vec = np.asarray(factors[name])
            rows.append({"content_hash": content_hash, "backbone_state": ref.state_hash, "factor": name,
                         "dim": int(vec.size), "norm": float(np.linalg.norm(vec)), "factors_path": str(path),
                         "run_id": run_id})
    mean_path = ws.latents / ref.state_hash[:16] / "population_mean.factors.npz"
    atomic_save_npz(mean_path, **backbone.population_mean())
    with store.transaction() as tx:
        tx.upsert("factors", rows)
    return {"backbone": latents_summary["backbone"], "factors": factors_paths, "mean": str(mean_path),
            "factor_names": list(backbone.factor_names)}
