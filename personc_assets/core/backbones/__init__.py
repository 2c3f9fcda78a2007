"""Generative backbones behind one protocol, registered by name."""

from .base import BACKBONES, FACTOR_NAMES, FACTOR_ROLES, Backbone, BackboneError, FactorRoles, Projection
from . import morphable, stylegan2  # noqa: F401  (register "morphable" and "stylegan2")

__all__ = ["BACKBONES", "FACTOR_NAMES", "FACTOR_ROLES", "Backbone", "BackboneError", "FactorRoles", "Projection"]
