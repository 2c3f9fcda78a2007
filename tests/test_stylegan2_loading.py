"""Safe loading of StyleGAN2 weights: official pickles, rosinality .pt, converted safetensors.

Tiny snapshot files are built here from the golden weights (see
stylegan2_fixtures); no real snapshot is needed.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys

import numpy as np
import pytest
import torch

from personc_assets.cli import convert as convert_cli
from personc_assets.core.backbones.stylegan2.loading import (ALLOWED_GLOBALS, SafeSnapshotUnpickler, SnapshotError,
                                                            SnapshotRefused, convert_snapshot, detect_format,
                                                            read_snapshot, resolve_device, rosinality_name_map)
from personc_assets.core.backbones.stylegan2.network import build_generator
from stylegan2_fixtures import one_torch_thread  # noqa: F401  (autouse fixture)
from stylegan2_fixtures import (GOLDEN_DIR, GOLDEN_FILES, golden, golden_generator, write_malicious_pickle,
                                write_malicious_storage_pickle, write_official_pickle, write_rosinality)

pytestmark = pytest.mark.skipif(not GOLDEN_DIR.is_dir(), reason=f"golden vectors not found at {GOLDEN_DIR}")


def render(snap, name: str) -> torch.Tensor:
    d = golden(name)
    g = snap.build()
    with torch.no_grad():
        return g.synthesis(torch.from_numpy(d["ws"]), noise_mode="const")


@pytest.fixture(scope="module")
def skip32_files(tmp_path_factory):
    """The golden skip generator in all three formats."""
    tmp = tmp_path_factory.mktemp("sg2")
    cfg, sd, g = golden_generator(GOLDEN_FILES[0])
    pkl = write_official_pickle(tmp / "tiny.pkl", cfg, g)
    pt = write_rosinality(tmp / "tiny.pt", cfg, sd)
    st = convert_snapshot(pkl, tmp / "tiny.safetensors")
    return {"pkl": pkl, "rosinality": pt, "safetensors": st, "cfg": cfg, "sd": sd}


def test_three_formats_load_to_identical_outputs(skip32_files):
    """Why: whichever file a user drops in, the pipeline must see the very same generator."""
    name = GOLDEN_FILES[0]
    snaps = {fmt: read_snapshot(skip32_files[fmt]) for fmt in ("pkl", "rosinality", "safetensors")}
    assert {fmt: s.source_format for fmt, s in snaps.items()} == {f: f for f in snaps}
    hashes = {s.weights_hash() for s in snaps.values()}
    assert len(hashes) == 1
    imgs = {fmt: render(s, name) for fmt, s in snaps.items()}
    assert torch.equal(imgs["pkl"], imgs["rosinality"]) and torch.equal(imgs["pkl"], imgs["safetensors"])
    d = golden(name)
    assert float((imgs["pkl"] - torch.from_numpy(d["img_const"])).abs().max()) <= \
        1e-5 * float(np.abs(d["img_const"]).max()) + 1e-6


def test_conditional_resnet_snapshot_round_trips(tmp_path):
    """Why: conditional resnet generators with conv_clamp travel through pkl and safetensors too."""
    name = GOLDEN_FILES[1]
    cfg, sd, g = golden_generator(name)
    pkl = write_official_pickle(tmp_path / "b.pkl", cfg, g, protocol=4)
    snap = read_snapshot(pkl)
    assert snap.config == cfg
    conv = read_snapshot(convert_snapshot(pkl, tmp_path / "b.safetensors"))
    assert conv.weights_hash() == snap.weights_hash()
    d = golden(name)
    with torch.no_grad():
        img = conv.build()(torch.from_numpy(d["z"]), torch.from_numpy(d["c"]), noise_mode="const")
    assert float((img - torch.from_numpy(d["img_G_forward"])).abs().max()) <= \
        1e-5 * float(np.abs(d["img_G_forward"]).max()) + 1e-6


def test_persistence_stand_ins_leave_no_modules_behind(skip32_files):
    """Why: the loader must not depend on torch_utils/dnnlib being importable (it never imports them)."""
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules
    read_snapshot(skip32_files["pkl"])
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules


@pytest.mark.parametrize("kind,global_name", [("exec", "builtins.exec"), ("system", "system")])
def test_malicious_pickle_is_refused_and_payload_never_runs(tmp_path, kind, global_name):
    """Why: a weights file that asks to run code (write a file, run a command) must be refused
    before anything runs — the official loader would have executed it."""
    cfg, sd, g = golden_generator(GOLDEN_FILES[0])
    target = tmp_path / "pwned.txt"
    bad = write_malicious_pickle(tmp_path / "evil.pkl", cfg, g, target, kind=kind)
    with pytest.raises(SnapshotRefused, match=global_name) as info:
        read_snapshot(bad)
    assert "Nothing from the file was executed" in str(info.value)
    assert not target.exists()


def test_malicious_payload_is_live_control(tmp_path):
    """Why (control): the payload used above really writes its file when plain pickle loads it,
    so the refusal tests could fail."""
    from stylegan2_fixtures import _WritesFile

    target = tmp_path / "control.txt"
    pickle.loads(pickle.dumps(_WritesFile(target)))  # noqa: S301 - our own payload, on purpose
    assert target.read_text() == "pwned"


def test_malicious_storage_bytes_are_refused(tmp_path):
    """Why: the one allowed loader of raw bytes (_load_from_bytes) must use the weights-only loader."""
    target = tmp_path / "pwned.txt"
    with pytest.raises(SnapshotRefused, match="weights-only"):
        read_snapshot(write_malicious_storage_pickle(tmp_path / "evil_storage.pkl", target))
    assert not target.exists()


def test_embedded_source_code_is_never_executed(tmp_path):
    """Why: official pickles embed network source that the official loader exec()s; ours keeps it as text."""
    cfg, sd, g = golden_generator(GOLDEN_FILES[0])
    target = tmp_path / "ran.txt"
    src = f"open({str(target)!r}, 'w').write('source code ran')\n"
    snap = read_snapshot(write_official_pickle(tmp_path / "src.pkl", cfg, g, module_src=src))
    assert snap.config == cfg and not target.exists()


def test_allow_list_is_small_and_explicit():
    """Why: every allowed global is a door; the list must stay short and never include the classic
    code-execution gadgets."""
    names = {f"{m}.{n}" for m, n in ALLOWED_GLOBALS}
    assert len(names) < 30
    for gadget in ("builtins.eval", "builtins.exec", "builtins.getattr", "os.system", "posix.system",
                   "subprocess.Popen", "builtins.__import__", "torch.load", "pickle.loads"):
        assert gadget not in names
    unpickler = SafeSnapshotUnpickler(__import__("io").BytesIO(b""))
    with pytest.raises(SnapshotRefused):
        unpickler.find_class("builtins", "getattr")


def test_strict_loading_reports_missing_and_unexpected_keys(skip32_files):
    """Why: weights that do not fit the config must fail loudly with the offending keys named."""
    cfg, sd = skip32_files["cfg"], dict(skip32_files["sd"])
    sd.pop("synthesis.b8.conv0.weight")
    sd["synthesis.b8.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing 1: synthesis\.b8\.conv0\.weight.*unexpected 1: synthesis\.b8\.extra"):
        build_generator(cfg, sd)


def test_stylegan3_generator_is_refused(tmp_path):
    """Why: an alias-free StyleGAN3 G_ema has other layers; it must not half-load."""
    cfg, sd, g = golden_generator(GOLDEN_FILES[0])

    class FakeSG3(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.synthesis = torch.nn.Module()
            self.synthesis.input = torch.nn.Linear(2, 2)

    fake = FakeSG3()
    fake.synthesis.__class__ = type("SynthesisNetwork", (torch.nn.Module,), {})
    path = write_official_pickle(tmp_path / "sg3.pkl", cfg, fake)
    with pytest.raises(SnapshotError, match="StyleGAN3"):
        read_snapshot(path)


def test_not_a_snapshot_pickle(tmp_path):
    """Why: an unrelated (harmless) pickle gets an explanation, not a KeyError."""
    path = tmp_path / "other.pkl"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(SnapshotError, match="no G_ema"):
        read_snapshot(path)


def test_rosinality_name_map_covers_every_official_key(skip32_files):
    """Why: the name map is explicit data; it must account for every learnable tensor."""
    cfg = skip32_files["cfg"]
    mapped = set(rosinality_name_map(cfg))
    official = set(skip32_files["sd"])
    fixed = {k for k in official if k.endswith("resample_filter")} | {"mapping.w_avg"}
    assert mapped == official - fixed


def test_rosinality_without_latent_avg_estimates_w_avg(tmp_path, skip32_files):
    """Why: training checkpoints lack latent_avg; w_avg is then estimated, and the note says so."""
    cfg, sd = skip32_files["cfg"], skip32_files["sd"]
    snap = read_snapshot(write_rosinality(tmp_path / "noavg.pt", cfg, sd, with_latent_avg=False))
    assert any("estimated" in n for n in snap.notes)
    g = snap.build()
    with torch.no_grad():
        ws = g.mapping(torch.randn(2000, cfg.z_dim, generator=torch.Generator().manual_seed(5)))
    assert torch.allclose(snap.state_dict["mapping.w_avg"], ws[:, 0].mean(0), atol=0.1)


def test_rosinality_checkpoint_with_code_is_refused(tmp_path):
    """Why: torch.load must run weights-only, so a .pt that smuggles code is refused too."""
    target = tmp_path / "pwned.txt"

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(target)!r}, 'w').write('x')",))

    path = tmp_path / "evil.pt"
    torch.save({"g_ema": {}, "evil": Evil()}, path)
    with pytest.raises(SnapshotRefused, match="weights-only"):
        read_snapshot(path)
    assert not target.exists()


def test_converted_file_carries_config_in_header_and_sidecar(skip32_files):
    """Why: the converted file must be self-describing (config in the header) and readable by people."""
    st = skip32_files["safetensors"]
    from safetensors import safe_open

    with safe_open(str(st), framework="pt") as fh:
        meta = fh.metadata()
    sidecar = json.loads(st.with_suffix(".json").read_text())
    assert json.loads(meta["config"]) == sidecar["config"] == skip32_files["cfg"].to_init_kwargs()
    assert sidecar["source_format"] == "pkl" and sidecar["weights_hash"] == read_snapshot(st).weights_hash()


def test_safetensors_without_config_is_explained(tmp_path):
    """Why: a foreign safetensors file must say how to make a loadable one."""
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"a": torch.zeros(2)}, str(path))
    with pytest.raises(SnapshotError, match="personc convert"):
        read_snapshot(path)


def test_detect_format_and_missing_file(tmp_path):
    """Why: the format is chosen by suffix; a missing file names the path."""
    assert detect_format(tmp_path / "x.pkl") == "pkl"
    assert detect_format(tmp_path / "x.pt") == "rosinality"
    assert detect_format(tmp_path / "x.safetensors") == "safetensors"
    with pytest.raises(FileNotFoundError, match="nothing.pkl"):
        read_snapshot(tmp_path / "nothing.pkl")


def test_convert_cli(tmp_path, skip32_files, capsys):
    """Why: `personc convert SRC DST` is how users make the fast format; it refuses to clobber."""
    parser = argparse.ArgumentParser()
    convert_cli.register(parser.add_subparsers(dest="command"))
    dst = tmp_path / "cli.safetensors"
    args = parser.parse_args(["convert", str(skip32_files["rosinality"]), str(dst)])
    assert args.func(args) == 0
    assert "32 px" in capsys.readouterr().out
    assert read_snapshot(dst).weights_hash() == read_snapshot(skip32_files["pkl"]).weights_hash()
    assert args.func(args) == 2          # exists, no --force
    bad = parser.parse_args(["convert", str(skip32_files["pkl"]), str(tmp_path / "x.bin")])
    assert bad.func(bad) == 2


def test_resolve_device():
    """Why: `auto` must work everywhere; asking for CUDA where there is none must say so."""
    assert resolve_device("auto").type in ("cpu", "cuda")
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="known: auto, cpu, cuda"):
        resolve_device("tpu")
