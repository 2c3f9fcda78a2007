"""Benchmark: where a PersonC run spends its time, and how memory grows with the sources.

Prints tables (and writes every figure to one CSV) for:

1. ingestion throughput (faces/s) in this process and with the worker pool
   (alternating, best of two), on jittered copies of ../shared/faces;
2. embedding throughput (faces/s) of every encoder whose weights are present;
3. the end-to-end demo run (``personc demo``'s graph) split by asset, and the
   encoder-bound lower limit measured in the same process right after it: the
   embedding passes no run can avoid (every source once per encoder, and every
   judged candidate located once and embedded once per encoder), with the
   ratio end-to-end / limit;
4. peak memory at 100, 1,000 and 10,000 sources, each size in a fresh
   process: ingestion + embedding (the pipeline's ``ingest_sources`` and
   ``build_indexes``) up to ``--full-up-to`` sources, ingestion alone above it
   (dlib embeds ~6 faces/s on this CPU: 10,000 faces would take half an hour).

    python benchmarks/bench_pipeline.py [--faces ../shared/faces] [--sizes 100 1000 10000]
        [--full-up-to 1000] [--num-samples 3] [--csv benchmarks/results/bench_pipeline.csv]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

log = logging.getLogger("bench_pipeline")


@dataclass
class Row:
    section: str
    item: str
    metric: str
    value: float
    unit: str
    note: str = ""


# --------------------------------------------------------------------------- corpus

def jittered_corpus(faces: Path, out: Path, n: int, seed: int = 0, max_side: int = 480) -> dict[str, Path]:
    """``n`` photos in ``out/A`` and ``out/B``: copies of the photos in ``faces/id*`` with a small
    random rotation, crop, brightness change and pixel noise each (so every copy has its own hash)."""
    from PIL import Image, ImageEnhance

    bases = []
    for path in sorted(faces.glob("id*/*.jpg")):
        image = Image.open(path).convert("RGB")
        image.thumbnail((max_side, max_side))
        bases.append(image)
    if not bases:
        raise FileNotFoundError(f"no photos under {faces}/id*/ (pass --faces)")
    rng = np.random.default_rng(seed)
    folders = {"A": out / "A", "B": out / "B"}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        base = bases[i % len(bases)]
        w, h = base.size
        dx, dy = rng.uniform(0, 0.04, 2)
        img = base.rotate(float(rng.uniform(-4, 4)), resample=Image.BILINEAR)
        img = img.crop((int(dx * w), int(dy * h), int(w - dx * w), int(h - dy * h)))
        img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.9, 1.1)))
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-2, 3, (img.height, img.width, 3))
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(
            folders["A" if i % 2 == 0 else "B"] / f"p{i:05d}.jpg", quality=90)
    return folders


def subset(corpus: Path, out: Path, n: int) -> dict[str, Path]:
    """The first ``n`` photos of ``corpus`` as hard links (cheap; not symlinks, which ingestion refuses)."""
    folders = {}
    for group in ("A", "B"):
        (out / group).mkdir(parents=True, exist_ok=True)
        folders[group] = out / group
    for i in range(n):
        group = "A" if i % 2 == 0 else "B"
        src = corpus / group / f"p{i:05d}.jpg"
        os.link(src, out / group / src.name)
    return folders


# --------------------------------------------------------------------------- sections

def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished worker processes."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def bench_ingest(folders: dict[str, Path], rows: list[Row], rounds: int = 2) -> list:
    """In this process and with the worker pool, alternating, best of ``rounds`` (the CPU is shared)."""
    from personc_assets.core.faces.ingest import default_workers, ingest_folders

    best: dict[int, tuple[float, float, object]] = {}
    for _ in range(rounds):
        for workers in sorted({1, default_workers()}):
            start, cpu = time.perf_counter(), _cpu_seconds()
            result = ingest_folders(folders, workers=workers)
            seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
            if workers not in best or seconds < best[workers][0]:
                best[workers] = (seconds, cpu, result)
    for workers, (seconds, cpu, result) in best.items():
        files = result.accepted + len(result.quarantined) + len(result.duplicates)
        rows.append(Row("ingest", f"{workers} worker{'s' * (workers > 1)}", "faces/s", result.accepted / seconds,
                        "faces/s", f"{result.accepted} faces of {files} files in {seconds:.1f} s, best of {rounds} "
                        "(decode, detect, 68 landmarks, align, hash; pool start-up included); "
                        f"{cpu:.1f} CPU s, utilisation {cpu / seconds / (os.cpu_count() or 1):.0%} of "
                        f"{os.cpu_count()} CPUs"))
    return best[1][2].faces


def bench_embed(faces: list, rows: list[Row], weights: Path) -> None:
    from personc_assets.core.encoders.availability import resolve_encoders
    from personc_assets.core.faces.detect import face_from_landmarks

    encoders, skipped = resolve_encoders(None, weights)
    obs = [face_from_landmarks(f.aligned, f.landmarks) for f in faces]
    for enc in encoders:
        enc.embed(obs[:2])  # warm-up
        start = time.perf_counter()
        for i in range(0, len(obs), 16):
            enc.embed(obs[i:i + 16])
        seconds = time.perf_counter() - start
        rows.append(Row("embed", enc.name, "faces/s", len(obs) / seconds, "faces/s",
                        f"{len(obs)} aligned faces in batches of 16, {seconds:.1f} s"))
    for s in skipped:
        rows.append(Row("embed", s.name, "faces/s", float("nan"), "faces/s", "skipped: weights absent"))


def bench_end_to_end(num_samples: int, weights: Path, rows: list[Row]) -> None:
    """The demo graph split by asset, then the encoder-bound limit on the same run's inputs."""
    import duckdb
    from PIL import Image

    from personc_assets.core.encoders.availability import resolve_encoders
    from personc_assets.core.faces.detect import detect_faces, face_from_landmarks
    from personc_assets.core.pipeline.sources import SourceSet
    from personc_assets.core.pipeline.config import RunConfig
    from personc_assets.runner import run_pipeline

    out = Path(tempfile.mkdtemp(prefix="personc-bench-e2e-"))
    try:
        result = run_pipeline(RunConfig(out_dir=str(out), num_samples=num_samples, weights_dir=str(weights)))
        for step, seconds in result.step_seconds.items():
            rows.append(Row("end-to-end", step, "seconds", seconds, "s"))
        rows.append(Row("end-to-end", "total (incl. Dagster start-up)", "seconds", result.total_seconds, "s",
                        result.message))
        sources = SourceSet.from_dict(json.loads((out / "state" / "source_images.json").read_text()))
        faces = sources.load_faces()
        with duckdb.connect(str(out / "personc.duckdb"), read_only=True) as conn:
            judged = [p for (p,) in conn.execute("SELECT c.image_path FROM candidates c JOIN candidate_verdicts v "
                                                 "USING (candidate_id)").fetchall()]
        images = [np.asarray(Image.open(p).convert("RGB")) for p in judged]
        start = time.perf_counter()
        located = [f[0] for f in (detect_faces(im) for im in images) if len(f) == 1]
        t_detect = time.perf_counter() - start
        limit = t_detect
        rows.append(Row("limit", "locate candidates (detect + landmarks)", "seconds", t_detect, "s",
                        f"{len(images)} judged candidates"))
        for enc in resolve_encoders(None, weights)[0]:
            obs = [face_from_landmarks(f.aligned, f.landmarks) for f in faces]
            enc.embed(obs[:1])  # warm-up outside the timing
            start = time.perf_counter()
            for i in range(0, len(obs), 16):
                enc.embed(obs[i:i + 16])
            t_src = time.perf_counter() - start
            start = time.perf_counter()
            for i in range(0, len(located), 16):
                enc.embed(located[i:i + 16])
            t_cand = time.perf_counter() - start
            limit += t_src + t_cand
            rows += [Row("limit", f"embed sources ({enc.name})", "seconds", t_src, "s", f"{len(obs)} sources"),
                     Row("limit", f"embed candidates ({enc.name})", "seconds", t_cand, "s",
                         f"{len(located)} candidates")]
        steps = sum(result.step_seconds.values())
        rows += [Row("limit", "encoder-bound lower limit", "seconds", limit, "s"),
                 Row("limit", "ratio end-to-end (steps) / limit", "ratio", steps / limit, "x",
                     f"steps {steps:.1f} s"),
                 Row("limit", "ratio end-to-end (total) / limit", "ratio", result.total_seconds / limit, "x")]
    finally:
        shutil.rmtree(out, ignore_errors=True)


