"""Per-face and run reports, the summary card, Dagster markdown, the manifest and `personc verify`.

Reports are built from small stand-in inputs (a synthetic coalition table,
a synthetic attribution map; real aligned faces as pictures when
../shared/faces is present) so the file runs in seconds. The HTML is checked
to be self-contained and, when a Chromium binary is installed, rendered
headless to a screenshot.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from personc_assets.core.explain.attribution import AttributionMap
from personc_assets.core.explain.ics import CoalitionTable, coalition_masks, compute_ics
from personc_assets.core.explain.manifest import (
    DonorRecord, EncoderRecord, EncoderVerdictRecord, ReleaseManifest, ReleaseRecord, RunFigures, ics_digest,
    known_releases, load_manifest, merge_manifest, revoked_releases, write_manifest,
)
from personc_assets.core.explain.report import (
    AttributionPanel, DonorPanel, FaceReport, RunReport, SimilarityBar, face_card_png, gallery_markdown,
    ics_markdown, render_face_report_html, render_run_report_html, write_face_report, write_run_report,
)

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "faces"
FACTORS = ("geometry", "symmetry", "texture", "eyes", "nose", "mouth")
DONORS = ("A-07aa11bb22", "A-19cc33dd44", "B-03ee55ff66", "B-21a0b1c2d3")


def synthetic_face(seed: int, size: int = 256) -> np.ndarray:
    """A face-like picture: skin-coloured ellipse with darker eyes and mouth on a plain background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.empty((size, size, 3), np.float32)
    img[:] = rng.uniform(40, 120, 3)
    skin = ((xx - 0.5) / 0.3) ** 2 + ((yy - 0.52) / 0.4) ** 2 < 1
    img[skin] = np.array([224, 180, 150]) * rng.uniform(0.8, 1.05)
    for cx in (0.38, 0.62):
        img[((xx - cx) / 0.06) ** 2 + ((yy - 0.45) / 0.03) ** 2 < 1] = (60, 40, 30)
    img[((xx - 0.5) / 0.12) ** 2 + ((yy - 0.72) / 0.03) ** 2 < 1] = (170, 70, 70)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def pictures(n: int) -> list[np.ndarray]:
    """Real aligned faces when ../shared/faces is present (reports are for faces), else synthetic ones."""
    if not FACES.is_dir():
        return [synthetic_face(i) for i in range(n)]
    from personc_assets.core.faces.align import align_face
    from personc_assets.core.faces.detect import detect_faces
    from personc_assets.core.faces.loading import decode_image

    out = []
    for person in sorted(FACES.glob("id0*")):
        img = decode_image(sorted(person.glob("*.jpg"))[0]).pixels
        found = detect_faces(img)
        if found:
            out.append(align_face(img, found[0].landmarks)[0])
        if len(out) == n:
            break
    return out


def synthetic_ics():
    """ICS from a synthetic coalition table: each donor's likeness grows with 'its' factors."""
    k = len(FACTORS)
    masks = coalition_masks(k)
    rng = np.random.default_rng(0)
    weights = rng.uniform(-0.01, 0.03, (len(DONORS), k))
    weights[0, 0] = weights[1, 3] = weights[2, 2] = weights[3, 5] = 0.06
    values = (0.8 + masks.astype(np.float32) @ weights.T.astype(np.float32))[None]  # [1, 2**k, D]
    table = CoalitionTable(FACTORS, DONORS, ("dlib",), masks, values.astype(np.float32), np.ones(2 ** k, int))
    return compute_ics(table)


def make_face_report(pics: list[np.ndarray]) -> FaceReport:
    face = pics[0]
    heat = np.full((256, 256), np.nan, np.float32)
    yy, xx = np.mgrid[0:256, 0:256]
    heat[40:230, 40:220] = (np.exp(-((xx - 128) ** 2 + (yy - 120) ** 2) / 1500.0) - 0.2)[40:230, 40:220] * 0.01
    amap = AttributionMap("occlusion", DONORS, np.stack([heat] * len(DONORS)), np.full(len(DONORS), 0.85, np.float32),
                          50, 4.2, {"encoder": "dlib"})
    led = (("geometry", "symmetry"), ("eyes",), ("texture", "nose"), ("mouth",))
    donors = tuple(DonorPanel(d, d[0], f, {x: 0.6 for x in f}, pics[1 + i]) for i, (d, f) in enumerate(zip(DONORS, led)))
    return FaceReport("pc-test0001", face, donors,
                      (SimilarityBar("dlib", 0.872, 0.90, DONORS[0]), SimilarityBar("arcface", 0.21, 0.40, DONORS[2])),
                      synthetic_ics(), (AttributionPanel(amap, DONORS[0], "nearest source"),
                                        AttributionPanel(amap, DONORS[2], "donor of texture")),
                      run_id="run-1", facts={"recipe": "abc123", "seed": "7"}, timings={"ICS": 17.8, "occlusion": 4.2})


