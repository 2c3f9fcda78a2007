"""ArcFace through insightface's model zoo: an ONNX recognition model on a
112 px five-point crop.

Weights live in ``weights/``, either as one file (``weights/w600k_r50.onnx``,
the recognition model of insightface's ``buffalo_l`` pack) or as a whole model
pack folder (``weights/buffalo_l/``). Nothing is downloaded.

Alignment: five points (eye centres, nose tip, mouth corners) are mapped onto
ArcFace's standard 112×112 template by a least-squares similarity. The points
come from insightface's own SCRFD detector when the pack holds one (run on a
window around the dlib box, matched to the dlib face by keypoint agreement),
otherwise from the dlib-68 landmarks of the ``FaceObservation``. The crop is
``common.arcface_crop`` (shared with MagFace); its similarity is estimated
with scikit-image's ``SimilarityTransform.from_estimate`` (0.26 deprecates
the ``.estimate`` that insightface's ``face_align`` calls); the warp itself
matches ``face_align.norm_crop`` (bilinear, black border), which a test checks.

Pixels: crops are passed to ``ArcFaceONNX.get_feat`` in OpenCV's BGR order;
it swaps them to RGB and maps them to ``(x - 127.5) / 127.5`` (RGB in
[-1, 1]) unless the graph normalises internally (mxnet exports whose first
nodes are ``Sub``/``Mul``; then it feeds raw 0–255 RGB).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from ..faces.align import five_points as dlib_five_points
from ..types import FaceObservation, check_image
from .base import ENCODERS, MissingWeightsError, l2_normalise
from .common import arcface_crop, template_for, weights_sha256

logger = logging.getLogger(__name__)

#: Looked for in ``weights_dir`` in this order when no ``model_file`` is given.
DEFAULT_PACK_DIR = "buffalo_l"
DEFAULT_MODEL_FILE = "w600k_r50.onnx"

#: The issue's ArcFace-scale default (``--tau 0.4``). Not measured in this
#: project (no ArcFace weights on the development machine): replace it with the
#: output of ``personc calibrate`` on your own labelled faces.
ARCFACE_DEFAULT_TAU = 0.40

#: SCRFD runs on a square window this many dlib-box sides wide around the face.
DETECT_WINDOW = 2.0
#: SCRFD input size for that window (the face then spans ~half of it).
DETECT_SIZE = 320
#: An SCRFD face is the dlib face when its five points lie on average within
#: this fraction of the dlib box side of the dlib-derived five points.
MAX_POINT_DISAGREEMENT = 0.25

#: Crops per inference call.
BATCH_SIZE = 64

AlignmentSource = Literal["scrfd", "dlib68"]
OnnxRole = Literal["recognition", "detection", "other"]


# --------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class ArcFacePack:
    """Where the ArcFace files are: the recognition model and, if any, a detector."""

    recognition: Path
    detector: Path | None


def onnx_role(path: Path) -> OnnxRole:
    """What insightface's router would build from ``path``, read from the graph only.

    Same rules as ``insightface.model_zoo.ModelRouter`` (five or more outputs:
    SCRFD detector; square input of 192 or 96 px: landmark or attribute model;
    two inputs at 128 px: swapper; other square inputs of at least 112 px that
    divide by 16: ArcFace), without creating an inference session.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initialisers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initialisers]
    if not inputs:
        return "other"
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in inputs[0].type.tensor_type.shape.dim]
    if len(model.graph.output) >= 5:
        return "detection"
    if len(dims) != 4 or dims[2] is None or dims[2] != dims[3]:
        return "other"
    side = dims[2]
    if side in (192, 96) or (len(inputs) == 2 and side == 128):
        return "other"
    if side >= 112 and side % 16 == 0 and len(model.graph.output) == 1:
        return "recognition"
    return "other"


