"""The privacy modes' asset values (see ``core/values.py``), made by ``steps.py``."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

from ..values import checked
from .disentangle import FactorRanking, FactorSensitivity
from .dp import PrivacyBudget


@dataclass(frozen=True)
class RecordedRanking:
    """The ``factor_identity_ranking`` value: the ranking and the id it is recorded under."""

    ranking_id: str
    ranking: FactorRanking

    #: Written for readers of the stored JSON; recomputed from the rows when read back.
    DERIVED = ("order", "shares")

    def as_dict(self) -> dict[str, Any]:
        r = self.ranking
        return {"ranking_id": self.ranking_id, "backbone_state": r.backbone_state, "probes": list(r.probes),
                "donors_per_probe": r.donors_per_probe, "order": list(r.order()), "shares": r.shares(),
                "rows": r.table()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RecordedRanking":
        d = checked(d, "RecordedRanking", "factor_identity_ranking",
                    ("ranking_id", "backbone_state", "probes", "donors_per_probe", "rows"), cls.DERIVED)
        names = tuple(f.name for f in fields(FactorSensitivity))
        rows = tuple(FactorSensitivity(**{k: math.nan if v is None else v for k, v in
                                          checked(r, "FactorSensitivity", "factor_identity_ranking", names).items()})
                     for r in d["rows"])
        return cls(d["ranking_id"], FactorRanking(rows, d["backbone_state"], tuple(d["probes"]),
                                                  int(d["donors_per_probe"])))


@dataclass(frozen=True)
class AnonymizedFace:
    """One face anonymized: the chosen attempt's outcome and its similarity to the original."""

    output_id: str
    input_hash: str
    passed: bool                          # the guard passed it (only then is the PNG written)
    reason: str
    strength_used: float
    attempts: int
    gender_in: str | None
    gender_out: str | None
    age_in: int | None
    age_out: int | None
    image_path: str | None
    sim_original: Mapping[str, float]     # encoder -> cosine to the original photo
    max_sim_sources: Mapping[str, float]  # encoder -> max cosine to any source

    def as_dict(self) -> dict[str, Any]:
        return {"output_id": self.output_id, "input_hash": self.input_hash, "passed": self.passed,
                "reason": self.reason, "strength_used": self.strength_used, "attempts": self.attempts,
                "gender_in": self.gender_in, "gender_out": self.gender_out, "age_in": self.age_in,
                "age_out": self.age_out, "image_path": self.image_path, "sim_original": dict(self.sim_original),
                "max_sim_sources": dict(self.max_sim_sources)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AnonymizedFace":
        d = checked(d, "AnonymizedFace", "anonymized_faces", (
            "output_id", "input_hash", "passed", "reason", "strength_used", "attempts", "gender_in", "gender_out",
            "age_in", "age_out", "image_path", "sim_original", "max_sim_sources"))
        return cls(d["output_id"], d["input_hash"], bool(d["passed"]), d["reason"], float(d["strength_used"]),
                   int(d["attempts"]), d["gender_in"], d["gender_out"], d["age_in"], d["age_out"], d["image_path"],
                   dict(d["sim_original"]), dict(d["max_sim_sources"]))


@dataclass(frozen=True)
class AnonymizedFaces:
    """The ``anonymized_faces`` value: every face tried at one strength."""

    strength: float
    outputs: tuple[AnonymizedFace, ...]

    #: Written for readers of the stored JSON; recomputed from the outputs when read back.
    DERIVED = ("passed", "faces")

    @property
    def passed(self) -> int:
        return sum(o.passed for o in self.outputs)

    @property
    def faces(self) -> int:
        return len(self.outputs)

    def as_dict(self) -> dict[str, Any]:
        return {"strength": self.strength, "outputs": [o.as_dict() for o in self.outputs], "passed": self.passed,
                "faces": self.faces}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AnonymizedFaces":
        d = checked(d, "AnonymizedFaces", "anonymized_faces", ("strength", "outputs"), cls.DERIVED)
        return cls(float(d["strength"]), tuple(AnonymizedFace.from_dict(o) for o in d["outputs"]))


@dataclass(frozen=True)
class CancelableTemplate:
    """One face enrolled under a key."""

    template_id: str
    input_hash: str
    transform: str
    passed: bool                        # the guard passed it (only then are its files written)
    reason: str
    image_path: str | None
    sim_original: Mapping[str, float]   # encoder -> cosine to the original photo

    def as_dict(self) -> dict[str, Any]:
        return {"template_id": self.template_id, "input_hash": self.input_hash, "transform": self.transform,
                "passed": self.passed, "reason": self.reason, "image_path": self.image_path,
                "sim_original": dict(self.sim_original)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CancelableTemplate":
        d = checked(d, "CancelableTemplate", "cancelable_templates", (
            "template_id", "input_hash", "transform", "passed", "reason", "image_path", "sim_original"))
        return cls(d["template_id"], d["input_hash"], d["transform"], bool(d["passed"]), d["reason"],
                   d["image_path"], dict(d["sim_original"]))


@dataclass(frozen=True)
class CancelableTemplates:
    """The ``cancelable_templates`` value: the faces enrolled under one key, and the measured
    properties that allowed it (``Assessment.rows()``: one JSON row per property and encoder)."""

    key_id: str
    templates: tuple[CancelableTemplate, ...]
    assessment: tuple[Mapping[str, Any], ...]

    #: Written for readers of the stored JSON; recomputed from the templates when read back.
    DERIVED = ("passed", "faces")

    @property
    def passed(self) -> int:
        return sum(t.passed for t in self.templates)

    @property
    def faces(self) -> int:
        return len(self.templates)

    def as_dict(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "templates": [t.as_dict() for t in self.templates], "passed": self.passed,
                "faces": self.faces, "assessment": [dict(r) for r in self.assessment]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CancelableTemplates":
        d = checked(d, "CancelableTemplates", "cancelable_templates", ("key_id", "templates", "assessment"),
                    cls.DERIVED)
        return cls(d["key_id"], tuple(CancelableTemplate.from_dict(t) for t in d["templates"]),
                   tuple(dict(r) for r in d["assessment"]))


@dataclass(frozen=True)
class DPReleasedFace:
    """One differentially private attribute release."""

    release_id: str
    face_key: str               # content hash of the source face released
    epsilon: float
    delta: float
    gender_in: str | None
    gender_out: str | None
    age_in: int | None
    age_out: int | None
    image_path: str
    held_out: str               # the person whose photos the directions were fitted without
    watermark_payload: str

    def as_dict(self) -> dict[str, Any]:
        return {"release_id": self.release_id, "face_key": self.face_key, "epsilon": self.epsilon,
                "delta": self.delta, "gender_in": self.gender_in, "gender_out": self.gender_out,
                "age_in": self.age_in, "age_out": self.age_out, "image_path": self.image_path,
                "held_out": self.held_out, "watermark_payload": self.watermark_payload}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DPReleasedFace":
        d = checked(d, "DPReleasedFace", "dp_attribute_releases", (
            "release_id", "face_key", "epsilon", "delta", "gender_in", "gender_out", "age_in", "age_out",
            "image_path", "held_out", "watermark_payload"))
        return cls(d["release_id"], d["face_key"], float(d["epsilon"]), float(d["delta"]), d["gender_in"],
                   d["gender_out"], d["age_in"], d["age_out"], d["image_path"], d["held_out"], d["watermark_payload"])


@dataclass(frozen=True)
class DPRefusal:
    """A face not released, and why (``kind``: direction, budget or watermark)."""

    input_hash: str
    kind: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"input_hash": self.input_hash, "kind": self.kind, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DPRefusal":
        d = checked(d, "DPRefusal", "dp_attribute_releases", ("input_hash", "kind", "reason"))
        return cls(d["input_hash"], d["kind"], d["reason"])


@dataclass(frozen=True)
class DPReleases:
    """The ``dp_attribute_releases`` value: the run's releases and refusals, its settings and spend,
    the directions used (person -> attribute -> their record) and what the epsilon covers."""

    directions: Mapping[str, Mapping[str, Mapping[str, Any]]]
    releases: tuple[DPReleasedFace, ...]
    refused: tuple[DPRefusal, ...]
    epsilon: float
    mechanism: str
    delta: float
    width: float
    run_epsilon_spent: float
    run_delta_spent: float
    budget: PrivacyBudget
    guarantee: Mapping[str, Any]        # ``dp.guarantee``: JSON-ready
    manifest: str | None                # the manifest the releases were added to (None: no release)
    manifest_sha256: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"directions": {p: {a: dict(r) for a, r in by.items()} for p, by in self.directions.items()},
                "releases": [r.as_dict() for r in self.releases], "refused": [r.as_dict() for r in self.refused],
                "epsilon": self.epsilon, "mechanism": self.mechanism, "delta": self.delta, "width": self.width,
                "run_epsilon_spent": self.run_epsilon_spent, "run_delta_spent": self.run_delta_spent,
                "budget": {"epsilon_per_face": self.budget.epsilon_per_face,
                           "delta_per_face": self.budget.delta_per_face,
                           "epsilon_per_run": self.budget.epsilon_per_run},
                "guarantee": dict(self.guarantee), "manifest": self.manifest, "manifest_sha256": self.manifest_sha256}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DPReleases":
        asset = "dp_attribute_releases"
        d = checked(d, "DPReleases", asset, (
            "directions", "releases", "refused", "epsilon", "mechanism", "delta", "width", "run_epsilon_spent",
            "run_delta_spent", "budget", "guarantee", "manifest", "manifest_sha256"))
        budget = checked(d["budget"], "PrivacyBudget", asset, ("epsilon_per_face", "delta_per_face",
                                                               "epsilon_per_run"))
        return cls({p: {a: dict(r) for a, r in by.items()} for p, by in d["directions"].items()},
                   tuple(DPReleasedFace.from_dict(r) for r in d["releases"]),
                   tuple(DPRefusal.from_dict(r) for r in d["refused"]), float(d["epsilon"]), d["mechanism"],
                   float(d["delta"]), float(d["width"]), float(d["run_epsilon_spent"]), float(d["run_delta_spent"]),
                   PrivacyBudget(**budget), dict(d["guarantee"]), d["manifest"], d["manifest_sha256"])
