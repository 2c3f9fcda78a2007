"""Photo-reuse check: is a candidate a near-duplicate of a source photo in any region?

A released face must not be an edited copy of a source photo — the source's
hair, clothes or backdrop around a replaced face, a blurred or recoloured
copy, a mirrored, cropped, rescaled or re-encoded one. Two kinds of evidence
are gathered for every source photo, each in both orientations (sources are
stored mirrored too, so a mirrored candidate matches its original):

``inliers``
    SIFT keypoints of the candidate matched against every source image with
    one FLANN search, a ratio test per source image, then a RANSAC similarity
    fit (``cv2.estimateAffinePartial2D``); the count of geometrically
    consistent matches at distinct points. Survives crops, rescaling, blur
    and recolouring of parts of the frame; a face replaced in the middle
    leaves the periphery's inliers.
``tiles`` and ``hash_distance``
    Perceptual hashes (``imagehash.phash``) of the whole frame and of a
    ``GRID x GRID`` grid of tiles, compared at the same place. Catch copies in
    the same framing whose texture SIFT finds too little of; tiles without
    texture (a plain backdrop) never count, nor does a frame without any.

A candidate is REUSED when any evidence reaches its threshold in
``REUSE_THRESHOLDS`` (calibration: ``docs/reuse_guard.md``). ``ReuseMatch.score``
is the strongest evidence as a fraction of its threshold, so ``score >= 1``
exactly when reused. Errors always raise — the caller fails closed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .atomic import atomic_save_npz, load_npz
from .types import check_image

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAX_SIDE = 512  # longer sides are shrunk to this before any feature is taken
MIN_SIDE = 64  # smaller images carry too little to tell reuse apart
SIFT_FEATURES = 1000  # strongest keypoints kept per image
SIFT_CONTRAST = 0.01  # OpenCV's default 0.04 finds too few keypoints in dark, soft backdrops
GRID = 4  # tiles per side for the part hashes
HASH_BYTES = 8  # imagehash.phash with hash_size=8: 64 bits
KNN = 10  # neighbours per candidate descriptor in the one FLANN search
RATIO = 0.8  # Lowe's ratio test, applied per source image
RANSAC_PX = 1.5  # in source pixels: a copy lands on the pixel, the same face in another photo does not
SCALE_RANGE = (1 / 16, 16.0)  # a fit that shrinks or grows more than this is no copy
FLANN_TREES, FLANN_CHECKS = 4, 16  # randomized kd-trees; leaves searched per query
FLANN_SEED = 0  # OpenCV's RNG seeds the kd-trees: fixed, so every build of an index answers alike

#: Extraction settings a saved index must have been built with.
_EXTRACTION = np.array([FORMAT_VERSION, MAX_SIDE, SIFT_FEATURES, SIFT_CONTRAST, GRID, HASH_BYTES],
                       dtype=np.float64)


@dataclass(frozen=True)
class ReuseThresholds:
    """When a candidate counts as reused (any one suffices)."""

    min_inliers: int = 20  # RANSAC inliers to one source image
    max_hash_distance: int = 4  # whole-frame phash bits differing, out of 64
    max_tile_distance: int = 8  # a tile matches its place at most this many bits apart
    min_tiles: int = 5  # matching textured tiles, out of GRID * GRID
    min_tile_std: float = 12.0  # grey-level std below which a tile is plain backdrop

    def __post_init__(self) -> None:
        tiles = GRID * GRID
        if self.min_inliers < 3:
            raise ValueError(f"min_inliers={self.min_inliers}: a similarity fit needs 3 or more matches "
                             "to be evidence")
        if not 0 <= self.max_hash_distance < 4 * HASH_BYTES:
            raise ValueError(f"max_hash_distance={self.max_hash_distance} must lie in [0, {4 * HASH_BYTES}) "
                             "(unrelated images differ in about half of the 64 bits)")
        if not 1 <= self.min_tiles <= tiles:
            raise ValueError(f"min_tiles={self.min_tiles} must lie in [1, {tiles}]")


#: Calibrated on ../shared/faces: see docs/reuse_guard.md.
REUSE_THRESHOLDS = ReuseThresholds()


@dataclass(frozen=True)
class ReuseMatch:
    """A candidate judged against one source (``check``: the one with the highest score)."""

    score: float  # strongest evidence / its threshold; >= 1 means reused
    nearest: str  # the source id
    inliers: int  # RANSAC inliers to that source's best image (0: too few matches to fit)
    hash_distance: int  # whole-frame phash distance, 0..64
    tiles: int  # tiles matching their place, 0..GRID * GRID
    mirrored: bool  # the deciding evidence came from the mirrored source
    reused: bool
    reason: str


@dataclass(frozen=True)
class _Features:
    """What is taken from one image in one orientation.

    ``xy`` ``[N, 2]`` keypoints in the shrunk image, ``desc`` ``[N, 128]``
    SIFT descriptors, ``whole`` ``[8]`` packed frame hash, ``tile_hash``
    ``[GRID * GRID, 8]`` packed tile hashes, ``tile_std`` ``[GRID * GRID]``.
    """

    xy: np.ndarray
    desc: np.ndarray
    whole: np.ndarray
    tile_hash: np.ndarray
    tile_std: np.ndarray


def _shrink_gray(image: np.ndarray, what: str) -> np.ndarray:
    """Grey ``[h, w]`` uint8 of an RGB ``[H, W, 3]`` image, longest side at most ``MAX_SIDE``."""
    import cv2

    check_image(image, what)
    h, w = image.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"{what} is {w}x{h} px; the reuse check needs at least {MIN_SIDE} px a side "
                         "— pass the full-resolution image")
    gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    scale = MAX_SIDE / max(h, w)
    if scale < 1:
        gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                          interpolation=cv2.INTER_AREA)
    return gray


def _phash(gray: np.ndarray) -> np.ndarray:
    """Packed 64-bit perceptual hash ``[8]`` of a grey image."""
    import imagehash
    from PIL import Image

    bits = imagehash.phash(Image.fromarray(gray), hash_size=8).hash
    return np.packbits(bits.reshape(-1))


def _tiles(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hashes ``[GRID * GRID, 8]`` and grey std ``[GRID * GRID]`` of the tile grid, row-major."""
    h, w = gray.shape
    ys = np.linspace(0, h, GRID + 1).round().astype(int)
    xs = np.linspace(0, w, GRID + 1).round().astype(int)
    tiles = [gray[ys[r]:ys[r + 1], xs[c]:xs[c + 1]] for r in range(GRID) for c in range(GRID)]
    return (np.stack([_phash(t) for t in tiles]),
            np.array([t.std() for t in tiles], dtype=np.float32))


