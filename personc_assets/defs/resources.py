"""Dagster resources: the run configuration, the lineage store, the loaded models and the JSON IO manager.

``PersonCConfig`` carries every ``RunConfig`` field; ``LineageResource`` opens
the DuckDB lineage store; ``LoadedModels`` hands the steps of a run the
encoders and the loaded context (fitted backbone, factors, persons, donors)
that they share; the JSON IO manager keeps asset values (small summaries
pointing at files in the workspace) as JSON, so nothing is ever unpickled
between steps.
"""

from __future__ import annotations

import collections.abc
import json
import os
import types
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin

from dagster import ConfigurableIOManager, ConfigurableResource, InitResourceContext, InputContext, OutputContext
from pydantic import Field, create_model

from ..core.atomic import atomic_write_text
from ..core.encoders.base import Encoder
from ..core.lineage.store import LineageStore
from ..core.pipeline.config import RunConfig, Setting, Workspace, run_settings
from ..core.pipeline.context import SHARED_CONTEXTS, LoadedContext
from ..core.pipeline.indexing import EmbeddingIndexes, SkippedIndex, build_encoders
from ..core.pipeline.modeling import FactorDecompositions
from ..core.pipeline.sources import SourceSet

#: Settings whose default the environment may override (for ``dagster dev``); the CLI ignores these.
ENV_DEFAULTS: dict[str, str] = {"out_dir": "PERSONC_OUT_DIR", "sources_a": "PERSONC_SOURCES_A",
                                "sources_b": "PERSONC_SOURCES_B"}
SETTINGS = {s.name: s for s in run_settings()}
DEFAULT_OUT_DIR: str = SETTINGS["out_dir"].default


def default_out_dir() -> str:
    return os.environ.get(ENV_DEFAULTS["out_dir"], DEFAULT_OUT_DIR)


def default_db_path() -> str:
    return os.environ.get("PERSONC_DB", str(Path(default_out_dir()) / "personc.duckdb"))


def _config_type(tp: Any) -> Any:
    """The Dagster config type of a ``RunConfig`` annotation: tuples become lists, mappings dicts."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is tuple:
        return list[_config_type(args[0])]  # type: ignore[misc]
    if origin is collections.abc.Mapping:
        return dict[args[0], _config_type(args[1])]  # type: ignore[misc,valid-type]
    if origin in (Union, types.UnionType):
        return Optional[_config_type(next(a for a in args if a is not type(None)))]
    return tp


def _resource_field(setting: Setting) -> tuple[Any, Any]:
    env = ENV_DEFAULTS.get(setting.name)
    if env is not None:
        default = setting.default
        return _config_type(setting.type), Field(default_factory=lambda: os.environ.get(env, default),
                                                 description=f"{setting.help} (env {env})")
    if setting.is_sequence and setting.default is not None:
        return _config_type(setting.type), Field(default_factory=lambda: list(setting.default),
                                                 description=setting.help)
    if setting.is_mapping:
        return _config_type(setting.type), Field(default_factory=lambda: dict(setting.default),
                                                 description=setting.help)
    return _config_type(setting.type), Field(default=setting.default, description=setting.help)


#: ``RunConfig``'s fields as Dagster resource config (same names, defaults and help texts).
_RunSettings = create_model("RunSettings", __base__=ConfigurableResource,
                            **{s.name: _resource_field(s) for s in SETTINGS.values()})


class PersonCConfig(_RunSettings):  # type: ignore[misc,valid-type]
    """What a run makes and from what: every ``RunConfig`` field. Defaults run the demo on the
    embedded backbone."""

    @classmethod
    def from_run_config(cls, cfg: RunConfig) -> "PersonCConfig":
        return cls(**resource_values(cfg))

    def run_config(self) -> RunConfig:
        return RunConfig.from_dict({name: getattr(self, name) for name in SETTINGS})

    def workspace(self) -> Workspace:
        return Workspace(self.out_dir)


def resource_values(cfg: RunConfig) -> dict[str, Any]:
    """``cfg`` as ``PersonCConfig`` keyword arguments (lists for tuples, dicts for mappings)."""
    values = cfg.as_dict()
    return {name: list(values[name]) if s.is_sequence and values[name] is not None else values[name]
            for name, s in SETTINGS.items()}


class LineageResource(ConfigurableResource):
    """The DuckDB lineage store (``core.lineage.store``): every table of every step and mode in one file."""

    database: str = Field(default_factory=default_db_path,
                          description="DuckDB file of the lineage (env PERSONC_DB; default OUT/personc.duckdb)")

    def store(self) -> LineageStore:
        """The store on ``database``: short connections under the file's lock, tables created when absent."""
        return LineageStore.open(self.database)


class LoadedModels(ConfigurableResource):
    """What the steps of a run load once and share: the encoders (kept per configuration for the
    process, ``indexing.build_encoders``) and the loaded context of fitted backbone, factors, persons
    and donors (``core.pipeline.context``, kept by backbone state hash until the run ends)."""

    def encoders(self, cfg: RunConfig) -> tuple[list[Encoder], list[SkippedIndex]]:
        """The run's encoders and the ones skipped (no weights), with the reason."""
        return build_encoders(cfg)

    def context(self, store: LineageStore, sources: SourceSet, decompositions: FactorDecompositions,
                indexes: EmbeddingIndexes) -> LoadedContext:
        """The loaded context of these values: loaded by the first step that asks, shared after."""
        return SHARED_CONTEXTS.get(store, sources, decompositions, indexes)

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        SHARED_CONTEXTS.clear()  # a run's backbone and faces are not kept past the run


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