class _Imgs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src", ""))
        for key in ("href", "src"):
            if key in a and tag not in ("img",):
                self.links.append(a[key])


def _check_self_contained(page: str) -> list[bytes]:
    parser = _Imgs()
    parser.feed(page)
    assert "http://" not in page.replace("http://cv.iptc.org", "") and "https://" not in page
    assert "<link" not in page and "<script" not in page
    pngs = []
    for src in parser.srcs:
        assert src.startswith("data:image/png;base64,"), src[:60]
        data = base64.b64decode(src.split(",", 1)[1])
        Image.open(io.BytesIO(data)).verify()
        pngs.append(data)
    return pngs


@pytest.fixture(scope="module")
def pics():
    return pictures(5)


def test_face_report_html_is_self_contained_and_complete(pics):
    """The report opens anywhere: every image inline and valid, no external resource; it names donors and scores."""
    rep = make_face_report(pics)
    page = render_face_report_html(rep)
    pngs = _check_self_contained(page)
    assert len(pngs) == 1 + len(DONORS) + len(rep.ics.encoder_names) + len(rep.attributions)
    for text in ("pc-test0001", "Synthetic", *DONORS, "tau 0.900", "0.872", "comes through", "margin +0.028"):
        assert text in page, text
    assert "A-07aa11bb22 (dlib) comes through geometry" in page


def test_withheld_sources_leave_no_source_pixels_in_the_report(pics):
    """With show_sources='withheld' no donor photo may be embedded (reports can leave the team)."""
    rep = make_face_report(pics)
    shown = render_face_report_html(rep, "thumbnails")
    withheld = render_face_report_html(rep, "withheld")
    thumbs = [s for s in _Imgs_srcs(shown) if s not in _Imgs_srcs(withheld)]
    assert len(thumbs) == len(DONORS)
    assert "withheld" in withheld and all(d in withheld for d in DONORS)
    with pytest.raises(ValueError, match="show_sources must be one of"):
        render_face_report_html(rep, "blurred")


def _Imgs_srcs(page: str) -> set[str]:
    p = _Imgs()
    p.feed(page)
    return set(p.srcs)


def test_summary_card_and_report_files_are_written_atomically(tmp_path, pics):
    """write_face_report leaves an HTML and a PNG card and no temporary files."""
    rep = make_face_report(pics)
    files = write_face_report(tmp_path, rep)
    assert files.html.read_text().startswith("<!DOCTYPE html>")
    with Image.open(files.png) as im:
        assert im.format == "PNG" and im.size == (1400, 700)
    assert not list(tmp_path.glob(".*.tmp"))
    card = face_card_png(rep, "withheld")
    assert card[:8] == b"\x89PNG\r\n\x1a\n"


def make_run_report(pics) -> RunReport:
    rng = np.random.default_rng(1)
    released = rng.uniform(0.82, 0.895, 5)
    rejected = np.concatenate([rng.uniform(0.9, 0.97, 9), [np.nan]])
    return RunReport("run-1", 15, 5, {"dlib": (released, rejected)}, {"dlib": 0.90},
                     tuple((f"pc-{i:04d}", p, f"pc-{i:04d}.html") for i, p in enumerate(pics)),
                     {"max similarity reaches tau (dlib)": 9, "no face found in the candidate": 1},
                     {"backbone": "morphable", "encoders": "dlib (tau 0.90, default)"})


def test_run_report_shows_pass_rate_histogram_and_gallery(pics):
    """The run report carries the pass rate, the similarity histogram against tau and the gallery with links."""
    page = render_run_report_html(make_run_report(pics))
    pngs = _check_self_contained(page)
    assert len(pngs) == 1 + len(pics)
    assert "33%" in page and "pc-0000.html" in page and "no face found in the candidate" in page