def find_arcface_pack(weights_dir: Path, model_file: str | Path | None = None) -> ArcFacePack:
    """Locate the ArcFace recognition model (and a detector beside it) under ``weights_dir``.

    ``model_file`` (relative to ``weights_dir`` or absolute) names either the
    recognition ``.onnx`` or a model-pack folder. Without it,
    ``weights_dir/buffalo_l/`` and then ``weights_dir/w600k_r50.onnx`` are tried.
    A detector is looked for in the folder holding the recognition model,
    unless that folder is ``weights_dir`` itself (shared with other encoders).
    """
    weights_dir = Path(weights_dir)
    if model_file is not None:
        target = Path(model_file)
        target = target if target.is_absolute() else weights_dir / target
        if not target.exists():
            raise MissingWeightsError(
                "arcface", target,
                "put the ArcFace recognition .onnx (e.g. buffalo_l's w600k_r50.onnx) or an "
                "insightface model-pack folder there, or fix model_file")
        if target.is_dir():
            return _pack_from_dir(target)
        if target.parent.resolve() != weights_dir.resolve():  # a file inside a pack folder
            return ArcFacePack(target, _pack_detector(target.parent))
        return ArcFacePack(target, None)
    pack_dir = weights_dir / DEFAULT_PACK_DIR
    if pack_dir.is_dir():
        return _pack_from_dir(pack_dir)
    single = weights_dir / DEFAULT_MODEL_FILE
    if single.is_file():
        return ArcFacePack(single, None)
    raise MissingWeightsError(
        "arcface", single,
        f"copy buffalo_l's {DEFAULT_MODEL_FILE} to {single}, or unpack the whole buffalo_l "
        f"model pack into {pack_dir}/ (its detector is then used for alignment); nothing is "
        "downloaded")


def _pack_from_dir(pack_dir: Path) -> ArcFacePack:
    roles: dict[OnnxRole, list[Path]] = {"recognition": [], "detection": [], "other": []}
    for path in sorted(pack_dir.glob("*.onnx")):
        roles[onnx_role(path)].append(path)
    recognition = roles["recognition"]
    if not recognition:
        raise MissingWeightsError(
            "arcface", pack_dir / DEFAULT_MODEL_FILE,
            f"no ArcFace-shaped recognition model (1 output, square input >= 112 px) in "
            f"{pack_dir}; put e.g. buffalo_l's {DEFAULT_MODEL_FILE} there")
    if len(recognition) > 1:
        names = ", ".join(p.name for p in recognition)
        raise ValueError(f"{pack_dir} holds several recognition models ({names}); "
                         "choose one with model_file=<pack>/<file>.onnx")
    return ArcFacePack(recognition[0], _first_detector(pack_dir, roles["detection"]))


def _pack_detector(pack_dir: Path) -> Path | None:
    return _first_detector(pack_dir, [p for p in sorted(pack_dir.glob("*.onnx"))
                                      if onnx_role(p) == "detection"])


def _first_detector(pack_dir: Path, detectors: list[Path]) -> Path | None:
    if len(detectors) > 1:
        logger.warning("arcface: several detectors in %s, using %s", pack_dir, detectors[0].name)
    return detectors[0] if detectors else None


# --------------------------------------------------------------------------- encoder


