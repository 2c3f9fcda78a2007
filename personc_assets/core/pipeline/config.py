"""Run configuration and the on-disk layout of one PersonC workspace."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Mapping

from ..encoders.base import Encoder

#: The seed's ``--tau 0.4`` is an ArcFace cosine; a bare tau applies to this encoder only.
BARE_TAU_ENCODER = "arcface"


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's outputs (hashed into lineage)."""

    out_dir: str = "data/out"
    sources_a: str | None = None          # None: the demo sources
    sources_b: str | None = None
    backbone: str = "morphable"
    backbone_options: Mapping[str, Any] = field(default_factory=dict)
    encoders: tuple[str, ...] | None = None  # None: every encoder whose weights are present
    audit_encoders: tuple[str, ...] = ()  # measured and reported, never gating
    encoder_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per encoder factory
    weights_dir: str = "weights"
    taus: Mapping[str, float] = field(default_factory=dict)  # per encoder name
    bare_tau: float | None = None         # ``--tau 0.4``: ArcFace scale
    target_fmr: float | None = None       # tau from the stored calibration for this FMR per face
    num_samples: int = 5
    max_attempts: int = 20                # candidates tried per released slot
    seed: int = 0
    min_face_px: int = 64
    recipe_options: Mapping[str, Any] = field(default_factory=dict)
    novelty: Mapping[str, Any] = field(default_factory=dict)  # ``core.novelty.NoveltyConfig`` fields
    attribution_maps: bool = True         # occlusion maps in the reports (a few seconds per face)
    report_sources: str = "thumbnails"    # or "withheld": reports never show source faces

    def __post_init__(self) -> None:
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


#: Where a tau came from: ``--tau NAME=VALUE``, a bare ``--tau`` (ArcFace scale), a stored
#: calibration for ``--target-fmr``, or the encoder's default.
TauSource = Literal["explicit", "bare", "calibrated", "default"]


@dataclass(frozen=True)
class TauChoice:
    encoder: str
    tau: float
    why: str
    source: TauSource = "default"


def resolve_taus(encoders: list[Encoder], taus: Mapping[str, float], bare_tau: float | None,
                 calibrated: Mapping[str, TauChoice] | None = None) -> dict[str, TauChoice]:
    """Pick each encoder's tau on its own scale and say why.

    An explicit ``name=value`` wins; a bare value applies only to ArcFace
    (whose cosine scale it is given on); then a calibrated tau for a target
    false-match rate (see ``thresholds.py``), never laxer than the encoder's
    default (``never_laxer_than_default``); otherwise the encoder's default.
    Only a tau given by value may loosen the guard.
    """
    unknown = set(taus) - {e.name for e in encoders}
    if unknown:
        raise ValueError(f"tau given for encoder(s) not in use: {', '.join(sorted(unknown))}; "
                         f"encoders in use: {', '.join(e.name for e in encoders)}")
    out = {}
    for enc in encoders:
        if enc.name in taus:
            out[enc.name] = TauChoice(enc.name, float(taus[enc.name]), "set explicitly", "explicit")
        elif bare_tau is not None and enc.name == BARE_TAU_ENCODER:
            out[enc.name] = TauChoice(enc.name, float(bare_tau), "--tau (ArcFace cosine scale)", "bare")
        elif calibrated and enc.name in calibrated:
            out[enc.name] = never_laxer_than_default(calibrated[enc.name], enc)
        else:
            why = f"default: {enc.tau_rationale}"
            if bare_tau is not None:
                why = (f"--tau {bare_tau} is an ArcFace-scale cosine and is not applied to {enc.name}; "
                       + why)
            out[enc.name] = TauChoice(enc.name, float(enc.default_tau), why)
    return out


def never_laxer_than_default(choice: TauChoice, encoder: Encoder) -> TauChoice:
    """``choice`` (a calibrated tau) capped at ``encoder``'s default tau.

    A higher tau lets closer look-alikes of a source through; a calibration
    may tighten the guard, never loosen it.
    """
    default = float(encoder.default_tau)
    if choice.tau <= default:
        return replace(choice, source="calibrated")
    return TauChoice(encoder.name, default, (
        f"{choice.why}; that tau ({choice.tau:.3f}) would be laxer than the default {default:.3f}, which is kept: "
        f"a calibration never loosens the guard (give --tau {encoder.name}=VALUE to choose a laxer tau)"),
        "calibrated")


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
