"""The backbone protocol: project faces to latents, split latents into named
factors, compose factors back into a latent and synthesize images.

Every backbone (the embedded morphable model, StyleGAN2-ADA) implements this
protocol and registers a factory under its name in ``BACKBONES``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from ..registry import Registry
from ..types import Factors, Latent, SourceFace

#: Identity factor names of the embedded backbone, in the order reports list
#: them. Other backbones use these names where the factor is the same thing;
#: a latent-space backbone whose middle layers carry eyes, nose and mouth
#: together names that group ``LOCAL_FEATURES``.
FACTOR_NAMES: tuple[str, ...] = ("geometry", "symmetry", "texture", "eyes", "nose", "mouth")
LOCAL_FEATURES = "local_features"


@dataclass(frozen=True)
class FactorRoles:
    """How the recipe sampler (``core/recipes.py``) treats a backbone's identity factors.

    Every name is one of the backbone's ``factor_names``:

    * ``shape``: pure shape factors. A strongly turned photo may still give
      them (the backbone takes the head turn out), and when people run out
      the context person gives one of them: its weakest identity cues.
    * ``sensitive``: factors where incompatible donors show at once (beard,
      make-up, teeth), most sensitive first: their donors are the people
      nearest the context photo, in its appearance cluster.
    * ``appearance``: factors whose main axes place donors in appearance
      space when no face-recognition embeddings are given.
    * ``pulled``: factors that a recipe's mean pull (by default a push off the
      population mean) moves; ``None``: all of them. The others keep their
      donors' mix.
    """

    shape: tuple[str, ...] = ()
    sensitive: tuple[str, ...] = ()
    appearance: tuple[str, ...] = ()
    pulled: tuple[str, ...] | None = None


#: Roles of the ``FACTOR_NAMES`` factors (the embedded backbone's).
#: The push off the mean leaves the texture alone: pushing it exaggerated every donor's skin marks
#: (stubble into a moustache, a crease into a streak) and did not lower dlib's similarity; the
#: feature regions keep their push, which gives the soft demo faces their detail
#: (docs/novelty.md, "The push leaves the skin alone").
FACTOR_ROLES = FactorRoles(shape=("geometry", "symmetry"), sensitive=("texture", "eyes", "mouth"),
                           appearance=("texture",), pulled=("geometry", "symmetry", "eyes", "nose", "mouth"))


@dataclass(frozen=True)
class Projection:
    """A source face projected into a backbone's latent space.

    ``reconstruction_error`` is the mean absolute pixel error of
    ``synthesize(latent)`` against the aligned source, in [0, 1].
    ``extras`` holds backbone-specific quality figures (e.g. identity
    similarity of the reconstruction to its source).
    """

    latent: Latent
    reconstruction_error: float
    extras: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Backbone(Protocol):
    """What the pipeline needs from a generative backbone.

    Lifecycle: construct (from config and weights), ``fit`` on the source faces
    (a pretrained model ignores them; the embedded model builds itself from
    them), then ``project``/``decompose``/``compose``/``synthesize``. The
    fitted state is saved with ``save_state`` and restored with ``load_state``
    so that separate pipeline steps share one model; ``state_hash`` identifies
    weights + fitted state for lineage.
    """

    name: str
    #: identity factors this backbone decomposes into (see FACTOR_NAMES)
    factor_names: tuple[str, ...]
    #: what the recipe sampler needs to know about them (see FactorRoles)
    factor_roles: FactorRoles
    #: side of the square images it synthesizes
    image_size: int
    #: whether ``synthesize`` shows the recipe's context photo (hair, clothes, background);
    #: when it does not, the context person may give identity factors like any donor
    shows_context: bool

    def fit(self, faces: Sequence[SourceFace]) -> None: ...

    def state_hash(self) -> str: ...

    def save_state(self, path: Path) -> None: ...

    def load_state(self, path: Path) -> None: ...

    def project(self, faces: Sequence[SourceFace]) -> list[Projection]: ...

    def decompose(self, latent: Latent) -> dict[str, np.ndarray]: ...

    def compose(self, factors: Factors) -> dict[str, np.ndarray]: ...

    def synthesize(self, latents: Sequence[Latent]) -> list[np.ndarray]: ...

    def population_mean(self) -> dict[str, np.ndarray]: ...


class BackboneError(RuntimeError):
    """A backbone cannot be built or used (bad weights, not fitted, ...)."""


BACKBONES: Registry[Backbone] = Registry("backbone")
