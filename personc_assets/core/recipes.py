"""Backbone-agnostic recipe sampling and factor mixing.

A *recipe* says, for every identity factor, which donors contribute and with
what weight, how far the mix is pulled toward the population mean, and which
donor supplies the non-identity context (hair, head, background, light).
``sample_recipes`` draws recipes that follow PersonC's rules:

* each factor's **primary** donor (largest weight) is a different person for
  every factor when there are enough people;
* the primaries include at least one donor of group A and one of group B;
* no donor takes part in every factor;
* the context donor gives no identity factor unless people run out, and then
  only a shape factor (its weakest identity cue).

The backbone names its factors and says which play which part
(``backbones.base.FactorRoles``: shape, sensitive, appearance factors); the
sampler reads the roles, never a factor name.

The context is a colour photo of a person drawn at random, turned at most
``context_max_yaw`` (the backbone renders the face in that photo's own
pose). Donors are matched for compatibility around it: the factors where a
mismatch shows at once (the sensitive factors; the morphable model's texture,
eyes and mouth) come first from people of the context's appearance cluster (gender labels or face-descriptor clusters),
near in appearance, lip colour, beard shade and mouth openness, then from
the nearest other people — never from the context person while anyone else
is left; strongly turned and black-and-white photos give shape factors only.

Measured with the dlib guard (cosine, tau 0.90): averaging more people into a
factor moves candidates toward the centre of the descriptor space, which is
itself 0.90-0.95 similar to several sources, so by default every factor
takes one person and each recipe pushes its mix off the population mean by
a random amount (``mean_push_spread``; only the factors the backbone's
``FactorRoles.pulled`` names), which also makes successive attempts differ.
On ../shared/faces (one photo per person) about half the candidates pass at
tau 0.90. Faces rendered into the same context photo resemble each
other (dlib 0.93-0.98 between them); ``avoid_contexts`` and ``context_rank``
let a caller spread faces over different photos, and ``new_roles`` tells how
far a recipe is dealt from others (the pipeline deals retries away from the
recipes it already released). With very few source people every recipe uses
nearly every person and only a few mutually distinct faces pass (six demo
faces: two); more source people is the remedy, not more mixing — random
Gaussian moves in the PCA spaces, tried instead, lowered similarity only by
breaking the faces.

Everything is seeded: the same inputs and seed give the same recipes (and the
same ``recipe_id``, a content hash). ``mix_factors`` turns a recipe into factor
vectors ready for ``Backbone.compose``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Collection, Mapping, Sequence

import numpy as np

from .backbones.base import FACTOR_ROLES, FactorRoles
from .faces.align import estimate_yaw
from .faces.marks import skin_marks
from .types import GROUPS, Factors, Group, Recipe, SourceFace

#: Head turn estimate (see ``faces.align.estimate_yaw``) above which a photo counts as "turned"
#: (``DonorInfo.frontal``); the context fallback when no photo passes ``context_max_yaw``.
TURNED_YAW = 0.20
#: Cheek chroma (Lab, 0..255 scale) below which a photo counts as black and white;
#: colour photos measured 15-46 on ../shared/faces and the demo photos, the grey one 0.
MONOCHROME_CHROMA = 4.0


# ------------------------------------------------------------------ donor facts

def mouth_openness(landmarks: np.ndarray) -> float:
    """Inner-lip gap over the nose-bridge-to-chin length (0 = closed, ~0.15 wide open)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"landmarks must be [68, 2], got {lm.shape}")
    gap = np.mean([max(0.0, lm[low, 1] - lm[up, 1]) for up, low in ((61, 67), (62, 66), (63, 65))])
    return float(gap / max(np.hypot(*(lm[8] - lm[27])), 1e-9))




