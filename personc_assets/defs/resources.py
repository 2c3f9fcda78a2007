"""Dagster resources: the run configuration and the JSON IO manager.

The DuckDB connection comes from ``dagster_duckdb.DuckDBResource``; the
JSON IO manager keeps asset values (small summaries pointing at files in the
workspace) as JSON, so nothing is ever unpickled between steps.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dagster import ConfigurableIOManager, ConfigurableResource, InputContext, OutputContext
from pydantic import Field

from ..core.atomic import atomic_write_text
from ..core.pipeline.config import RunConfig, Workspace

DEFAULT_OUT_DIR = "data/out"


def default_out_dir() -> str:
    return os.environ.get("PERSONC_OUT_DIR", DEFAULT_OUT_DIR)


def default_db_path() -> str:
    return os.environ.get("PERSONC_DB", str(Path(default_out_dir()) / "personc.duckdb"))


class PersonCConfig(ConfigurableResource):
    """What a run makes and from what. Defaults run the demo on the embedded backbone."""

    out_dir: str = Field(default_factory=default_out_dir,
                         description="folder for every generated file (env PERSONC_OUT_DIR)")
    sources_a: str | None = Field(default_factory=lambda: os.environ.get("PERSONC_SOURCES_A"),
                                  description="photos of group A; unset with sources_b: demo sources")
    sources_b: str | None = Field(default_factory=lambda: os.environ.get("PERSONC_SOURCES_B"),
                                  description="photos of group B")
    backbone: str = Field(default="morphable", description="'morphable' (embedded) or 'stylegan2'")
    backbone_options_json: str = Field(default="{}", description="backbone options as JSON, e.g. "
                                       '{"weights": "weights/ffhq.pkl"}')
    encoders: list[str] | None = Field(default=None, description="encoders to use; unset: all with weights")
    audit_encoders: list[str] = Field(default_factory=list, description="encoders that are measured and "
                                      "reported (leakage rate) but never gate a release")
    encoder_options_json: str = Field(default="{}", description="per-encoder options as JSON, e.g. "
                                      '{"magface": {"arch": "iresnet50"}}')
    weights_dir: str = Field(default="weights", description="folder with user-supplied model files")
    taus: dict[str, float] = Field(default_factory=dict, description="per-encoder tau, e.g. {'dlib': 0.9}")
    bare_tau: float | None = Field(default=None, description="a tau without encoder name: ArcFace cosine "
                                   "scale, applied to ArcFace only")
    target_fmr: float | None = Field(default=None, description="choose each encoder's tau from its stored "
                                     "calibration (personc calibrate --db) for this false-match rate per face")
    num_samples: int = Field(default=5, description="faces to release")
    max_attempts: int = Field(default=20, description="candidates tried per released face")
    seed: int = Field(default=0, description="recipe sampling seed")
    min_face_px: int = Field(default=64, description="smallest accepted face width in source pixels")
    attribution_maps: bool = Field(default=True, description="occlusion maps in the per-face reports")
    report_sources: str = Field(default="thumbnails", description="'thumbnails' or 'withheld': whether "
                                "reports show the donors' aligned faces")

    def run_config(self) -> RunConfig:
        return RunConfig(out_dir=self.out_dir, sources_a=self.sources_a, sources_b=self.sources_b,
                         backbone=self.backbone, backbone_options=json.loads(self.backbone_options_json),
                         encoders=tuple(self.encoders) if self.encoders else None,
                         audit_encoders=tuple(self.audit_encoders),
                         encoder_options=json.loads(self.encoder_options_json), weights_dir=self.weights_dir,
                         taus=dict(self.taus), bare_tau=self.bare_tau, target_fmr=self.target_fmr,
                         num_samples=self.num_samples, max_attempts=self.max_attempts,
                         seed=self.seed, min_face_px=self.min_face_px,
                         attribution_maps=self.attribution_maps, report_sources=self.report_sources)

    def workspace(self) -> Workspace:
        return Workspace(self.out_dir)


class JsonIOManager(ConfigurableIOManager):
    """Stores each asset's value as ``<base_dir>/<asset key>.json`` (atomic writes)."""

    base_dir: str = Field(default_factory=lambda: str(Path(default_out_dir()) / "state"))

    def _path(self, context: InputContext | OutputContext) -> Path:
        key = context.asset_key if context.has_asset_key else None
        name = "/".join(key.path) if key else context.get_identifier()[-1]
        return Path(self.base_dir) / f"{name}.json"

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if obj is None:
            return
        atomic_write_text(self._path(context), json.dumps(obj, indent=1, sort_keys=True))

    def load_input(self, context: InputContext) -> Any:
        path = self._path(context.upstream_output if context.upstream_output else context)
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: materialize the upstream asset "
                                    f"{context.upstream_output.asset_key.to_user_string()} first")
        return json.loads(path.read_text())
