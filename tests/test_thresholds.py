"""tau from a stored calibration for a target false-match rate per released face."""

import duckdb
import numpy as np

from personc_assets.core.calibration import CalibrationResult, calibrate_embeddings, write_calibration
from personc_assets.core.encoders.base import l2_normalise
from personc_assets.core.lineage.store import LineageStore
from personc_assets.core.pipeline.thresholds import calibrated_taus


def store_with_calibration(path, version="v1"):
    rng = np.random.default_rng(0)
    centres = l2_normalise(rng.normal(size=(8, 32)))
    labels = [f"p{i}" for i in range(8) for _ in range(4)]
    emb = l2_normalise(np.repeat(centres, 4, axis=0) + 0.25 * rng.normal(size=(32, 32)))
    cal = calibrate_embeddings("enc", version, emb, labels)
    with duckdb.connect(str(path)) as conn:
        write_calibration(conn, CalibrationResult("synthetic", 8, 32, (cal,)), "r1")
    return LineageStore.open(path), cal


def test_calibrated_tau_never_exceeds_same_person_minimum(tmp_path):
    # why: a large gallery raises the 1:N tau; the guard must still catch every look-alike seen in calibration
    store, cal = store_with_calibration(tmp_path / "db.duckdb")
    small = calibrated_taus(store, {"enc": "v1"}, 0.5, 1)["enc"]
    large = calibrated_taus(store, {"enc": "v1"}, 1e-3, 100_000)["enc"]
    assert small.tau <= cal.same.min + 1e-9 and large.tau <= cal.same.min + 1e-9
    assert large.tau >= small.tau
    assert "N=100000" in large.why


def test_tau_is_never_below_an_observed_stranger_when_data_are_thin(tmp_path):
    # why: with too few pairs to show the target rate, tau must not contradict what was observed
    store, cal = store_with_calibration(tmp_path / "db.duckdb")
    choice = calibrated_taus(store, {"enc": "v1"}, 1e-3, 1000)["enc"]
    assert choice.tau >= min(cal.diff.max, cal.same.min) - 1e-9


def test_other_weights_version_is_not_calibrated(tmp_path):
    # why: a calibration measured on other weights says nothing about these
    store, _ = store_with_calibration(tmp_path / "db.duckdb")
    assert calibrated_taus(store, {"enc": "v2"}, 1e-3, 10) == {}
