"""Golden parity of the clean-room StyleGAN2-ADA generator against the official outputs.

The golden files (../shared/golden, see its README) hold the official
generator's outputs for two small random generators; tolerances are the
README's: ws within 1e-5 absolute, images and intermediates within
1e-5 * max|reference| + 1e-6.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from personc_assets.core.backbones.stylegan2.network import NOISE_MODES, GeneratorConfig
from personc_assets.core.backbones.stylegan2.ops import (GROUPINGS, MODCONV_IMPLS, bias_act, modulated_conv2d,
                                                        modulated_conv_bias_act, setup_filter)
from stylegan2_fixtures import one_torch_thread  # noqa: F401  (autouse fixture)
from stylegan2_fixtures import GOLDEN_DIR, GOLDEN_FILES, golden, golden_generator

log = logging.getLogger(__name__)

pytestmark = pytest.mark.skipif(not GOLDEN_DIR.is_dir(), reason=f"golden vectors not found at {GOLDEN_DIR}")

WS_TOL = 1e-5


def img_tol(ref: np.ndarray) -> float:
    return 1e-5 * float(np.abs(ref).max()) + 1e-6


def max_err(ours: torch.Tensor, ref: np.ndarray) -> float:
    return float(np.abs(ours.detach().double().numpy() - np.asarray(ref, np.float64)).max())


@pytest.fixture(scope="module", params=GOLDEN_FILES)
def case(request):
    name = request.param
    d = golden(name)
    cfg, sd, g = golden_generator(name)
    c = torch.from_numpy(d["c"]) if "c" in d else None
    return name, d, cfg, g, torch.from_numpy(d["z"]), c


def test_structure_matches_official(case):
    """Why: num_ws and per-block layer counts decide how ws are routed; a mismatch breaks every mix."""
    name, d, cfg, g, z, c = case
    assert g.num_ws == int(d["num_ws"]) == cfg.num_ws
    blocks = [getattr(g.synthesis, f"b{r}") for r in d["block_resolutions"]]
    assert [b.num_conv for b in blocks] == list(d["block_num_conv"])
    assert [b.num_torgb for b in blocks] == list(d["block_num_torgb"])
    assert [b.in_channels for b in blocks] == list(d["block_in_channels"])
    assert set(g.state_dict()) == {k[3:] for k in d if k.startswith("sd/")}


def test_mapping_and_truncation(case):
    """Why: mapping, truncation and the truncation cutoff feed every sample from the prior."""
    name, d, cfg, g, z, c = case
    with torch.no_grad():
        errs = {
            "ws": max_err(g.mapping(z, c), d["ws"]),
            "ws_trunc": max_err(g.mapping(z, c, truncation_psi=float(d["trunc_psi"])), d["ws_trunc"]),
            "ws_trunc_cut": max_err(g.mapping(z, c, truncation_psi=float(d["trunc_cut_psi"]),
                                              truncation_cutoff=int(d["trunc_cut_cutoff"])), d["ws_trunc_cut"]),
        }
    log.info("%s mapping max errors: %s", name, errs)
    assert all(e <= WS_TOL for e in errs.values()), errs


@pytest.mark.parametrize("impl", MODCONV_IMPLS)
def test_synthesis_images(case, impl):
    """Why: constant noise, no noise, truncated ws, style mixing and the full G(z, c) must all match
    the official generator, through the fast path and the reference path alike."""
    name, d, cfg, g, z, c = case
    runs = {
        "img_const": (d["ws"], "const"),
        "img_none": (d["ws"], "none"),
        "img_trunc_const": (d["ws_trunc"], "const"),
        "img_trunc_cut_const": (d["ws_trunc_cut"], "const"),
        "img_mix_const": (d["ws_mix"], "const"),
    }
    errs = {}
    with torch.no_grad():
        for key, (ws, noise_mode) in runs.items():
            errs[key] = (max_err(g.synthesis(torch.from_numpy(ws), noise_mode=noise_mode, impl=impl), d[key]),
                         img_tol(d[key]))
        errs["img_G_forward"] = (max_err(g(z, c, impl=impl), d["img_G_forward"]), img_tol(d["img_G_forward"]))
    log.info("%s %s image max errors (error, tolerance): %s", name, impl, errs)
    bad = {k: v for k, v in errs.items() if v[0] > v[1]}
    assert not bad, bad


def test_style_mixing_inputs_match(case):
    """Why: the golden mix is built by a layer cutoff; rebuilding it proves our w-index convention."""
    name, d, cfg, g, z, c = case
    k, src = int(d["mix_cutoff"]), d["mix_src"]
    mix = d["ws"].copy()
    mix[:, k:] = d["ws"][src, k:]
    np.testing.assert_array_equal(mix, d["ws_mix"])


@pytest.mark.parametrize("impl", MODCONV_IMPLS)
def test_intermediates(case, impl):
    """Why: when an image mismatches, the per-layer outputs locate the layer at fault."""
    name, d, cfg, g, z, c = case
    outs: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for mod_name, mod in g.named_modules():
        def hook(m, inp, out, n=mod_name):   # the fast CPU path may run one sample at a time
            if isinstance(out, tuple):       # a block returns (features, image)
                outs.setdefault(f"{n}.x", []).append(out[0])
                outs.setdefault(f"{n}.img", []).append(out[1])
            else:
                outs.setdefault(n, []).append(out)
        hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            g.mapping(z, c)
            g.synthesis(torch.from_numpy(d["ws"]), noise_mode="const", impl=impl)
    finally:
        for h in hooks:
            h.remove()
    keys = [k for k in d if k.startswith("inter/")]
    assert keys
    bad = {}
    for key in keys:
        ours = torch.cat(outs[key[len("inter/"):]])
        err = max_err(ours, d[key])
        if err > img_tol(d[key]):
            bad[key] = (err, img_tol(d[key]))
    assert not bad, bad


def test_float32_error_against_float64_reference(case):
    """Why: the README bounds float32 vs float64 at ~1e-6 of the peak; ours should sit as close."""
    name, d, cfg, g, z, c = case
    with torch.no_grad():
        img = g.synthesis(torch.from_numpy(d["ws"]), noise_mode="const")
    rel = max_err(img, d["f64/img_const"]) / float(np.abs(d["f64/img_const"]).max())
    log.info("%s float32 vs official float64: %.2e of the peak", name, rel)
    assert rel < 2e-5


def test_noise_modes_are_validated():
    """Why: a typo in noise_mode must fail loudly, not silently drop the noise."""
    _, _, g = golden_generator(GOLDEN_FILES[0])
    ws = torch.zeros(1, g.num_ws, g.w_dim)
    with pytest.raises(ValueError, match="noise_mode"):
        g.synthesis(ws, noise_mode="cosnt")
    assert set(NOISE_MODES) == {"const", "random", "none"}


def test_random_noise_is_seedable():
    """Why: random noise must be reproducible from a torch.Generator for lineage."""
    _, _, g = golden_generator(GOLDEN_FILES[0])
    ws = torch.zeros(2, g.num_ws, g.w_dim)
    a = g.synthesis(ws, noise_mode="random", generator=torch.Generator().manual_seed(1))
    b = g.synthesis(ws, noise_mode="random", generator=torch.Generator().manual_seed(1))
    cst = g.synthesis(ws, noise_mode="const")
    assert torch.equal(a, b) and not torch.allclose(a, cst)


def test_bad_ws_shape_is_rejected():
    """Why: a latent from another generator must be refused with the expected shape in the message."""
    _, _, g = golden_generator(GOLDEN_FILES[0])
    with pytest.raises(ValueError, match=r"\[N, 8, 32\]"):
        g.synthesis(torch.zeros(1, 7, 32))


def test_conditional_generator_requires_labels():
    """Why: a conditional snapshot used without labels must say what it needs."""
    _, _, g = golden_generator(GOLDEN_FILES[1])
    with pytest.raises(ValueError, match="conditional"):
        g.mapping(torch.zeros(1, g.z_dim), None)


# ---------------------------------------------------------------------------
# Op-level parity of the fast path (both groupings, up/down, with gradients)


@pytest.mark.parametrize("grouping", [g for g in GROUPINGS if g != "auto"])
@pytest.mark.parametrize("up,demod,clamp", [(1, True, None), (2, True, 0.5), (1, False, None)])
def test_fast_modconv_matches_reference(grouping, up, demod, clamp):
    """Why: each branch of the fast path must equal the plain reference ops, forward and backward
    (projection differentiates through it)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 6, 6, generator=gen, requires_grad=True)
    weight = torch.randn(4, 5, 3, 3, generator=gen)
    styles = torch.randn(3, 5, generator=gen, requires_grad=True)
    bias = torch.randn(4, generator=gen)
    noise = torch.randn(3, 1, 6 * up, 6 * up, generator=gen)
    f = setup_filter((1, 3, 3, 1))
    act = "lrelu" if demod else "linear"
    ref = bias_act(modulated_conv2d(x, weight, styles, noise=noise, up=up, padding=1, resample_filter=f,
                                    demodulate=demod, impl="reference"), bias, act=act, gain=None if demod else 1,
                   clamp=clamp)
    fast = modulated_conv_bias_act(x, weight, styles, bias, noise=noise, up=up, padding=1, resample_filter=f,
                                   demodulate=demod, act=act, clamp=clamp, grouping=grouping)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    g_ref = torch.autograd.grad(ref.square().sum(), (x, styles))
    g_fast = torch.autograd.grad(fast.square().sum(), (x, styles))
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_unknown_grouping_is_rejected():
    """Why: a mistyped fast-path option must name the known ones."""
    x = torch.zeros(1, 2, 4, 4)
    with pytest.raises(ValueError, match="known: auto, grouped, batched"):
        modulated_conv_bias_act(x, torch.zeros(2, 2, 3, 3), torch.ones(1, 2), torch.zeros(2), grouping="both")