def test_gallery_markdown_inlines_small_thumbnails(pics):
    """Dagster renders markdown images from data URIs: thumbnails must be inline and small."""
    md = gallery_markdown([(f"pc-{i}", p) for i, p in enumerate(pics)], thumb_px=64, columns=3)
    uris = [part.split(")")[0] for part in md.split("](")[1:]]
    assert len(uris) == len(pics) and all(u.startswith("data:image/png;base64,") for u in uris)
    with Image.open(io.BytesIO(base64.b64decode(uris[0].split(",", 1)[1]))) as im:
        assert max(im.size) <= 64
    assert md.count("\n| ") == 2  # header + 2 rows of 3 columns for 5 faces
    assert gallery_markdown([]) == "_no released faces_"


def test_ics_markdown_table_and_sentences():
    """The ICS markdown lists every donor with shares per factor and a readable sentence."""
    ics = synthetic_ics()
    md = ics_markdown(ics)
    assert "| source | cos | geometry |" in md
    assert all(f"| `{d}` |" in md for d in DONORS)
    assert "comes through geometry" in md and "data:image/png;base64," in md
    assert "data:image" not in ics_markdown(ics, chart=False)


def test_manifest_round_trip_names_releases_for_verify(tmp_path):
    """The manifest is valid JSON with hashes, groups, taus and figures, and feeds verify's lookup."""
    ics = synthetic_ics()
    rec = ReleaseRecord("pc-1", "released/pc-1.png", "ab" * 32, "cd" * 32, "cand-1", "recipe-1",
                        (DonorRecord("e" * 64, "A-eeeeeeeeee", "A", ("geometry",), {"geometry": 0.6}),
                         DonorRecord("f" * 64, "B-ffffffffff", "B", ("texture",))),
                        (EncoderVerdictRecord("dlib", 0.87, "A-eeeeeeeeee", 0.9),), "5043abcd",
                        ics_digest(ics))
    man = ReleaseManifest("run-1", "morphable", "s" * 16,
                          (EncoderRecord("dlib", "dlib-123", 0.9, "default", "measured"),), (rec,),
                          RunFigures(4, 1, 3, {"tau": 3}), "c" * 64, {"A": 3, "B": 4})
    digest = write_manifest(tmp_path / "manifest.json", man)
    raw = (tmp_path / "manifest.json").read_bytes()
    import hashlib

    assert hashlib.sha256(raw).hexdigest() == digest
    data = load_manifest(tmp_path / "manifest.json")
    assert data["figures"]["pass_rate"] == 0.25 and data["releases"][0]["donor_groups"] == ["A", "B"]
    assert data["releases"][0]["verdicts"][0]["margin"] == pytest.approx(0.03)
    assert data["software"]["python"] and "numpy" in data["software"]
    assert "path" not in json.dumps(data["releases"][0]["donors"])  # hashes and groups only
    assert known_releases(data) == {"pc-1": "released/pc-1.png"}
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a PersonC manifest"):
        load_manifest(tmp_path / "bad.json")


def _run_manifest(run_id: str, release_ids: list[str]) -> ReleaseManifest:
    donors = (DonorRecord("e" * 64, "A-eeeeeeeeee", "A"), DonorRecord("f" * 64, "B-ffffffffff", "B"))
    records = tuple(ReleaseRecord(rid, f"released/{rid}.png", "ab" * 32, "cd" * 32, f"cand-{rid}", "recipe-1", donors,
                                  (EncoderVerdictRecord("dlib", 0.8, "A-eeeeeeeeee", 0.9),)) for rid in release_ids)
    return ReleaseManifest(run_id, "morphable", "s" * 16, (EncoderRecord("dlib", "dlib-123", 0.9, "default", "m"),),
                           records, RunFigures(len(records), len(records), 0), "c" * 64, {"A": 3, "B": 4})


