"""The guard: embed each candidate with every encoder and search every source.

A candidate PASSES only when exactly one face is found in it, every gate
passes it (the realism gate: a coherent face; the reuse gate: no region of a
source photo) and, for every gating encoder, its embeddings are valid and its
maximum cosine similarity to all sources stays below that encoder's tau —
the maximum over the candidate and its benign transforms (mirror, rescale,
small rotations, JPEG, mild blur: ``transforms``) when the guard is given
them; ``Guard.admit`` then also requires it to stay below tau against every
face released before it. Everything else — no face, several faces, a gate
or an encoder raising, NaN or wrong-sized output, a missing or stale index —
is a REJECT with the reason recorded. The guard fails closed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol, Sequence

import numpy as np

from .encoders.base import Encoder
from .faces.detect import detect_faces
from .index import EmbeddingIndex
from .transforms import ORIGINAL, BenignTransform
from .types import FaceObservation, check_image

log = logging.getLogger(__name__)

PASS, REJECT = "PASS", "REJECT"


@dataclass(frozen=True)
class GuardMember:
    """One encoder in the ensemble with its source index and threshold.

    ``index`` may be None (index missing): every candidate is then rejected.
    ``gating=False`` makes the encoder a witness: recorded, never deciding.
    """

    encoder: Encoder
    index: EmbeddingIndex | None
    tau: float
    gating: bool = True
    index_error: str = ""


@dataclass(frozen=True)
class GateVerdict:
    """One gate's judgement of one candidate (``score`` against ``threshold``; NaN when not measured)."""

    gate: str
    passed: bool
    score: float
    threshold: float
    nearest: str | None
    reason: str


class Gate(Protocol):
    """A check every candidate must pass besides the identity search (realism, photo reuse)."""

    name: str

    def judge(self, faces: Sequence[FaceObservation]) -> list[GateVerdict]: ...


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
    #: the variant (``transforms.ORIGINAL`` or a benign transform's name) that came closest
    worst_transform: str = ORIGINAL

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
    gates: tuple[GateVerdict, ...] = ()

    @property
    def passed(self) -> bool:
        return self.verdict == PASS


