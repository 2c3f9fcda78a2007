"""Steps 5 and 6: sample recipes, synthesize candidates, judge and release.

A run has ``num_samples`` slots. Slot ``s`` tries attempts 0, 1, ... each a
fresh recipe (seeded by run seed, slot and attempt) until one candidate
passes the guard or ``max_attempts`` candidates were rejected. Candidate ids
are derived from the generation id, slot and attempt, so re-running the same
configuration rewrites the same rows instead of adding new ones.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..atomic import atomic_save_npz, atomic_save_png, load_npz
from ..novelty import DetailFloors, LinearisedBackbone, NoveltyConfig, NoveltySearch
from ..faces.loading import pixel_hash
from ..lineage.store import LineageStore, now
from ..recipes import mix_factors, new_roles, recipe_from_json, recipe_json, sample_recipes
from ..types import Candidate, Recipe
from ..values import checked
from ..versioning import code_version, config_hash
from .config import RunConfig, Workspace
from .context import LoadedContext, shared_context
from .indexing import EmbeddingIndexes, realism_thresholds
from .modeling import FactorDecompositions
from .sources import SourceSet

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]


def generation_id(cfg: RunConfig, backbone_state: str, source_set: str) -> str:
    """Identifies one batch of candidates: same inputs, same id."""
    return "g" + config_hash({"seed": cfg.seed, "backbone_state": backbone_state, "sources": source_set,
                              "recipe": dict(cfg.recipe_options), "code": code_version().split(".dirty")[0]})[:15]


def candidate_id(gen_id: str, slot: int, attempt: int) -> str:
    return "c" + hashlib.sha256(f"{gen_id}/{slot}/{attempt}".encode()).hexdigest()[:15]


#: Parts (context person, appearance factors' primary persons) in which a retry's
#: recipe must differ from every released recipe; draws per context photo; draws in all.
#: Shape factors are left out: swapping only them between the same people kept the face.
NOVEL_PARTS = ("context", "texture", "eyes", "nose", "mouth")
MIN_NEW_ROLES = 3
DRAWS_PER_CONTEXT = 8
MAX_DRAWS = 64


@dataclass(frozen=True)
class SavedCandidate:
    """A candidate written to disk (PNG, and its factors beside it) and recorded in the lineage."""

    candidate_id: str
    slot: int
    attempt: int
    recipe_id: str
    image_path: str
    donors: tuple[str, ...]   # content hashes

    def as_dict(self) -> dict[str, Any]:
        return {"candidate_id": self.candidate_id, "slot": self.slot, "attempt": self.attempt,
                "recipe_id": self.recipe_id, "image_path": self.image_path, "donors": list(self.donors)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SavedCandidate":
        d = checked(d, "SavedCandidate", "generated_candidates", ("candidate_id", "slot", "attempt", "recipe_id",
                                                                  "image_path", "donors"))
        return cls(d["candidate_id"], int(d["slot"]), int(d["attempt"]), d["recipe_id"], d["image_path"],
                   tuple(d["donors"]))


@dataclass(frozen=True)
class GeneratedCandidates:
    """The ``generated_candidates`` value: attempt 0 of every slot of one generation."""

    generation_id: str
    candidates: tuple[SavedCandidate, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"generation_id": self.generation_id, "candidates": [c.as_dict() for c in self.candidates]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GeneratedCandidates":
        d = checked(d, "GeneratedCandidates", "generated_candidates", ("generation_id", "candidates"))
        return cls(d["generation_id"], tuple(SavedCandidate.from_dict(c) for c in d["candidates"]))


class CandidateFactory:
    """Makes the candidate for (slot, attempt) from the run's loaded context (``context.py``).

    ``loaded`` defaults to the process's shared context: the steps of one in-process run load the
    backbone, factors and donors once.
    """

    def __init__(self, cfg: RunConfig, ws: Workspace, store: LineageStore, sources: SourceSet,
                 decompositions: FactorDecompositions, indexes: EmbeddingIndexes,
                 loaded: LoadedContext | None = None):
        self.cfg, self.ws = cfg, ws
        self.loaded = loaded or shared_context(store, sources, decompositions, indexes)
        self.ref = self.loaded.ref
        self.backbone = self.loaded.backbone
        self.factors = self.loaded.factors
        self.mean = self.loaded.mean
        self.donors = self.loaded.donors
        self.person_of = {d.content_hash: d.person for d in self.donors}
        self.gen_id = generation_id(cfg, self.ref.state_hash, sources.source_set_hash)
        self.recipe_knobs = {"context_visible": self.backbone.shows_context, **dict(cfg.recipe_options)}
        self.novelty, self.protected = self._novelty_search(store, sources, indexes)

    def _novelty_search(self, store: LineageStore, sources: SourceSet,
                        indexes: EmbeddingIndexes) -> tuple[NoveltySearch | None, np.ndarray]:
        """The novelty step against every guarded source under dlib (None when the backbone
        is not linearisable, dlib does not guard, or the step is switched off)."""
        knobs = NoveltyConfig(**dict(self.cfg.novelty))
        dlib = indexes.get("dlib")
        if knobs.steps == 0 or dlib is None or not isinstance(self.backbone, LinearisedBackbone):
            return None, np.zeros((0, 128), np.float32)
        hashes = sources.guarded_hashes()
        found = store.embeddings(dlib.encoder_version, hashes)
        missing = [h[:10] for h in hashes if h not in found]
        if missing:
            raise RuntimeError(f"dlib embeddings of guarded sources {missing} are missing from the store; "
                               "re-materialize embedding_indexes")
        floors = DetailFloors.of(realism_thresholds(self.ws, sources), knobs.floor_scores)
        return (NoveltySearch(float(dlib.tau), knobs, floors=floors),
                np.stack([found[h] for h in hashes]).astype(np.float32))

    def recipe(self, slot: int, attempt: int, released: Sequence[Recipe] = ()) -> Recipe:
        """The recipe of ``(slot, attempt)``, dealt so that it differs from every
        ``released`` recipe in at least ``MIN_NEW_ROLES`` of ``NOVEL_PARTS`` (see ``recipes.new_roles``).

        Draw ``k`` of an attempt has its own seed; the context cycles with
        ``slot + attempt`` (the slots of one round sit in different people's
        photos: faces rendered into one photo resemble each other) and moves on
        every ``DRAWS_PER_CONTEXT`` draws. When no draw is new enough, the most
        novel one is used (the guard still judges it). Deterministic in
        (config, sources, slot, attempt, released).
        """
        best: tuple[int, Recipe] | None = None
        for k in range(MAX_DRAWS):
            tag = f"{self.cfg.seed}/{slot}/{attempt}" + (f"/{k}" if k else "")
            seed = int.from_bytes(hashlib.sha256(tag.encode()).digest()[:8], "big")
            recipe = sample_recipes(self.donors, self.backbone.factor_names, 1, seed,
                                    context_rank=slot + attempt + k // DRAWS_PER_CONTEXT,
                                    roles=self.backbone.factor_roles, **self.recipe_knobs)[0]
            novelty = new_roles(recipe, released, self.person_of, NOVEL_PARTS)
            if novelty >= MIN_NEW_ROLES:
                return recipe
            if best is None or novelty > best[0]:
                best = (novelty, recipe)
        assert best is not None
        return best[1]

    def stored_factors(self, store: LineageStore, candidate_id: str, recipe: Recipe) -> dict[str, np.ndarray]:
        return stored_factors(store, candidate_id, recipe, self.loaded)

    def stored_recipe(self, store: LineageStore, candidate_id: str) -> Recipe:
        return stored_recipe(store, candidate_id)

    def make(self, slots: Sequence[tuple[int, int]], released: Sequence[Recipe] = (),
             released_embeddings: np.ndarray | None = None) -> list[tuple[int, Candidate]]:
        """Candidates for ``(slot, attempt)`` pairs, synthesized in one batch.

        Each recipe's mix goes through the novelty step (when on), away from
        every guarded source and the faces this run released so far
        (``released_embeddings [M, 128]``, dlib).
        """
        recipes = [self.recipe(s, a, released) for s, a in slots]
        mixed = [mix_factors(r, self.factors, self.mean) for r in recipes]
        if self.novelty is not None:
            avoid = self.protected
            if released_embeddings is not None and len(released_embeddings):
                avoid = np.concatenate([avoid, np.asarray(released_embeddings, np.float32)])
            moved = self.novelty.refine_many(self.backbone, mixed, avoid)  # type: ignore[arg-type]
            for (s, a), res in zip(slots, moved):
                log.info("slot %d attempt %d: novelty step %.3f -> %.3f in %d steps (|dz| %.2f)",
                         s, a, res.start_similarity, res.end_similarity, res.steps, res.shift)
            mixed = [res.factors for res in moved]
        latents = [self.backbone.compose(m) for m in mixed]
        images = self.backbone.synthesize(latents)
        return [(s, Candidate(candidate_id(self.gen_id, s, a), r, a, img, lat, mix))
                for (s, a), r, img, lat, mix in zip(slots, recipes, images, latents, mixed)]

    def save(self, store: LineageStore, made: list[tuple[int, Candidate]], run_id: str) -> list[SavedCandidate]:
        """Write candidate PNGs and their recipe/candidate rows (one transaction)."""
        out, t = [], now()
        for slot, c in made:
            path = self.ws.candidates / self.gen_id / f"{c.candidate_id}.png"
            if not path.exists():
                atomic_save_png(path, c.image)
            factors_path = path.with_suffix(".npz")
            if c.factors and not factors_path.exists():
                atomic_save_npz(factors_path, **{k: np.asarray(v) for k, v in c.factors.items()})
            out.append(SavedCandidate(c.candidate_id, slot, c.attempt, c.recipe.recipe_id, str(path),
                                      tuple(c.recipe.donors())))
        with store.transaction() as tx:
            tx.upsert("recipes", [{"recipe_id": c.recipe.recipe_id, "seed": c.recipe.seed,
                                      "mean_pull": c.recipe.mean_pull, "context_donor": c.recipe.context_donor,
                                      "recipe_json": recipe_json(c.recipe), "run_id": run_id} for _, c in made])
            tx.upsert("candidates", [{"candidate_id": c.candidate_id, "recipe_id": c.recipe.recipe_id,
                                         "generation_id": self.gen_id, "attempt": c.attempt,
                                         "backbone_state": self.ref.state_hash, "image_path": o.image_path,
                                         "image_hash": pixel_hash(c.image), "run_id": run_id,
                                         "code_version": code_version(), "created_at": t}
                                        for (_, c), o in zip(made, out)])
        return out


def stored_factors(store: LineageStore, candidate_id: str, recipe: Recipe,
                   loaded: LoadedContext) -> dict[str, np.ndarray]:
    """The factors that made a candidate: saved beside its PNG (they include the
    novelty step's move), else re-mixed from its recipe (candidates made without it)."""
    png = _image_path(store, candidate_id)
    if png is not None and png.with_suffix(".npz").exists():
        return dict(load_npz(png.with_suffix(".npz")))
    return mix_factors(recipe, loaded.factors, loaded.mean)


def stored_render(store: LineageStore, candidate_id: str) -> Path | None:
    """The PNG the backbone drew for a candidate (before any watermark), when it is still on disk."""
    png = _image_path(store, candidate_id)
    return png if png is not None and png.is_file() else None


def _image_path(store: LineageStore, candidate_id: str) -> Path | None:
    """The candidate's PNG path as recorded in the lineage (None when not recorded)."""
    rows = store.query("SELECT image_path FROM candidates WHERE candidate_id = ?", [candidate_id])
    return Path(rows[0][0]) if rows and rows[0][0] else None


def stored_recipe(store: LineageStore, candidate_id: str) -> Recipe:
    """The recipe that made ``candidate_id``, as recorded in the lineage."""
    rows = store.query("SELECT r.recipe_id, r.recipe_json FROM candidates c JOIN recipes r USING (recipe_id) "
                       "WHERE c.candidate_id = ?", [candidate_id])
    if not rows:
        raise KeyError(f"candidate {candidate_id} has no recorded recipe in the lineage")
    recipe_id, text = rows[0]
    recipe = recipe_from_json(text)
    if recipe.recipe_id != recipe_id:
        raise ValueError(f"recipe {recipe_id[:12]} of candidate {candidate_id} does not hash to its id "
                         f"(got {recipe.recipe_id[:12]}): the lineage was altered")
    return recipe


def generate_first_attempts(cfg: RunConfig, ws: Workspace, store: LineageStore, sources: SourceSet,
                            decompositions: FactorDecompositions, indexes: EmbeddingIndexes,
                            run_id: str, loaded: LoadedContext | None = None) -> GeneratedCandidates:
    """Attempt 0 of every slot (``loaded``: the run's context, default the shared one)."""
    factory = CandidateFactory(cfg, ws, store, sources, decompositions, indexes, loaded)
    made = factory.make([(s, 0) for s in range(cfg.num_samples)])
    rows = factory.save(store, made, run_id)
    return GeneratedCandidates(factory.gen_id, tuple(rows))
