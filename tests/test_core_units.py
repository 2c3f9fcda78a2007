"""Small units of the core: taus, lineage upserts, alignment, the core/Dagster boundary."""

import subprocess
import sys

import numpy as np
import pytest

from personc_assets.cli.run_options import parse_taus
from personc_assets.core.ensemble import resolve_taus
from personc_assets.core.faces.align import ALIGNED_SIZE, CANONICAL_TEMPLATE, align_face, five_points
from personc_assets.core.lineage.store import LineageStore
from personc_assets.core.pipeline.config import RunConfig
from personc_assets.core.registry import Registry, UnknownNameError


class Enc:
    def __init__(self, name, tau):
        self.name, self.default_tau, self.tau_rationale = name, tau, f"{name} default"


def test_bare_tau_applies_to_arcface_only():
    # why: --tau 0.4 is an ArcFace cosine; applied to dlib it would release near-copies
    taus = resolve_taus([Enc("dlib", 0.9), Enc("arcface", 0.35)], {}, 0.4)
    assert taus["arcface"].tau == 0.4
    assert taus["dlib"].tau == 0.9 and "not applied to dlib" in taus["dlib"].why
    explicit = resolve_taus([Enc("dlib", 0.9)], {"dlib": 0.88}, None)
    assert explicit["dlib"].tau == 0.88 and explicit["dlib"].why == "set explicitly"
    with pytest.raises(ValueError, match="not in use"):
        resolve_taus([Enc("dlib", 0.9)], {"magface": 0.5}, None)


def test_parse_taus_cli_forms():
    assert parse_taus(["0.4", "dlib=0.9,arcface=0.3"]) == ({"dlib": 0.9, "arcface": 0.3}, 0.4)
    with pytest.raises(Exception, match="ENCODER=NUMBER"):
        parse_taus(["dlib=high"])


def test_run_config_validates():
    with pytest.raises(ValueError, match="num_samples"):
        RunConfig(num_samples=0)
    with pytest.raises(ValueError, match="tau for dlib"):
        RunConfig(taus={"dlib": 1.5})


def test_store_upsert_is_idempotent_and_transactions_roll_back(tmp_path):
    # why: re-materializing must not duplicate rows; a failed step must leave nothing half-written
    store = LineageStore.open(tmp_path / "l.duckdb")
    row = {"recipe_id": "r1", "seed": 1, "mean_pull": 0.2, "context_donor": "h", "recipe_json": "{}", "run_id": "x"}
    for _ in range(3):
        with store.transaction() as tx:
            tx.upsert("recipes", [row])
    assert store.counts()["recipes"] == 1
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            tx.upsert("recipes", [dict(row, recipe_id="r2")])
            raise RuntimeError("crash mid-step")
    assert store.counts()["recipes"] == 1
    with pytest.raises(ValueError, match="unknown table"), store.transaction() as tx:
        tx.upsert("nope", [row])


def test_privacy_tables_share_the_schema_and_the_upsert(tmp_path):
    # why: the privacy modes had their own schema file, upsert and JSON helper; one schema means one
    # store opening creates every table, and one upsert means the same keys and checks everywhere
    from personc_assets.core.lineage.store import PRIVACY_TABLES, json_column

    store = LineageStore.open(tmp_path / "l.duckdb")
    assert set(PRIVACY_TABLES) <= set(store.counts())
    key = {"key_id": "k1", "first_seen": None, "revoked": False, "revoked_at": None, "revoked_reason": None}
    for _ in range(2):
        with store.transaction() as tx:
            tx.upsert("privacy_keys", [key])
    assert store.counts()["privacy_keys"] == 1
    assert json_column({"b": float("nan"), "a": [1.0, float("inf")]}) == '{"a": [1.0, null], "b": null}'


def test_supersede_changed_paths_keeps_old_rows(tmp_path):
    # why: a photo replaced between runs gets a new hash; the old row stays, marked superseded
    store = LineageStore.open(tmp_path / "l.duckdb")
    with store.transaction() as tx:
        tx.upsert("sources", [{"content_hash": "old", "path": "/a.jpg", "superseded": False}])
        assert tx.supersede_changed_paths({"/a.jpg": "new"}, "run2") == ["old"]
    assert store.query("SELECT superseded, superseded_by FROM sources") == [(True, "new")]


def test_alignment_puts_five_points_on_the_template():
    # why: every backbone assumes faces sit at the same place and scale in the crop
    rng = np.random.default_rng(0)
    template = CANONICAL_TEMPLATE * ALIGNED_SIZE
    angle, scale, shift = 0.3, 2.5, np.array([400.0, 300.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * scale
    lm = rng.uniform(0, 256, (68, 2)).astype(np.float32)
    for idx, point in zip([range(36, 42), range(42, 48), [30], [48], [54]], template):
        lm[list(idx)] = point  # make the 5 derived points equal the template exactly
    photo_lm = (lm @ rot.T + shift).astype(np.float32)
    image = rng.integers(0, 255, (1200, 1200, 3), dtype=np.uint8)
    aligned, lm_aligned, _ = align_face(image, photo_lm)
    assert aligned.shape == (ALIGNED_SIZE, ALIGNED_SIZE, 3)
    np.testing.assert_allclose(five_points(lm_aligned), template, atol=1e-2)


def test_registry_lists_known_names():
    reg: Registry[object] = Registry("widget")
    reg.register("a")(lambda: 1)
    with pytest.raises(UnknownNameError, match="known widgets: a"):
        reg.create("b")


def test_core_never_imports_dagster():
    # why: the core library must stay usable without the orchestration framework
    code = ("import sys, personc_assets.core.pipeline.judging, personc_assets.core.pipeline.explaining; "
            "import personc_assets.core.guard, personc_assets.core.index; "
            "print(any(m == 'dagster' or m.startswith('dagster.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
