"""Release ids: derived from the candidate id, so re-runs keep the same id."""

from __future__ import annotations

import hashlib


def release_id_for(candidate_id: str) -> str:
    return "pc-" + hashlib.sha256(candidate_id.encode()).hexdigest()[:12]
