"""Generative backbones behind one protocol, registered by name."""

from .base import BACKBONES, FACTOR_NAMES, Backbone, BackboneError, Projection
from . import morphable  # noqa: F401  (registers "morphable")

__all__ = ["BACKBONES", "FACTOR_NAMES", "Backbone", "BackboneError", "Projection"]
