"""Run configuration and the on-disk layout of one PersonC workspace."""

from __future__ import annotations

import collections.abc
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, get_args, get_origin, get_type_hints


def setting(default: Any, help: str) -> Any:
    """A ``RunConfig`` field: its default (an empty dict is made fresh per instance) and its help text.

    The help text is what ``personc demo --help`` and the Dagster launchpad show for the field.
    """
    if isinstance(default, dict):
        if default:
            raise ValueError("a setting's dict default must be empty (dataclass defaults are shared)")
        return field(default_factory=dict, metadata={"help": help})
    return field(default=default, metadata={"help": help})


#: Old setting names and the fields that replaced them.
RENAMED_SETTINGS: dict[str, str] = {"audit_encoders": "witness_encoders"}


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's outputs (hashed into lineage).

    The one place a run setting, its default and its validation are declared:
    the Dagster resource, the runner and the CLI derive theirs from these
    fields (``run_settings``).
    """

    out_dir: str = setting("data/out", "folder for every generated file")
    sources_a: str | None = setting(None, "folder of group A photos (unset with sources_b: the demo photos)")
    sources_b: str | None = setting(None, "folder of group B photos")
    backbone: str = setting("morphable", "generative backbone: 'morphable' (embedded) or 'stylegan2'")
    backbone_options: Mapping[str, Any] = setting({}, "backbone factory options, e.g. "
                                                  '{"weights": "weights/ffhq.pkl", "projection_steps": 100}')
    encoders: tuple[str, ...] | None = setting(None, "encoders that gate releases (default: every encoder "
                                               "whose weights exist)")
    witness_encoders: tuple[str, ...] = setting((), "witness encoders: measured and reported but never gate "
                                                "a release (their leakage rate is the honest estimate of "
                                                "what the guard missed)")
    encoder_options: Mapping[str, Mapping[str, Any]] = setting({}, "options per encoder factory, e.g. "
                                                               '{"magface": {"arch": "iresnet50"}}')
    weights_dir: str = setting("weights", "folder of encoder weights (see weights/README.md)")
    taus: Mapping[str, float] = setting({}, 'tau per encoder name, e.g. {"dlib": 0.9}')
    bare_tau: float | None = setting(None, "a tau without encoder name: ArcFace cosine scale, applied to "
                                     "ArcFace only")
    target_fmr: float | None = setting(None, "set each encoder's tau from its stored calibration (personc "
                                       "calibrate --db) for this false-match rate per released face over all "
                                       "sources (faces of nobody in the sources rejected as one of them: a "
                                       "cost in released faces, not a bound on leaks); never above the "
                                       "calibrated same-person minimum nor the encoder's default tau (set a "
                                       "tau by value for a laxer one)")
    num_samples: int = setting(5, "faces to release")
    max_attempts: int = setting(20, "candidates tried per released face")
    seed: int = setting(0, "recipe sampling seed")
    min_face_px: int = setting(64, "smallest accepted face width in source pixels")
    recipe_options: Mapping[str, Any] = setting({}, "recipe sampler knobs (core.recipes.SamplerKnobs fields)")
    novelty: Mapping[str, Any] = setting({}, "novelty step knobs (core.novelty.NoveltyConfig fields)")
    attribution_maps: bool = setting(True, "occlusion maps in the per-face reports (a few seconds per face)")
    report_sources: str = setting("thumbnails", "'thumbnails' or 'withheld': whether reports show the "
                                  "donors' aligned faces")

    def __post_init__(self) -> None:
        if self.encoders is not None and not self.encoders:  # empty means unset: every encoder with weights
            object.__setattr__(self, "encoders", None)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.report_sources not in ("thumbnails", "withheld"):
            raise ValueError(f"report_sources must be 'thumbnails' or 'withheld', got {self.report_sources!r}")
        if self.target_fmr is not None and not 0.0 < self.target_fmr < 1.0:
            raise ValueError(f"target_fmr must be in (0, 1), got {self.target_fmr}")
        for name, tau in self.taus.items():
            if not (-1.0 < tau <= 1.0) or math.isnan(tau):
                raise ValueError(f"tau for {name} must be a cosine in (-1, 1], got {tau}")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["backbone_options"] = dict(self.backbone_options)
        d["taus"] = dict(self.taus)
        d["novelty"] = dict(self.novelty)
        d["encoder_options"] = {k: dict(v) for k, v in self.encoder_options.items()}
        d["recipe_options"] = dict(self.recipe_options)
        return d

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RunConfig":
        """The config of ``values`` (``as_dict``'s inverse; JSON lists become the tuples of tuple fields).

        A setting's old name (``RENAMED_SETTINGS``) is read as its new one, so configs stored
        before a rename still load.
        """
        values = {RENAMED_SETTINGS.get(name, name): v for name, v in values.items()}
        known = {s.name: s for s in run_settings()}
        unknown = set(values) - set(known)
        if unknown:
            raise ValueError(f"unknown run setting(s) {', '.join(sorted(unknown))}; known: {', '.join(known)}")
        return cls(**{name: tuple(v) if known[name].is_sequence and v is not None else v
                      for name, v in values.items()})


@dataclass(frozen=True)
class Setting:
    """One ``RunConfig`` field as the entry points see it."""

    name: str
    type: Any          # the annotation, e.g. ``tuple[str, ...] | None``
    default: Any       # a fresh copy for mutable defaults
    help: str

    @property
    def optional(self) -> bool:
        """``None`` is a valid value."""
        return type(None) in get_args(self.type)

    @property
    def value_type(self) -> Any:
        """The annotation without ``None``: ``str | None`` → ``str``."""
        args = [a for a in get_args(self.type) if a is not type(None)] if self.optional else [self.type]
        return args[0]

    @property
    def is_sequence(self) -> bool:
        """A ``tuple[X, ...]`` field (a list in JSON and Dagster config)."""
        return get_origin(self.value_type) is tuple

    @property
    def is_mapping(self) -> bool:
        """A ``Mapping[str, X]`` field (a JSON object)."""
        return get_origin(self.value_type) is collections.abc.Mapping


def run_settings() -> tuple[Setting, ...]:
    """``RunConfig``'s fields in declaration order, with their types, defaults and help texts."""
    hints = get_type_hints(RunConfig)
    return tuple(Setting(f.name, hints[f.name], f.default_factory() if f.default is MISSING else f.default,
                         f.metadata["help"]) for f in fields(RunConfig))


class Workspace:
    """Paths of one output folder (all generated files live under it)."""

    def __init__(self, out_dir: str | Path) -> None:
        self.root = Path(out_dir).resolve()

    @property
    def db_path(self) -> Path:
        return self.root / "personc.duckdb"

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    aligned = property(lambda self: self.root / "artifacts" / "aligned")
    latents = property(lambda self: self.root / "artifacts" / "latents")
    backbone = property(lambda self: self.root / "artifacts" / "backbone")
    indexes = property(lambda self: self.root / "artifacts" / "indexes")
    candidates = property(lambda self: self.root / "artifacts" / "candidates")
    released = property(lambda self: self.root / "released")
    reports = property(lambda self: self.root / "reports")
    demo_sources = property(lambda self: self.root / "demo_sources")
    manifest = property(lambda self: self.root / "manifest.json")
