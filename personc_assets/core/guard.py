"""The guard: embed each candidate with every encoder and search every source.

A candidate PASSES only when exactly one face is found in it and, for every
gating encoder, its embedding is valid and its maximum cosine similarity to
all sources stays below that encoder's tau; ``Guard.admit`` then also
requires it to stay below tau against every face released before it.
Everything else — no face, several faces, an encoder raising,
NaN or wrong-sized output, a missing or stale index — is a REJECT with the
reason recorded. The guard fails closed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from .encoders.base import Encoder
from .faces.detect import detect_faces
from .index import EmbeddingIndex
from .types import FaceObservation, check_image

log = logging.getLogger(__name__)

PASS, REJECT = "PASS", "REJECT"


@dataclass(frozen=True)
class GuardMember:
    """One encoder in the ensemble with its source index and threshold.

    ``index`` may be None (index missing): every candidate is then rejected.
    ``gating=False`` makes the encoder audit-only: recorded, never deciding.
    """

    encoder: Encoder
    index: EmbeddingIndex | None
    tau: float
    gating: bool = True
    index_error: str = ""


@dataclass(frozen=True)
class EncoderVerdict:
    encoder: str
    encoder_version: str
    tau: float
    max_similarity: float  # NaN when not measured
    nearest_source: str | None
    verdict: str
    reason: str
    gating: bool = True
    released_similarity: float = float("nan")  # max cosine to faces already released
    embedding: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def margin(self) -> float:
        """tau minus the max similarity (positive = distance left before tau)."""
        return self.tau - self.max_similarity


@dataclass(frozen=True)
class Verdict:
    candidate_id: str
    verdict: str
    reason: str
    per_encoder: tuple[EncoderVerdict, ...]
    face: FaceObservation | None = field(default=None, repr=False, compare=False)

    @property
    def passed(self) -> bool:
        return self.verdict == PASS


class Guard:
    """An ensemble of encoders, each with its FAISS index of source embeddings."""

    def __init__(self, members: Sequence[GuardMember],
                 detector: Callable[[np.ndarray], list[FaceObservation]] = detect_faces) -> None:
        if not any(m.gating for m in members):
            raise ValueError("the guard needs at least one gating encoder")
        self.members = tuple(members)
        self._detect = detector
        self._released: dict[str, list[np.ndarray]] = {m.encoder.name: [] for m in members}

    def admit(self, verdict: Verdict) -> Verdict:
        """Release a passing candidate unless it is too close to a face released before.

        Candidates judged in one batch cannot see each other, so each passing
        verdict is admitted in order: it is compared with every face admitted
        so far and, when it still passes, remembered for later candidates.
        """
        if not verdict.passed:
            return verdict
        evs, clash = [], []
        for ev in verdict.per_encoder:
            seen = self._released[ev.encoder]
            if ev.embedding is not None and seen:
                sim = float(np.max(np.stack(seen) @ ev.embedding))
                ev = replace(ev, released_similarity=sim)
                if ev.gating and sim >= ev.tau:
                    ev = replace(ev, verdict=REJECT, reason=(f"similarity {sim:.3f} to an already released "
                                                             f"face reaches tau {ev.tau:.3f}"))
                    clash.append(ev)
            evs.append(ev)
        if clash:
            return replace(verdict, verdict=REJECT, per_encoder=tuple(evs),
                           reason="; ".join(f"{ev.encoder}: {ev.reason}" for ev in clash))
        for ev in evs:
            if ev.embedding is not None:
                self._released[ev.encoder].append(ev.embedding)
        return replace(verdict, per_encoder=tuple(evs))

    def check(self, candidates: Sequence[tuple[str, np.ndarray]]) -> list[Verdict]:
        """Verdicts for ``(candidate_id, image [H, W, 3])`` pairs, in order."""
        faces: list[FaceObservation | None] = []
        reasons: list[str] = []
        for cid, image in candidates:
            face, reason = self._single_face(cid, image)
            faces.append(face)
            reasons.append(reason)
        found = [i for i, f in enumerate(faces) if f is not None]
        per_member = [self._judge_member(m, [faces[i] for i in found]) for m in self.members]
        verdicts = []
        for pos, (cid, _) in enumerate(candidates):
            if faces[pos] is None:
                evs = tuple(EncoderVerdict(m.encoder.name, m.encoder.version, m.tau, math.nan, None,
                                           REJECT, reasons[pos], m.gating) for m in self.members)
                verdicts.append(Verdict(cid, REJECT, reasons[pos], evs, None))
                continue
            evs = tuple(pm[found.index(pos)] for pm in per_member)
            failing = [ev for ev in evs if ev.gating and ev.verdict == REJECT]
            if failing:
                reason = "; ".join(f"{ev.encoder}: {ev.reason}" for ev in failing)
                verdicts.append(Verdict(cid, REJECT, reason, evs, faces[pos]))
            else:
                verdicts.append(Verdict(cid, PASS, "below tau for every gating encoder", evs, faces[pos]))
        return verdicts

    def _single_face(self, cid: str, image: np.ndarray) -> tuple[FaceObservation | None, str]:
        try:
            check_image(image, f"candidate {cid}")
            found = self._detect(image)
        except Exception as exc:  # a detector failure is a rejection, not a crash
            log.warning("face detection failed on %s: %s", cid, exc)
            return None, f"detection error: {exc}"
        if not found:
            return None, "no face found in the candidate"
        if len(found) > 1:
            return None, f"{len(found)} faces found in the candidate (exactly one required)"
        return found[0], ""

    def _judge_member(self, member: GuardMember, faces: list[FaceObservation]) -> list[EncoderVerdict]:
        enc = member.encoder

        def reject_all(reason: str) -> list[EncoderVerdict]:
            return [EncoderVerdict(enc.name, getattr(enc, "version", "?"), member.tau, math.nan, None,
                                   REJECT, reason, member.gating) for _ in faces]

        if not faces:
            return []
        if member.index is None:
            return reject_all(f"index missing: {member.index_error or 'no index'}")
        try:
            vectors = np.asarray(enc.embed(faces), dtype=np.float32)
        except Exception as exc:
            log.warning("encoder %s failed: %s", enc.name, exc)
            return reject_all(f"encoder error: {type(exc).__name__}: {exc}")
        expected = (len(faces), member.index.manifest.dim)
        if vectors.shape != expected:
            return reject_all(f"encoder returned shape {vectors.shape}, expected {expected}")
        if member.index.manifest.encoder_version != enc.version:
            return reject_all(f"index is stale: built with {member.index.manifest.encoder_version}, "
                              f"encoder is {enc.version}")
        out: list[EncoderVerdict] = []
        bad = ~np.all(np.isfinite(vectors), axis=1)
        norms = np.linalg.norm(vectors, axis=1)
        try:
            sims, nearest = member.index.search_max(np.where(bad[:, None], 0.0, vectors), tau=member.tau)
        except Exception as exc:
            return reject_all(f"index search error: {exc}")
        for i in range(len(faces)):
            base = dict(encoder=enc.name, encoder_version=enc.version, tau=member.tau, gating=member.gating)
            if bad[i] or abs(norms[i] - 1.0) > 1e-3:
                out.append(EncoderVerdict(**base, max_similarity=math.nan, nearest_source=None,
                                          verdict=REJECT, reason="invalid embedding (NaN, inf or not unit length)"))
                continue
            sim = float(sims[i])
            if not math.isfinite(sim):
                verdict, reason = REJECT, "similarity is not finite"
            elif sim >= member.tau:
                verdict, reason = REJECT, (f"max similarity {sim:.3f} to source {(nearest[i] or '?')[:12]} "
                                           f"reaches tau {member.tau:.3f}")
            else:
                verdict, reason = PASS, f"max similarity {sim:.3f} < tau {member.tau:.3f}"
            out.append(EncoderVerdict(**base, max_similarity=sim, nearest_source=nearest[i], verdict=verdict,
                                      reason=reason, embedding=vectors[i]))
        return out
