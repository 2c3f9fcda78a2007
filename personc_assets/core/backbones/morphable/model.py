"""``MorphableBackbone``: the embedded, weight-free default backbone.

A classical morphable face model (an active-appearance-model style shape +
shape-free texture model) built from the source faces themselves.

Latent of one face (all ``float32`` unless noted)::

    geometry        [Ks]       symmetric shape PCA coefficients, neutralised: mouth
                               opening, lid aperture and head turn taken out
    symmetry        [Ka]       antisymmetric shape PCA coefficients, head turn taken out
    texture         [Kt]       shape-free texture PCA coefficients (frontalised)
    nose            [Kn]       nose region PCA coefficients
    eyes            [Ke + 1]   eye region PCA coefficients, then the lid aperture
    mouth           [Km + 1]   mouth region PCA coefficients, then the mouth
                               opening (inner-lip gap); both in normalised shape units
    pose            [4]        similarity (a, b, tx, ty) of the face in the crop
    yaw             [1]        head-turn estimate (see ``faces.align.estimate_yaw``)
    context         uint8 [S, S, 3]  the photo that supplies hair, ears, neck, background
    context_points  [68, 2]    landmarks of ``context`` (crop pixels)

``decompose`` renames them into factors: the six identity factors keep their
names, the rest become the non-identity ``_pose``, ``_yaw``, ``_context``,
``_context_points`` that a recipe takes whole from its context donor.

Identity and expression/pose are kept apart so that factors of different
donors fit together: the mouth opening travels with the ``mouth`` factor
(a closed-mouth shape never receives an open mouth's teeth), the lid
aperture with the ``eyes`` factor (no squinting eyes stretched open), and the head
turn — a linear effect on the shape coefficients, regressed on the sources —
belongs to the context donor, whose photo the face is rendered into. For
turned faces the far, foreshortened half of the shape-free texture is filled
from the mirrored near half (``mirror_fill_*`` knobs).

Rendering (``synthesize``): decode the shape; decode the shape-free texture,
lit with the light field and contrast of the context photo (see
``appearance``), and warp it once onto the shape; warp the context photo onto
the same shape (its own landmarks + forehead + crop-border points, so hair
and background follow the new outline without tearing); shift the context's
remaining low-frequency colour near the face toward the new face; then join
face and context with a multi-band (Laplacian pyramid) blend over a soft face
mask that stops short of the upper forehead and the cheek edges, where
donors' fringes and long hair lie in their textures (``face_grow``,
``face_forehead``). Context photos may be turned (up to the sampler's
``context_max_yaw``): the face is drawn in the photo's own pose. Each pixel
of the face is resampled twice from the aligned crop (to the mean frame,
then onto the new shape), the context once.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ...faces.align import estimate_yaw
from ...types import Latent, SourceFace, check_image, check_landmarks
from ..base import BACKBONES, FACTOR_NAMES, FACTOR_ROLES, BackboneError, FactorRoles, Projection
from .appearance import (REGION_NAMES, AppearanceModel, Region, face_mask, feature_mask, fit_appearance,
                         interocular, low_pass)
from .blend import detail_layer, laplacian_blend, soft_light_match, to_uint8
from .shape import (EYE_DIRECTION, MOUTH_DIRECTION, PCA, ShapeModel, apply_pose, eye_aperture,
                    fit_shape_model, full_points, inner_lip_gap, uncross_lips)
from .warp import triangle_maps, triangulate, warp_image

log = logging.getLogger(__name__)

#: What surrounds the rendered face (see ``MorphableConfig.frame``).
FRAMES: tuple[str, ...] = ("neutral", "context")
#: Rec. 601 luma weights: the luminance that colour harmonisation leaves alone.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
#: Appearance factors in the order of ``LinearRender``'s Jacobian columns.
APPEARANCE_FACTORS: tuple[str, ...] = ("texture", "eyes", "nose", "mouth")
#: Context entries of a latent (non-identity; renamed with a leading "_" in factors).
CONTEXT_KEYS: tuple[str, ...] = ("pose", "yaw", "context", "context_points")
STATE_VERSION = 1


@dataclass(frozen=True)
class MorphableConfig:
    """Tuning knobs of the morphable backbone (defaults tuned on ../shared/faces).

    Lengths marked *iod* are in units of the inter-ocular distance of the face
    (about 40 px in PersonC's 256 px canonical crop).
    """

    #: side of the aligned crops it reads and the images it renders
    image_size: int = 256
    #: most PCA modes kept per model (never more than faces - 1)
    max_modes: int = 64
    #: Gaussian sigma (iod) splitting what feature regions carry (finer detail)
    #: from what the texture factor carries around them (broader shading)
    detail_sigma: float = 0.5
    #: Gaussian sigma (iod) of the light field (skin tone, shading) that faces
    #: take from the photo they are rendered into instead of from their donors
    light_sigma: float = 0.5
    #: face mask for blending: grown (negative: shrunk) and feathered, in iod.
    #: Donors' hair over their cheeks and forehead (fringes, long hair) is part
    #: of their shape-free texture; a smaller face region leaves those parts to
    #: the context photo (its own hair stays in front), but the context then
    #: shows more of its person: on the demo photos -0.3 halved the share of
    #: candidates below tau, -0.1 cost nothing measurable
    face_grow: float = -0.1
    face_feather: float = 0.10
    #: how far up the forehead the rendered face reaches, as a fraction of the
    #: model's forehead points (1) above the brows (0); above it the context
    #: photo's own forehead and fringe show (no measurable cost in distance)
    face_forehead: float = 0.45
    #: Laplacian pyramid levels of the face/context blend
    blend_levels: int = 5
    #: how strongly the context's skin colour near the face follows the new face (0..1)
    colour_match: float = 1.0
    #: reach (iod) of that colour shift beyond the face border
    colour_sigma: float = 0.6
    #: extra gain on the finest texture band (restores pore-level detail that
    #: averaging several donors washes out; 0 = off)
    fine_detail_gain: float = 0.0
    #: Gaussian sigma (px) of that finest band
    fine_detail_sigma: float = 1.0
    #: head turn (|yaw|) where mirror filling of the far face half starts / is complete
    mirror_fill_start: float = 0.12
    mirror_fill_full: float = 0.32
    #: ridge term of the head-turn regressions (in yaw^2 units)
    yaw_ridge: float = 2e-3
    #: what surrounds the face: "neutral" renders the face frontal in the mean
    #: pose on a generated plain backdrop (no pixel of any source photo outside
    #: the modelled face); "context" pastes it into the context donor's photo
    #: (hair, clothes, background of a real person: an edited photo, which the
    #: reuse guard rejects; kept for the privacy modes that edit the user's own photo)
    frame: str = "neutral"
    #: neutral frame: scale of the face about the crop centre (1 = the sources' alignment)
    zoom: float = 1.3
    #: neutral frame: face oval — forehead reach (as ``face_forehead``), grow and feather (iod)
    oval_forehead: float = 0.6
    oval_grow: float = -0.04
    oval_feather: float = 0.22
    #: neutral frame: backdrop colour (RGB in [0, 1]), lit softly from the upper left
    backdrop: tuple[float, float, float] = (0.46, 0.48, 0.50)
    #: fit the appearance model only on faces that no fringe, hat or glasses cover
    #: (``faces.occluders``); covered faces still give shape and protect their person
    bare_appearance: bool = True
    #: neutral frame: detail restoration — gain of an unsharp mask on the face's luminance
    #: (0 = off) and its Gaussian sigma (px); it gives back what averaging and two resamplings
    #: soften
    sharpen: float = 1.0
    sharpen_sigma: float = 1.5
    #: neutral frame: colour harmonisation — how far the skin's chroma (not its luminance) is
    #: pulled to its own broad average (0..1), and the reach of that average (iod); removes the
    #: colour blotches that donors' different lights leave in a mixed texture. Eyes and lips keep
    #: their colour; brows take the skin's (``appearance.FEATURE_PARTS``).
    harmonise: float = 1.0
    harmonise_sigma: float = 0.5
    #: neutral frame: width (iod) of the band inside the oval's edge over which the face fades
    #: from its own appearance to the population's mean: strands of a donor's hair that fall
    #: over the temples and cheeks (no occluder test catches them) end there (0 = off)
    periphery_fade: float = 0.25
    #: neutral frame: draw every face with closed lips; the mouth factor keeps its lips' shape and
    #: colour but not its opening, and the mouth's inside takes the lips' colour: a donor's teeth
    #: and mouth cavity, warped through the mean frame onto another opening, read as fangs, a dark
    #: hole or a pale line (closed mouths sit nearer the sources: the novelty step's prior is set
    #: so that it still takes them below tau, docs/novelty.md)
    closed_mouth: bool = True

    def __post_init__(self) -> None:
        if self.image_size < 64:
            raise ValueError(f"image_size must be at least 64, got {self.image_size}")
        if self.max_modes < 1:
            raise ValueError(f"max_modes must be at least 1, got {self.max_modes}")
        if not 1 <= self.blend_levels <= 8:
            raise ValueError(f"blend_levels must be in 1..8, got {self.blend_levels}")
        if not 0.0 <= self.colour_match <= 1.0:
            raise ValueError(f"colour_match must be in [0, 1], got {self.colour_match}")
        if not 0.0 <= self.face_forehead <= 1.5:
            raise ValueError(f"face_forehead must be in [0, 1.5], got {self.face_forehead}")
        if self.detail_sigma <= 0 or self.colour_sigma <= 0 or self.fine_detail_sigma <= 0:
            raise ValueError("detail_sigma, colour_sigma and fine_detail_sigma must be > 0")
        if not 0.0 <= self.mirror_fill_start < self.mirror_fill_full:
            raise ValueError("need 0 <= mirror_fill_start < mirror_fill_full, got "
                             f"{self.mirror_fill_start}, {self.mirror_fill_full}")
        if self.yaw_ridge <= 0:
            raise ValueError(f"yaw_ridge must be > 0, got {self.yaw_ridge}")
        if self.frame not in FRAMES:
            raise ValueError(f"frame must be one of {FRAMES}, got {self.frame!r}")
        if self.periphery_fade < 0:
            raise ValueError(f"periphery_fade must be ≥ 0, got {self.periphery_fade}")
        if not 0.5 <= self.zoom <= 2.5:
            raise ValueError(f"zoom must be in [0.5, 2.5], got {self.zoom}")
        if len(self.backdrop) != 3 or not all(0.0 <= float(c) <= 1.0 for c in self.backdrop):
            raise ValueError(f"backdrop must be three values in [0, 1], got {self.backdrop}")
        object.__setattr__(self, "backdrop", tuple(float(c) for c in self.backdrop))


#: dlib-68 inner-lip pairs facing each other: upper 61, 62, 63 over lower 67, 66, 65
_INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))


def _close_inner_lips(points: np.ndarray, gap: float = 0.015) -> np.ndarray:
    """``points [68, 2]`` with the inner lips meeting: each facing pair moved to its midpoint,
    ``gap`` inter-ocular distances apart (the expression regression leaves some of a donor's
    opening in the shape; a zero gap would give the warp triangles without area)."""
    pts = np.array(points, np.float64, copy=True)
    half = 0.5 * gap * interocular(pts)
    for upper, lower in _INNER_LIP_PAIRS:
        mid = 0.5 * (pts[upper] + pts[lower])
        pts[upper], pts[lower] = mid - [0.0, half], mid + [0.0, half]
    return pts


def person_weights(keys: Sequence[str]) -> np.ndarray:
    """Weights ``[N]`` summing to 1 where every distinct key (person) counts once."""
    if not keys:
        raise ValueError("person_weights needs at least one key")
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    w = np.array([1.0 / counts[k] for k in keys])
    return w / w.sum()


def person_key(face: SourceFace) -> str:
    """The person a photo shows: its label, or the photo itself when unlabelled."""
    return face.label if face.label else face.content_hash


class MorphableBackbone:
    """Shape + shape-free appearance model fitted to the source faces.

    Build with ``BACKBONES.create("morphable", image_size=256, **knobs)``, then
    ``fit(faces)`` (or ``load_state``) before anything else.
    """

    name = "morphable"
    factor_names: tuple[str, ...] = FACTOR_NAMES
    factor_roles: FactorRoles = FACTOR_ROLES

    def __init__(self, config: MorphableConfig | None = None) -> None:
        self.config = config or MorphableConfig()
        self.image_size = self.config.image_size
        self._shape: ShapeModel | None = None
        self._app: AppearanceModel | None = None
        self._mean_pose: np.ndarray | None = None
        self._triangles: np.ndarray | None = None
        self._population: dict[str, np.ndarray] = {}
        # shape-coefficient effects of mouth opening (per unit gap) and head turn
        self._geo_mouth: np.ndarray | None = None  # [Ks]
        self._geo_eyes: np.ndarray | None = None   # [Ks] per unit lid aperture
        self._geo_yaw2: np.ndarray | None = None   # [Ks] per yaw^2
        self._sym_yaw: np.ndarray | None = None    # [Ka] per yaw

    # ------------------------------------------------------------------ fitting

    def fit(self, faces: Sequence[SourceFace]) -> None:
        """Build the model from aligned source faces (at least 2, ideally many)."""
        if len(faces) < 2:
            raise BackboneError(
                f"the morphable backbone needs at least 2 source faces to fit, got {len(faces)}; "
                "add more photos to the source folders")
        crops, points = zip(*(self._crop_and_points(f) for f in faces))
        points = np.stack(points)
        weights = person_weights([person_key(f) for f in faces])
        cfg = self.config
        self._shape = fit_shape_model(points, weights, cfg.max_modes)
        enc = [self._shape.encode(p) for p in points]
        poses = np.stack([e[2] for e in enc]).astype(np.float64)
        mean_pose = np.average(poses, axis=0, weights=weights)
        # upright mean frame (rotation 0) so that mirroring is a horizontal flip
        self._mean_pose = np.array([np.hypot(mean_pose[0], mean_pose[1]), 0.0,
                                    mean_pose[2], mean_pose[3]])
        self._fit_expression(enc, points, weights)
        mean_pts = self.mean_points()
        self._triangles = triangulate(full_points(mean_pts, self.image_size))
        textures = [self._mirror_fill(self._shape_free(c, p), estimate_yaw(p))
                    for c, p in zip(crops, points)]
        iod = interocular(mean_pts)
        bare = self._bare_faces(faces, crops, points)
        self._app = fit_appearance(np.stack([t for t, b in zip(textures, bare) if b]),
                                   person_weights([person_key(f) for f, b in zip(faces, bare) if b]),
                                   mean_pts, cfg.detail_sigma * iod, cfg.light_sigma * iod, cfg.max_modes)
        factors = [self.decompose(self._encode(c, p, t)) for c, p, t in zip(crops, points, textures)]
        self._population = {
            name: np.average(np.stack([f[name] for f in factors]), axis=0,
                             weights=weights).astype(np.float32)
            for name in self.factor_names}
        # from here on run on exactly what save_state writes (float32), so a
        # saved and reloaded model renders bit-identical images
        self._load_arrays(self._state_arrays(), "the fitted state")
        log.info("morphable model fitted on %d faces (%d people): shape %d+%d modes, "
                 "texture %d modes, regions %s", len(faces), len(set(map(person_key, faces))),
                 self._shape.sym.n_modes, self._shape.asym.n_modes, self._app.texture.n_modes,
                 {k: r.pca.n_modes for k, r in self._app.regions.items()})

    def _bare_faces(self, faces: Sequence[SourceFace], crops, points) -> list[bool]:
        """Which faces the appearance model learns from (all, unless ``bare_appearance``)."""
        if not self.config.bare_appearance:
            return [True] * len(faces)
        from ...faces.occluders import occluders

        covered = [occluders(c, p) for c, p in zip(crops, points)]
        bare = [not c for c in covered]
        for face, what in zip(faces, covered):
            if what:
                log.info("appearance model leaves out %s (%s): it gives shape only", face.source_id,
                         ", ".join(what))
        if sum(bare) < 2:
            log.warning("fewer than 2 faces free of fringe, hat and glasses: the appearance model "
                        "learns from all %d faces and may show their occluders", len(faces))
            return [True] * len(faces)
        return bare

    def _fit_expression(self, enc: list, points: np.ndarray, weights: np.ndarray) -> None:
        """Shape-coefficient directions of mouth opening and lid aperture (fixed
        displacements, projected) and of head turn (weighted ridge regression on
        the sources' yaw: antisymmetric ~ yaw, symmetric ~ yaw^2)."""
        shape, ridge = self._shape, self.config.yaw_ridge
        zero = shape.sym.project(np.zeros(MOUTH_DIRECTION.size))
        self._geo_mouth = shape.sym.project(MOUTH_DIRECTION.reshape(-1)) - zero
        self._geo_eyes = shape.sym.project(EYE_DIRECTION.reshape(-1)) - zero
        yaw = np.array([estimate_yaw(p) for p in points])
        sym = np.stack([e[0] - inner_lip_gap(e[3]) * self._geo_mouth
                        - eye_aperture(e[3]) * self._geo_eyes for e in enc]).astype(np.float64)
        asym = np.stack([e[1] for e in enc]).astype(np.float64)
        w = weights
        self._sym_yaw = ((w * yaw) @ asym / (np.sum(w * yaw ** 2) + ridge)).astype(np.float32)
        y2 = yaw ** 2 - np.sum(w * yaw ** 2)  # centred yaw^2 (the mean face is not frontal)
        self._geo_yaw2 = ((w * y2) @ (sym - np.average(sym, axis=0, weights=w))
                          / (np.sum(w * y2 ** 2) + ridge)).astype(np.float32)

    @property
    def shows_context(self) -> bool:
        """The context frame pastes the face into the context photo; the neutral frame shows none."""
        return self.config.frame == "context"

    def mean_points(self) -> np.ndarray:
        """Mean shape ``[68, 2]`` in crop pixels (the mean frame's landmarks)."""
        shape = self._require_shape()
        return apply_pose(shape.mean, self._mean_pose)

    # ---------------------------------------------------------------- protocol

    def project(self, faces: Sequence[SourceFace]) -> list[Projection]:
        """Latent of each face and the mean absolute error of its re-rendering."""
        out = []
        for face in faces:
            crop, pts = self._crop_and_points(face)
            latent = self._encode(crop, pts)
            render = self._render_context(latent)  # the source's own photo frame
            err = np.abs(render.astype(np.float32) - crop.astype(np.float32)) / 255.0
            inside = face_mask(pts, err.shape[:2]) > 0.5
            out.append(Projection(latent, float(err.mean()),
                                  {"face_error": float(err[inside].mean())}))
        return out

    def decompose(self, latent: Latent) -> dict[str, np.ndarray]:
        """Named factors: identity coefficients + ``_``-prefixed context."""
        self._check_latent(latent)
        out = {name: np.asarray(latent[name]) for name in self.factor_names}
        out.update({"_" + k: np.asarray(latent[k]) for k in CONTEXT_KEYS})
        return out

    def compose(self, factors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inverse of ``decompose``."""
        missing = [k for k in self.factor_names if k not in factors]
        missing += ["_" + k for k in CONTEXT_KEYS if "_" + k not in factors]
        if missing:
            raise ValueError(f"factors lack {missing}; build them with decompose() or mix_factors()")
        latent = {name: np.asarray(factors[name]) for name in self.factor_names}
        latent.update({k: np.asarray(factors["_" + k]) for k in CONTEXT_KEYS})
        self._check_latent(latent)
        return latent

    def synthesize(self, latents: Sequence[Latent]) -> list[np.ndarray]:
        """Render each latent as a ``uint8 [S, S, 3]`` RGB image."""
        return [self._render(lat) for lat in latents]

    def population_mean(self) -> dict[str, np.ndarray]:
        """Mean identity factors over the sources, each person counted once."""
        if not self._population:
            raise BackboneError("the morphable backbone is not fitted; call fit() or load_state() first")
        return {k: v.copy() for k, v in self._population.items()}

    # ------------------------------------------------------------------- state

    def _state_arrays(self) -> dict[str, np.ndarray]:
        shape, app = self._require_shape(), self._require_app()
        arrays: dict[str, np.ndarray] = {
            "version": np.array(STATE_VERSION),
            "config": np.array([f"{k}={v!r}" for k, v in sorted(asdict(self.config).items())]),
            "shape_mean": shape.mean, "mean_pose": self._mean_pose,
            "triangles": self._triangles,
            "geo_mouth": self._geo_mouth, "geo_eyes": self._geo_eyes,
            "geo_yaw2": self._geo_yaw2, "sym_yaw": self._sym_yaw,
            "app_size": np.array(app.size), "app_pixels": app.pixels,
            "app_mean_image": app.mean_image, "app_sigma": np.array(app.sigma),
            "app_light_sigma": np.array(app.light_sigma),
            "app_ref_contrast": np.array(app.ref_contrast), "app_inner": app.inner,
        }
        pcas = {"sym": shape.sym, "asym": shape.asym, "texture": app.texture}
        pcas.update({f"region_{k}": r.pca for k, r in app.regions.items()})
        for key, pca in pcas.items():
            arrays[f"{key}_mean"] = pca.mean.astype(np.float32)
            arrays[f"{key}_basis"] = pca.basis.astype(np.float32)
            arrays[f"{key}_sdev"] = pca.sdev.astype(np.float32)
        for k, r in app.regions.items():
            arrays[f"region_{k}_pixels"] = r.pixels
            arrays[f"region_{k}_weights"] = r.weights
        for k, v in self._population.items():
            arrays[f"population_{k}"] = v
        return arrays

    def save_state(self, path: Path) -> None:
        """Write the fitted model to ``path`` (``.npz``, no pickles)."""
        np.savez(Path(path), **self._state_arrays())

    def load_state(self, path: Path) -> None:
        """Restore a model written by ``save_state`` (config must match)."""
        with np.load(Path(path), allow_pickle=False) as data:
            a = {k: data[k] for k in data.files}
        self._load_arrays(a, str(path))

    def _load_arrays(self, a: Mapping[str, np.ndarray], path: str) -> None:
        self.__dict__.pop("_core_mask", None)  # derived from the mean shape being replaced
        self.__dict__.pop("_lip_cache", None)
        if "version" not in a or int(a["version"]) != STATE_VERSION:
            raise BackboneError(f"{path} is not a morphable state of version {STATE_VERSION}; refit")
        expected = ["config", "shape_mean", "mean_pose", "triangles", "app_pixels", "texture_basis"]
        expected += [f"population_{k}" for k in self.factor_names]
        missing = [k for k in expected if k not in a]
        if missing:
            raise BackboneError(f"{path} lacks {missing}: it is damaged or from another backbone; refit")
        saved = [str(s) for s in a["config"]]
        mine = [f"{k}={v!r}" for k, v in sorted(asdict(self.config).items())]
        if saved != mine:
            raise BackboneError(f"{path} was fitted with config {saved}, this backbone has {mine}; "
                                "build the backbone with the same knobs or refit")

        def pca(key: str) -> PCA:
            return PCA(a[f"{key}_mean"].astype(np.float64), a[f"{key}_basis"].astype(np.float64),
                       a[f"{key}_sdev"].astype(np.float64))

        self._shape = ShapeModel(a["shape_mean"], pca("sym"), pca("asym"))
        self._mean_pose = a["mean_pose"]
        self._triangles = a["triangles"]
        self._geo_mouth, self._geo_eyes = a["geo_mouth"], a["geo_eyes"]
        self._geo_yaw2, self._sym_yaw = a["geo_yaw2"], a["sym_yaw"]
        regions = {k: Region(a[f"region_{k}_pixels"], a[f"region_{k}_weights"], pca(f"region_{k}"))
                   for k in REGION_NAMES}
        self._app = AppearanceModel(tuple(int(v) for v in a["app_size"]), a["app_pixels"],
                                    a["app_mean_image"], pca("texture"), regions,
                                    float(a["app_sigma"]), float(a["app_light_sigma"]),
                                    float(a["app_ref_contrast"]), a["app_inner"])
        self._population = {k: a[f"population_{k}"] for k in self.factor_names}

    def state_hash(self) -> str:
        """sha256 over the fitted state's arrays (names, dtypes, shapes, bytes)."""
        h = hashlib.sha256()
        for key, arr in sorted(self._state_arrays().items()):
            arr = np.ascontiguousarray(arr)
            h.update(f"{key}|{arr.dtype.str}|{arr.shape}|".encode())
            h.update(arr.tobytes())
        return h.hexdigest()

    # --------------------------------------------------------------- internals

    def _require_shape(self) -> ShapeModel:
        if self._shape is None:
            raise BackboneError("the morphable backbone is not fitted; call fit() or load_state() first")
        return self._shape

    def _require_app(self) -> AppearanceModel:
        if self._app is None:
            raise BackboneError("the morphable backbone is not fitted; call fit() or load_state() first")
        return self._app

    def _crop_and_points(self, face: SourceFace) -> tuple[np.ndarray, np.ndarray]:
        """The face's aligned crop ``uint8 [S, S, 3]`` and landmarks ``[68, 2]`` at this size."""
        import cv2

        crop = check_image(face.aligned, f"aligned crop of {face.source_id}")
        pts = check_landmarks(face.landmarks, f"landmarks of {face.source_id}").astype(np.float64)
        s = self.image_size
        if crop.shape[0] != crop.shape[1]:
            raise ValueError(f"aligned crop of {face.source_id} must be square, got {crop.shape}")
        if crop.shape[0] != s:
            scale = s / crop.shape[0]
            crop = cv2.resize(crop, (s, s), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
            pts = pts * scale
        return crop, pts

    def _shape_free(self, crop: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Warp a uint8 crop onto the mean shape: ``float32 [S, S, 3]`` in [0, 1]."""
        return self._shape_free_float(crop.astype(np.float32) / 255.0, points)

    def _shape_free_float(self, image: np.ndarray, points: np.ndarray) -> np.ndarray:
        s = self.image_size
        src = full_points(uncross_lips(points), s)
        dst = full_points(self.mean_points(), s)
        return warp_image(image, src, dst, self._triangles)

    def _encode(self, crop: np.ndarray, points: np.ndarray,
                texture: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Latent of one crop; ``texture`` is its mirror-filled shape-free texture if known."""
        shape, app = self._require_shape(), self._require_app()
        sym, asym, pose, normalised = shape.encode(points)
        gap, aperture = inner_lip_gap(normalised), eye_aperture(normalised)
        yaw = estimate_yaw(points)
        geometry = (sym - gap * self._geo_mouth - aperture * self._geo_eyes
                    - yaw ** 2 * self._geo_yaw2)
        symmetry = asym - yaw * self._sym_yaw
        if texture is None:
            texture = self._mirror_fill(self._shape_free(crop, points), yaw)
        coeffs = app.encode(texture)
        latent = {"geometry": geometry.astype(np.float32), "symmetry": symmetry.astype(np.float32),
                  "texture": coeffs["texture"], "nose": coeffs["nose"],
                  "eyes": np.append(coeffs["eyes"], np.float32(aperture)).astype(np.float32),
                  "mouth": np.append(coeffs["mouth"], np.float32(gap)).astype(np.float32),
                  "pose": pose, "yaw": np.array([yaw], np.float32),
                  "context": np.ascontiguousarray(crop, dtype=np.uint8),
                  "context_points": uncross_lips(points).astype(np.float32)}
        return latent

    def _mirror_fill(self, texture: np.ndarray, yaw: float) -> np.ndarray:
        """Replace the far half of a turned face's shape-free texture by the mirrored near half.

        ``texture`` is ``float32 [S, S, 3]`` in the (upright, mirror-symmetric) mean
        frame. The blend weight grows with |yaw| from ``mirror_fill_start`` to
        ``mirror_fill_full`` and ramps in across the face's midline.
        """
        import cv2

        cfg = self.config
        amount = np.clip((abs(yaw) - cfg.mirror_fill_start)
                         / (cfg.mirror_fill_full - cfg.mirror_fill_start), 0.0, 1.0)
        if amount <= 0.0:
            return texture
        s = self.image_size
        mean_pts = self.mean_points()
        axis = float(self._mean_pose[2])
        half_width = max(1.0, float(mean_pts[16, 0] - axis))
        xs = np.arange(s, dtype=np.float32)
        map_x = np.tile(2.0 * axis - xs, (s, 1)).astype(np.float32)
        map_y = np.tile(np.arange(s, dtype=np.float32)[:, None], (1, s))
        mirrored = cv2.remap(texture, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        # far side: where the nose is nearer the jaw end (yaw < 0: image left)
        t = np.sign(yaw) * (xs - axis) / half_width
        ramp = np.clip((t - 0.15) / 0.30, 0.0, 1.0)  # the nose keeps its own pixels
        ramp = (ramp * ramp * (3.0 - 2.0 * ramp)) * amount  # smoothstep
        w = ramp[None, :, None].astype(np.float32)
        return (1.0 - w) * texture + w * mirrored

    def _check_latent(self, latent: Latent) -> None:
        shape, app = self._require_shape(), self._require_app()
        sizes = {"geometry": shape.sym.n_modes, "symmetry": shape.asym.n_modes,
                 "texture": app.texture.n_modes, "pose": 4, "yaw": 1}
        sizes.update({k: r.pca.n_modes for k, r in app.regions.items()})
        sizes["mouth"] += 1  # + mouth opening
        sizes["eyes"] += 1  # + lid aperture
        for key, n in sizes.items():
            if key not in latent:
                raise ValueError(f"latent lacks {key!r}; latents come from project() or compose()")
            if np.shape(latent[key]) != (n,):
                raise ValueError(f"latent {key!r} must be shaped [{n}] for this fitted model, "
                                 f"got {np.shape(latent[key])}; was it made by another fit?")
        s = self.image_size
        check_image(np.asarray(latent["context"]), "latent 'context'")
        if np.shape(latent["context"]) != (s, s, 3):
            raise ValueError(f"latent 'context' must be [{s}, {s}, 3], got {np.shape(latent['context'])}")
        check_landmarks(latent["context_points"], "latent 'context_points'")

    def _render(self, latent: Latent) -> np.ndarray:
        self._check_latent(latent)
        if self.config.frame == "neutral":
            return to_uint8(self._render_neutral(latent))
        return self._render_context(latent)

    # ----------------------------------------------------------- neutral frame

    def _neutral_points(self, latent: Latent) -> np.ndarray:
        """Landmarks ``[68, 2]`` of the face drawn frontal and upright in the mean pose, zoomed."""
        mouth = np.asarray(latent["mouth"], np.float64)
        eyes = np.asarray(latent["eyes"], np.float64)
        opening = 0.0 if self.config.closed_mouth else mouth[-1]
        sym = (np.asarray(latent["geometry"], np.float64) + opening * self._geo_mouth
               + eyes[-1] * self._geo_eyes)
        pts = self._require_shape().decode(sym, np.asarray(latent["symmetry"], np.float64), self._mean_pose)
        if self.config.closed_mouth:
            pts = _close_inner_lips(pts)
        s = self.image_size
        centre = np.array([s / 2.0, float(self._mean_pose[3])])
        return centre + self.config.zoom * (pts - centre)

    @staticmethod
    def _appearance(latent: Latent) -> dict[str, np.ndarray]:
        """Appearance coefficients (opening and aperture stripped) in ``APPEARANCE_FACTORS`` order."""
        return {"texture": np.asarray(latent["texture"], np.float64),
                "eyes": np.asarray(latent["eyes"], np.float64)[:-1],
                "nose": np.asarray(latent["nose"], np.float64),
                "mouth": np.asarray(latent["mouth"], np.float64)[:-1]}

    def _backdrop(self) -> np.ndarray:
        """The plain backdrop ``float32 [S, S, 3]``: one colour, a soft light from the upper left."""
        s = self.image_size
        ys, xs = np.mgrid[0:s, 0:s].astype(np.float32) / s
        light = 1.08 - 0.35 * ((xs - 0.45) ** 2 + (ys - 0.35) ** 2)
        return np.clip(np.asarray(self.config.backdrop, np.float32)[None, None] * light[..., None], 0.0, 1.0)

    def _oval(self, pts: np.ndarray) -> np.ndarray:
        cfg = self.config
        s = self.image_size
        return face_mask(pts, (s, s), grow=cfg.oval_grow, feather=cfg.oval_feather,
                         forehead=cfg.oval_forehead)[..., None]

    def _render_neutral(self, latent: Latent) -> np.ndarray:
        """``float32 [S, S, 3]``: the modelled face only, under the mean light, on the backdrop."""
        s = self.image_size
        pts = self._neutral_points(latent)
        app = self._require_app()
        texture = self._fade(app.decode(self._appearance(latent)), pts)
        face = warp_image(texture, full_points(self.mean_points(), s), full_points(pts, s), self._triangles)
        oval = self._oval(pts)
        return self._restore(oval * face + (1.0 - oval) * self._backdrop(), oval, self._skin(pts, oval))

    def _core(self) -> np.ndarray | None:
        """``float32 [S, S, 1]`` in the mean frame: 1 inside the face, falling to 0 over the
        ``periphery_fade`` band inside the oval's edge (None when the fade is off)."""
        cfg = self.config
        if cfg.periphery_fade <= 0:
            return None
        cached = self.__dict__.get("_core_mask")
        if cached is None:
            s = self.image_size
            cached = face_mask(self.mean_points(), (s, s), grow=cfg.oval_grow - cfg.periphery_fade,
                               feather=cfg.periphery_fade / 2.0, forehead=cfg.oval_forehead)[..., None]
            self._core_mask = cached
        return cached

    def _fade(self, texture: np.ndarray, pts: np.ndarray) -> np.ndarray:
        """Shape-free ``texture`` faded to the mean appearance outside the face's core, with the
        mouth's inside drawn as lips when mouths are closed (``_close_lips``)."""
        core = self._core()
        if core is not None:
            mean = self._require_app().decode(self._zero_appearance())
            texture = mean + core * (texture - mean)
        return self._close_lips(texture)

    def _lip_maps(self) -> tuple[np.ndarray, np.ndarray, float, np.ndarray] | None:
        """In the mean frame: the mouth's inside ``float32 [S, S, 1]`` (soft), the lips around
        it ``float32 [S, S, 1]``, the blur (px) that carries the lips' colour inward and that
        blur of the lips themselves ``float32 [S, S, 1]`` (the fill's normaliser); None unless
        ``closed_mouth``."""
        import cv2

        if not self.config.closed_mouth:
            return None
        cached = self.__dict__.get("_lip_cache")
        if cached is None:
            s = self.image_size
            pts = np.round(self.mean_points() * 16).astype(np.int32)
            inner, outer = np.zeros((s, s), np.uint8), np.zeros((s, s), np.uint8)
            cv2.fillPoly(inner, [pts[60:68]], 1, lineType=cv2.LINE_8, shift=4)
            cv2.fillPoly(outer, [pts[48:60]], 1, lineType=cv2.LINE_8, shift=4)
            iod = interocular(self.mean_points())
            inside = cv2.dilate(inner, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
            lips = ((outer > 0) & (inside == 0)).astype(np.float32)
            soft = cv2.GaussianBlur(inside.astype(np.float32), (0, 0), 0.02 * iod)[..., None]
            sigma = 0.12 * iod
            weight = cv2.GaussianBlur(lips, (0, 0), sigma)[..., None]
            cached = (np.clip(soft, 0.0, 1.0), lips[..., None], sigma, np.maximum(weight, 1e-6))
            self._lip_cache = cached
        return cached

    def _close_lips(self, texture: np.ndarray) -> np.ndarray:
        """With ``closed_mouth``, the shape-free ``texture``'s mouth inside (a donor's teeth or
        cavity, which a closed drawing squeezes to a pale or dark line) takes the colour of the
        lips around it: a normalised blur of the lips, linear in ``texture`` (so
        ``linear_render`` stays exact)."""
        import cv2

        maps = self._lip_maps()
        if maps is None:
            return texture
        inside, lips, sigma, weight = maps
        carried = cv2.GaussianBlur(np.ascontiguousarray(texture * lips, np.float32), (0, 0), sigma)
        fill = carried / weight
        return texture + inside * (fill - texture)

    def _zero_appearance(self) -> dict[str, np.ndarray]:
        sdevs, _, _ = self._appearance_layout()
        return {name: np.zeros(len(sd)) for name, sd in sdevs.items()}

    def _restore(self, image: np.ndarray, oval: np.ndarray, skin: np.ndarray | None = None) -> np.ndarray:
        """Colour harmonisation on the skin, then an unsharp mask on the face, both linear in
        ``image`` (so ``linear_render`` applies them to its Jacobian columns unchanged)."""
        import cv2

        cfg = self.config
        out = image
        if cfg.harmonise > 0 and skin is not None:
            grey = (out @ _LUMA)[..., None]
            chroma = out - grey
            # a blur of ~40 px: on a 4x smaller copy (``low_pass``), a tenth of the full blur's time
            broad = low_pass(chroma, cfg.harmonise_sigma * self._mean_iod())
            out = grey + chroma + cfg.harmonise * skin * (broad - chroma)
        if cfg.sharpen > 0:
            # luminance only: sharpening each channel also sharpens colour edges, and a dark brow
            # or lip line on a warm base comes out orange or green
            fine = (out - cv2.GaussianBlur(out, (0, 0), cfg.sharpen_sigma)) @ _LUMA
            out = out + cfg.sharpen * oval * fine[..., None]
        return out

    def _mean_iod(self) -> float:
        return interocular(self.mean_points()) * self.config.zoom

    def _skin(self, pts: np.ndarray, oval: np.ndarray) -> np.ndarray:
        """``float32 [S, S, 1]``: the face oval without eyes and lips (soft)."""
        s = self.image_size
        return oval * (1.0 - feature_mask(pts, (s, s))[..., None])

    def render_landmarks(self, latent: Latent) -> np.ndarray:
        """Landmarks ``[68, 2]`` of the face as ``synthesize`` draws it (neutral frame)."""
        self._check_latent(latent)
        if self.config.frame != "neutral":
            raise BackboneError("render_landmarks needs frame='neutral' (the context frame follows the photo)")
        return self._neutral_points(latent)

    def linear_render(self, latent: Latent) -> "LinearRender":
        """The neutral render as an affine function of the appearance coefficients.

        With the shape fixed, decoding, warping and blending are linear in the
        texture and region coefficients, so ``image(dz) = base + jacobian @ dz``
        holds exactly up to interpolation (bilinear here, bicubic in
        ``synthesize``) and 8-bit rounding; ``dz`` is in units of each mode's
        standard deviation over the sources.
        """
        import cv2

        self._check_latent(latent)
        if self.config.frame != "neutral":
            raise BackboneError("linear_render needs frame='neutral'")
        app, s = self._require_app(), self.image_size
        pts = self._neutral_points(latent)
        map_x, map_y = triangle_maps(full_points(self.mean_points(), s), full_points(pts, s),
                                     self._triangles, (s, s))
        oval = self._oval(pts)
        skin = self._skin(pts, oval)
        coeffs = self._appearance(latent)
        texture = self._fade(app.decode(coeffs), pts)
        base = self._restore(oval * cv2.remap(texture, map_x, map_y, cv2.INTER_LINEAR,
                                              borderMode=cv2.BORDER_REPLICATE) + (1.0 - oval) * self._backdrop(),
                             oval, skin)
        sdevs, _, _ = self._appearance_layout()
        zero = {name: np.zeros_like(v) for name, v in coeffs.items()}
        at_zero = app.decode(zero)
        core = self._core()
        columns = []
        for name in APPEARANCE_FACTORS:
            for i, sd in enumerate(sdevs[name]):
                step = {n: v.copy() for n, v in zero.items()}
                step[name][i] = sd
                delta = app.decode(step) - at_zero  # decoding is affine: this is one column
                if core is not None:
                    delta = core * delta
                delta = self._close_lips(delta)  # linear: applies to a column as to the texture
                moved = oval * cv2.remap(delta, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
                columns.append(self._restore(moved, oval, skin).reshape(-1))
        jacobian = (np.stack(columns, axis=1) if columns else np.zeros((s * s * 3, 0))).astype(np.float32)
        return LinearRender(base.astype(np.float32), jacobian, pts)

    def offset_appearance(self, factors: Mapping[str, np.ndarray], dz: np.ndarray) -> dict[str, np.ndarray]:
        """``factors`` with the appearance coefficients moved by ``dz`` ``[K]`` (units of each
        mode's standard deviation, ``LinearRender`` column order); everything else unchanged."""
        sdevs, slices, k = self._appearance_layout()
        dz = np.asarray(dz, np.float64)
        if dz.shape != (k,):
            raise ValueError(f"dz must be shaped [{k}] (one entry per appearance mode), got {dz.shape}")
        out = {name: np.asarray(v) for name, v in factors.items()}
        for name in APPEARANCE_FACTORS:
            move = (sdevs[name] * dz[slices[name]]).astype(np.float32)
            vec = np.asarray(out[name], np.float32).copy()
            vec[:len(move)] += move  # eyes and mouth keep their aperture / opening entry
            out[name] = vec
        return out

    def _appearance_layout(self) -> tuple[dict[str, np.ndarray], dict[str, slice], int]:
        app = self._require_app()
        sdevs = {"texture": app.texture.sdev}
        sdevs.update({k: app.regions[k].pca.sdev for k in ("eyes", "nose", "mouth")})
        slices, start = {}, 0
        for name in APPEARANCE_FACTORS:
            slices[name] = slice(start, start + len(sdevs[name]))
            start += len(sdevs[name])
        return sdevs, slices, start

    # ----------------------------------------------------------- context frame

    def _render_context(self, latent: Latent) -> np.ndarray:
        """The face pasted into the context donor's photo, in that photo's pose."""
        shape, app, cfg, s = self._shape, self._app, self.config, self.image_size
        yaw = float(np.asarray(latent["yaw"])[0])
        mouth = np.asarray(latent["mouth"], np.float64)
        eyes = np.asarray(latent["eyes"], np.float64)
        sym = (np.asarray(latent["geometry"], np.float64) + mouth[-1] * self._geo_mouth
               + eyes[-1] * self._geo_eyes + yaw ** 2 * self._geo_yaw2)
        asym = np.asarray(latent["symmetry"], np.float64) + yaw * self._sym_yaw
        pts = shape.decode(sym, asym, latent["pose"])
        dst = full_points(pts, s)
        ctx_pts = np.asarray(latent["context_points"], np.float64)
        ctx_img = np.asarray(latent["context"], np.float32) / 255.0
        ctx_free = self._shape_free_float(ctx_img, ctx_pts)
        texture = app.decode({"texture": latent["texture"], "eyes": eyes[:-1],
                              "nose": latent["nose"], "mouth": mouth[:-1]},
                             app.light(ctx_free), app.contrast(ctx_free))
        if cfg.fine_detail_gain > 0:
            texture = texture + cfg.fine_detail_gain * detail_layer(texture, cfg.fine_detail_sigma)
        face = warp_image(texture, full_points(self.mean_points(), s), dst, self._triangles)
        context = warp_image(ctx_img, full_points(ctx_pts, s), dst, self._triangles)
        iod = interocular(pts)
        hard = face_mask(pts, (s, s), grow=cfg.face_grow, forehead=cfg.face_forehead)
        if cfg.colour_match > 0:
            context = soft_light_match(face, context, hard, cfg.colour_sigma * iod, cfg.colour_match)
        soft = face_mask(pts, (s, s), grow=cfg.face_grow, feather=cfg.face_feather,
                         forehead=cfg.face_forehead)
        out = laplacian_blend(face, context, soft, cfg.blend_levels)
        return to_uint8(out)


@dataclass(frozen=True)
class LinearRender:
    """A neutral-frame render linearised in the appearance coefficients.

    ``image(dz) = base + (jacobian @ dz).reshape(S, S, 3)`` in [0, 1] floats,
    ``dz [K]`` in standard deviations of each appearance mode (columns in
    ``APPEARANCE_FACTORS`` order, as ``offset_appearance`` takes them), and
    ``landmarks [68, 2]`` where the face's points are drawn.
    """

    base: np.ndarray       # float32 [S, S, 3]
    jacobian: np.ndarray   # float32 [S * S * 3, K]
    landmarks: np.ndarray  # [68, 2]


_KNOBS = tuple(f.name for f in fields(MorphableConfig))


@BACKBONES.register("morphable")
def make_morphable(image_size: int = 256, weights_dir: Path | None = None,
                   device: str | None = None, **knobs: object) -> MorphableBackbone:
    """Factory: ``image_size`` plus any ``MorphableConfig`` knob by name.

    ``weights_dir`` and ``device`` are accepted for symmetry with other
    backbones and ignored (this model has no weights and runs on the CPU).
    """
    unknown = sorted(set(knobs) - set(_KNOBS))
    if unknown:
        raise TypeError(f"unknown morphable backbone knob(s) {unknown}; known: {', '.join(_KNOBS)}")
    return MorphableBackbone(MorphableConfig(image_size=image_size, **knobs))  # type: ignore[arg-type]