class ArcFaceEncoder:
    """ArcFace embeddings ``[N, dim]`` (unit rows) from an insightface ONNX model."""

    name = "arcface"
    default_tau = ARCFACE_DEFAULT_TAU
    tau_rationale = ("ArcFace-scale default 0.40 from the project brief; not measured here — "
                     "run `personc calibrate` for a tau on your data and gallery size")

    def __init__(self, model_path: Path, detector_path: Path | None = None,
                 detect_size: int = DETECT_SIZE) -> None:
        from insightface.model_zoo import get_model
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX

        model_path = Path(model_path)
        if not model_path.is_file():
            raise MissingWeightsError("arcface", model_path, "put the recognition .onnx there")
        model = get_model(str(model_path))
        if not isinstance(model, ArcFaceONNX):
            raise ValueError(
                f"{model_path} is not an ArcFace-shaped recognition model (insightface routed it "
                f"to {type(model).__name__}); it needs one [N, 3, S, S] input with S >= 112 "
                "divisible by 16 and one [N, D] output")
        self._model = model
        self.input_size = int(model.input_size[0])
        template_for(self.input_size)  # fail now on an unsupported crop size
        self.dim = self._output_dim()
        self._detector = self._load_detector(Path(detector_path), detect_size) if detector_path else None
        self.version = "arcface-" + weights_sha256(str(model_path))[:16]
        if detector_path:
            self.version += "+scrfd-" + weights_sha256(str(detector_path))[:8]
        logger.info("arcface: %s (%d-d, %d px crops), alignment from %s", model_path.name, self.dim,
                    self.input_size, Path(detector_path).name if detector_path else "dlib-68 landmarks")

    @property
    def has_detector(self) -> bool:
        return self._detector is not None

    def _output_dim(self) -> int:
        dim = self._model.output_shape[-1]
        if isinstance(dim, (int, np.integer)) and dim > 0:
            return int(dim)
        probe = np.zeros((self.input_size, self.input_size, 3), np.uint8)
        return int(np.asarray(self._model.get_feat([probe])).shape[-1])

    @staticmethod
    def _load_detector(path: Path, detect_size: int):
        from insightface.model_zoo import get_model
        from insightface.model_zoo.scrfd import SCRFD

        if not path.is_file():
            raise MissingWeightsError("arcface detector", path, "remove detector_path or put the SCRFD .onnx there")
        detector = get_model(str(path))
        if not isinstance(detector, SCRFD) or not detector.use_kps:
            raise ValueError(f"{path} is not an SCRFD detector with keypoints "
                             f"(insightface built {type(detector).__name__})")
        on_gpu = "CUDAExecutionProvider" in detector.session.get_providers()
        detector.prepare(0 if on_gpu else -1, input_size=(detect_size, detect_size))
        return detector

    # ------------------------------------------------------------------ alignment

    def five_points(self, face: FaceObservation) -> tuple[np.ndarray, AlignmentSource]:
        """Alignment points ``[5, 2]`` in ``face.image`` and where they came from."""
        dlib_pts = dlib_five_points(face.landmarks)
        if self._detector is None:
            return dlib_pts, "dlib68"
        scrfd_pts = self._scrfd_points(face, dlib_pts)
        if scrfd_pts is None:
            logger.debug("arcface: SCRFD found no face matching dlib box %s; using dlib-68 points",
                         face.box)
            return dlib_pts, "dlib68"
        return scrfd_pts, "scrfd"

    def _scrfd_points(self, face: FaceObservation, dlib_pts: np.ndarray) -> np.ndarray | None:
        """SCRFD's keypoints of the face that agrees with the dlib face, or None."""
        image = check_image(face.image)
        left, top, right, bottom = face.box
        side = max(right - left, bottom - top, 1)
        half = int(round(DETECT_WINDOW * side / 2))
        cx, cy = (left + right) // 2, (top + bottom) // 2
        x0, y0 = cx - half, cy - half
        window = np.zeros((2 * half, 2 * half, 3), np.uint8)
        h, w = image.shape[:2]
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + 2 * half, w), min(y0 + 2 * half, h)
        if sx1 <= sx0 or sy1 <= sy0:
            return None
        window[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
        _, kpss = self._detector.detect(np.ascontiguousarray(window[..., ::-1]), max_num=0)
        if kpss is None or len(kpss) == 0:
            return None
        kpss = np.asarray(kpss, np.float64) + np.array([x0, y0], np.float64)
        disagreement = np.linalg.norm(kpss - dlib_pts[None], axis=2).mean(axis=1) / side
        best = int(np.argmin(disagreement))
        return kpss[best] if disagreement[best] <= MAX_POINT_DISAGREEMENT else None

    def crop(self, face: FaceObservation) -> tuple[np.ndarray, AlignmentSource]:
        """The RGB ArcFace crop ``[S, S, 3]`` of ``face`` and its alignment source."""
        points, source = self.five_points(face)
        return arcface_crop(face.image, points, self.input_size), source

    # ------------------------------------------------------------------ embedding

    def embed(self, faces: Sequence[FaceObservation]) -> np.ndarray:
        """``[N, dim]`` unit vectors for ``faces``, in order."""
        if not faces:
            return np.zeros((0, self.dim), np.float32)
        bgr = [np.ascontiguousarray(self.crop(f)[0][..., ::-1]) for f in faces]  # get_feat swaps to RGB
        out = np.concatenate([np.asarray(self._model.get_feat(bgr[i:i + BATCH_SIZE]), dtype=np.float32)
                              for i in range(0, len(bgr), BATCH_SIZE)])
        if out.shape != (len(faces), self.dim):
            raise RuntimeError(f"arcface returned {out.shape}, expected {(len(faces), self.dim)}")
        return l2_normalise(out)


@ENCODERS.register("arcface")
def _make_arcface(weights_dir: Path | None = None, model_file: str | Path | None = None,
                  **_: object) -> ArcFaceEncoder:
    pack = find_arcface_pack(Path(weights_dir) if weights_dir else Path("weights"), model_file)
    return ArcFaceEncoder(pack.recognition, pack.detector)