@dataclass(frozen=True)
class DonorInfo:
    """What the sampler knows about one source photo.

    ``person`` groups photos of the same person (the source label, or the
    photo's own hash when unlabelled). ``appearance`` is a few appearance
    coordinates (median distance between people 1) and ``cluster`` a coarse
    appearance class; ``yaw`` and ``mouth_open`` come from the landmarks,
    ``lip_colour`` and ``beard`` from ``skin_marks``; ``covered`` names what
    covers the face (``faces.occluders``: a fringe, a hat, glasses).
    """

    content_hash: str
    group: Group
    person: str
    yaw: float = 0.0
    mouth_open: float = 0.0
    lip_colour: float = 0.0
    beard: float = 0.0
    colourful: float = 20.0
    cluster: int = 0
    appearance: tuple[float, ...] = ()
    covered: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise ValueError(f"donor {self.content_hash[:10]} has group {self.group!r}; use 'A' or 'B'")

    @property
    def frontal(self) -> bool:
        return abs(self.yaw) < TURNED_YAW

    def good_feature_donor(self, max_yaw: float) -> bool:
        """Not strongly turned, not a black-and-white photo, nothing over the face: an
        occluder in a donor's appearance (a fringe, glasses rims) ghosts in every face mixed from it."""
        return abs(self.yaw) <= max_yaw and self.colourful >= MONOCHROME_CHROMA and not self.covered


