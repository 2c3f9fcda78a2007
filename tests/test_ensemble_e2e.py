"""The three-encoder ensemble through the whole asset graph, from stand-in weights in the real formats."""

import json

import duckdb
import pytest
import torch

from personc_assets.core.encoders.magface import IResNet, IResNetConfig
from test_arcface import make_arcface_onnx
from test_magface import save_released_layout
from test_pipeline_e2e import run_graph

pytestmark = pytest.mark.slow

TINY = {"layers": [1, 1, 1, 1], "widths": [8, 8, 16, 16], "embedding_dim": 32}


def test_arcface_magface_and_dlib_guard_every_candidate(tmp_path):
    # why: dropping ArcFace and MagFace files into weights/ must put them in the guard with no other step
    weights = tmp_path / "weights"
    make_arcface_onnx(weights / "w600k_r50.onnx")
    torch.manual_seed(0)
    net = IResNet(IResNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in TINY.items()}))
    save_released_layout(weights / "magface_iresnet100.pth", net)
    result = run_graph(tmp_path / "out", tmp_path / "home", weights_dir=str(weights),
                       encoder_options={"magface": {"arch": TINY}},
                       num_samples=1, max_attempts=2, attribution_maps=False)
    assert result.success
    indexes = json.loads((tmp_path / "out" / "state" / "embedding_indexes.json").read_text())
    assert sorted(i["encoder"] for i in indexes["indexes"]) == ["arcface", "dlib", "magface"]
    assert indexes["skipped"] == []
    with duckdb.connect(str(tmp_path / "out" / "personc.duckdb"), read_only=True) as conn:
        per_candidate = conn.execute(
            "SELECT candidate_id, list(encoder ORDER BY encoder) FROM verdicts GROUP BY 1").fetchall()
        judged = conn.execute("SELECT count(*) FROM candidate_verdicts").fetchone()[0]
        embedded = dict(conn.execute("SELECT encoder, count(*) FROM embeddings GROUP BY 1").fetchall())
    assert judged >= 1 and len(per_candidate) == judged
    assert all(encs == ["arcface", "dlib", "magface"] for _, encs in per_candidate)
    # the demo sources: six faces of insightface's group photo and two single portraits
    assert embedded["arcface"] == embedded["magface"] == embedded["dlib"] == 8
