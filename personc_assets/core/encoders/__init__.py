"""Face-recognition encoders behind one protocol, registered by name."""

from .base import ENCODERS, Encoder, MissingWeightsError, l2_normalise
from . import arcface, dlib, magface  # noqa: F401  (register "arcface", "dlib", "magface")

__all__ = ["ENCODERS", "Encoder", "MissingWeightsError", "l2_normalise"]
