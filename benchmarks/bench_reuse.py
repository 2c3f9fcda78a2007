"""Benchmark and calibration of the photo-reuse check (``personc_assets.core.reuse``).

On ``../shared/faces`` (every photo and its 256 px aligned crop, one source id
per photo):

- ``edits``  : each edited copy from ``tests/reuse_fixtures.py`` (face swapped,
               face blurred, recoloured, mirrored, cropped to 70%, JPEG 40, half
               size; of the photo and of its crop) against the index; the
               evidence to its own source and whether it is rejected;
- ``pairs``  : every photo and crop against every *other* source: inliers,
               matching tiles, whole-frame hash distance and score, worst first
               (the mirrored pair id01_08 / id01_mirrored is a true reuse and
               reported apart);
- ``clean``  : a plain synthetic face and the average of 6 people's crops;
- ``timing`` : ms per candidate (wall and CPU) for 256 px candidates at the
               ``--sources`` count, padded with extra sources (the top 60% of
               photos) beyond the labelled ones.

    python benchmarks/bench_reuse.py [--faces ../shared/faces] [--sources 50] [--csv /tmp/bench_reuse.csv]
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from personc_assets.core.reuse import REUSE_THRESHOLDS, ReuseIndex, ReuseMatch  # noqa: E402
from reuse_fixtures import (MIRRORED_PAIR, LabelledPhoto, average_face, edited_copies,  # noqa: E402
                            labelled_photos, synthetic_face)

log = logging.getLogger("bench_reuse")


def own(matches: list[ReuseMatch], name: str) -> ReuseMatch:
    return next(m for m in matches if m.nearest == name)


def deciding(m: ReuseMatch) -> str:
    th = REUSE_THRESHOLDS
    parts = [("inliers", m.inliers >= th.min_inliers), ("tiles", m.tiles >= th.min_tiles),
             ("hash", m.hash_distance <= th.max_hash_distance)]
    return "+".join(p for p, hit in parts if hit) or "none"


def bench_edits(index: ReuseIndex, photos: tuple[LabelledPhoto, ...], rows: list[dict]) -> None:
    by_edit: dict[str, list[ReuseMatch]] = {}
    for i, p in enumerate(photos):
        for label, image in edited_copies(photos, i):
            m = own(index.rank(image), p.name)
            edit = label.split(" ", 1)[1]
            by_edit.setdefault(edit, []).append(m)
            rows.append(dict(section="edits", item=label, inliers=m.inliers, tiles=m.tiles,
                             hash_distance=m.hash_distance, score=round(m.score, 3), reused=m.reused))
    print("\n## Edited copies (evidence to their own source)\n")
    print("| edit | rejected | min inliers | min tiles | max hash dist | min score | caught by |")
    print("|---|---|---|---|---|---|---|")
    for edit, ms in by_edit.items():
        caught = Counter(deciding(m) for m in ms)
        print(f"| {edit} | {sum(m.reused for m in ms)}/{len(ms)} | {min(m.inliers for m in ms)} | "
              f"{min(m.tiles for m in ms)} | {max(m.hash_distance for m in ms)} | "
              f"{min(m.score for m in ms):.2f} | {dict(caught)} |")
    total = [m for ms in by_edit.values() for m in ms]
    print(f"\nrejected {sum(m.reused for m in total)}/{len(total)}")


def probe_index(index: ReuseIndex, folder: Path) -> ReuseIndex:
    """The same index, fitting RANSAC from 3 tentative matches: inlier counts far below the gate."""
    path = folder / "reuse_index.npz"
    index.save(path)
    return ReuseIndex.load(path, replace(REUSE_THRESHOLDS, min_inliers=3))


def bench_pairs(index: ReuseIndex, probe: ReuseIndex, photos: tuple[LabelledPhoto, ...],
                rows: list[dict]) -> None:
    pairs, true_reuse = [], []
    for p in photos:
        for kind, image in (("photo", p.photo), ("crop", p.crop)):
            raw = {m.nearest: m.inliers for m in probe.rank(image)}
            for m in index.rank(image):
                if m.nearest == p.name:
                    continue
                item = (f"{p.name} {kind}", m, raw[m.nearest])
                (true_reuse if {p.name, m.nearest} == MIRRORED_PAIR else pairs).append(item)
                rows.append(dict(section="pairs", item=f"{p.name} {kind} vs {m.nearest}",
                                 inliers=raw[m.nearest], tiles=m.tiles, hash_distance=m.hash_distance,
                                 score=round(m.score, 3), reused=m.reused))
    flagged = [x for x in pairs if x[1].reused]
    print(f"\n## Different photos\n\n{len(pairs)} (candidate, other source) pairs, "
          f"{len(flagged)} flagged ({100 * len(flagged) / len(pairs):.2f}%)")
    for key, title in ((lambda x: -x[1].score, "score"), (lambda x: -x[2], "inliers (RANSAC from 3 matches)"),
                       (lambda x: -x[1].tiles, "tiles"), (lambda x: x[1].hash_distance, "hash distance")):
        print(f"\nclosest by {title}:")
        for cand, m, inliers in sorted(pairs, key=key)[:6]:
            print(f"  {cand} vs {m.nearest}: score {m.score:.2f}, {inliers} inliers, {m.tiles} tiles, "
                  f"hash {m.hash_distance}")
    print("\nthe mirrored pair (a true reuse):")
    for cand, m, _ in true_reuse:
        print(f"  {cand} vs {m.nearest}: reused={m.reused}, score {m.score:.2f}, {m.inliers} inliers, "
              f"{m.tiles} tiles, hash {m.hash_distance}, mirrored={m.mirrored}")


def bench_clean(index: ReuseIndex, photos: tuple[LabelledPhoto, ...]) -> list[np.ndarray]:
    clean = {"synthetic face": synthetic_face(), "average of 6 people": average_face(photos)}
    print("\n## Clean candidates\n")
    for name, image in clean.items():
        m = index.check(image)
        print(f"  {name}: reused={m.reused}, {m.reason}")
    return list(clean.values())


def extra_sources(photos: tuple[LabelledPhoto, ...], n: int) -> list[tuple[str, np.ndarray]]:
    """``n`` more sources: the top 60% of the largest photos (they overlap their originals)."""
    largest = sorted(photos, key=lambda p: -p.photo.size)[:n]
    return [(f"extra_{p.name}", np.ascontiguousarray(p.photo[: int(0.6 * len(p.photo))])) for p in largest]


def bench_timing(photos: tuple[LabelledPhoto, ...], n_sources: int, clean: list[np.ndarray],
                 rows: list[dict]) -> None:
    sources = [(p.name, im) for p in photos for im in (p.photo, p.crop)]
    sources += extra_sources(photos, max(0, n_sources - len(photos)))
    t0 = time.perf_counter()
    index = ReuseIndex.build(sources)
    build_s = time.perf_counter() - t0
    edits = [(label, image) for i in range(len(photos)) for label, image in edited_copies(photos, i)]
    sets = {"256 px crops (face swapped) and clean faces":
            [im for label, im in edits if label.endswith("crop face_swapped")] + clean,
            "photos (face swapped, checked at 512 px)":
            [im for label, im in edits if label.endswith("photo face_swapped")]}
    index.check(clean[0])  # warm-up: imports, first FLANN query
    print(f"\n## Timing\n\n{len(index)} sources ({len(sources)} images, {len(index._a['desc'])} keypoints "
          f"with the mirrored copies), built in {build_s:.1f} s")
    for name, candidates in sets.items():
        wall, cpu = [], []
        for image in candidates:
            w, c = time.perf_counter(), time.process_time()
            index.check(image)
            wall.append(1000 * (time.perf_counter() - w))
            cpu.append(1000 * (time.process_time() - c))
        print(f"  {len(candidates)} {name}: wall median {statistics.median(wall):.1f} ms "
              f"(p90 {np.percentile(wall, 90):.1f}), CPU median {statistics.median(cpu):.1f} ms")
        rows.append(dict(section="timing", item=f"{name} at {len(index)} sources", inliers="", tiles="",
                         hash_distance="", score=round(statistics.median(wall), 1), reused=""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=Path, default=REPO.parent / "shared" / "faces")
    ap.add_argument("--sources", type=int, default=50)
    ap.add_argument("--csv", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    photos = labelled_photos(args.faces)
    t0 = time.perf_counter()
    index = ReuseIndex.build([(p.name, im) for p in photos for im in (p.photo, p.crop)])
    print(f"{len(photos)} photos indexed with their crops in {time.perf_counter() - t0:.1f} s; "
          f"thresholds {REUSE_THRESHOLDS}")
    rows: list[dict] = []
    bench_edits(index, photos, rows)
    with tempfile.TemporaryDirectory() as tmp:
        bench_pairs(index, probe_index(index, Path(tmp)), photos, rows)
    clean = bench_clean(index, photos)
    bench_timing(photos, args.sources, clean, rows)
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
