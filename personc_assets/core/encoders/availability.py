"""Which encoders a run can use, given the weights on disk.

Every factory in ``ENCODERS`` raises ``MissingWeightsError`` (naming the file
and where to put it) before loading anything when its weights are absent. So:

- no explicit request: every registered encoder whose weights exist is used;
  the others are skipped with one log line each and returned as
  ``SkippedEncoder`` records for the run's metadata (dlib ships with its
  package and is always there);
- an explicit request: every named encoder must load; an absent one raises
  the ``MissingWeightsError`` as is, an unknown name lists the known ones.

Only missing weights lead to a skip: a weights file that exists but is broken
raises, so a damaged checkpoint can never silently weaken the guard.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import arcface, magface  # noqa: F401  (register "arcface" and "magface")
from .base import ENCODERS, Encoder, MissingWeightsError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SkippedEncoder:
    """A registered encoder left out of a run because its weights are absent."""

    name: str
    reason: str
    expected: str  # the weights path it looked for

    def as_metadata(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason, "expected": self.expected}


def resolve_encoders(requested: Sequence[str] | None, weights_dir: Path,
                     options: Mapping[str, Mapping[str, Any]] | None = None,
                     ) -> tuple[list[Encoder], list[SkippedEncoder]]:
    """Build the encoders for a run: ``(usable encoders, skipped encoders)``.

    ``requested=None`` (or empty) means every registered encoder whose weights
    exist under ``weights_dir``; a list names encoders that must all load.
    ``options`` adds factory keyword arguments per encoder name, e.g.
    ``{"arcface": {"model_file": "antelopev2"}, "magface": {"arch": "iresnet50"}}``.
    """
    weights_dir = Path(weights_dir)
    options = options or {}
    unknown = set(options) - set(ENCODERS.names())
    if unknown:
        raise ValueError(f"options for unknown encoders {sorted(unknown)}; "
                         f"known encoders: {', '.join(ENCODERS.names())}")

    def create(name: str) -> Encoder:
        return ENCODERS.create(name, weights_dir=weights_dir, **dict(options.get(name, {})))

    if requested:
        names = list(dict.fromkeys(requested))  # keep order, drop repeats
        return [create(name) for name in names], []
    encoders: list[Encoder] = []
    skipped: list[SkippedEncoder] = []
    for name in ENCODERS.names():
        try:
            encoders.append(create(name))
        except MissingWeightsError as exc:
            skipped.append(SkippedEncoder(name, str(exc), str(exc.expected)))
            logger.warning("encoder %s skipped: %s", name, exc)
    if not encoders:
        raise RuntimeError(f"no encoder could be loaded from {weights_dir}: "
                           + "; ".join(s.reason for s in skipped))
    return encoders, skipped
