"""The GPU pool: steps that run the generator share one accelerator.

Projection, candidate generation, regeneration inside the guard step and the
ICS renders run the backbone's generator. They run under the Dagster
concurrency pool ``GPU_POOL`` (its limit is set in the deployment's
``dagster.yaml``; ``personc ui`` writes a default limit of 1) and carry
``GPU_TAGS``, so a run launcher can place them on a machine with a GPU.
"""

GPU_POOL = "gpu"
GPU_TAGS: dict[str, str] = {"personc/accelerator": "gpu"}
