"""Contact sheet of a run's releases beside their sources, for people to look at.

One row per released face: the release, then the source photos (aligned
crops) that gave each factor (labelled with the factor), then the source the
guard found nearest (dlib similarity, gate scores). Reads only the output
folder (lineage database and files)::

    python scripts/release_sheet.py data/out --out docs/sheets/demo_seed0.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

CELL = 128


def _thumb(path: str | Path, label: str, colour=(0, 0, 0)) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path))
    if img is None:
        img = np.full((CELL, CELL, 3), 255, np.uint8)
    img = cv2.resize(img, (CELL, CELL), interpolation=cv2.INTER_AREA)
    band = np.full((18, CELL, 3), 255, np.uint8)
    cv2.putText(band, label[:22], (2, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, colour, 1, cv2.LINE_AA)
    return np.concatenate([img, band])


def rows(out_dir: Path) -> list[list[np.ndarray]]:
    import duckdb

    db = duckdb.connect(str(out_dir / "personc.duckdb"), read_only=True)
    aligned = {h: Path(p).with_suffix(".png") for h, p in
               db.sql("SELECT content_hash, aligned_path FROM sources WHERE aligned_path IS NOT NULL").fetchall()}
    ids = {h: s for h, s in db.sql("SELECT content_hash, source_id FROM sources").fetchall()}
    releases = db.sql("""SELECT r.release_id, r.file, rc.recipe_json, v.max_similarity, v.nearest_source
                         FROM releases r JOIN candidates c USING (candidate_id) JOIN recipes rc USING (recipe_id)
                         JOIN verdicts v ON v.candidate_id = r.candidate_id AND v.encoder = 'dlib'
                         WHERE r.status = 'released' ORDER BY r.released_at""").fetchall()
    out = []
    for rid, file, recipe_json, sim, nearest in releases:
        recipe = json.loads(recipe_json)
        row = [_thumb(file, f"{rid} {sim:.3f}", (0, 110, 0))]
        for factor, donor in recipe["primary"].items():
            row.append(_thumb(aligned.get(donor, ""), f"{factor}: {ids.get(donor, '?')}"))
        row.append(_thumb(aligned.get(nearest, ""), f"nearest {ids.get(nearest, '?')}", (160, 0, 0)))
        out.append(row)
    return out


def main() -> int:
    import cv2

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="a run's output folder (holds personc.duckdb)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    table = rows(args.out_dir)
    if not table:
        raise SystemExit(f"no released faces in {args.out_dir}")
    width = max(len(r) for r in table)
    blank = np.full_like(table[0][0], 255)
    sheet = np.concatenate([np.concatenate(r + [blank] * (width - len(r)), axis=1) for r in table])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), sheet)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