def test_manifest_accumulates_releases_across_runs(tmp_path):
    """Each run adds its releases to one manifest keyed by release id; earlier releases and revocations stay."""
    from personc_assets.core.pipeline.recheck import update_manifest_revocations

    path = tmp_path / "manifest.json"
    write_manifest(path, _run_manifest("run-0", ["pc-0"]))  # a per-run manifest of an older version
    merge_manifest(path, _run_manifest("run-1", ["pc-1"]))
    update_manifest_revocations(path, [{"release_id": "pc-1", "reason": "reaches tau"}])
    merge_manifest(path, _run_manifest("run-2", ["pc-2", "pc-3"]))
    digest = merge_manifest(path, _run_manifest("run-1", ["pc-1"]))  # the same run materialized again
    import hashlib

    data = load_manifest(path)
    assert {rid: e["run_id"] for rid, e in data["releases"].items()} == {
        "pc-0": "run-0", "pc-1": "run-1", "pc-2": "run-2", "pc-3": "run-2"}
    assert set(data["runs"]) == {"run-0", "run-1", "run-2"} and data["runs"]["run-2"]["figures"]["released"] == 2
    assert data["releases"]["pc-1"]["status"] == "revoked", "a later write keeps the revocation"
    assert data["releases"]["pc-2"]["status"] == "released" and data["releases"]["pc-2"]["donor_groups"] == ["A", "B"]
    assert known_releases(data) == {f"pc-{i}": f"released/pc-{i}.png" for i in range(4)}
    assert revoked_releases(data) == {"pc-1": "reaches tau"}
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a manifest object; move it aside"):
        merge_manifest(tmp_path / "bad.json", _run_manifest("run-3", ["pc-9"]))


def test_verify_reports_a_revoked_release_as_revoked(tmp_path, capsys):
    """A release withdrawn because it came to resemble a real person must not verify as a release in force."""
    import argparse

    from personc_assets.cli import verify
    from personc_assets.core.explain.watermark import write_released_png
    from personc_assets.core.pipeline.recheck import update_manifest_revocations

    kept = write_released_png(tmp_path / "released" / "pc-kept.png", synthetic_face(5), "pc-kept").path
    gone = write_released_png(tmp_path / "released" / "pc-gone.png", synthetic_face(6), "pc-gone").path
    merge_manifest(tmp_path / "manifest.json", _run_manifest("run-1", ["pc-kept", "pc-gone"]))
    update_manifest_revocations(tmp_path / "manifest.json",
                                [{"release_id": "pc-gone", "reason": "recheck: dlib reaches tau"}])
    parser = argparse.ArgumentParser()
    verify.register(parser.add_subparsers())
    args = parser.parse_args(["verify", str(kept)])
    assert args.func(args) == 0
    capsys.readouterr()
    args = parser.parse_args(["verify", str(kept), str(gone)])
    assert args.func(args) == 1
    out = capsys.readouterr().out
    assert "REVOKED" in out and "revoked (recheck: dlib reaches tau)" in out
    assert "1 of 2 file(s) are PersonC releases in force; 1 revoked" in out
    args = parser.parse_args(["verify", "--json", str(gone)])
    assert args.func(args) == 1
    doc = json.loads(capsys.readouterr().out)[0]
    assert doc["status"] == "revoked" and doc["is_personc"] and not doc["in_force"]


def test_verify_command_exit_codes(tmp_path, capsys):
    """`personc verify` prints both marks per file and exits non-zero when any file is not a release."""
    import argparse

    from personc_assets.cli import verify
    from personc_assets.core.explain.watermark import write_released_png

    good = write_released_png(tmp_path / "good.png", synthetic_face(3), "pc-good").path
    Image.fromarray(synthetic_face(4)).save(tmp_path / "plain.png")
    parser = argparse.ArgumentParser()
    verify.register(parser.add_subparsers())
    args = parser.parse_args(["verify", str(good)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "pc-good" in out and "verified" in out and "Synthetic: true" in out
    args = parser.parse_args(["verify", str(good), str(tmp_path / "plain.png")])
    assert args.func(args) == 1
    assert "not_personc" in capsys.readouterr().out
    args = parser.parse_args(["verify", "--json", str(good)])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)[0]["status"] == "verified"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary (apt-get install -y chromium) for the "
                                                 "headless rendering check")
def test_face_report_renders_in_headless_chromium(tmp_path, pics):
    """The HTML report really renders: a headless Chromium screenshot shows the page with its pictures."""
    files = write_face_report(tmp_path, make_face_report(pics))
    shot = tmp_path / "report.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1200,1800",
           f"--screenshot={shot}", files.html.as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    with Image.open(shot) as im:
        px = np.asarray(im.convert("RGB"))
    assert px.shape[:2] == (1800, 1200)
    # the face picture is drawn where the layout puts it (top-left card), not a blank page
    face_area = px[100:340, 80:340].reshape(-1, 3)
    assert face_area.std(axis=0).mean() > 20
    assert len(np.unique(px.reshape(-1, 3)[::17], axis=0)) > 2000  # charts, photos and text, not an empty page
    print(f"report screenshot: {shot}")
