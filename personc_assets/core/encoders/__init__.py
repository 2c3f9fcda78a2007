"""Face-recognition encoders behind one protocol, registered by name."""

from .base import ENCODERS, Encoder, MissingWeightsError, l2_normalise
from . import dlib_encoder  # noqa: F401  (registers "dlib")

__all__ = ["ENCODERS", "Encoder", "MissingWeightsError", "l2_normalise"]