def persons_from_embeddings(hashes: Sequence[str], embeddings: np.ndarray,
                            tau: float) -> dict[str, str]:
    """Group unlabelled photos into persons: cosine ≥ ``tau`` links two photos.

    ``embeddings [N, D]`` are L2-normalised encoder vectors in ``hashes``
    order. Returns ``{hash: person key}`` (the smallest hash of its group);
    use it as ``labels`` for ``describe_donors`` when sources carry no labels.
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] != len(hashes):
        raise ValueError(f"embeddings must be [{len(hashes)}, D], got {emb.shape}")
    parent = list(range(len(hashes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    sims = emb @ emb.T
    for i in range(len(hashes)):
        for j in range(i + 1, len(hashes)):
            if sims[i, j] >= tau:
                parent[root(i)] = root(j)
    members: dict[int, list[str]] = {}
    for i, h in enumerate(hashes):
        members.setdefault(root(i), []).append(h)
    return {h: min(group) for group in members.values() for h in group}


def describe_donors(faces: Sequence[SourceFace],
                    factors_by_hash: Mapping[str, Factors] | None = None,
                    labels: Mapping[str, str] | None = None,
                    embeddings: Mapping[str, np.ndarray] | None = None,
                    classes: Mapping[str, str] | None = None,
                    covered: Mapping[str, Sequence[str]] | None = None,
                    appearance_factors: Sequence[str] = FACTOR_ROLES.appearance,
                    n_dims: int = 6, n_clusters: int = 2) -> list[DonorInfo]:
    """``DonorInfo`` for each face (in order), for ``sample_recipes``.

    * ``factors_by_hash`` (from ``Backbone.decompose``) give the appearance
      coordinates: the main axes of the ``appearance_factors`` (the backbone's
      ``FactorRoles.appearance``; every identity factor when none of them is
      present), each person counted once.
    * ``embeddings`` (``{hash: [D]}``, L2-normalised, from a face-recognition
      encoder) give the appearance clusters: measured on ../shared/faces and
      the demo photos, two clusters of dlib descriptors separate women from
      men where texture clusters follow lighting and pose. Without them the
      clusters come from the appearance coordinates.
    * ``classes`` (``{hash: class name}``, e.g. gender labels from
      ``faces.age_gender.AgeGenderLabeller``) define the clusters outright
      where given; photos without a class keep the computed cluster, offset
      so it never equals a named class.
    * ``covered`` (``{hash: occluder names}``, from ``faces.occluders.occluders``) marks the
      photos that give shape factors only.
    * ``labels`` override the faces' own labels (e.g. from
      ``persons_from_embeddings``); an unlabelled photo is its own person.
    """
    persons = [(labels or {}).get(f.content_hash) or f.label or f.content_hash for f in faces]
    coords = np.zeros((len(faces), 0))
    clusters = np.zeros(len(faces), dtype=int)
    if factors_by_hash is not None and faces:
        first = factors_by_hash.get(faces[0].content_hash, {})
        names = [n for n in appearance_factors if n in first] or sorted(
            k for k in first if not k.startswith("_"))
        coords = _main_axes(_stack(faces, factors_by_hash, names, "factors"), persons, n_dims)
        clusters = _person_clusters(coords, persons, n_clusters)
    if embeddings is not None and faces:
        emb = _main_axes(_stack(faces, {h: {"e": v} for h, v in embeddings.items()}, ["e"],
                                "embeddings"), persons, 8)
        clusters = _person_clusters(emb, persons, n_clusters)
        coords = emb
    if classes:
        names = sorted({str(v) for v in classes.values()})
        clusters = np.array([names.index(str(classes[f.content_hash])) if f.content_hash in classes
                             else len(names) + int(c) for f, c in zip(faces, clusters)])
    marks = [skin_marks(f.aligned, f.landmarks) for f in faces]
    return [DonorInfo(content_hash=f.content_hash, group=f.group, person=p,
                      yaw=round(estimate_yaw(f.landmarks), 4),
                      mouth_open=round(mouth_openness(f.landmarks), 4),
                      lip_colour=round(m[0], 3), beard=round(m[1], 4), colourful=round(m[2], 3),
                      cluster=int(c), appearance=tuple(round(float(v), 4) for v in a),
                      covered=tuple((covered or {}).get(f.content_hash, ())))
            for f, p, c, a, m in zip(faces, persons, clusters, coords, marks)]


def _stack(faces: Sequence[SourceFace], table: Mapping[str, Mapping[str, np.ndarray]],
           names: Sequence[str], what: str) -> np.ndarray:
    missing = [f.content_hash[:10] for f in faces if f.content_hash not in table]
    if missing:
        raise KeyError(f"no {what} for donors {missing}; compute them for every source first")
    return np.stack([np.concatenate([np.asarray(table[f.content_hash][n], np.float64).ravel()
                                     for n in names]) for f in faces])


def _person_weights(persons: Sequence[str]) -> np.ndarray:
    counts: dict[str, int] = {}
    for p in persons:
        counts[p] = counts.get(p, 0) + 1
    w = np.array([1.0 / counts[p] for p in persons])
    return w / w.sum()


def _main_axes(x: np.ndarray, persons: Sequence[str], n_dims: int) -> np.ndarray:
    """``[N, n_dims]`` coordinates of ``x [N, D]`` on its main (person-weighted)
    axes, scaled so that the median distance between two people is 1.

    Not whitened: minor axes stay small, so distances follow what differs
    most between faces rather than noise.
    """
    w = _person_weights(persons)
    mu = np.average(x, axis=0, weights=w)
    _, sv, vt = np.linalg.svd((x - mu) * np.sqrt(w)[:, None], full_matrices=False)
    k = int(min(n_dims, np.sum(sv > 1e-9 * max(sv[0], 1e-30)))) if sv.size else 0
    proj = (x - mu) @ vt[:k].T
    keys = sorted(set(persons))
    means = np.stack([proj[[i for i, p in enumerate(persons) if p == q]].mean(0) for q in keys])
    dists = np.linalg.norm(means[:, None] - means[None], axis=-1)[np.triu_indices(len(keys), 1)]
    scale = float(np.median(dists)) if dists.size else 1.0
    return proj / max(scale, 1e-12)


def _person_clusters(coords: np.ndarray, persons: Sequence[str], n_clusters: int) -> np.ndarray:
    """Deterministic k-means of person-mean coordinates; photos inherit their person's cluster."""
    keys = sorted(set(persons))
    if n_clusters <= 1 or len(keys) < 2 * n_clusters or coords.shape[1] == 0:
        return np.zeros(len(persons), dtype=int)
    means = np.stack([coords[[i for i, p in enumerate(persons) if p == k]].mean(0) for k in keys])
    # farthest-point initialisation (deterministic), then Lloyd iterations
    centres = [means[int(np.argmax(np.linalg.norm(means - means.mean(0), axis=1)))]]
    while len(centres) < n_clusters:
        d = np.min([np.linalg.norm(means - c, axis=1) for c in centres], axis=0)
        centres.append(means[int(np.argmax(d))])
    c = np.stack(centres)
    for _ in range(50):
        assign = np.argmin(((means[:, None] - c[None]) ** 2).sum(-1), axis=1)
        new = np.stack([means[assign == j].mean(0) if np.any(assign == j) else c[j]
                        for j in range(n_clusters)])
        if np.allclose(new, c):
            break
        c = new
    by_person = dict(zip(keys, assign))
    return np.array([by_person[p] for p in persons], dtype=int)


# ---------------------------------------------------------------------- sampling

