"""The research backbone through the whole asset graph, from tiny snapshots in every format."""

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from personc_assets.core.backbones.stylegan2.loading import convert_snapshot
from stylegan2_fixtures import GOLDEN_DIR, golden_generator, write_official_pickle, write_rosinality
from test_pipeline_e2e import run_graph

ROOT = Path(__file__).resolve().parents[1]
# the tiny snapshots are built from the golden generator, as in the other stylegan2 tests
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not GOLDEN_DIR.is_dir(), reason=f"golden vectors not found at {GOLDEN_DIR}")]


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    """The golden 32 px generator as an official pickle, a rosinality .pt and our safetensors."""
    folder = tmp_path_factory.mktemp("snapshots")
    cfg, sd, g = golden_generator("stylegan2_a_skip32")
    pkl = write_official_pickle(folder / "tiny.pkl", cfg, g)
    pt = write_rosinality(folder / "tiny.pt", cfg, sd)
    st = convert_snapshot(pkl, folder / "tiny.safetensors")
    return {"pkl": pkl, "pt": pt, "safetensors": st}


@pytest.mark.parametrize("fmt", ["pkl", "pt", "safetensors"])
def test_tiny_snapshot_runs_the_whole_graph(tmp_path, snapshots, fmt):
    # why: a user's weights file must drive every asset; a random 32 px generator makes no face,
    # so the guard must fail closed and release nothing
    options = {"weights": str(snapshots[fmt]), "projection_steps": 3, "device": "cpu", "output_size": 256}
    result = run_graph(tmp_path / "out", tmp_path / "home", backbone="stylegan2",
                       backbone_options=options, num_samples=1, max_attempts=2)
    assert result.success
    with duckdb.connect(str(tmp_path / "out" / "personc.duckdb"), read_only=True) as conn:
        latents = conn.execute("SELECT DISTINCT backbone FROM latents").fetchall()
        factors = {f for (f,) in conn.execute("SELECT DISTINCT factor FROM factors").fetchall()}
        verdicts = conn.execute("SELECT verdict, reason FROM candidate_verdicts").fetchall()
    assert latents == [("stylegan2",)]
    assert factors == {"geometry", "local_features", "texture", "symmetry"}
    assert len(verdicts) == 2 and all(v == "REJECT" and "no face" in r for v, r in verdicts)


def test_run_demo_with_a_tiny_stand_in(tmp_path, snapshots):
    # why: the documented command must work with a user's file and say clearly why nothing was released
    proc = subprocess.run([sys.executable, "run_demo.py", "--backbone", "stylegan2", "--backbone-weights",
                           str(snapshots["pkl"]), "--backbone-options", '{"projection_steps": 3}',
                           "--num_samples", "1", "--max-attempts", "1",
                           "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "only 0 of 1 faces passed every gate" in proc.stderr
    assert "slot 0: last of 1 attempts rejected" in proc.stderr  # the reason is shown
    assert (tmp_path / "out" / "personc.duckdb").is_file()
