"""The guard's ensemble: which encoders judge, at which tau, over which source index.

One vocabulary for every caller of the guard — the release pipeline
(``pipeline/judging.py``), ``personc audit`` (``audit.py``) and the red team
(``redteam.py``):

- ``TauChoice`` and ``resolve_taus``: each encoder's tau on its own cosine
  scale, and why it was chosen;
- *witness* encoders (``gating=False`` in ``GuardMember``): measured and
  reported, never deciding; ``check_witnesses`` validates their names;
- ``guard_from_indexes``: the identity ensemble over the FAISS indexes a run
  saved (a missing or stale index makes its encoder reject everything);
- ``guard_over_faces``: a guard over faces embedded now (``embed_sources``,
  cached in the lineage store), with the reuse gate and benign transforms.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Literal, Mapping, Protocol, Sequence

import numpy as np

from .encoders.base import Encoder
from .faces.detect import face_from_landmarks
from .gates import ReuseCheck, reuse_photos
from .guard import Guard, GuardMember
from .index import EmbeddingIndex, IndexManifest
from .lineage.store import LineageStore
from .reuse import ReuseIndex
from .transforms import BENIGN_TRANSFORMS
from .types import SourceFace

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]

#: The seed's ``--tau 0.4`` is an ArcFace cosine; a bare tau applies to this encoder only.
BARE_TAU_ENCODER = "arcface"
#: Faces per encoder call and per lineage transaction in ``embed_sources``.
EMBED_BATCH = 64

# ------------------------------------------------------------------------- taus

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
    false-match rate (see ``pipeline/thresholds.py``), never laxer than the
    encoder's default (``never_laxer_than_default``); otherwise the encoder's
    default. Only a tau given by value may loosen the guard.
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


# -------------------------------------------------------------------- witnesses

def check_witnesses(encoders: Sequence[Encoder], witnesses: Sequence[str]) -> None:
    """Raise unless every witness name is an encoder in use and at least one encoder still gates."""
    names = [e.name for e in encoders]
    unknown = set(witnesses) - set(names)
    if unknown:
        raise ValueError(f"witness encoder(s) {', '.join(sorted(unknown))} are not in use; "
                         f"encoders in use: {', '.join(names)}")
    if set(names) <= set(witnesses):
        raise ValueError(f"every encoder in use ({', '.join(names)}) is a witness: at least one must gate")


# ------------------------------------------------------------ guard from indexes

class SavedIndex(Protocol):
    """What the guard needs of one saved index (``pipeline.indexing.EncoderIndex`` has it)."""

    @property
    def encoder(self) -> str: ...

    @property
    def index_path(self) -> str: ...

    @property
    def count(self) -> int: ...

    @property
    def tau(self) -> float: ...


def guard_from_indexes(encoders: Sequence[Encoder], indexes: Sequence[SavedIndex],
                       source_set_hash: str, witnesses: Sequence[str] = ()) -> Guard:
    """The identity ensemble: each encoder with its saved index (a missing or stale index → every
    check of that encoder rejects).

    ``indexes`` are the ``embedding_indexes`` entries; ``source_set_hash`` is the current source
    set's: an index built over another source set is stale even when it matches its own entry.
    """
    check_witnesses(encoders, witnesses)
    by_name = {i.encoder: i for i in indexes}
    members = []
    for enc in encoders:
        gating = enc.name not in witnesses
        info = by_name.get(enc.name)
        if info is None:
            members.append(GuardMember(enc, None, enc.default_tau, gating, f"no index built for {enc.name}"))
            continue
        expect = IndexManifest(enc.name, enc.version, source_set_hash, info.count, enc.dim)
        try:
            index = EmbeddingIndex.load(Path(info.index_path), expect)
            members.append(GuardMember(enc, index, info.tau, gating))
        except Exception as exc:
            log.error("index for %s unusable, every candidate will be rejected: %s", enc.name, exc)
            members.append(GuardMember(enc, None, info.tau, gating, str(exc)))
    return Guard(members)


# -------------------------------------------------------------- guard over faces

def embed_sources(encoder: Encoder, faces: Sequence[SourceFace], store: LineageStore, run_id: str,
                  progress: Progress | None = None) -> np.ndarray:
    """``[N, D]`` embeddings of ``faces`` (aligned crops), from the store's cache where possible."""
    hashes = [f.content_hash for f in faces]
    cached = store.embeddings(encoder.version, hashes)
    todo = [f for f in faces if f.content_hash not in cached]
    for start in range(0, len(todo), EMBED_BATCH):
        batch = todo[start:start + EMBED_BATCH]
        if progress:
            progress(start + len(batch), len(todo), encoder.name)
        vecs = encoder.embed([face_from_landmarks(f.aligned, f.landmarks) for f in batch])
        if vecs.shape != (len(batch), encoder.dim) or not np.all(np.isfinite(vecs)):
            raise RuntimeError(f"encoder {encoder.name} returned invalid embeddings {vecs.shape}")
        rows = [{"content_hash": f.content_hash, "encoder": encoder.name, "encoder_version": encoder.version,
                 "vector": v.tolist(), "run_id": run_id} for f, v in zip(batch, vecs)]
        with store.transaction() as tx:
            tx.upsert("embeddings", rows)
        cached.update({f.content_hash: v for f, v in zip(batch, vecs)})
    return np.stack([np.asarray(cached[h], dtype=np.float32) for h in hashes])


@dataclass(frozen=True)
class GuardedEncoder:
    """What a guard over faces used for one encoder (for reports and JSON)."""

    name: str
    version: str
    tau: float
    tau_why: str
    gating: bool
    index_kind: str
    sources: int


def guard_over_faces(encoders: Sequence[Encoder], taus: Mapping[str, TauChoice], faces: Sequence[SourceFace],
                     store: LineageStore, run_id: str, witnesses: Sequence[str] = (),
                     progress: Progress | None = None) -> tuple[Guard, list[GuardedEncoder]]:
    """A ``Guard`` over ``faces``: every encoder embeds them (cached in ``store``) into an index,
    behind the reuse gate and judging benign transforms too.

    ``taus`` maps every encoder name to its ``TauChoice`` (``resolve_taus``);
    encoders named in ``witnesses`` are recorded but do not gate.
    """
    check_witnesses(encoders, witnesses)
    if not faces:
        raise ValueError("no usable source face: nothing to judge against")
    members, used = [], []
    hashes = [f.content_hash for f in faces]
    for enc in encoders:
        vectors = embed_sources(enc, faces, store, run_id, progress)
        index = EmbeddingIndex.build(enc.name, enc.version, hashes, vectors)
        gating = enc.name not in witnesses
        members.append(GuardMember(enc, index, taus[enc.name].tau, gating=gating))
        used.append(GuardedEncoder(enc.name, enc.version, taus[enc.name].tau, taus[enc.name].why, gating,
                                   index.manifest.kind, index.manifest.count))
    reuse = ReuseCheck(ReuseIndex.build(reuse_photos(faces)))
    return Guard(members, gates=(reuse,), transforms=BENIGN_TRANSFORMS), used
