"""Step 4: embed every source with every encoder and build the FAISS indexes.

Embeddings are cached in the lineage store by (content hash, encoder
version): an unchanged source is never embedded twice across runs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..atomic import atomic_write_text
from ..encoders.base import ENCODERS, Encoder
from ..ensemble import TauChoice, embed_sources, resolve_taus
from ..gates import thresholds_for_sources
from ..index import EmbeddingIndex, IndexManifest, source_set_hash
from ..lineage.store import LineageStore
from ..realism import DEFAULT_THRESHOLDS, RealismThresholds
from ..values import checked
from ..versioning import code_version, config_hash
from .config import RunConfig, Workspace
from .sources import SourceSet
from .thresholds import calibrated_taus

log = logging.getLogger(__name__)

#: Encoder whose tau says "same person" when grouping source photos into people and matching
#: donors: dlib's, calibrated on real photos, when it is in the run; else the first encoder.
PERSON_ENCODER = "dlib"


@dataclass(frozen=True)
class SkippedIndex:
    """An encoder left out of this run (no weights), and why."""

    encoder: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"encoder": self.encoder, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SkippedIndex":
        d = checked(d, "SkippedIndex", "embedding_indexes", ("encoder", "reason"))
        return cls(d["encoder"], d["reason"])


@dataclass(frozen=True)
class EncoderIndex:
    """One encoder's FAISS index over every guarded source, and the tau the guard judges it at."""

    encoder: str
    encoder_version: str
    index_path: str
    kind: str               # ``IndexManifest.kind``
    gating: bool            # False: a witness, measured and reported, never deciding a release
    count: int              # photos indexed: donors and protect-only
    dim: int
    tau_choice: TauChoice   # the tau, and where it came from and why

    @property
    def tau(self) -> float:
        return self.tau_choice.tau

    def as_dict(self) -> dict[str, Any]:
        return {"encoder": self.encoder, "encoder_version": self.encoder_version, "index_path": self.index_path,
                "kind": self.kind, "gating": self.gating, "count": self.count, "dim": self.dim,
                "tau": self.tau_choice.tau, "tau_why": self.tau_choice.why, "tau_source": self.tau_choice.source}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EncoderIndex":
        d = checked(d, "EncoderIndex", "embedding_indexes", ("encoder", "encoder_version", "index_path", "kind",
                                                             "gating", "count", "dim", "tau", "tau_why"),
                    ("tau_source",))
        choice = TauChoice(d["encoder"], float(d["tau"]), d["tau_why"], d.get("tau_source", "default"))
        return cls(d["encoder"], d["encoder_version"], d["index_path"], d["kind"], bool(d["gating"]),
                   int(d["count"]), int(d["dim"]), choice)


