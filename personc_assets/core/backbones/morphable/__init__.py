"""The embedded morphable face model (default backbone, no downloaded weights).

Importing this package registers the ``"morphable"`` backbone in ``BACKBONES``.
"""

from .model import MorphableBackbone, MorphableConfig, make_morphable, person_key, person_weights

__all__ = ["MorphableBackbone", "MorphableConfig", "make_morphable", "person_key", "person_weights"]
