"""Generative backbones behind one protocol, registered by name."""

from .base import BACKBONES, FACTOR_NAMES, Backbone, BackboneError, Projection

__all__ = ["BACKBONES", "FACTOR_NAMES", "Backbone", "BackboneError", "Projection"]