@dataclass(frozen=True)
class SamplerKnobs:
    """Knobs of ``sample_recipes`` (defaults tuned with the morphable backbone
    and the dlib guard on ../shared/faces; see the module docstring).

    * ``donors_per_factor``: people mixed into each factor, primary included;
      ``donors_for`` overrides it per factor (default: one person for every
      factor — see ``DEFAULT_DONORS_FOR``).
    * ``primary_weight``: the primary's share where a factor mixes people.
    * ``mean_pull``: pull of the mixed factors toward the population mean
      (negative values push away from it; ``FactorRoles.pulled`` names the
      factors it moves: the morphable backbone's all but its texture); each
      recipe subtracts a random amount in ``[0, mean_push_spread)`` from it,
      so attempts differ continuously and are pushed off the average face.
    * ``context_max_yaw``: colour photos turned at most this far may be the
      context (the face is rendered in that photo's pose).
    * ``pool_size``: compatible people (nearest the context) a recipe draws from,
      never fewer than there are factors when that many people exist.
    * ``near_size``: how many of the nearest people may give sensitive factors,
      the context and their co-donors (at least the number of sensitive factors).
    * ``max_feature_yaw``: photos turned further than this (and black-and-white
      photos) give appearance factors (all but the shape factors) only when no
      other people are left.
    * ``context_visible``: whether the backbone shows the context photo. When it does not (the
      morphable backbone's neutral frame), the context photo is only the anchor that donors are
      matched to, and its person gives factors like everyone else: the sensitive factors then
      come from the context's own cluster when it holds enough people (on ../shared/faces, three
      women: otherwise every woman's face took a man's mouth, stubble around the lips included).
    * ``sensitive_factors``: overrides the backbone's ``FactorRoles.sensitive``
      when given.
    * ``cluster_penalty`` and the ``*_tolerance`` values: how much a different
      appearance cluster adds to the appearance distance when ranking
      compatibility, and which difference in head turn, mouth openness, lip
      colour and beard shade counts as one unit of it.
    """

    donors_per_factor: int = 1
    donors_for: Mapping[str, int] | None = None
    primary_weight: float = 0.6
    mean_pull: float = 0.0
    pool_size: int = 6
    near_size: int = 3
    cluster_penalty: float = 2.0
    yaw_tolerance: float = 0.5
    mouth_tolerance: float = 0.15
    max_feature_yaw: float = 0.45
    lip_tolerance: float = 10.0
    beard_tolerance: float = 0.12
    sensitive_factors: tuple[str, ...] | None = None
    context_max_yaw: float = 0.5
    mean_push_spread: float = 0.4
    context_visible: bool = True

    def __post_init__(self) -> None:
        if self.donors_per_factor < 1:
            raise ValueError(f"donors_per_factor must be ≥ 1, got {self.donors_per_factor}")
        if any(int(k) < 1 for k in (self.donors_for or {}).values()):
            raise ValueError(f"donors_for values must be ≥ 1, got {dict(self.donors_for or {})}")
        if not 0.0 < self.primary_weight <= 1.0:
            raise ValueError(f"primary_weight must be in (0, 1], got {self.primary_weight}")
        if not -1.0 < self.mean_pull < 1.0:
            raise ValueError(f"mean_pull must be in (-1, 1), got {self.mean_pull}")
        if self.context_max_yaw < 0:
            raise ValueError(f"context_max_yaw must be ≥ 0, got {self.context_max_yaw}")
        if not 0.0 <= self.mean_push_spread < 1.0 + self.mean_pull:
            raise ValueError(f"mean_push_spread must be in [0, 1 + mean_pull) so that the pull stays "
                             f"above -1, got {self.mean_push_spread} with mean_pull {self.mean_pull}")
        if self.pool_size < 2 or self.near_size < 1:
            raise ValueError(f"pool_size must be ≥ 2 and near_size ≥ 1, got "
                             f"{self.pool_size}, {self.near_size}")

    def donors(self, factor: str) -> int:
        table = DEFAULT_DONORS_FOR if self.donors_for is None else self.donors_for
        return int(table.get(factor, self.donors_per_factor))


#: Default per-factor donor counts (factors not named take ``donors_per_factor``):
#: one person per factor. Mixing three people's texture (k-Same style) was the
#: earlier default; on the demo photos it left 0-10% of candidates below tau
#: (single texture donor: 15-20%) and on ../shared/faces it made no difference.
DEFAULT_DONORS_FOR: Mapping[str, int] = {}


