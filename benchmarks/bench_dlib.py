"""Benchmark: face detection, landmarks and dlib descriptors — dlib's path vs the fast path.

Prints, in one run, ms per face for detection, landmarks and the descriptor on
dlib's path and on the fast path with their ratios; the network's FLOPs, this
machine's measured GEMM rate (a torch matmul timed in the same run) and the
resulting FLOP-bound time per face; and the end-to-end time of ingesting 100
photos (jittered copies of ../shared/faces written to a temporary folder)
before and after. Writes every figure to a CSV as well.

    python benchmarks/bench_dlib.py [--faces ../shared/faces] [--photos 100] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from personc_assets.core.encoders.common import dlib_chip  # noqa: E402
from personc_assets.core.encoders.dlib import DESCRIPTOR_FILE, DlibEncoder, TorchDlibEncoder  # noqa: E402
from personc_assets.core.encoders.dlib.format import anet_flops, load_anet  # noqa: E402
from personc_assets.core.ensemble import embed_sources  # noqa: E402
from personc_assets.core.faces.align import align_face  # noqa: E402
from personc_assets.core.faces.detect import (DETECT_MAX_SIDE, detect_faces,  # noqa: E402
                                              dlib_model_path, landmarks_in_box)
from personc_assets.core.faces.loading import decode_image  # noqa: E402
from personc_assets.core.faces.pyramid import full_resolution_box, pyramid_shrink  # noqa: E402
from personc_assets.core.lineage.store import LineageStore  # noqa: E402
from personc_assets.core.types import SourceFace  # noqa: E402

log = logging.getLogger("bench_dlib")


@dataclass
class Row:
    section: str
    path: str
    metric: str
    value: float
    unit: str


def _best_of(fn: Callable[[], object], repeat: int) -> float:
    """Fastest of ``repeat`` timed calls, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def gemm_gflops(n: int = 2048, repeat: int = 10) -> float:
    """Measured float32 matmul rate of torch on this machine (GFLOP/s)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    return 2 * n ** 3 / _best_of(lambda: a @ b, repeat) / 1e9


def bench_detection(photos: list[np.ndarray], rows: list[Row]) -> tuple[int, float]:
    """Per-photo detection on three paths and landmarks; returns (faces, landmark ms/face)."""
    import cv2
    import dlib

    detector = dlib.get_frontal_face_detector()
    t_full = t_resize = t_pyr = t_lm = 0.0
    n_faces = 0
    for image in photos:  # paths alternate photo by photo; fast ones are best of 2
        start = time.perf_counter()
        rects, _, _ = detector.run(image, 0, 0.0)
        t_full += time.perf_counter() - start

        def resized(image=image):
            h, w = image.shape[:2]
            scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
            small = image if scale == 1.0 else cv2.resize(
                image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
            return detector.run(small, 0, 0.0)

        def pyramid(image=image):
            small, steps = pyramid_shrink(image, DETECT_MAX_SIDE)
            found, _, _ = detector.run(small, 0, 0.0)
            return [full_resolution_box(r, steps)[0] for r in found]

        t_resize += _best_of(resized, 2)
        t_pyr += _best_of(pyramid, 2)
        boxes = pyramid()
        t_lm += _best_of(lambda: [landmarks_in_box(image, box) for box in boxes], 3)
        n_faces += len(rects)
    per = 1e3 / n_faces
    rows += [Row("detection", "dlib full resolution (reference)", "ms/face", t_full * per, "ms"),
             Row("detection", "cv2 resize to 1024 (earlier detect_faces)", "ms/face", t_resize * per, "ms"),
             Row("detection", "dlib pyramid to 1024 (fast, exact)", "ms/face", t_pyr * per, "ms"),
             Row("landmarks", "dlib 68 points, full resolution (both)", "ms/face", t_lm * per, "ms")]
    return n_faces, t_lm * per


def bench_descriptor(chips: np.ndarray, dlib_net, engines: dict[str, TorchDlibEncoder], flops: int,
                     rows: list[Row], rounds: int = 5) -> tuple[float, float]:
    """dlib vs each torch engine, seconds/face, in alternating rounds.

    Alternating keeps the comparison fair on a shared CPU; the best round of
    each is reported with the median. Also records parity (min cosine, max
    |diff|) of dlib's and the first engine's raw descriptors, and the best
    GEMM rate seen between rounds for the FLOP bound. Returns (dlib s/face,
    first engine s/face).
    """
    n = len(chips)
    chip_list = list(chips)
    ref = np.array([np.asarray(d) for d in dlib_net.compute_face_descriptor(chip_list)])
    first = next(iter(engines))
    got = engines[first].describe_chips(chips)
    for engine in engines.values():
        engine.describe_chips(chips)  # warm-up (allocations, oneDNN kernels)
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    t_dlib: list[float] = []
    t_fast: dict[str, list[float]] = {k: [] for k in engines}
    rate = 0.0
    for _ in range(rounds):
        t_dlib.append(_best_of(lambda: dlib_net.compute_face_descriptor(chip_list), 1) / n)
        for label, engine in engines.items():
            t_fast[label].append(_best_of(lambda: engine.describe_chips(chips), 3) / n)
        rate = max(rate, gemm_gflops(repeat=5))
    bound = flops / (rate * 1e9)
    rows += [Row("parity", f"{first} vs dlib, {n} faces", "min cosine", float(cos.min()), ""),
             Row("parity", f"{first} vs dlib, {n} faces", "max |diff|", float(np.abs(ref - got).max()), ""),
             Row("descriptor", "dlib C++ (no BLAS), batch", "ms/face", min(t_dlib) * 1e3, "ms"),
             Row("descriptor", "dlib C++, median of rounds", "ms/face",
                 statistics.median(t_dlib) * 1e3, "ms")]
    for label in engines:
        best = min(t_fast[label])
        rows += [Row("descriptor", f"{label}, batch {n}", "ms/face", best * 1e3, "ms"),
                 Row("descriptor", f"{label}, median of rounds", "ms/face",
                     statistics.median(t_fast[label]) * 1e3, "ms"),
                 Row("descriptor", f"{label}: vs dlib", "speed-up", min(t_dlib) / best, "x"),
                 Row("model", f"{label}: achieved", "GFLOP/s", flops / best / 1e9, "GFLOP/s"),
                 Row("model", f"{label}: of FLOP bound", "fraction", bound / best, "x")]
    one = engines[first]
    t_one = statistics.median(_best_of(lambda c=c: one.describe_chips(c[None]), 3) for c in chips[:8])
    rows += [Row("descriptor", f"{first}, one face per call", "ms/face", t_one * 1e3, "ms"),
             Row("model", "dlib ResNet", "GFLOP/face", flops / 1e9, "GFLOP"),
             Row("model", "torch matmul 2048^2 fp32 (best)", "GEMM rate", rate, "GFLOP/s"),
             Row("model", "FLOP bound (FLOPs / GEMM rate)", "ms/face", bound * 1e3, "ms"),
             Row("model", "dlib C++ achieved", "GFLOP/s", flops / min(t_dlib) / 1e9, "GFLOP/s")]
    return min(t_dlib), min(t_fast[first])


def write_jittered_copies(paths: list[Path], count: int, folder: Path, seed: int = 0) -> list[Path]:
    """``count`` JPEG copies of ``paths`` with ±2 levels of noise and a crop of up to 4 px per side."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        image = decode_image(paths[i % len(paths)]).pixels
        t, l, b, r = rng.integers(0, 5, size=4)
        image = image[t:image.shape[0] - b, l:image.shape[1] - r]
        noisy = np.clip(image.astype(np.int16) + rng.integers(-2, 3, size=image.shape), 0, 255)
        target = folder / f"copy_{i:03d}.jpg"
        buffer = io.BytesIO()
        Image.fromarray(noisy.astype(np.uint8)).save(buffer, format="JPEG", quality=95)
        target.write_bytes(buffer.getvalue())
        out.append(target)
    return out


