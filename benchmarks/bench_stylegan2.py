"""StyleGAN2 synthesis and projection speed: fast path vs plain reference ops.

For a random generator (default: 256 px, FFHQ-256 channel widths, 512-d
latents) it measures, at each batch size,

* synthesis: images per second (``no_grad``, constant noise);
* projection: optimisation steps per second (synthesis forward, pixel loss,
  backward to W+, Adam step — the inner loop of ``project_w_plus``);

through ``impl="fast"`` and ``impl="reference"`` (plain unfused ops) in the
same run, checks that both paths agree (synthesis: the images; projection:
the W+ after the measured steps), and reports each
measurement's peak memory (CPU: peak RSS of a fresh worker process above its
baseline after building the generator; CUDA: ``max_memory_allocated``).

Run: ``python benchmarks/bench_stylegan2.py`` (add ``--quick`` for a 64 px smoke run).
Timings on a shared CPU are noisy (other jobs only ever add time): each figure
is the best of ``--repeats`` calls (more for smaller batches) after a warm-up
call; the median is shown too.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time

log = logging.getLogger("bench_stylegan2")


def _rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _worker(spec: dict, queue) -> None:
    """Run one measurement in a fresh process so that its memory peak is its own."""
    import torch

    from personc_assets.core.backbones.stylegan2.network import GeneratorConfig, MappingConfig, SynthesisConfig
    from personc_assets.core.backbones.stylegan2.network import random_generator

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    cfg = GeneratorConfig(z_dim=spec["w_dim"], c_dim=0, w_dim=spec["w_dim"], img_resolution=spec["resolution"],
                          mapping=MappingConfig(num_layers=8),
                          synthesis=SynthesisConfig(channel_base=spec["channel_base"], channel_max=spec["channel_max"]))
    g = random_generator(cfg, seed=0).to(device)
    gen = torch.Generator().manual_seed(1)
    ws = g.mapping(torch.randn(spec["batch"], cfg.z_dim, generator=gen).to(device)).detach()
    impl, mode = spec["impl"], spec["mode"]
    base_rss = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = []
    if mode == "synthesis":
        with torch.no_grad():
            out = g.synthesis(ws, impl=impl)          # warm-up (kernel selection, allocator)
            for _ in range(spec["repeats"]):
                sync()
                t = time.perf_counter()
                out = g.synthesis(ws, impl=impl)
                sync()
                times.append(time.perf_counter() - t)
        result = out[:, :, ::8, ::8].cpu()
    else:
        target = torch.zeros_like(g.synthesis(ws, impl=impl).detach())
        w = ws.clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=0.01)
        for i in range(spec["repeats"] + 1):
            sync()
            t = time.perf_counter()
            loss = (g.synthesis(w, impl=impl) - target).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sync()
            if i > 0:                                  # the first step is the warm-up
                times.append(time.perf_counter() - t)
        result = w.detach()[:, :2].cpu()
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss)
    queue.put({"times": times, "peak_mb": peak, "result": result.numpy()})


def measure(spec: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(spec, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--channel-base", type=int, default=16384, help="16384 = FFHQ-256 widths (512 down to 64)")
    p.add_argument("--channel-max", type=int, default=512)
    p.add_argument("--w-dim", type=int, default=512)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--modes", nargs="+", choices=("synthesis", "projection"), default=["synthesis", "projection"])
    p.add_argument("--quick", action="store_true", help="64 px, small widths, 2 repeats (smoke run)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import numpy as np
    import torch

    from personc_assets.core.backbones.stylegan2.loading import resolve_device

    if args.quick:
        args.resolution, args.channel_base, args.channel_max, args.w_dim, args.repeats = 64, 1024, 64, 64, 2
    device = resolve_device(args.device).type
    threads = args.threads or torch.get_num_threads()
    log.info("StyleGAN2 %d px, channel_base %d, channel_max %d, w_dim %d; device %s, %d torch thread(s); "
             "load average %s", args.resolution, args.channel_base, args.channel_max, args.w_dim, device,
             threads, " ".join(f"{x:.1f}" for x in os.getloadavg()))
    rows = []
    for mode in args.modes:
        for batch in args.batches:
            res = {}
            for impl in ("fast", "reference"):
                # small batches get more calls, so every figure averages over a similar amount of work
                repeats = max(args.repeats, (args.repeats * max(args.batches)) // batch)
                spec = dict(mode=mode, batch=batch, impl=impl, device=device, threads=threads,
                            repeats=repeats, resolution=args.resolution, channel_base=args.channel_base,
                            channel_max=args.channel_max, w_dim=args.w_dim)
                res[impl] = measure(spec)
            diff = float(np.abs(res["fast"]["result"] - res["reference"]["result"]).max())
            for impl in ("fast", "reference"):
                t = min(res[impl]["times"])
                med = statistics.median(res[impl]["times"])
                rate = (batch / t) if mode == "synthesis" else (1 / t)
                speedup = min(res["reference"]["times"]) / t
                rows.append((mode, batch, impl, t, med, rate, speedup, res[impl]["peak_mb"], diff))
    unit = {"synthesis": "images/s", "projection": "steps/s"}
    print(f"\n| mode | batch | path | s / call (best) | s / call (median) | rate (best) | vs reference | "
          f"peak memory (MiB) | max abs(fast - ref) |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for mode, batch, impl, t, med, rate, speedup, peak, diff in rows:
        print(f"| {mode} | {batch} | {impl} | {t:.3f} | {med:.3f} | {rate:.3f} {unit[mode]} | {speedup:.2f}x | "
              f"{peak:.0f} | {diff:.1e} |")
    log.info("load average at the end %s", " ".join(f"{x:.1f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