class Guard:
    """An ensemble of encoders, each with its FAISS index of source embeddings."""

    def __init__(self, members: Sequence[GuardMember],
                 detector: Callable[[np.ndarray], list[FaceObservation]] = detect_faces,
                 gates: Sequence[Gate] = (),
                 transforms: Sequence[BenignTransform] = (), margin: float = 0.0) -> None:
        """``margin``: with ``transforms``, a face passes only at most ``tau - margin`` in every view
        it is judged in; the transforms are a few points of a continuum (a 5% rescale lies between
        the original and 10%), and the margin covers the changes between them."""
        if not any(m.gating for m in members):
            raise ValueError("the guard needs at least one gating encoder")
        if not 0.0 <= margin < 0.5:
            raise ValueError(f"margin must be in [0, 0.5), got {margin}")
        self.members = tuple(members)
        self.gates = tuple(gates)
        self.transforms = tuple(transforms)
        self.margin = float(margin)
        self._detect = detector
        # faces released before this guard (``remember``) and faces it admitted itself (``admit``):
        # a candidate must differ from both; the caller steers its retries away from its own only
        self._remembered: dict[str, list[np.ndarray]] = {m.encoder.name: [] for m in members}
        self._admitted: dict[str, list[np.ndarray]] = {m.encoder.name: [] for m in members}

    def remember(self, images: Sequence[tuple[str, np.ndarray]]) -> list[str]:
        """Treat faces released before (other runs, other batches) as released: later candidates
        must stay below tau against them. Returns the ids whose face could not be found (the
        caller reports them); an encoder error propagates."""
        missed = []
        faces: list[FaceObservation] = []
        for rid, image in images:
            face, _ = self._single_face(rid, image)
            if face is None:
                missed.append(rid)
            else:
                faces.append(face)
        for m in self.members:
            if not faces:
                break
            self._remembered[m.encoder.name].extend(np.asarray(m.encoder.embed(faces), dtype=np.float32))
        return missed

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
            seen = self._remembered[ev.encoder] + self._admitted[ev.encoder]
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
                self._admitted[ev.encoder].append(ev.embedding)
        return replace(verdict, per_encoder=tuple(evs))

    def admitted_embeddings(self, encoder: str) -> np.ndarray | None:
        """Embeddings ``[M, D]`` under ``encoder`` of the faces this guard admitted, in order; not
        those it was told to ``remember`` (``None`` when it admitted none)."""
        seen = self._admitted.get(encoder, [])
        return np.stack(seen) if seen else None

    def check(self, candidates: Sequence[tuple[str, np.ndarray]]) -> list[Verdict]:
        """Verdicts for ``(candidate_id, image [H, W, 3])`` pairs, in order."""
        faces: list[FaceObservation | None] = []
        reasons: list[str] = []
        for cid, image in candidates:
            face, reason = self._single_face(cid, image)
            faces.append(face)
            reasons.append(reason)
        found = [i for i, f in enumerate(faces) if f is not None]
        kept = [faces[i] for i in found]
        per_gate = [self._judge_gate(g, kept) for g in self.gates]
        views, view_names = self._views(kept)
        per_member = [self._judge_member(m, kept, views, view_names) for m in self.members]
        verdicts = []
        for pos, (cid, _) in enumerate(candidates):
            if faces[pos] is None:
                evs = tuple(EncoderVerdict(m.encoder.name, m.encoder.version, m.tau, math.nan, None,
                                           REJECT, reasons[pos], m.gating) for m in self.members)
                verdicts.append(Verdict(cid, REJECT, reasons[pos], evs, None))
                continue
            k = found.index(pos)
            evs = tuple(pm[k] for pm in per_member)
            gvs = tuple(pg[k] for pg in per_gate)
            failing = [f"{gv.gate}: {gv.reason}" for gv in gvs if not gv.passed]
            failing += [f"{ev.encoder}: {ev.reason}" for ev in evs if ev.gating and ev.verdict == REJECT]
            if failing:
                verdicts.append(Verdict(cid, REJECT, "; ".join(failing), evs, faces[pos], gvs))
            else:
                verdicts.append(Verdict(cid, PASS, "passes every gate and is below tau for every gating encoder",
                                        evs, faces[pos], gvs))
        return verdicts

    def _judge_gate(self, gate: Gate, faces: list[FaceObservation]) -> list[GateVerdict]:
        """The gate's verdicts; a gate that raises or miscounts rejects every face (fail closed)."""
        if not faces:
            return []
        try:
            out = list(gate.judge(faces))
            if len(out) != len(faces):
                raise ValueError(f"returned {len(out)} verdicts for {len(faces)} faces")
            return out
        except Exception as exc:
            log.warning("gate %s failed: %s", gate.name, exc)
            return [GateVerdict(gate.name, False, math.nan, math.nan, None,
                                f"gate error: {type(exc).__name__}: {exc}") for _ in faces]

    def _views(self, faces: list[FaceObservation]) -> tuple[list[FaceObservation | None], list[str]]:
        """Each face followed by its benign transforms (None where a transform failed), flat."""
        names = [ORIGINAL] + [t.name for t in self.transforms]
        if not self.transforms:
            return list(faces), names
        flat: list[FaceObservation | None] = []
        for face in faces:
            flat.append(face)
            for t in self.transforms:
                try:
                    flat.append(t.apply(face))
                except Exception as exc:  # an unjudgeable variant fails the candidate (below)
                    log.warning("benign transform %s failed: %s", t.name, exc)
                    flat.append(None)
        return flat, names

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

    def _judge_member(self, member: GuardMember, faces: list[FaceObservation],
                      views: list[FaceObservation | None], view_names: list[str]) -> list[EncoderVerdict]:
        """Verdicts of one encoder: the maximum similarity over each face's views."""
        enc = member.encoder
        nv = len(view_names)

        def reject_all(reason: str) -> list[EncoderVerdict]:
            return [EncoderVerdict(enc.name, getattr(enc, "version", "?"), member.tau, math.nan, None,
                                   REJECT, reason, member.gating) for _ in faces]

        if not faces:
            return []
        if member.index is None:
            return reject_all(f"index missing: {member.index_error or 'no index'}")
        present = [v for v in views if v is not None]
        try:
            vectors = np.asarray(enc.embed(present), dtype=np.float32)
        except Exception as exc:
            log.warning("encoder %s failed: %s", enc.name, exc)
            return reject_all(f"encoder error: {type(exc).__name__}: {exc}")
        expected = (len(present), member.index.manifest.dim)
        if vectors.shape != expected:
            return reject_all(f"encoder returned shape {vectors.shape}, expected {expected}")
        if member.index.manifest.encoder_version != enc.version:
            return reject_all(f"index is stale: built with {member.index.manifest.encoder_version}, "
                              f"encoder is {enc.version}")
        bad = ~np.all(np.isfinite(vectors), axis=1) | (np.abs(np.linalg.norm(vectors, axis=1) - 1.0) > 1e-3)
        try:
            sims, nearest = member.index.search_max(np.where(bad[:, None], 0.0, vectors), tau=member.tau)
        except Exception as exc:
            return reject_all(f"index search error: {exc}")
        slot = np.cumsum([v is not None for v in views]) - 1  # view position -> row in vectors
        out: list[EncoderVerdict] = []
        for i in range(len(faces)):
            base = dict(encoder=enc.name, encoder_version=enc.version, tau=member.tau, gating=member.gating)
            rows = [int(slot[i * nv + j]) if views[i * nv + j] is not None else None for j in range(nv)]
            missing = [view_names[j] for j, r in enumerate(rows) if r is None]
            if missing or any(bad[r] for r in rows if r is not None):
                what = (f"transform(s) {', '.join(missing)} could not be judged" if missing
                        else "invalid embedding (NaN, inf or not unit length)")
                out.append(EncoderVerdict(**base, max_similarity=math.nan, nearest_source=None,
                                          verdict=REJECT, reason=what))
                continue
            worst = max(range(nv), key=lambda j: float(sims[rows[j]]) if math.isfinite(sims[rows[j]]) else math.inf)
            sim, near = float(sims[rows[worst]]), nearest[rows[worst]]
            shown = "" if worst == 0 else f" (under {view_names[worst]})"
            if not math.isfinite(sim):
                verdict, reason = REJECT, "similarity is not finite"
            elif sim >= member.tau:
                verdict, reason = REJECT, (f"max similarity {sim:.3f}{shown} to source {(near or '?')[:12]} "
                                           f"reaches tau {member.tau:.3f}")
            elif sim > member.tau - self.margin:
                verdict, reason = REJECT, (f"max similarity {sim:.4f}{shown} to source {(near or '?')[:12]} "
                                           f"is within the margin {self.margin:.3f} below tau {member.tau:.3f} "
                                           "(changes between the judged transforms may reach tau)")
            else:
                verdict, reason = PASS, f"max similarity {sim:.3f}{shown} < tau {member.tau:.3f}"
            out.append(EncoderVerdict(**base, max_similarity=sim, nearest_source=near, verdict=verdict,
                                      reason=reason, embedding=vectors[rows[0]], worst_transform=view_names[worst]))
        return out
