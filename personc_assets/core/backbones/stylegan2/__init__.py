"""StyleGAN2-ADA backbone: a clean-room generator, safe weight loading, projection, W+ factors.

Importing this package registers the ``stylegan2`` backbone in ``BACKBONES``.
"""

from .backbone import DEFAULT_WEIGHT_NAMES, StyleGAN2Backbone, create_stylegan2, find_weights
from .factors import (GROUP_BANDS, STYLEGAN2_FACTOR_NAMES, LayerGroups, compose_w_plus, decompose_w_plus,
                      layer_groups, mix_groups)
from .loading import (Snapshot, SnapshotError, SnapshotRefused, convert_snapshot, read_snapshot,
                      resolve_device)
from .network import Generator, GeneratorConfig, MappingConfig, SynthesisConfig, build_generator, random_generator
from .projection import (IDENTITY_LOSSES, FFHQAlignment, IdentityFn, ProjectionSettings, ffhq_align,
                         project_w_plus)

__all__ = [
    "DEFAULT_WEIGHT_NAMES", "FFHQAlignment", "GROUP_BANDS", "Generator", "GeneratorConfig",
    "IDENTITY_LOSSES", "IdentityFn", "LayerGroups", "MappingConfig", "ProjectionSettings", "STYLEGAN2_FACTOR_NAMES",
    "Snapshot", "SnapshotError", "SnapshotRefused", "StyleGAN2Backbone", "SynthesisConfig",
    "build_generator", "compose_w_plus", "convert_snapshot", "create_stylegan2", "decompose_w_plus",
    "ffhq_align", "find_weights", "layer_groups", "mix_groups", "project_w_plus", "random_generator",
    "read_snapshot", "resolve_device",
]