STAGES = ("decode", "detect+landmarks", "align", "embed")


def _front(path: Path, detect, stages: dict[str, float]):
    """Decode, detect and align one photo; returns (best face, aligned source face) or None."""
    t0 = time.perf_counter()
    decoded = decode_image(path)
    t1 = time.perf_counter()
    found = detect(decoded.pixels)
    t2 = time.perf_counter()
    stages["decode"] += t1 - t0
    stages["detect+landmarks"] += t2 - t1
    if not found:
        return None
    aligned, landmarks, _ = align_face(decoded.pixels, found[0].landmarks)
    stages["align"] += time.perf_counter() - t2
    return found[0], SourceFace(decoded.content_hash, "A", path.stem, str(path), aligned, landmarks)


def ingest_before_after(paths: list[Path], dlib_enc: DlibEncoder, fast: TorchDlibEncoder,
                        store: LineageStore) -> dict[str, dict[str, float]]:
    """Ingest every photo on both paths, alternating photo by photo (same CPU conditions).

    before: dlib's descriptor one photo at a time.
    after: torch descriptors of the aligned crops, batched through the lineage
    store's embedding cache as the pipeline does (``ensemble.embed_sources``,
    cold); "warm" is the same run with every embedding already in the store.
    """
    before = dict.fromkeys(STAGES, 0.0)
    after = dict.fromkeys(STAGES, 0.0)
    sources = {}
    for path in paths:
        got = _front(path, detect_faces, before)
        if got:
            t0 = time.perf_counter()
            dlib_enc.embed([got[0]])
            before["embed"] += time.perf_counter() - t0
        got = _front(path, detect_faces, after)
        if got:
            sources[got[1].content_hash] = got[1]
    faces = list(sources.values())
    warm = dict(after)
    t0 = time.perf_counter()
    embed_sources(fast, faces, store, "bench")
    after["embed"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    embed_sources(fast, faces, store, "bench")
    warm["embed"] = time.perf_counter() - t0
    return {"before: dlib descriptor, per photo": before,
            "after: torch, batched, cold lineage cache": after,
            "after: same, warm lineage cache": warm}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=Path, default=REPO.parent / "shared" / "faces",
                        help="folder of test photos (default: ../shared/faces)")
    parser.add_argument("--photos", type=int, default=100, help="photos in the ingest run")
    parser.add_argument("--csv", type=Path, default=Path(tempfile.gettempdir()) / "bench_dlib.csv")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not args.faces.is_dir():
        parser.error(f"{args.faces} not found: pass --faces with a folder of face photos")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list[Row] = []
    paths = sorted(args.faces.rglob("*.jpg"))
    photos = [decode_image(p).pixels for p in paths]
    dlib_enc, fast = DlibEncoder(), TorchDlibEncoder()
    print(f"{len(photos)} photos from {args.faces}; torch {torch.__version__} on {fast.device}, "
          f"{torch.get_num_threads()} threads, {fast.workers} data-parallel workers")

    import os

    rows.append(Row("machine", "load average at start (1 min)", "load", os.getloadavg()[0], ""))
    n_faces, _ = bench_detection(photos, rows)
    faces = [f for image in photos for f in detect_faces(image)]
    start = time.perf_counter()
    chips = np.stack([dlib_chip(f) for f in faces])
    rows.append(Row("chip", "dlib get_face_chip 150 px (both)", "ms/face",
                    (time.perf_counter() - start) * 1e3 / len(faces), "ms"))
    import dlib

    dlib_net = dlib.face_recognition_model_v1(str(dlib_model_path(DESCRIPTOR_FILE)))
    flops = anet_flops(load_anet(dlib_model_path(DESCRIPTOR_FILE)))
    engines = {"torch data-parallel": fast,  # the encoder's default
               "torch intra-op": TorchDlibEncoder(cpu_parallelism="intra-op")}
    t_dlib, t_fast = bench_descriptor(chips, dlib_net, engines, flops, rows)

    with tempfile.TemporaryDirectory() as tmp:
        copies = write_jittered_copies(paths, args.photos, Path(tmp))
        store = LineageStore.open(Path(tmp) / "bench.duckdb")
        runs = ingest_before_after(copies, dlib_enc, fast, store)
    totals = []
    for label, stages in runs.items():
        totals.append(sum(stages.values()))
        rows.append(Row("ingest", label, f"{args.photos} photos", totals[-1], "s"))
        rows += [Row("ingest stage", label, stage, sec, "s") for stage, sec in stages.items()]
    before, after = totals[0], totals[1]
    rows.append(Row("machine", "load average at end (1 min)", "load", os.getloadavg()[0], ""))

    _print_table(rows, n_faces, len(faces), t_dlib, t_fast, before, after)
    with open(args.csv, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["section", "path", "metric", "value", "unit"])
        writer.writerows([r.section, r.path, r.metric, f"{r.value:.6g}", r.unit] for r in rows)
    print(f"\nCSV: {args.csv}")
    return 0