def sample_recipes(donors: Sequence[DonorInfo], factor_names: Sequence[str], n: int,
                   seed: int, avoid_contexts: Collection[str] = (), context_rank: int | None = None,
                   roles: FactorRoles = FACTOR_ROLES, **knobs: object) -> list[Recipe]:
    """Draw ``n`` reproducible recipes mixing ``factor_names`` from ``donors``.

    ``factor_names`` and ``roles`` come from the backbone (``Backbone.factor_names``,
    ``Backbone.factor_roles``). ``knobs`` are ``SamplerKnobs`` fields. Needs donors of both groups and at
    least two people. Recipe ``i`` depends only on (donors, factors, knobs,
    seed, avoid_contexts, i), so asking for more recipes later extends the
    same sequence. ``avoid_contexts`` (content hashes, e.g. the context photos
    of faces already released) steers the context to other people while
    there are any: faces rendered into one photo share its hair, outline and
    light, and the guard finds them similar to each other. ``context_rank``
    (when given) picks the context person deterministically instead of at
    random: the ``context_rank``-th (modulo their number) of the usable
    context people in content-hash order, so a caller can spread the slots of
    one run over different people's photos without remembering anything
    (``slot + attempt`` cycles every slot through all of them).
    """
    unknown = sorted(set(knobs) - set(SamplerKnobs.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unknown recipe knob(s) {unknown}; known: "
                        f"{', '.join(SamplerKnobs.__dataclass_fields__)}")
    cfg = SamplerKnobs(**knobs)  # type: ignore[arg-type]
    factors = tuple(factor_names)
    if not factors:
        raise ValueError("factor_names is empty; pass the backbone's factor_names")
    if len({d.content_hash for d in donors}) != len(donors):
        raise ValueError("donors contain the same content_hash twice; de-duplicate sources first")
    groups = {d.group for d in donors}
    if groups != set(GROUPS):
        raise ValueError(f"recipes need donors from both groups A and B, got only {sorted(groups)}; "
                         "add photos to the empty source folder")
    if len({d.person for d in donors}) < 2:
        raise ValueError("recipes need at least two different people among the donors")
    if n < 0:
        raise ValueError(f"n must be ≥ 0, got {n}")
    # reproducible regardless of the order the donors arrive in
    ordered = sorted(donors, key=lambda d: d.content_hash)
    seeds = np.random.SeedSequence(seed).generate_state(n, dtype=np.uint32) if n else []
    avoid = frozenset(d.person for d in donors if d.content_hash in set(avoid_contexts))
    return [_sample_one(ordered, factors, roles, int(s), cfg, avoid, context_rank) for s in seeds]


def _compat_distance(a: DonorInfo, b: DonorInfo, cfg: SamplerKnobs) -> float:
    app = 0.0
    if a.appearance and b.appearance:
        app = float(np.linalg.norm(np.subtract(a.appearance, b.appearance)))
    return (app + cfg.cluster_penalty * (a.cluster != b.cluster)
            + abs(a.yaw - b.yaw) / cfg.yaw_tolerance
            + abs(a.mouth_open - b.mouth_open) / cfg.mouth_tolerance
            + abs(a.lip_colour - b.lip_colour) / cfg.lip_tolerance
            + abs(a.beard - b.beard) / cfg.beard_tolerance)


def _sample_one(donors: Sequence[DonorInfo], factors: tuple[str, ...], roles: FactorRoles, seed: int,
                cfg: SamplerKnobs, avoid: frozenset[str] = frozenset(),
                context_rank: int | None = None) -> Recipe:
    rng = np.random.default_rng(seed)
    shape_factors = set(roles.shape)
    people: dict[str, list[DonorInfo]] = {}
    for d in donors:
        people.setdefault(d.person, []).append(d)

    def feature_ok(d: DonorInfo) -> bool:
        return d.good_feature_donor(cfg.max_feature_yaw)

    featured = {p for p, ds in people.items() if any(feature_ok(d) for d in ds)}
    cluster_people: dict[int, set[str]] = {}
    for d in donors:
        if feature_ok(d):
            cluster_people.setdefault(d.cluster, set()).add(d.person)
    anchor = _pick_context(donors, cluster_people, avoid, cfg, rng, context_rank)

    def photo(p: str, feature: bool) -> DonorInfo:
        """The person's photo most compatible with the context (a feature donor's if needed)."""
        if p == anchor.person and (not feature or feature_ok(anchor)):
            return anchor
        ds = [d for d in people[p] if feature_ok(d)] if feature else people[p]
        return min(ds or people[p], key=lambda d: (_compat_distance(anchor, d, cfg), d.content_hash))

    dist = {p: _compat_distance(anchor, photo(p, p in featured), cfg) for p in people
            if p != anchor.person or not cfg.context_visible}
    # the pool_size people most compatible with the context (never fewer than the factors)
    others = sorted(sorted(dist, key=lambda p: (dist[p], p))[:max(cfg.pool_size, len(factors))])
    ranked = roles.sensitive if cfg.sensitive_factors is None else cfg.sensitive_factors
    sensitive = [f for f in ranked if f in factors]
    # sensitive factors: the near_size nearest people of the context's appearance cluster in
    # random order, then the other feature donors nearest first; the context person last
    same = sorted((p for p in others if p in featured and photo(p, True).cluster == anchor.cluster),
                  key=lambda p: (dist[p], p))[:max(cfg.near_size, 1)]
    near = [same[i] for i in rng.permutation(len(same))]
    rest = sorted((p for p in others if p in featured and p not in near), key=lambda p: (dist[p], p))
    chosen: dict[str, str] = {}
    for f in sensitive:
        queue = [p for p in near + rest if p not in chosen.values()]
        chosen[f] = queue[0] if queue else anchor.person
    # the other factors: unused people in random order, appearance factors first (they need
    # feature donors); when people run out the context person gives a shape factor (its
    # weakest identity cue), then people are reused
    free = [others[i] for i in rng.permutation(len(others))]
    for f in sorted((f for f in factors if f not in chosen), key=lambda f: f in shape_factors):
        shape = f in shape_factors
        fits = [p for p in free if shape or p in featured]
        unused = [p for p in fits if p not in chosen.values()]
        if unused:
            chosen[f] = unused[0]
        elif shape and anchor.person not in chosen.values():
            chosen[f] = anchor.person
        else:
            counts = {p: sum(c == p for c in chosen.values()) for p in (fits or others)}
            chosen[f] = min(counts, key=lambda p: (counts[p], (fits or others).index(p)))
    prim = {f: photo(chosen[f], f not in shape_factors) for f in factors}
    for group in GROUPS:  # both groups among the primaries
        if len(factors) > 1 and not any(d.group == group for d in prim.values()):
            slots = [f for f in factors if f not in sensitive] or list(factors)
            counts = {f: sum(c.person == prim[f].person for c in prim.values()) for f in slots}
            slot = max(slots, key=lambda f: (counts[f], slots.index(f)))
            cands = sorted((d for d in donors if d.group == group
                            and (slot in shape_factors or feature_ok(d))), key=lambda d: d.content_hash)
            cands = cands or sorted((d for d in donors if d.group == group), key=lambda d: d.content_hash)
            prim[slot] = cands[int(rng.integers(len(cands)))]
    components: dict[str, tuple[tuple[str, float], ...]] = {}
    for f in factors:
        shape = f in shape_factors
        pool = [photo(p, not shape) for p in others if p != prim[f].person]
        if not shape:
            pool = [d for d in pool if feature_ok(d)] or pool
        if f in sensitive:
            pool = [d for d in pool if d.cluster == anchor.cluster] or pool
        k = max(1, min(cfg.donors(f), len(pool) + 1))
        picks = [pool[i] for i in rng.permutation(len(pool))[:k - 1]]
        components[f] = _weights(prim[f], picks, cfg.primary_weight, rng)
    components = _no_universal_donor(components, prim, factors)
    pull = cfg.mean_pull - (float(rng.uniform(0.0, cfg.mean_push_spread)) if cfg.mean_push_spread > 0 else 0.0)
    pulled = None if roles.pulled is None else tuple(f for f in factors if f in roles.pulled)
    return make_recipe(seed, components, pull, anchor.content_hash, pulled)


def _pick_context(donors: Sequence[DonorInfo], cluster_people: Mapping[int, set[str]],
                  avoid: frozenset[str], cfg: SamplerKnobs, rng: np.random.Generator,
                  rank: int | None = None) -> DonorInfo:
    """The context photo: a colour photo turned at most ``context_max_yaw``, of a person
    drawn uniformly (or the ``rank``-th, when given) among those whose appearance cluster
    has another feature donor and who are not in ``avoid`` (each preference dropped when
    it leaves nobody)."""
    usable = [d for d in donors if abs(d.yaw) <= cfg.context_max_yaw and d.colourful >= MONOCHROME_CHROMA]
    usable = usable or [d for d in donors if d.frontal] or list(donors)
    usable = [d for d in usable if cluster_people.get(d.cluster, set()) - {d.person}] or usable
    usable = [d for d in usable if d.person not in avoid] or usable
    names = sorted({d.person for d in usable})
    drawn = int(rng.integers(len(names)))  # drawn either way: the rest of the recipe stays put
    person = names[drawn if rank is None else rank % len(names)]
    photos = sorted((d for d in usable if d.person == person), key=lambda d: d.content_hash)
    return photos[int(rng.integers(len(photos)))]


def _weights(primary: DonorInfo, others: list[DonorInfo], primary_weight: float,
             rng: np.random.Generator) -> tuple[tuple[str, float], ...]:
    if not others:
        return ((primary.content_hash, 1.0),)
    rest = (1.0 - primary_weight) * rng.dirichlet(np.full(len(others), 4.0))
    if rest.max() >= primary_weight:  # the primary must stay the largest share
        rest = np.full(len(others), (1.0 - primary_weight) / len(others))
    if rest.max() >= primary_weight:  # primary_weight below 1/k: share equally, primary first
        share = 1.0 / (len(others) + 1)
        return tuple((d.content_hash, share) for d in [primary] + others)
    return ((primary.content_hash, primary_weight),) + tuple(
        (d.content_hash, float(w)) for d, w in zip(others, rest))


def _no_universal_donor(components: dict[str, tuple[tuple[str, float], ...]],
                        primaries: Mapping[str, DonorInfo],
                        factors: tuple[str, ...]) -> dict[str, tuple[tuple[str, float], ...]]:
    """Drop a donor that would take part in every factor from one factor where it
    is not the primary (re-normalising that factor's weights)."""
    if len(factors) < 2:
        return components
    while True:
        sets = [{h for h, _ in components[f]} for f in factors]
        universal = sorted(set.intersection(*sets))
        if not universal:
            return components
        donor = universal[0]
        slot = next((f for f in factors
                     if primaries[f].content_hash != donor and len(components[f]) > 1), None)
        if slot is None:  # only possible if one donor were every factor's primary
            raise RuntimeError(f"donor {donor[:10]} supplies every factor; recipe sampling bug")
        kept = [(h, w) for h, w in components[slot] if h != donor]
        total = sum(w for _, w in kept)
        components[slot] = tuple((h, w / total) for h, w in kept)


def recipe_json(recipe: Recipe) -> str:
    """``recipe`` as the JSON text the lineage stores (``recipes.recipe_json``)."""
    body = {"components": {f: [[d, w] for d, w in parts] for f, parts in recipe.components.items()},
            "primary": dict(recipe.primary), "mean_pull": recipe.mean_pull,
            "context_donor": recipe.context_donor, "seed": recipe.seed}
    if recipe.pulled is not None:
        body["pulled"] = list(recipe.pulled)
    return json.dumps(body, sort_keys=True)


def recipe_from_json(text: str) -> Recipe:
    """The ``Recipe`` that ``recipe_json`` wrote (its id recomputed, so it matches)."""
    body = json.loads(text)
    return make_recipe(int(body["seed"]), {f: [(str(h), float(w)) for h, w in parts]
                                          for f, parts in body["components"].items()},
                       float(body["mean_pull"]), str(body["context_donor"]),
                       None if body.get("pulled") is None else tuple(map(str, body["pulled"])))


def make_recipe(seed: int, components: Mapping[str, Sequence[tuple[str, float]]],
                mean_pull: float, context_donor: str, pulled: Sequence[str] | None = None) -> Recipe:
    """Build a ``Recipe`` with normalised, rounded weights and its content-hash id.

    ``components[factor]`` lists ``(donor hash, weight)``; weights are
    normalised to sum to 1 and the primary is the largest (first on ties).
    ``pulled``: the factors the mean pull applies to (``None``: all of them).
    """
    comps: dict[str, tuple[tuple[str, float], ...]] = {}
    for f, parts in components.items():
        parts = [(str(h), float(w)) for h, w in parts]
        if not parts or any(w < 0 or not math.isfinite(w) for _, w in parts):
            raise ValueError(f"factor {f!r} needs donors with finite, non-negative weights, got {parts}")
        total = sum(w for _, w in parts)
        if total <= 0:
            raise ValueError(f"factor {f!r} has weights summing to {total}")
        comps[f] = tuple((h, round(w / total, 6)) for h, w in parts)
    primary = {f: max(parts, key=lambda hw: hw[1])[0] for f, parts in comps.items()}
    body = {"seed": int(seed), "components": {f: [list(p) for p in comps[f]] for f in sorted(comps)},
            "mean_pull": round(float(mean_pull), 6), "context_donor": context_donor}
    if pulled is not None:
        unknown = sorted(set(pulled) - set(comps))
        if unknown:
            raise ValueError(f"pulled names factors the recipe does not mix: {unknown}")
        body["pulled"] = sorted(set(pulled))  # in the id only when given: older recipes keep theirs
    recipe_id = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return Recipe(recipe_id=recipe_id, seed=int(seed), components=comps, primary=primary,
                  mean_pull=body["mean_pull"], context_donor=context_donor,
                  pulled=None if pulled is None else tuple(body["pulled"]))


def recipe_roles(recipe: Recipe, person_of: Mapping[str, str]) -> dict[str, str]:
    """Who plays each part of ``recipe``: the person of the context photo
    (key ``"context"``) and the primary donor's person of every factor.

    ``person_of`` maps content hashes to persons (``DonorInfo.person``); a
    hash it lacks is its own person.
    """
    roles = {f: person_of.get(h, h) for f, h in recipe.primary.items()}
    roles["context"] = person_of.get(recipe.context_donor, recipe.context_donor)
    return roles


def new_roles(recipe: Recipe, others: Sequence[Recipe], person_of: Mapping[str, str],
              parts: Collection[str] | None = None) -> int:
    """The fewest parts in which ``recipe`` differs from any of ``others``
    (``recipe_roles``, only those named in ``parts`` when given; every part
    counted when ``others`` is empty).

    With few source people the sampler often deals the same people the same
    parts again; such recipes differ only in their random push off the mean
    and render faces that the guard finds 0.97-0.999 similar to each other;
    swapping only the shape factors between the same people still gave 0.975.
    """
    mine = {k: v for k, v in recipe_roles(recipe, person_of).items() if parts is None or k in parts}
    if not others:
        return len(mine)
    return min(sum(recipe_roles(o, person_of).get(k) != v for k, v in mine.items()) for o in others)


# ----------------------------------------------------------------------- mixing

def mix_factors(recipe: Recipe, factors_by_hash: Mapping[str, Factors],
                mean: Factors) -> dict[str, np.ndarray]:
    """Factor vectors of ``recipe``: for each identity factor
    ``(1 - mean_pull) * sum(w * f_donor) + mean_pull * mean[factor]`` (the factors
    the recipe does not pull: ``sum(w * f_donor)``); entries whose names start with
    ``_`` are copied from the context donor.
    """
    missing = sorted({h[:10] for h in recipe.donors() if h not in factors_by_hash})
    if missing:
        raise KeyError(f"recipe {recipe.recipe_id[:10]} uses donors {missing} that have no factors; "
                       "decompose those sources first")
    out: dict[str, np.ndarray] = {}
    for name, parts in recipe.components.items():
        if name not in mean:
            raise KeyError(f"no population mean for factor {name!r}; pass Backbone.population_mean()")
        target = np.asarray(mean[name], dtype=np.float64)
        acc = np.zeros_like(target)
        for donor, weight in parts:
            vec = np.asarray(factors_by_hash[donor][name], dtype=np.float64)
            if vec.shape != target.shape:
                raise ValueError(f"factor {name!r} of donor {donor[:10]} is shaped {vec.shape}, "
                                 f"the mean is {target.shape}: factors come from different fits")
            acc += weight * vec
        pull = recipe.mean_pull if recipe.pulls(name) else 0.0
        out[name] = ((1.0 - pull) * acc + pull * target).astype(np.float32)
    for key, value in factors_by_hash[recipe.context_donor].items():
        if key.startswith("_"):
            out[key] = np.asarray(value).copy()
    return out