def _sift(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints ``[N, 2]`` float32 and descriptors ``[N, 128]`` uint8 (rounded, so saved = fresh)."""
    import cv2

    sift = cv2.SIFT_create(nfeatures=SIFT_FEATURES, contrastThreshold=SIFT_CONTRAST)
    keypoints, desc = sift.detectAndCompute(gray, None)
    if desc is None or not keypoints:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8)
    xy = np.array([kp.pt for kp in keypoints], dtype=np.float32)
    return xy, np.clip(np.rint(desc), 0, 255).astype(np.uint8)


def _extract(gray: np.ndarray) -> _Features:
    """All features of one shrunk grey image ``[h, w]``."""
    xy, desc = _sift(gray)
    tile_hash, tile_std = _tiles(gray)
    return _Features(xy, desc, _phash(gray), tile_hash, tile_std)


def _popcount(packed: np.ndarray) -> np.ndarray:
    """Set bits over the last axis of a packed uint8 array."""
    return np.unpackbits(packed, axis=-1).sum(axis=-1, dtype=np.int64)


def _ratio_matches(idx: np.ndarray, dist: np.ndarray, kp_entry: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Matches that pass Lowe's ratio test within their own source image.

    ``idx``/``dist`` ``[Q, K]`` are FLANN's neighbours (squared L2, nearest
    first). For each query and each source image among its neighbours, the
    nearest neighbour in that image is kept when it is clearly nearer than the
    second one *in the same image*; the same photo stored twice (photo and its
    aligned crop) therefore never vetoes itself. An image seen once among the K
    is tested against the K-th distance, a lower bound of its second one
    (stricter than Lowe's test). Returns query rows and source keypoint rows.
    """
    ent = np.where(idx >= 0, kp_entry[np.maximum(idx, 0)], -1)
    k = idx.shape[1]
    same = (ent[:, :, None] == ent[:, None, :]) & (ent[:, :, None] >= 0)
    earlier = np.tri(k, k=-1, dtype=bool)  # [i, j]: j < i
    first = ~(same & earlier).any(axis=-1) & (ent >= 0)
    second = np.where(same & earlier.T, dist[:, None, :], np.inf).min(axis=-1)
    second = np.where(np.isinf(second), dist[:, -1:], second)
    keep = first & (dist < RATIO ** 2 * second)
    rows, cols = np.nonzero(keep)
    return rows, idx[rows, cols]


def _similarity_inliers(src: np.ndarray, dst: np.ndarray) -> int:
    """Matches ``src`` ``[M, 2]`` → ``dst`` ``[M, 2]`` that fit one RANSAC similarity.

    Counted at distinct points on both sides (rounded to the pixel), so many
    matches piling onto one point count once; a fit whose scale lies outside
    ``SCALE_RANGE`` counts 0.
    """
    import cv2

    if len(src) < 3:
        return 0
    matrix, mask = cv2.estimateAffinePartial2D(
        src.astype(np.float32), dst.astype(np.float32), method=cv2.RANSAC,
        ransacReprojThreshold=RANSAC_PX, maxIters=2000, confidence=0.995)
    if matrix is None or mask is None:
        return 0
    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
    if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
        return 0
    inl = mask.ravel().astype(bool)
    return min(len(np.unique(np.rint(src[inl]), axis=0)), len(np.unique(np.rint(dst[inl]), axis=0)))


def _hash_ratio(distance: np.ndarray, th: ReuseThresholds) -> np.ndarray:
    """Whole-frame hash evidence: 1 at the threshold, 0 at chance (32 of 64 bits differ)."""
    chance = 4 * HASH_BYTES
    return np.clip((chance - distance) / (chance - th.max_hash_distance), 0.0, None)


#: The .npz layout: array name -> dtype (``source_ids`` are str). ``E`` images (two per
#: photo given: as is, mirrored), ``N`` keypoints, ``S`` sources.
_DTYPES = {
    "extraction": "float64",  # [6] settings the features were taken with (_EXTRACTION)
    "entry_source": "int32",  # [E] source of each image
    "entry_mirrored": "bool",  # [E]
    "kp_xy": "float32",  # [N, 2] keypoint positions in the shrunk image
    "kp_entry": "int32",  # [N] image of each keypoint
    "desc": "uint8",  # [N, 128] SIFT descriptors
    "whole": "uint8",  # [E, 8] packed frame hash
    "tile_hash": "uint8",  # [E, GRID * GRID, 8] packed tile hashes
    "tile_std": "float32",  # [E, GRID * GRID] grey std of each tile
}
_KEYS = ("source_ids", *_DTYPES)


class ReuseIndex:
    """Features of every source photo, both orientations, ready to judge candidates.

    Build it with ``ReuseIndex.build`` (or ``load``); ``check`` judges one
    candidate, ``rank`` lists every source for it, strongest evidence first.
    Safe to share between threads (the FLANN search runs under a lock).
    """

    def __init__(self, arrays: dict[str, np.ndarray], thresholds: ReuseThresholds = REUSE_THRESHOLDS) -> None:
        import cv2

        _check_arrays(arrays)
        self._a = arrays
        self.thresholds = thresholds
        self._entries = [np.flatnonzero(arrays["entry_source"] == s) for s in range(len(arrays["source_ids"]))]
        self._flann = None
        self._lock = threading.Lock()
        if len(arrays["desc"]):
            cv2.setRNGSeed(FLANN_SEED)
            self._flann = cv2.flann_Index(arrays["desc"].astype(np.float32),
                                          dict(algorithm=1, trees=FLANN_TREES))
        else:
            log.warning("no SIFT keypoints in any of %d source photos: reuse is judged by hashes only",
                        len(arrays["source_ids"]))

    @classmethod
    def build(cls, photos: Sequence[tuple[str, np.ndarray]],
              thresholds: ReuseThresholds = REUSE_THRESHOLDS) -> ReuseIndex:
        """Index ``(source id, RGB uint8 [H, W, 3])`` pairs; one id may have several images.

        Pass each source both as the original photo and as its aligned crop,
        under the same id, so crops of small faces are matched at their scale.
        """
        if len(photos) == 0:
            raise ValueError("no source photos to index: a reuse check against nothing would pass "
                             "every candidate — pass (source id, image) pairs")
        ids: list[str] = []
        feats: list[_Features] = []
        entry_source: list[int] = []
        for i, (sid, image) in enumerate(photos):
            if not isinstance(sid, str) or not sid:
                raise ValueError(f"photos[{i}] has id {sid!r}; ids must be non-empty strings")
            if sid not in ids:
                ids.append(sid)
            gray = _shrink_gray(image, f"source photo {sid!r} (photos[{i}])")
            feats += [_extract(gray), _extract(np.ascontiguousarray(gray[:, ::-1]))]
            entry_source += [ids.index(sid)] * 2
        log.info("reuse index: %d images of %d sources, %d keypoints", len(photos), len(ids),
                 sum(len(f.xy) for f in feats))
        return cls(_pack(ids, feats, entry_source), thresholds)

    @property
    def source_ids(self) -> list[str]:
        return [str(s) for s in self._a["source_ids"]]

    def __len__(self) -> int:
        return len(self._a["source_ids"])

    def check(self, image: np.ndarray) -> ReuseMatch:
        """Judge one candidate RGB uint8 ``[H, W, 3]`` against its nearest source."""
        evidence = self._evidence(image)
        return self._match(int(np.argmax(evidence.source_score)), evidence)

    def check_many(self, images: Sequence[np.ndarray]) -> list[ReuseMatch]:
        """``check`` for each candidate, in order."""
        return [self.check(image) for image in images]

    def rank(self, image: np.ndarray) -> list[ReuseMatch]:
        """One ``ReuseMatch`` per source for a candidate ``[H, W, 3]``, highest score first."""
        evidence = self._evidence(image)
        order = np.argsort(-evidence.source_score, kind="stable")
        return [self._match(int(s), evidence) for s in order]

    def save(self, path: Path) -> None:
        """Write the index to ``path`` (.npz, atomically; no pickled objects)."""
        atomic_save_npz(Path(path), **self._a)

    @classmethod
    def load(cls, path: Path, thresholds: ReuseThresholds = REUSE_THRESHOLDS) -> ReuseIndex:
        """Read an index written by ``save``; refuses one built with other extraction settings."""
        return cls(load_npz(Path(path)), thresholds)

    def _inliers(self, feats: _Features) -> np.ndarray:
        """RANSAC inliers ``[E]`` to every stored image (0 where too few matches to fit)."""
        entries = len(self._a["entry_source"])
        out = np.zeros(entries, dtype=np.int64)
        if self._flann is None or len(feats.desc) == 0:
            return out
        k = min(KNN, len(self._a["desc"]))
        with self._lock:  # FLANN is not documented as thread-safe
            idx, dist = self._flann.knnSearch(feats.desc.astype(np.float32), k,
                                              params=dict(checks=FLANN_CHECKS))
        rows, src_rows = _ratio_matches(idx, dist, self._a["kp_entry"])
        ent = self._a["kp_entry"][src_rows]
        counts = np.bincount(ent, minlength=entries)
        for e in np.flatnonzero(counts >= self.thresholds.min_inliers):
            sel = ent == e
            out[e] = _similarity_inliers(feats.xy[rows[sel]], self._a["kp_xy"][src_rows[sel]])
        return out

    def _tiles(self, feats: _Features) -> np.ndarray:
        """Textured tiles ``[E]`` whose hash matches the stored image's tile at the same place."""
        th = self.thresholds
        distance = _popcount(self._a["tile_hash"] ^ feats.tile_hash[None])
        textured = (self._a["tile_std"] >= th.min_tile_std) & (feats.tile_std >= th.min_tile_std)[None]
        return ((distance <= th.max_tile_distance) & textured).sum(axis=1)

    def _evidence(self, image: np.ndarray) -> _Evidence:
        feats = _extract(_shrink_gray(image, "candidate"))
        th = self.thresholds
        inliers = self._inliers(feats)
        hash_distance = _popcount(self._a["whole"] ^ feats.whole[None])
        tiles = self._tiles(feats)
        # a frame without one textured tile hashes to noise: its whole-frame hash is no evidence
        textured = ((self._a["tile_std"].max(axis=1) >= th.min_tile_std)
                    & (feats.tile_std.max() >= th.min_tile_std))
        ratios = np.stack([inliers / th.min_inliers, tiles / th.min_tiles,
                           np.where(textured, _hash_ratio(hash_distance, th), 0.0)])
        source_score = np.full(len(self), -np.inf)
        np.maximum.at(source_score, self._a["entry_source"], ratios.max(axis=0))
        return _Evidence(inliers, hash_distance, tiles, ratios, source_score)

    def _match(self, source: int, ev: _Evidence) -> ReuseMatch:
        """The evidence for one source, from its strongest image and criterion."""
        entries = self._entries[source]
        best = entries[int(np.argmax(ev.ratios[:, entries].max(axis=0)))]
        kind = int(np.argmax(ev.ratios[:, best]))
        score = float(ev.ratios[kind, best])
        match = ReuseMatch(score=score, nearest=str(self._a["source_ids"][source]),
                           inliers=int(ev.inliers[entries].max()),
                           hash_distance=int(ev.hash_distance[entries].min()),
                           tiles=int(ev.tiles[entries].max()),
                           mirrored=bool(self._a["entry_mirrored"][best]),
                           reused=score >= 1.0, reason="")
        return replace(match, reason=_reason(match, _CRITERIA[kind], self.thresholds))


@dataclass(frozen=True)
class _Evidence:
    """One candidate against every stored image ``[E]``, and each source's score ``[S]``."""

    inliers: np.ndarray
    hash_distance: np.ndarray
    tiles: np.ndarray
    ratios: np.ndarray  # [3, E]: inliers, tiles, hash evidence as fractions of their thresholds
    source_score: np.ndarray


_CRITERIA = ("RANSAC inliers", "matching tiles", "whole-frame hash")


def _reason(match: ReuseMatch, deciding: str, th: ReuseThresholds) -> str:
    facts = (f"{match.inliers} RANSAC inliers (reused at >= {th.min_inliers}), "
             f"{match.tiles} matching tiles (>= {th.min_tiles}), "
             f"whole-frame hash {match.hash_distance} bits apart (<= {th.max_hash_distance})")
    if match.reused:
        side = " mirrored" if match.mirrored else ""
        return f"reuses source {match.nearest!r}{side} ({deciding}): {facts}"
    return f"no reuse; nearest source {match.nearest!r}: {facts}"


def _pack(ids: list[str], feats: list[_Features], entry_source: list[int]) -> dict[str, np.ndarray]:
    """The index as named arrays (the .npz layout)."""
    return {
        "extraction": _EXTRACTION.copy(),
        "source_ids": np.array(ids, dtype=str),
        "entry_source": np.array(entry_source, dtype=np.int32),
        "entry_mirrored": np.array([i % 2 == 1 for i in range(len(feats))]),
        "kp_xy": np.concatenate([f.xy for f in feats]).astype(np.float32).reshape(-1, 2),
        "kp_entry": np.concatenate([np.full(len(f.xy), e, np.int32) for e, f in enumerate(feats)]),
        "desc": np.concatenate([f.desc for f in feats]).astype(np.uint8).reshape(-1, 128),
        "whole": np.stack([f.whole for f in feats]),
        "tile_hash": np.stack([f.tile_hash for f in feats]),
        "tile_std": np.stack([f.tile_std for f in feats]),
    }


def _check_arrays(a: dict[str, np.ndarray]) -> None:
    """Refuse a damaged, foreign or stale index, naming what is wrong."""
    missing, unexpected = set(_KEYS) - set(a), set(a) - set(_KEYS)
    if missing or unexpected:
        raise ValueError(f"not a reuse index: missing {sorted(missing)}, unexpected {sorted(unexpected)} "
                         "— rebuild it with ReuseIndex.build")
    if a["extraction"].shape != _EXTRACTION.shape or not np.array_equal(a["extraction"], _EXTRACTION):
        raise ValueError(f"reuse index was built with extraction settings {a['extraction'].tolist()}, "
                         f"this code uses {_EXTRACTION.tolist()} — rebuild it with ReuseIndex.build")
    wrong = [f"{k} is {a[k].dtype}, not {t}" for k, t in _DTYPES.items() if a[k].dtype != np.dtype(t)]
    if a["source_ids"].dtype.kind != "U":
        wrong.append(f"source_ids is {a['source_ids'].dtype}, not str")
    if wrong:
        raise ValueError(f"reuse index has arrays of the wrong type ({'; '.join(wrong)}) — rebuild it")
    _check_shapes(a)


def _check_shapes(a: dict[str, np.ndarray]) -> None:
    n_src, n_ent, n_kp = len(a["source_ids"]), len(a["entry_source"]), len(a["kp_xy"])
    tiles = GRID * GRID
    shapes = {"source_ids": (n_src,), "entry_source": (n_ent,), "entry_mirrored": (n_ent,),
              "kp_xy": (n_kp, 2), "kp_entry": (n_kp,), "desc": (n_kp, 128), "whole": (n_ent, HASH_BYTES),
              "tile_hash": (n_ent, tiles, HASH_BYTES), "tile_std": (n_ent, tiles)}
    bad = [f"{k} {a[k].shape} != {s}" for k, s in shapes.items() if a[k].shape != s]
    if bad:
        raise ValueError(f"reuse index is inconsistent ({', '.join(bad)}) — rebuild it with ReuseIndex.build")
    if n_src == 0 or not np.array_equal(np.unique(a["entry_source"]), np.arange(n_src)):
        held = np.unique(a["entry_source"]).tolist()
        raise ValueError(f"reuse index holds {n_src} sources but images of sources {held}: every source "
                         "needs images and every image a source — rebuild it")
    if n_kp and (a["kp_entry"].min() < 0 or a["kp_entry"].max() >= n_ent):
        raise ValueError("reuse index has keypoints of images it does not hold — rebuild it")