def scale_child(sources: Path, n: int, mode: str, weights: Path) -> dict:
    """One size, in its own process: peak RSS of this process and of its ingestion workers."""
    from personc_assets.core.lineage.store import LineageStore
    from personc_assets.core.pipeline import indexing
    from personc_assets.core.pipeline.config import RunConfig, Workspace
    from personc_assets.core.pipeline.sources import ingest_sources

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = Path(tempfile.mkdtemp(prefix=f"personc-bench-{n}-"))
    try:
        cfg = RunConfig(out_dir=str(out), sources_a=str(sources / "A"), sources_b=str(sources / "B"),
                        encoders=("dlib",), weights_dir=str(weights))
        ws = Workspace(out)
        store = LineageStore.open(ws.db_path)
        start = time.perf_counter()
        sset, result = ingest_sources(cfg, ws, store, f"bench-{n}")
        t_ingest = time.perf_counter() - start
        after_ingest = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t_embed = float("nan")
        if mode == "full":
            start = time.perf_counter()
            indexing.build_indexes(cfg, ws, store, sset, f"bench-{n}")
            t_embed = time.perf_counter() - start
        return {"n": n, "mode": mode, "accepted": len(sset.entries), "ingest_s": t_ingest, "embed_s": t_embed,
                "baseline_mb": baseline, "after_ingest_mb": after_ingest,
                "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                "embeddings_mb": len(sset.entries) * 128 * 4 / 2**20}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def bench_scale(faces: Path, sizes: list[int], full_up_to: int, weights: Path, rows: list[Row]) -> None:
    work = Path(tempfile.mkdtemp(prefix="personc-bench-scale-"))
    try:
        start = time.perf_counter()
        jittered_corpus(faces, work / "all", max(sizes))
        log.info("wrote %d jittered photos in %.0f s", max(sizes), time.perf_counter() - start)
        for n in sizes:
            folders = subset(work / "all", work / f"n{n}", n) if n < max(sizes) else {"A": work / "all" / "A"}
            mode = "full" if n <= full_up_to else "ingest"
            proc = subprocess.run([sys.executable, __file__, "--child", str(Path(folders["A"]).parent), str(n), mode,
                                   "--weights", str(weights)], capture_output=True, text=True, check=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            what = "ingest + embed (dlib)" if mode == "full" else "ingest only (reduced path)"
            rows += [
                Row("scale", f"{n} sources", "ingest faces/s", r["accepted"] / r["ingest_s"], "faces/s", what),
                Row("scale", f"{n} sources", "embed faces/s", r["accepted"] / r["embed_s"] if mode == "full"
                    else float("nan"), "faces/s", what),
                Row("scale", f"{n} sources", "main process peak RSS", r["peak_mb"], "MiB",
                    f"after imports {r['baseline_mb']:.0f} MiB, after ingest {r['after_ingest_mb']:.0f} MiB"),
                Row("scale", f"{n} sources", "largest worker peak RSS", r["worker_peak_mb"], "MiB"),
                Row("scale", f"{n} sources", "embeddings themselves", r["embeddings_mb"], "MiB", "N x 128 x 4 B")]
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- output

def print_tables(rows: list[Row]) -> None:
    for section in dict.fromkeys(r.section for r in rows):
        part = [r for r in rows if r.section == section]
        print(f"\n== {section} ==")
        w_item = max(len(r.item) for r in part)
        w_metric = max(len(r.metric) for r in part)
        for r in part:
            value = "-" if r.value != r.value else (f"{r.value:.2f}" if abs(r.value) < 100 else f"{r.value:.0f}")
            print(f"{r.item:<{w_item}}  {r.metric:<{w_metric}}  {value:>9} {r.unit:<8} {r.note}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faces", type=Path, default=REPO.parent / "shared" / "faces")
    p.add_argument("--weights", type=Path, default=REPO / "weights")
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    p.add_argument("--full-up-to", type=int, default=1000, help="largest size that is also embedded")
    p.add_argument("--num-samples", type=int, default=3, help="faces the end-to-end demo run releases")
    p.add_argument("--ingest-photos", type=int, default=300, help="photos for the ingest/embed throughput")
    p.add_argument("--skip", nargs="*", default=[], choices=["throughput", "e2e", "scale"])
    p.add_argument("--csv", type=Path, default=REPO / "benchmarks" / "results" / "bench_pipeline.csv")
    p.add_argument("--child", nargs=3, metavar=("SOURCES", "N", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.child:
        print(json.dumps(scale_child(Path(args.child[0]), int(args.child[1]), args.child[2], args.weights)))
        return 0
    rows: list[Row] = []
    if "throughput" not in args.skip:
        with tempfile.TemporaryDirectory(prefix="personc-bench-ingest-") as tmp:
            faces = bench_ingest(jittered_corpus(args.faces, Path(tmp), args.ingest_photos, seed=1), rows)
            bench_embed(faces, rows, args.weights)
    if "e2e" not in args.skip:
        bench_end_to_end(args.num_samples, args.weights, rows)
    if "scale" not in args.skip:
        bench_scale(args.faces, sorted(args.sizes), args.full_up_to, args.weights, rows)
    print_tables(rows)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    print(f"\nwrote {args.csv} ({os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
