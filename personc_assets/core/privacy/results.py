"""The privacy modes' asset values (see ``core/values.py``), made by ``steps.py``."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

from ..values import checked
from .disentangle import FactorRanking, FactorSensitivity


@dataclass(frozen=True)
class RecordedRanking:
    """The ``factor_identity_ranking`` value: the ranking and the id it is recorded under."""

    ranking_id: str
    ranking: FactorRanking

    #: Written for readers of the stored JSON; recomputed from the rows when read back.
    DERIVED = ("order", "shares")

    def as_dict(self) -> dict[str, Any]:
        r = self.ranking
        return {"ranking_id": self.ranking_id, "backbone_state": r.backbone_state, "probes": list(r.probes),
                "donors_per_probe": r.donors_per_probe, "order": list(r.order()), "shares": r.shares(),
                "rows": r.table()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RecordedRanking":
        d = checked(d, "RecordedRanking", "factor_identity_ranking",
                    ("ranking_id", "backbone_state", "probes", "donors_per_probe", "rows"), cls.DERIVED)
        names = tuple(f.name for f in fields(FactorSensitivity))
        rows = tuple(FactorSensitivity(**{k: math.nan if v is None else v for k, v in
                                          checked(r, "FactorSensitivity", "factor_identity_ranking", names).items()})
                     for r in d["rows"])
        return cls(d["ranking_id"], FactorRanking(rows, d["backbone_state"], tuple(d["probes"]),
                                                  int(d["donors_per_probe"])))
