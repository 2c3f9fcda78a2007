"""A corpus of bad (and awkward but valid) input, generated here: each bad file gets its own
reason code, every valid photo in the same run is processed, nothing stops the run."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import cv2
import duckdb
import numpy as np
import pytest
from dagster import AssetKey, DagsterInstance
from PIL import Image

from personc_assets.core.faces.ingest import INGEST_CODES, PROTECT_ONLY_CODES, WORKERS_ENV, ingest_folders
from personc_assets.core.faces.loading import REJECTION_CODES, ImageRejected, decode_image
from personc_assets.core.lineage.store import LineageStore
from personc_assets.core.pipeline.config import RunConfig, Workspace
from personc_assets.core.pipeline.sources import SourceSet, ingest_sources, outcome_table

NON_ASCII = "Zoë Ångström – portrait 1.jpg"

#: file name in the corpus -> the code it must get ("ok": a donor; "protect_only:<why>": embedded and
#: indexed by the guard, but no donor)
EXPECTED = {
    "A/id01.jpg": "ok",
    "A/id02.jpg": "ok",
    f"A/{NON_ASCII}": "ok",
    "A/exif_rotated.jpg": "exif_rotated",
    "A/id01_again.jpg": "duplicate",
    "A/empty.jpg": "empty_file",
    "A/truncated.jpg": "truncated",
    "A/notes.jpg": "not_an_image",
    "A/bomb.png": "decompression_bomb",
    "A/sixteen_bit.png": "bit_depth_16",
    "A/cmyk.jpg": "protect_only:cmyk",
    "A/grayscale.jpg": "protect_only:grayscale",
    "B/id05.jpg": "ok",
    "B/id06.jpg": "ok",
    "B/palette_transparent.png": "transparency",
    "B/animated.gif": "animated",
    "B/landscape.png": "no_face",
    "B/couple.jpg": "multiple_faces",
    "B/tiny_face.png": "protect_only:face_too_small",
    "B/huge_12000.jpg": "image_too_large",
    "B/outside_link.jpg": "outside_source_dir",
}


def png_bytes(width: int, height: int, rows: bytes, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A PNG written by hand: lets a header declare a size its data does not hold."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def copy_photo(src: Path, dst: Path, max_side: int = 900) -> None:
    """A real photo, downscaled (detection cost grows with area; the tests stay fast)."""
    image = Image.open(src).convert("RGB")
    image.thumbnail((max_side, max_side))
    image.save(dst, quality=92)


def build_corpus(root: Path, faces: Path) -> dict[str, Path]:
    """Group folders A and B with every case of ``EXPECTED``; returns the folders."""
    a, b, outside = root / "A", root / "B", root / "outside"
    for d in (a, b, outside):
        d.mkdir(parents=True)
    photo = {p: sorted((faces / p).glob("*.jpg"))[0] for p in ("id01", "id02", "id03", "id04", "id05", "id06")}
    copy_photo(photo["id01"], a / "id01.jpg")
    copy_photo(photo["id02"], a / "id02.jpg")
    shutil.copy(a / "id01.jpg", a / "id01_again.jpg")             # same pixels, second name
    copy_photo(photo["id03"], a / NON_ASCII)                       # spaces and non-ASCII characters
    copy_photo(photo["id05"], b / "id05.jpg")
    copy_photo(photo["id06"], b / "id06.jpg")
    copy_photo(faces / "_multi" / "couple.jpg", b / "couple.jpg", 1200)
    upright = Image.open(photo["id04"]).convert("RGB")
    upright.thumbnail((800, 800))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": the pixels are stored turned
    upright.transpose(Image.Transpose.ROTATE_90).save(a / "exif_rotated.jpg", exif=exif, quality=92)
    (a / "empty.jpg").write_bytes(b"")
    data = photo["id02"].read_bytes()
    (a / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (a / "notes.jpg").write_text("these are my notes, not a photo\n")
    # 10000 x 10000 declared (300 MB decoded) over a few hundred bytes of data
    (a / "bomb.png").write_bytes(png_bytes(10_000, 10_000, b"\x00" * 30_001 * 4))
    small = np.asarray(upright.resize((upright.width // 2, upright.height // 2)))
    cv2.imwrite(str(a / "sixteen_bit.png"), cv2.cvtColor(small, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    Image.fromarray(small).convert("CMYK").save(a / "cmyk.jpg")
    Image.fromarray(small).convert("L").save(a / "grayscale.jpg")
    pal = Image.fromarray(small).quantize(255)
    idx = np.asarray(pal).copy()
    idx[: idx.shape[0] // 5] = 255                                 # top fifth uses the transparent index
    transparent = Image.fromarray(idx, mode="P")
    transparent.putpalette(pal.getpalette()[: 255 * 3] + [0, 255, 0])
    transparent.save(b / "palette_transparent.png", transparency=255)
    frames = [Image.fromarray(small), Image.fromarray(small[:, ::-1].copy())]
    frames[0].save(b / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    yy, xx = np.mgrid[0:300, 0:400]
    landscape = np.stack([xx * 0.5, 100 + yy * 0.3, 200 - yy * 0.4], axis=-1).astype(np.uint8)
    Image.fromarray(landscape).save(b / "landscape.png")
    face = Image.open(photo["id02"]).convert("RGB")
    face = face.resize((face.width * 40 // 744, face.height * 40 // 744))  # its face is ~744 px wide
    canvas = Image.new("RGB", (400, 400), (120, 130, 140))
    canvas.paste(face, (100, 100))
    canvas.save(b / "tiny_face.png")
    Image.new("RGB", (12_000, 12_000), (180, 150, 130)).save(b / "huge_12000.jpg", quality=80)
    shutil.copy(photo["id06"], outside / "elsewhere.jpg")
    (b / "outside_link.jpg").symlink_to(outside / "elsewhere.jpg")
    return {"A": a, "B": b}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_faces) -> dict[str, Path]:
    return build_corpus(tmp_path_factory.mktemp("corpus"), shared_faces)


@pytest.fixture(scope="module")
def asset_run(corpus, tmp_path_factory):
    """The corpus through the ``source_images`` asset, with a pool of two ingestion workers."""
    from personc_assets.definitions import build_definitions

    out = tmp_path_factory.mktemp("asset_run") / "out"
    defs = build_definitions(out_dir=str(out), sources_a=str(corpus["A"]), sources_b=str(corpus["B"]))
    with pytest.MonkeyPatch.context() as mp, DagsterInstance.ephemeral() as instance:
        mp.setenv(WORKERS_ENV, "2")
        result = defs.resolve_job_def("personc_main").execute_in_process(
            instance=instance, asset_selection=[AssetKey("source_images")])
    return {"out": out, "db": out / "personc.duckdb", "result": result}


@pytest.fixture(scope="module")
def serial(corpus):
    """The same corpus ingested in this process, one file after another (the reference path)."""
    return ingest_folders(corpus, workers=1)


def db_codes(db: Path, root: Path) -> dict[str, str]:
    with duckdb.connect(str(db), read_only=True) as conn:
        rows = conn.execute("SELECT path, CASE WHEN role = 'donor' THEN 'ok' ELSE role || ':' || role_code END "
                            "FROM sources UNION ALL SELECT path, 'duplicate' FROM duplicates "
                            "UNION ALL SELECT path, code FROM quarantine").fetchall()
    return {str(Path(p).relative_to(root)): c for p, c in rows}


def test_every_case_gets_its_own_reason_and_every_valid_photo_is_processed(corpus, asset_run):
    # why: unattended runs meet all of these; one bad file must never cost a good photo or the run
    expected = {k: ("ok" if v == "exif_rotated" else v) for k, v in EXPECTED.items()}
    assert db_codes(asset_run["db"], corpus["A"].parent) == expected
    codes = {v.removeprefix("protect_only:") for v in expected.values()} - {"ok", "duplicate"}
    assert codes <= set(REJECTION_CODES) | set(INGEST_CODES) | set(PROTECT_ONLY_CODES)
    with duckdb.connect(str(asset_run["db"]), read_only=True) as conn:
        assert conn.execute("SELECT path, kept_path FROM duplicates").fetchall() == [
            (str(corpus["A"] / "id01_again.jpg"), str(corpus["A"] / "id01.jpg"))]
        assert conn.execute("SELECT grp, count(*) FROM sources WHERE role = 'donor' GROUP BY grp "
                            "ORDER BY grp").fetchall() == [("A", 4), ("B", 2)]
        assert conn.execute("SELECT grp, count(*) FROM sources WHERE role = 'protect_only' GROUP BY grp "
                            "ORDER BY grp").fetchall() == [("A", 2), ("B", 1)]


def test_source_images_asset_reports_the_reason_table(asset_run):
    # why: the Dagster UI is where an operator sees why a photo was left out
    mat = asset_run["result"].asset_materializations_for_node("source_images")[0]
    table = mat.metadata["quarantine_reasons"].value
    for code in {v for v in EXPECTED.values() if v not in ("ok", "exif_rotated", "duplicate")}:
        assert code.removeprefix("protect_only:") in (mat.metadata["protect_only_reasons"].value
                                                      if code.startswith("protect_only:") else table)
    assert mat.metadata["sources"].value == 6 and mat.metadata["duplicates"].value == 1
    assert mat.metadata["protect_only"].value == 3


def test_pool_and_serial_ingestion_agree(corpus, asset_run, serial):
    # why: the process pool is the fast path; it must decide exactly what the in-process path decides
    sset = SourceSet.from_dict(json.loads((asset_run["out"] / "state" / "source_images.json").read_text()))
    assert sset.hashes() == [f.content_hash for f in serial.faces if f.path not in serial.not_donor]
    assert [e.content_hash for e in sset.protect_only] == [f.content_hash for f in serial.faces
                                                              if f.path in serial.not_donor]
    outcome = {"accepted": "ok", "protect_only": "protect_only:{code}"}
    assert db_codes(asset_run["db"], corpus["A"].parent) == {
        str(Path(r["file"]).relative_to(corpus["A"].parent)): outcome.get(r["outcome"], "{code}").format(**r)
        for r in outcome_table(sset, serial)}


def test_exif_rotated_photo_is_processed_upright(corpus, serial):
    # why: phones store portraits sideways; read as stored, the face is lying down (or missed)
    decoded = decode_image(corpus["A"] / "exif_rotated.jpg")
    stored = Image.open(corpus["A"] / "exif_rotated.jpg")
    assert decoded.exif_rotated and decoded.pixels.shape[:2] == (stored.width, stored.height)
    face = next(f for f in serial.faces if f.path.endswith("exif_rotated.jpg"))
    eyes_y, mouth_y = face.landmarks[36:48, 1].mean(), face.landmarks[48:68, 1].mean()
    assert eyes_y < mouth_y, "eyes must be above the mouth in the aligned crop"
    assert "EXIF" in serial.notes[face.path]


def test_changed_photo_gets_a_new_hash_and_old_rows_are_superseded(tmp_path, shared_faces):
    # why: lineage must say which pixels a past release was checked against, even after the file changed
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir(), b.mkdir()
    shutil.copy(sorted((shared_faces / "id01").glob("*.jpg"))[0], a / "person.jpg")
    shutil.copy(sorted((shared_faces / "id05").glob("*.jpg"))[0], b / "other.jpg")
    ws = Workspace(tmp_path / "out")
    store = LineageStore.open(ws.db_path)
    cfg = RunConfig(out_dir=str(ws.root), sources_a=str(a), sources_b=str(b))
    first, _ = ingest_sources(cfg, ws, store, "run-1", workers=1)
    shutil.copy(sorted((shared_faces / "id02").glob("*.jpg"))[0], a / "person.jpg")  # same name, new photo
    second, _ = ingest_sources(cfg, ws, store, "run-2", workers=1)
    old = next(e.content_hash for e in first.entries if e.group == "A")
    new = next(e.content_hash for e in second.entries if e.group == "A")
    assert old != new
    rows = {h: (sup, by, last) for h, sup, by, last in store.query(
        "SELECT content_hash, superseded, superseded_by, last_run_id FROM sources")}
    assert rows[old] == (True, new, "run-2")
    assert rows[new] == (False, None, "run-2")
    assert len(rows) == 3  # the old row is kept


def test_decode_rejections_name_the_problem_and_the_fix(tmp_path):
    # why: a user reading the quarantine table must know what to do with each file
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes(9000, 9000, b"\x00" * 27_001 * 2))
    with pytest.raises(ImageRejected, match=r"declares 9000x9000 .* ratio"):
        decode_image(path)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buf, "PNG")
    path.write_bytes(buf.getvalue())
    assert decode_image(path).pixels.shape == (64, 64, 3)  # a flat but honest image is not a bomb
    Image.new("RGB", (8000, 6000)).save(tmp_path / "big.png")
    with pytest.raises(ImageRejected, match="48.0 MP exceeds the 40 MP limit; downscale"):
        decode_image(tmp_path / "big.png")
