"""tau from a stored calibration for a target false-match rate per released face."""

import duckdb
import numpy as np

from personc_assets.core.calibration import CalibrationResult, calibrate_embeddings, write_calibration
from personc_assets.core.encoders.base import l2_normalise
from personc_assets.core.lineage.store import LineageStore
from personc_assets.core.pipeline.thresholds import calibrated_taus


def store_with_calibration(path, version="v1", noise=0.25):
    rng = np.random.default_rng(0)
    centres = l2_normalise(rng.normal(size=(8, 32)))
    labels = [f"p{i}" for i in range(8) for _ in range(4)]
    emb = l2_normalise(np.repeat(centres, 4, axis=0) + noise * rng.normal(size=(32, 32)))
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


class _Encoder:
    """Just what ``resolve_taus`` reads of an encoder."""

    def __init__(self, default_tau: float) -> None:
        self.name, self.version, self.default_tau, self.tau_rationale = "enc", "v1", default_tau, "stand-in"


def test_calibrated_tau_never_loosens_the_default(tmp_path):
    # why: a large gallery asks for a higher tau (fewer strangers rejected), which lets closer
    # look-alikes of a source through; only a tau the user gives by value may loosen the guard
    from personc_assets.core.ensemble import resolve_taus

    store, cal = store_with_calibration(tmp_path / "db.duckdb", noise=0.05)  # same person ~0.9, strangers ~0
    calibrated = calibrated_taus(store, {"enc": "v1"}, 1e-3, 100_000)
    asked = calibrated["enc"].tau
    assert 0.8 < asked <= cal.same.min + 1e-9
    enc = _Encoder(default_tau=round(asked - 0.05, 3))  # the calibration alone would loosen this default
    chosen = resolve_taus([enc], {}, None, calibrated)["enc"]
    assert chosen.tau == enc.default_tau and chosen.source == "calibrated"
    assert f"{asked:.3f}) would be laxer than the default" in chosen.why and "--tau enc=VALUE" in chosen.why
    assert resolve_taus([enc], {"enc": asked}, None, calibrated)["enc"].tau == asked, "by value it may"
    looser = _Encoder(default_tau=round(asked + 0.05, 3))  # a calibration may tighten the guard
    assert resolve_taus([looser], {}, None, calibrated)["enc"].tau == asked


def test_calibrated_tau_says_which_error_rate_it_controls(tmp_path):
    # why: a user reading "FMR" may take it for the leak rate; it is the rate of faces of nobody rejected
    store, _ = store_with_calibration(tmp_path / "db.duckdb")
    why = calibrated_taus(store, {"enc": "v1"}, 1e-3, 1000)["enc"].why
    assert "bounds the false-match rate: the share of faces of nobody among the N=1000 sources" in why
    assert "not a leak" in why and "does not bound leaks" in why