def _print_table(rows: list[Row], n_det: int, n_faces: int, t_dlib: float, t_fast: float,
                 before: float, after: float) -> None:
    print(f"\n{'section':<13} {'path':<50} {'metric':<16} {'value':>10}")
    for r in rows:
        if r.section == "ingest stage":
            continue
        value = f"{r.value:>10.7f}" if r.section == "parity" else f"{r.value:>10.3f}"
        print(f"{r.section:<13} {r.path:<50} {r.metric:<16} {value} {r.unit}")
    by = {(r.section, r.path): r.value for r in rows}
    det_ref = by[("detection", "dlib full resolution (reference)")]
    det_fast = by[("detection", "dlib pyramid to 1024 (fast, exact)")]
    print(f"\nratios ({n_det} faces detected, {n_faces} described):")
    print(f"  detection  fast vs full resolution : {det_ref / det_fast:6.1f}x faster")
    print(f"  descriptor torch vs dlib           : {t_dlib / t_fast:6.1f}x faster")
    print(f"  ingest     after vs before          : {before / after:6.1f}x faster")
    print("  (a load average above the core count means other processes shared the CPU: the GEMM\n"
          "   rate, and with it the FLOP bound, then varies from one moment to the next)")
    print("\ningest stages (s):")
    for r in rows:
        if r.section == "ingest stage":
            print(f"  {r.path:<50} {r.metric:<18} {r.value:7.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
