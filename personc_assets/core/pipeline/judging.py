"""Step 6: the guard judges candidates; rejected slots are regenerated.

Every attempt and every per-encoder verdict is recorded. A slot whose
candidate passes (and differs from every face released before it) is
released as a PNG marked as synthetic.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping, Sequence

import numpy as np

from ..ensemble import guard_from_indexes
from ..gates import RealismCheck, ReuseCheck, reuse_photos
from ..guard import PASS, REJECT, Guard, Verdict
from ..reuse import ReuseIndex
from ..transforms import BENIGN_TRANSFORMS, BETWEEN_TRANSFORMS_MARGIN
from ..lineage.store import LineageStore, now
from ..explain.watermark import WatermarkError, embed_watermark, write_marked_png
from ..release import release_id_for
from ..types import Candidate, Recipe
from ..values import checked
from ..versioning import code_version
from .config import RunConfig, Workspace
from .generation import CandidateFactory, GeneratedCandidates
from .indexing import EmbeddingIndexes, build_encoders, realism_thresholds
from .modeling import FactorDecompositions
from .sources import SourceSet

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
#: Makes the context under which a round's passes are admitted and committed (see ``judge_and_release``).
CommitLock = Callable[[], ContextManager[Any]]

ASSET = "guard_verdicts"


@dataclass(frozen=True)
class JudgedAttempt:
    """One candidate the guard judged, with each encoder's score against the sources."""

    slot: int
    attempt: int
    candidate_id: str
    verdict: str                              # PASS or REJECT
    reason: str
    recipe_id: str
    similarity: Mapping[str, float | None]    # encoder -> max cosine to any source (None: not measured)
    nearest: Mapping[str, str | None]         # encoder -> content hash of the nearest source
    tau: Mapping[str, float]                  # encoder -> tau it was judged at

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    def as_dict(self) -> dict[str, Any]:
        return {"slot": self.slot, "attempt": self.attempt, "candidate_id": self.candidate_id,
                "verdict": self.verdict, "reason": self.reason, "recipe_id": self.recipe_id,
                "similarity": dict(self.similarity), "nearest": dict(self.nearest), "tau": dict(self.tau)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "JudgedAttempt":
        d = checked(d, "JudgedAttempt", ASSET, ("slot", "attempt", "candidate_id", "verdict", "reason", "recipe_id",
                                                "similarity", "nearest", "tau"))
        return cls(int(d["slot"]), int(d["attempt"]), d["candidate_id"], d["verdict"], d["reason"], d["recipe_id"],
                   dict(d["similarity"]), dict(d["nearest"]), dict(d["tau"]))


@dataclass(frozen=True)
class ReleasedFace:
    """A candidate that passed the guard, written to ``released/`` with its watermark."""

    release_id: str
    candidate_id: str
    file: str
    slot: int
    attempt: int
    content_hash: str                         # of the released pixels
    recipe_id: str
    donors: tuple[str, ...]                   # content hashes of every donor of the recipe
    primary: Mapping[str, str]                # factor -> content hash of its primary donor
    similarity: Mapping[str, float | None]    # as in ``JudgedAttempt``
    nearest: Mapping[str, str | None]
    tau: Mapping[str, float]

    def reaches_tau(self, encoder: str) -> bool:
        """Whether ``encoder`` measured this face at or above its tau (False when it could not measure)."""
        similarity = self.similarity[encoder]
        return similarity is not None and similarity >= self.tau[encoder]

    def as_dict(self) -> dict[str, Any]:
        return {"release_id": self.release_id, "candidate_id": self.candidate_id, "file": self.file,
                "slot": self.slot, "attempt": self.attempt, "content_hash": self.content_hash,
                "recipe_id": self.recipe_id, "donors": list(self.donors), "primary": dict(self.primary),
                "similarity": dict(self.similarity), "nearest": dict(self.nearest), "tau": dict(self.tau)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ReleasedFace":
        d = checked(d, "ReleasedFace", ASSET, ("release_id", "candidate_id", "file", "slot", "attempt",
                                               "content_hash", "recipe_id", "donors", "primary", "similarity",
                                               "nearest", "tau"))
        return cls(d["release_id"], d["candidate_id"], d["file"], int(d["slot"]), int(d["attempt"]),
                   d["content_hash"], d["recipe_id"], tuple(d["donors"]), dict(d["primary"]),
                   dict(d["similarity"]), dict(d["nearest"]), dict(d["tau"]))


@dataclass(frozen=True)
class UnreleasedSlot:
    """A slot whose every attempt was rejected."""

    slot: int
    attempts: int
    last_reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"slot": self.slot, "attempts": self.attempts, "last_reason": self.last_reason}


@dataclass(frozen=True)
class GuardVerdicts:
    """The ``guard_verdicts`` value: every attempt judged and every face released by one generation."""

    generation_id: str
    released: tuple[ReleasedFace, ...]
    attempts: tuple[JudgedAttempt, ...]
    witness_leakage_rate: Mapping[str, float]  # witness encoder -> share of releases at or above its tau
    witness_unverified: Mapping[str, int]      # witness encoder -> releases it could not measure
    num_samples: int
    max_attempts: int

    #: Written for readers of the stored JSON; recomputed from the attempts when read back.
    DERIVED = ("unreleased", "pass_rate")

    @property
    def pass_rate(self) -> float:
        """The share of judged candidates that passed."""
        return sum(a.passed for a in self.attempts) / max(1, len(self.attempts))

    @property
    def unreleased(self) -> tuple[UnreleasedSlot, ...]:
        """The slots with no release after ``max_attempts`` attempts, with the last reason."""
        done = {r.slot for r in self.released}
        return tuple(UnreleasedSlot(a.slot, a.attempt + 1, a.reason) for a in self.attempts
                     if a.slot not in done and a.attempt + 1 == self.max_attempts)

    def as_dict(self) -> dict[str, Any]:
        return {"generation_id": self.generation_id, "released": [r.as_dict() for r in self.released],
                "attempts": [a.as_dict() for a in self.attempts],
                "unreleased": [u.as_dict() for u in self.unreleased],
                "witness_leakage_rate": dict(self.witness_leakage_rate),
                "witness_unverified": dict(self.witness_unverified),
                "num_samples": self.num_samples, "max_attempts": self.max_attempts, "pass_rate": self.pass_rate}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GuardVerdicts":
        d = checked(d, "GuardVerdicts", ASSET, ("generation_id", "released", "attempts", "witness_leakage_rate",
                                                "witness_unverified", "num_samples", "max_attempts"), cls.DERIVED)
        return cls(d["generation_id"], tuple(ReleasedFace.from_dict(r) for r in d["released"]),
                   tuple(JudgedAttempt.from_dict(a) for a in d["attempts"]), dict(d["witness_leakage_rate"]),
                   dict(d["witness_unverified"]), int(d["num_samples"]), int(d["max_attempts"]))


def reuse_index(ws: Workspace, sources: SourceSet) -> ReuseIndex:
    """The reuse check's index of every guarded source photo (original and aligned crop),
    built once per source set and kept beside the other indexes."""
    path = ws.indexes / f"reuse-{sources.source_set_hash[:16]}.npz"
    if path.exists():
        return ReuseIndex.load(path)
    index = ReuseIndex.build(reuse_photos(f for batch in sources.iter_guarded_faces() for f in batch))
    path.parent.mkdir(parents=True, exist_ok=True)
    index.save(path)
    return index


def build_release_guard(cfg: RunConfig, ws: Workspace, sources: SourceSet, indexes: EmbeddingIndexes) -> Guard:
    """The guard that decides releases: the identity ensemble under benign transforms, after
    the realism gate (a coherent face) and the reuse gate (no region of a source photo)."""
    identity = build_guard(cfg, indexes, sources.source_set_hash)
    realism = realism_thresholds(ws, sources)
    gates = (RealismCheck(realism), ReuseCheck(reuse_index(ws, sources)))
    return Guard(identity.members, gates=gates, transforms=BENIGN_TRANSFORMS, margin=BETWEEN_TRANSFORMS_MARGIN)


def build_guard(cfg: RunConfig, indexes: EmbeddingIndexes, source_set_hash: str | None = None) -> Guard:
    """The run's identity ensemble over its saved indexes (``ensemble.guard_from_indexes``).

    ``source_set_hash`` is the current ``source_images`` hash: an index built over another
    source set is stale even when it matches ``indexes``. None trusts ``indexes.source_set_hash``.
    """
    encoders, _ = build_encoders(cfg)
    return guard_from_indexes(encoders, indexes.indexes, source_set_hash or indexes.source_set_hash,
                              cfg.witness_encoders)


def verdict_rows(v: Verdict, run_id: str) -> list[dict[str, Any]]:
    return [{"candidate_id": v.candidate_id, "encoder": ev.encoder, "encoder_version": ev.encoder_version,
             "gating": ev.gating, "max_similarity": _num(ev.max_similarity), "nearest_source": ev.nearest_source,
             "released_similarity": _num(ev.released_similarity), "tau": ev.tau, "verdict": ev.verdict,
             "reason": ev.reason, "worst_transform": ev.worst_transform, "run_id": run_id} for ev in v.per_encoder]


def gate_rows(v: Verdict, run_id: str) -> list[dict[str, Any]]:
    return [{"candidate_id": v.candidate_id, "gate": g.gate, "score": _num(g.score), "threshold": _num(g.threshold),
             "nearest_source": g.nearest, "verdict": "PASS" if g.passed else REJECT, "reason": g.reason,
             "run_id": run_id} for g in v.gates]


def _num(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def judge_and_release(cfg: RunConfig, ws: Workspace, store: LineageStore, sources: SourceSet,
                      decompositions: FactorDecompositions, indexes: EmbeddingIndexes,
                      first: GeneratedCandidates, run_id: str, progress: Progress | None = None,
                      commit_lock: CommitLock = contextlib.nullcontext) -> GuardVerdicts:
    """Judge the first attempts, regenerate rejected slots, release the passes.

    ``commit_lock`` serializes the last step of every round across runs that release into one
    lineage (partitions running side by side): under it, faces other runs released since are
    remembered, the round's passes are admitted against them, and their rows are committed.
    """
    from PIL import Image

    with commit_lock():
        recover_staged(ws, store)
    guard = build_release_guard(cfg, ws, sources, indexes)
    factory = CandidateFactory(cfg, ws, store, sources, decompositions, indexes)
    remembered = _remember_earlier_releases(guard, store, factory.gen_id)
    pending: list[tuple[int, Candidate]] = []
    for saved in first.candidates:
        recipe = factory.stored_recipe(store, saved.candidate_id)
        image = np.asarray(Image.open(saved.image_path).convert("RGB"))
        pending.append((saved.slot, Candidate(saved.candidate_id, recipe, saved.attempt, image)))
    attempts: list[JudgedAttempt] = []
    released: list[ReleasedFace] = []
    released_recipes: list[Recipe] = []
    while pending:
        # the guard judges the watermarked pixels: exactly what a release will contain
        marked, unmarkable = _watermark_all([c for _, c in pending])
        verdicts = guard.check([(c.candidate_id, marked.get(c.candidate_id, c.image)) for _, c in pending])
        retry = []
        round_rows, cand_rows, release_rows, gate_round = [], [], [], []
        with commit_lock():  # admit and commit against every face released so far, by any run
            remembered = _remember_earlier_releases(guard, store, factory.gen_id, remembered)
            for (slot, cand), verdict in zip(pending, verdicts):
                if cand.candidate_id in unmarkable:  # a release must carry its watermark: fail closed
                    reason = unmarkable[cand.candidate_id] + ("" if verdict.passed else f"; {verdict.reason}")
                    verdict = replace(verdict, verdict=REJECT, reason=reason)
                verdict = guard.admit(verdict)
                round_rows += verdict_rows(verdict, run_id)
                gate_round += gate_rows(verdict, run_id)
                cand_rows.append({"candidate_id": cand.candidate_id, "verdict": verdict.verdict,
                                  "reason": verdict.reason, "run_id": run_id})
                attempts.append(_attempt_summary(slot, cand, verdict))
                if verdict.passed:
                    row, face = _release(ws, slot, cand, marked[cand.candidate_id], verdict, run_id)
                    release_rows.append(row)
                    released.append(face)
                    released_recipes.append(cand.recipe)
                elif cand.attempt + 1 < cfg.max_attempts:
                    retry.append((slot, cand.attempt + 1))
                else:
                    log.warning("slot %d: all %d attempts rejected", slot, cfg.max_attempts)
            with store.transaction() as tx:
                tx.upsert("verdicts", round_rows)
                tx.upsert("gate_verdicts", gate_round)
                tx.upsert("candidate_verdicts", cand_rows)
                tx.upsert("releases", release_rows)
            publish_staged(ws, [r["file"] for r in release_rows])  # only once their rows are committed
        if progress:
            progress(len(released), cfg.num_samples, f"{len(attempts)} candidates judged")
        # retries steer away from this run's releases only: faces other runs released are the guard's
        # to refuse (``admit``); steering away from them made a retried partition's candidates depend on
        # what the other partitions had released by then, so a rerun added rows instead of rewriting them
        pending = factory.make(retry, released_recipes, guard.admitted_embeddings("dlib")) if retry else []
        if pending:
            factory.save(store, pending, run_id)
    leakage, unverified = witness_rates(released, cfg.witness_encoders)
    return GuardVerdicts(factory.gen_id, tuple(released), tuple(attempts), leakage, unverified, cfg.num_samples,
                         cfg.max_attempts)


STAGING = ".staging"


def staged_path(ws: Workspace, final: Path) -> Path:
    """Where a release PNG waits until its row is committed."""
    return ws.released / STAGING / Path(final).name


def publish_staged(ws: Workspace, files: Sequence[str]) -> None:
    """Move committed releases from the staging folder to ``released/`` (atomic renames)."""
    for file in files:
        final = Path(file)
        staged = staged_path(ws, final)
        if staged.exists():
            os.replace(staged, final)


def recover_staged(ws: Workspace, store: LineageStore) -> None:
    """After a crash: publish staged PNGs whose release row was committed, drop the others
    (their candidates are judged again and rewrite them)."""
    folder = ws.released / STAGING
    if not folder.is_dir():
        return
    recorded = {Path(f).name for (f,) in store.query("SELECT file FROM releases")}
    for png in sorted(folder.glob("*.png")):
        if png.name in recorded:
            os.replace(png, ws.released / png.name)
            log.warning("published %s: its release row was committed before a crash", png.name)
        else:
            png.unlink()
            log.warning("dropped staged %s: a crash came before its release row was committed", png.name)


def _remember_earlier_releases(guard: Guard, store: LineageStore, generation: str,
                               known: frozenset[str] = frozenset()) -> frozenset[str]:
    """Releases of other generations (earlier runs, other seeds) in this lineage become faces the
    new ones must differ from. This generation's own releases are left out: re-running the same
    configuration rewrites them instead of rejecting them as their own duplicates. Releases in
    ``known`` are remembered already; returns the ids remembered now and before."""
    from PIL import Image

    rows = store.query("SELECT r.release_id, r.file FROM releases r JOIN candidates c USING (candidate_id) "
                       "WHERE r.status = 'released' AND c.generation_id IS DISTINCT FROM ?", [generation])
    rows = [(rid, file) for rid, file in rows if rid not in known]
    images = []
    for rid, file in rows:
        path = Path(file)
        if not path.is_file():
            log.error("earlier release %s is recorded at %s but the file is gone: new faces cannot be "
                      "compared with it; restore it or revoke the release", rid, file)
            continue
        images.append((rid, np.asarray(Image.open(path).convert("RGB"))))
    missed = guard.remember(images)
    if missed:
        log.error("earlier releases %s show no single face: new faces cannot be compared with them", missed)
    if images:
        log.info("new faces must also differ from %d earlier releases", len(images))
    return known | {rid for rid, _ in rows}


def witness_rates(released: Sequence[ReleasedFace],
                  witnesses: Sequence[str]) -> tuple[dict[str, float], dict[str, int]]:
    """Per witness encoder: the share of releases it finds at or above its tau, and how many
    releases it could not measure (an encoder that failed is unverified, never "no leak")."""
    n = max(1, len(released))
    leakage = {enc: sum(r.reaches_tau(enc) for r in released) / n for enc in witnesses}
    unverified = {enc: sum(r.similarity[enc] is None for r in released) for enc in witnesses}
    return leakage, unverified


def _watermark_all(candidates: list[Candidate]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Watermarked pixels per candidate id, and the reason for each candidate that cannot carry one."""
    marked, unmarkable = {}, {}
    for c in candidates:
        try:
            marked[c.candidate_id] = embed_watermark(c.image, release_id_for(c.image))
        except WatermarkError as exc:
            unmarkable[c.candidate_id] = f"cannot be watermarked: {exc}"
    return marked, unmarkable


def _attempt_summary(slot: int, cand: Candidate, v: Verdict) -> JudgedAttempt:
    return JudgedAttempt(slot, cand.attempt, cand.candidate_id, v.verdict, v.reason, cand.recipe.recipe_id,
                         {ev.encoder: _num(ev.max_similarity) for ev in v.per_encoder},
                         {ev.encoder: ev.nearest_source for ev in v.per_encoder},
                         {ev.encoder: ev.tau for ev in v.per_encoder})


def _release(ws: Workspace, slot: int, cand: Candidate, marked: np.ndarray, v: Verdict,
             run_id: str) -> tuple[dict[str, Any], ReleasedFace]:
    """The release's lineage row and its ``ReleasedFace``."""
    rid = release_id_for(cand.image)
    path = ws.released / f"{rid}.png"
    # written to the staging folder first: published after its row is committed (publish_staged)
    written = write_marked_png(staged_path(ws, path), marked, rid, {"candidate_id": cand.candidate_id,
                                                                    "run_id": run_id,
                                                                    "code_version": code_version()})
    content_hash = written.pixel_sha256
    row = {"release_id": rid, "candidate_id": cand.candidate_id, "file": str(path), "content_hash": content_hash,
           "status": "released", "revoked_reason": None, "run_id": run_id, "code_version": code_version(),
           "backbone_state": None, "released_at": now()}
    face = ReleasedFace(rid, cand.candidate_id, str(path), slot, cand.attempt, content_hash, cand.recipe.recipe_id,
                        tuple(cand.recipe.donors()), dict(cand.recipe.primary),
                        {ev.encoder: _num(ev.max_similarity) for ev in v.per_encoder},
                        {ev.encoder: ev.nearest_source for ev in v.per_encoder},
                        {ev.encoder: ev.tau for ev in v.per_encoder})
    return row, face


def recheck_released_files(cfg: RunConfig, ws: Workspace, sources: SourceSet, indexes: EmbeddingIndexes,
                           released: Sequence[ReleasedFace]) -> list[dict[str, Any]]:
    """Re-read each released PNG from disk and run the full guard on it again.

    Independent of the verdicts recorded during generation: what was written
    is what is checked. Returns one row per release with its verdict.
    """
    from PIL import Image

    guard = build_release_guard(cfg, ws, sources, indexes)
    images = [(r.release_id, np.asarray(Image.open(r.file).convert("RGB"))) for r in released]
    return [{"release_id": v.candidate_id, "verdict": v.verdict, "reason": v.reason,
             **{f"sim_{ev.encoder}": _num(ev.max_similarity) for ev in v.per_encoder},
             **{f"tau_{ev.encoder}": ev.tau for ev in v.per_encoder}}
            for v in guard.check(images)]


def donor_groups(sources: SourceSet, released: Sequence[ReleasedFace]) -> list[dict[str, Any]]:
    """For each release, the groups its donors come from."""
    group = {e.content_hash: e.group for e in sources.entries}
    return [{"release_id": r.release_id, "groups": sorted({group[d] for d in r.donors})} for r in released]