def test_config_rejects_unknown_kwargs():
    """Why: a StyleGAN3 or other snapshot must not be silently mis-read as StyleGAN2."""
    with pytest.raises(ValueError, match="unknown keys"):
        GeneratorConfig.from_init_kwargs({"z_dim": 4, "c_dim": 0, "w_dim": 4, "img_resolution": 16,
                                          "img_channels": 3, "synthesis_kwargs": {"magnitude_ema_beta": 0.9}})


def test_config_reads_flattened_stylegan3_repo_layout():
    """Why: the StyleGAN3 repository's StyleGAN2 snapshots flatten synthesis_kwargs."""
    nested = GeneratorConfig.from_init_kwargs({"z_dim": 4, "c_dim": 0, "w_dim": 4, "img_resolution": 16,
                                               "img_channels": 3, "mapping_kwargs": {"num_layers": 2},
                                               "synthesis_kwargs": {"channel_base": 256, "conv_clamp": 256}})
    flat = GeneratorConfig.from_init_kwargs({"z_dim": 4, "c_dim": 0, "w_dim": 4, "img_resolution": 16,
                                             "img_channels": 3, "mapping_kwargs": {"num_layers": 2},
                                             "channel_base": 256, "conv_clamp": 256,
                                             "fp16_channels_last": False})
    assert nested == flat


def test_fast_path_batched_and_per_sample_agree_with_golden(case):
    """Why: on the CPU the fast path runs inference one sample at a time but batches under autograd
    (projection); both schedules must match the official images."""
    name, d, cfg, g, z, c = case
    ws = torch.from_numpy(d["ws"])
    with torch.no_grad():
        per_sample = g.synthesis(ws, impl="fast")
    with torch.enable_grad():
        batched = g.synthesis(ws.clone().requires_grad_(True), impl="fast").detach()
    tol = img_tol(d["img_const"])
    assert max_err(per_sample, d["img_const"]) <= tol and max_err(batched, d["img_const"]) <= tol
