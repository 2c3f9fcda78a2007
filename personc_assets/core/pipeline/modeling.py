"""Steps 2 and 3: fit the backbone, project sources to latents, split factors."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..atomic import atomic_save_npz, load_npz
from ..backbones import BACKBONES, Backbone
from ..lineage.store import LineageStore
from ..values import checked
from ..versioning import code_version
from .config import RunConfig, Workspace
from .sources import SourceSet

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class BackboneRef:
    """How to rebuild the fitted backbone in another step."""

    name: str
    options: Mapping[str, Any]
    state_path: str
    state_hash: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options), "state_path": self.state_path,
                "state_hash": self.state_hash}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], asset: str = "projected_latents") -> "BackboneRef":
        d = checked(d, "BackboneRef", asset, ("name", "options", "state_path", "state_hash"))
        return cls(d["name"], dict(d["options"]), d["state_path"], d["state_hash"])

    def load(self) -> Backbone:
        backbone = BACKBONES.create(self.name, **self.options)
        backbone.load_state(Path(self.state_path))
        if backbone.state_hash() != self.state_hash:
            raise RuntimeError(f"backbone state at {self.state_path} changed since it was fitted "
                               f"({backbone.state_hash()[:12]} != {self.state_hash[:12]}); "
                               "re-materialize projected_latents")
        return backbone


@dataclass(frozen=True)
class ProjectedLatents:
    """The ``projected_latents`` value: the fitted backbone and each source's latent file."""

    backbone: BackboneRef
    latents: Mapping[str, str]              # content hash -> latent ``.npz``
    projected_now: int                      # latents computed by this run (the others were on disk)
    mean_reconstruction_error: float | None  # over every latent of this backbone state
    max_reconstruction_error: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"backbone": self.backbone.as_dict(), "latents": dict(self.latents),
                "projected_now": self.projected_now, "mean_reconstruction_error": self.mean_reconstruction_error,
                "max_reconstruction_error": self.max_reconstruction_error}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ProjectedLatents":
        d = checked(d, "ProjectedLatents", "projected_latents", ("backbone", "latents", "projected_now",
                                                                 "mean_reconstruction_error",
                                                                 "max_reconstruction_error"))
        return cls(BackboneRef.from_dict(d["backbone"]), dict(d["latents"]), int(d["projected_now"]),
                   d["mean_reconstruction_error"], d["max_reconstruction_error"])


@dataclass(frozen=True)
class FactorDecompositions:
    """The ``factor_decompositions`` value: each source's named factors and the population mean."""

    backbone: BackboneRef
    factors: Mapping[str, str]   # content hash -> factors ``.npz``
    mean: str                    # the population mean's factors ``.npz``
    factor_names: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"backbone": self.backbone.as_dict(), "factors": dict(self.factors), "mean": self.mean,
                "factor_names": list(self.factor_names)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FactorDecompositions":
        d = checked(d, "FactorDecompositions", "factor_decompositions", ("backbone", "factors", "mean",
                                                                         "factor_names"))
        return cls(BackboneRef.from_dict(d["backbone"], "factor_decompositions"), dict(d["factors"]), d["mean"],
                   tuple(d["factor_names"]))

    def load_factors(self) -> dict[str, dict[str, np.ndarray]]:
        """Each source's factors by content hash, from their ``.npz`` files (no pickle)."""
        return {h: load_npz(Path(p)) for h, p in self.factors.items()}

    def load_mean(self) -> dict[str, np.ndarray]:
        return load_npz(Path(self.mean))


def fit_and_project(cfg: RunConfig, ws: Workspace, store: LineageStore, sources: SourceSet, run_id: str,
                    progress: Progress | None = None) -> ProjectedLatents:
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
    return ProjectedLatents(ref, latents, len(rows), errors[0], errors[1])


def decompose_all(ws: Workspace, store: LineageStore, latents: ProjectedLatents, run_id: str) -> FactorDecompositions:
    """Split each latent into named factors; save per-source factors and the population mean."""
    ref = latents.backbone
    backbone = ref.load()
    factors_paths: dict[str, str] = {}
    rows = []
    for content_hash, latent_path in latents.latents.items():
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
    return FactorDecompositions(ref, factors_paths, str(mean_path), tuple(backbone.factor_names))
