"""Faults injected inside a real pipeline run: the guard fails closed and says why.

Test-only encoders are registered in ``ENCODERS`` here and requested through the
run configuration. They behave while the indexes are built, then fail the way
real ones do (raise, NaN, wrong size; an index file vanishes; the weights change
so the index is stale) while candidates are judged. A healthy control encoder in
the same run shows the candidates would otherwise have passed.
"""

from __future__ import annotations

import contextlib

import duckdb
import numpy as np
import pytest
from dagster import AssetKey, DagsterInstance

from personc_assets.core.transforms import BENIGN_TRANSFORMS
from personc_assets.core.encoders.base import ENCODERS, l2_normalise
from personc_assets.definitions import build_definitions

pytestmark = pytest.mark.slow

#: Flipped on between building the indexes and judging the candidates.
FAULTS = {"on": False}
DIM = 48


class PixelEncoder:
    """A cheap, deterministic stand-in: the face's box as 4x4 colour cells, normalised."""

    dim = DIM
    default_tau = 0.9999  # nothing real reaches it: every rejection below is the fault's
    tau_rationale = "test encoder: only faults may reject"

    def __init__(self, name: str, fault: str | None) -> None:
        self.name, self.fault = name, fault

    @property
    def version(self) -> str:
        """New weights (a new version) once the faults are on: the index built before is stale."""
        return f"{self.name}-v2" if self.fault == "stale" and FAULTS["on"] else f"{self.name}-v1"

    def embed(self, faces) -> np.ndarray:
        import cv2

        rows = []
        for f in faces:
            x0, y0, x1, y1 = (max(0, int(v)) for v in f.box)
            crop = f.image[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)].astype(np.float32)
            cells = cv2.resize(crop, (4, 4), interpolation=cv2.INTER_AREA).reshape(-1)
            rows.append(cells - cells.mean() + 1e-3)
        out = l2_normalise(np.stack(rows)) if rows else np.zeros((0, DIM), np.float32)
        if FAULTS["on"] and self.fault == "raise":
            raise RuntimeError("injected encoder failure")
        if FAULTS["on"] and self.fault == "nan":
            out[:] = np.nan
        if FAULTS["on"] and self.fault == "shape":
            out = np.hstack([out, np.zeros((len(out), 1), np.float32)])
        return out


ENCODER_FAULTS = {"test_pixels": None, "test_fault_raise": "raise", "test_fault_nan": "nan",
                  "test_fault_shape": "shape", "test_fault_missing": "missing", "test_fault_stale": "stale"}


@pytest.fixture(scope="module")
def faulty_encoders():
    """The test encoders, registered only while this module's tests run (the registry is global)."""
    with contextlib.ExitStack() as stack:
        for name, fault in ENCODER_FAULTS.items():
            stack.enter_context(ENCODERS.temporarily(name, lambda _n=name, _f=fault, **_: PixelEncoder(_n, _f)))
        yield

VIEWS = 1 + len(BENIGN_TRANSFORMS)
#: what each encoder's verdict row must say once its fault is on
EXPECTED_REASON = {"test_fault_raise": "encoder error: RuntimeError: injected encoder failure",
                   "test_fault_nan": "invalid embedding (NaN",
                   # one candidate, embedded with its benign transforms in one batch
                   "test_fault_shape": f"encoder returned shape ({VIEWS}, {DIM + 1}), expected ({VIEWS}, {DIM})",
                   "test_fault_missing": "index missing: index file missing",
                   "test_fault_stale": "is stale: built for test_fault_stale-v1"}

BEFORE = ["source_images", "projected_latents", "factor_decompositions", "embedding_indexes"]
JUDGE = ["generated_candidates", "guard_verdicts"]


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory, faulty_encoders):
    out = tmp_path_factory.mktemp("faults") / "out"
    job = build_definitions(out_dir=str(out), encoders=list(ENCODER_FAULTS), num_samples=1,
                            max_attempts=2, seed=3).resolve_job_def("personc_main")
    with DagsterInstance.ephemeral() as instance:
        FAULTS["on"] = False
        job.execute_in_process(instance=instance, asset_selection=[AssetKey(k) for k in BEFORE])
        for index in (out / "artifacts" / "indexes").glob("test_fault_missing-*.faiss"):
            index.unlink()
        FAULTS["on"] = True
        try:
            result = job.execute_in_process(instance=instance, asset_selection=[AssetKey(k) for k in JUDGE])
        finally:
            FAULTS["on"] = False
    return {"out": out, "result": result}


def test_every_fault_rejects_every_candidate_and_is_recorded(faulty_run):
    # why: a broken encoder or index must never let a face out; the operator must see which fault
    db = faulty_run["out"] / "personc.duckdb"
    with duckdb.connect(str(db), read_only=True) as conn:
        cands = conn.execute("SELECT candidate_id, verdict, reason FROM candidate_verdicts").fetchall()
        rows = conn.execute("SELECT candidate_id, encoder, verdict, reason FROM verdicts").fetchall()
        released = conn.execute("SELECT count(*) FROM releases").fetchone()[0]
    assert len(cands) == 2, "both attempts of the one slot were judged"
    assert all(v == "REJECT" for _, v, _ in cands) and released == 0
    by = {(c, e): (v, r) for c, e, v, r in rows}
    for cid, _, reason in cands:
        assert "no face" not in reason, "the candidate must reach the encoders for this test to mean anything"
        assert by[(cid, "test_pixels")][0] == "PASS", "the healthy control would have passed it"
        for enc, expected in EXPECTED_REASON.items():
            verdict, why = by[(cid, enc)]
            assert verdict == "REJECT" and expected in why, (enc, why)
            assert enc in reason  # the candidate's own reason names every failing encoder


def test_faulty_run_still_completes(faulty_run):
    # why: fail closed means "reject", not "crash the unattended run"
    assert faulty_run["result"].success
    guard = faulty_run["result"].asset_materializations_for_node("guard_verdicts")[0]
    assert guard.metadata["released"].value == 0