@dataclass(frozen=True)
class EmbeddingIndexes:
    """The ``embedding_indexes`` value: per encoder in use, its index over the guarded sources and
    its tau; the encoders left out; and each donor's gender class when the labeller is installed."""

    indexes: tuple[EncoderIndex, ...]
    skipped: tuple[SkippedIndex, ...]
    source_set_hash: str
    source_classes: Mapping[str, str] = field(default_factory=dict)  # content hash -> class; {}: no labeller

    def as_dict(self) -> dict[str, Any]:
        return {"indexes": [i.as_dict() for i in self.indexes], "skipped": [s.as_dict() for s in self.skipped],
                "source_set_hash": self.source_set_hash, "source_classes": dict(self.source_classes)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EmbeddingIndexes":
        d = checked(d, "EmbeddingIndexes", "embedding_indexes", ("indexes", "skipped", "source_set_hash"),
                    ("source_classes",))
        return cls(tuple(EncoderIndex.from_dict(i) for i in d["indexes"]),
                   tuple(SkippedIndex.from_dict(s) for s in d["skipped"]), d["source_set_hash"],
                   dict(d.get("source_classes") or {}))

    def get(self, encoder: str) -> EncoderIndex | None:
        """The index of ``encoder``, None when the run has none."""
        return next((i for i in self.indexes if i.encoder == encoder), None)

    def tau_choices(self) -> dict[str, TauChoice]:
        """Each indexed encoder's tau, and why."""
        return {i.encoder: i.tau_choice for i in self.indexes}

    def person_index(self) -> EncoderIndex:
        """The index of the encoder that tells people apart among the sources (``PERSON_ENCODER``)."""
        return self.get(PERSON_ENCODER) or self.indexes[0]


def build_encoders(cfg: RunConfig) -> tuple[list[Encoder], list[SkippedIndex]]:
    """The encoders of this run and the ones skipped (with the reason).

    Loaded once per process and configuration: every step of a run shares the
    same models (and a skipped encoder is logged once, not once per step).
    """
    options = json.dumps({k: dict(v) for k, v in cfg.encoder_options.items()}, sort_keys=True)
    encoders, skipped = _load_encoders(cfg.encoders, str(Path(cfg.weights_dir).resolve()), options)
    return list(encoders), list(skipped)


@lru_cache(maxsize=4)
def _load_encoders(names: tuple[str, ...] | None, weights_dir: str, options_json: str):
    from ..encoders.availability import resolve_encoders

    encoders, skipped = resolve_encoders(names, Path(weights_dir), json.loads(options_json))
    return tuple(encoders), tuple(SkippedIndex(s.name, s.reason) for s in skipped)


def embed_source_set(encoder: Encoder, sources: SourceSet, store: LineageStore, run_id: str,
                     progress: Callable[[int, int, str], None] | None = None,
                     batch_size: int = 256) -> np.ndarray:
    """``[N, D]`` embeddings of every guarded source (donors and protect-only, in
    ``guarded_hashes`` order), reading aligned faces one batch at a time.

    Memory holds one batch of faces plus the vectors; cached vectors are not recomputed.
    """
    hashes = sources.guarded_hashes()
    cached = store.embeddings(encoder.version, hashes)
    todo = len(hashes) - len(cached)
    done = 0
    for faces in sources.iter_guarded_faces(batch_size):
        missing = [f for f in faces if f.content_hash not in cached]
        if not missing:
            continue
        vectors = embed_sources(encoder, missing, store, run_id)
        cached.update({f.content_hash: v for f, v in zip(missing, vectors)})
        done += len(missing)
        if progress:
            progress(done, todo, encoder.name)
    return np.stack([np.asarray(cached[h], dtype=np.float32) for h in hashes])


def index_path(ws: Workspace, encoder: Encoder, set_hash: str) -> Path:
    return ws.indexes / f"{encoder.name}-{encoder.version[-12:]}-{set_hash[:12]}.faiss"


def build_indexes(cfg: RunConfig, ws: Workspace, store: LineageStore, sources: SourceSet, run_id: str,
                  progress: Callable[[int, int, str], None] | None = None) -> EmbeddingIndexes:
    """Per encoder: embeddings of every source the guard protects (donors and protect-only photos)
    in a FAISS index on disk."""
    encoders, skipped = build_encoders(cfg)
    count = len(sources.guarded_entries())
    calibrated = {}
    if cfg.target_fmr is not None:
        calibrated = calibrated_taus(store, {e.name: e.version for e in encoders}, cfg.target_fmr, count)
        for enc in encoders:
            if enc.name not in calibrated:
                log.warning("no calibration stored for %s (%s); it keeps its default tau. Run "
                            "`personc calibrate --folder DIR --db %s` first", enc.name, enc.version, "<this db>")
    taus = resolve_taus(encoders, cfg.taus, cfg.bare_tau, calibrated)
    out = []
    for enc in encoders:
        path = index_path(ws, enc, sources.source_set_hash)
        expect = IndexManifest(enc.name, enc.version, sources.source_set_hash, count, enc.dim)
        try:
            index = EmbeddingIndex.load(path, expect)
            log.info("index for %s is up to date: %s", enc.name, path)
        except Exception:
            vectors = embed_source_set(enc, sources, store, run_id, progress)
            index = EmbeddingIndex.build(enc.name, enc.version, sources.guarded_hashes(), vectors)
            index.save(path)
        with store.transaction() as tx:
            tx.upsert("indexes", [{"encoder": enc.name, "encoder_version": enc.version,
                                      "source_set_hash": sources.source_set_hash, "kind": index.manifest.kind,
                                      "count": count, "index_path": str(path), "run_id": run_id}])
        out.append(EncoderIndex(enc.name, enc.version, str(path), index.manifest.kind,
                                enc.name not in cfg.witness_encoders, count, enc.dim, taus[enc.name]))
    return EmbeddingIndexes(tuple(out), tuple(skipped), sources.source_set_hash,
                            source_classes(sources, ws.indexes / CLASSES_FILE))


def source_embeddings(store: LineageStore, sources: SourceSet, indexes: EmbeddingIndexes) -> dict[str, np.ndarray]:
    """``{content_hash: unit vector}`` of every donor under the person encoder (from the cache)."""
    first = indexes.person_index()
    hashes = sources.hashes()
    found = store.embeddings(first.encoder_version, hashes)
    missing = [h for h in hashes if h not in found]
    if missing:
        raise RuntimeError(f"{len(missing)} source embeddings for {first.encoder} are missing from the store; "
                           "re-materialize embedding_indexes")
    return {h: np.asarray(found[h], np.float32) for h in hashes}


def persons_by_embedding(embeddings: dict[str, np.ndarray], tau: float) -> dict[str, str]:
    """Group source photos into persons: cosine ≥ ``tau`` links two photos.

    Photos of one person in a flat folder would otherwise count as several
    people, and mixing "several" donors that are one person keeps that person.
    """
    from ..recipes import persons_from_embeddings

    hashes = list(embeddings)
    return persons_from_embeddings(hashes, np.stack([embeddings[h] for h in hashes]), tau)


#: Gender labels of source photos, per labeller version and content hash (beside the indexes).
CLASSES_FILE = "source_classes.json"


def source_classes(sources: SourceSet, cache: Path | None = None) -> dict[str, str]:
    """Gender of each source from the bundled age/gender models, or ``{}`` when not installed.

    The recipe sampler keeps texture, eyes and mouth within one class:
    mixing across sexes is what made faces look broken (beards on made-up faces).
    With ``cache`` (a JSON file), each photo is labelled once per labeller
    version: when every source was labelled before, the labeller is not loaded.
    """
    from ..faces.age_gender import AgeGenderLabeller, LabellerUnavailableError, verify_bundled_models

    try:
        version = verify_bundled_models()
    except LabellerUnavailableError as exc:
        log.warning("donor gender matching off: %s", exc)
        return {}
    known = _stored_classes(cache, version)
    missing = tuple(e for e in sources.entries if e.content_hash not in known)
    if missing:
        try:
            labeller = AgeGenderLabeller()
        except LabellerUnavailableError as exc:
            log.warning("donor gender matching off: %s", exc)
            return {}
        for faces in replace(sources, entries=missing).iter_faces():
            labels = labeller.label([f.aligned for f in faces])
            known.update({f.content_hash: a.gender if a is not None else None for f, a in zip(faces, labels)})
        if cache is not None:
            atomic_write_text(cache, json.dumps({"labeller": version, "classes": known}, sort_keys=True))
    return {h: known[h] for h in sources.hashes() if known[h] is not None}


def _stored_classes(cache: Path | None, version: str) -> dict[str, str | None]:
    """``{content_hash: gender or None (no face found)}`` stored by ``version``; ``{}`` when none."""
    if cache is None or not cache.is_file():
        return {}
    try:
        stored = json.loads(cache.read_text())
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s (%s); labelling the sources again", cache, exc)
        return {}
    return dict(stored["classes"]) if stored.get("labeller") == version else {}


def realism_thresholds(ws: Workspace, sources: SourceSet) -> RealismThresholds:
    """The realism gate's limits widened to the sources' own range (``gates.thresholds_for_sources``),
    measured once per source set, default limits and code version, and kept beside the indexes."""
    key = config_hash({"sources": sources.source_set_hash, "base": asdict(DEFAULT_THRESHOLDS),
                       "code": code_version()})
    path = ws.indexes / f"realism-{key[:16]}.json"
    if path.exists():
        try:
            return RealismThresholds(**json.loads(path.read_text())).check()
        except (ValueError, TypeError) as exc:  # unreadable: measure again and overwrite it
            log.warning("realism limits in %s are unreadable (%s); measuring the sources again", path, exc)
    thresholds = thresholds_for_sources(f for batch in sources.iter_faces() for f in batch)
    atomic_write_text(path, json.dumps(asdict(thresholds)))
    return thresholds
