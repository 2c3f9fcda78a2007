"""``personc audit`` on small folders built from ../shared/faces.

Sources: one photo each of id01, id02, id05, id03. A new photo of id01 must be
reported as a leak (exit 1); photos of id04 and id07, who are not among the
sources, must come out clear (exit 0).
"""

import argparse
import json
import shutil

import pytest

from personc_assets.cli import audit as audit_cli

SOURCES = ["id01/id01_04.jpg", "id02/id02_02.jpg", "id05/id05_01.jpg", "id03/id03_06.jpg"]
LEAK = "id01/id01_07.jpg"          # a second photo of a source person
STRANGERS = ["id04/id04_02.jpg", "id07/id07_02.jpg"]


def _cli(argv: list[str]) -> int:
    """Run ``personc audit`` through its own parser (the lead registers it in ``personc``)."""
    parser = argparse.ArgumentParser(prog="personc")
    audit_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["audit", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def folders(shared_faces, tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    made = {}
    for name, files in {"sources": SOURCES, "leak": [LEAK, *STRANGERS], "strangers": STRANGERS}.items():
        (root / name).mkdir()
        for rel in files:  # copies: a symlink out of the folder would be refused as a source
            shutil.copy(shared_faces / rel, root / name / rel.split("/")[1])
        made[name] = root / name
    made["db"] = root / "cache.duckdb"  # shared embedding cache: sources are embedded once
    return made


def test_second_photo_of_a_source_person_leaks(folders, capsys):
    # why: the audit exists to stop a data set that contains a source person from being published
    code = _cli(["--sources", str(folders["sources"]), "--candidates", str(folders["leak"]),
                 "--db", str(folders["db"])])
    out = capsys.readouterr().out
    assert code == audit_cli.EXIT_LEAK, out
    line = next(l for l in out.splitlines() if l.startswith("id01_07.jpg"))
    assert "LEAK" in line and "id01_04.jpg" in line  # nearest source named
    assert "1 leak(s), 0 unverified, 2 clear" in out


def test_strangers_are_clear(folders, capsys):
    # why: an audit that flags everyone is useless; people absent from the sources pass
    code = _cli(["--sources", str(folders["sources"]), "--candidates", str(folders["strangers"]),
                 "--db", str(folders["db"])])
    out = capsys.readouterr().out
    assert code == audit_cli.EXIT_CLEAR, out
    assert out.count("CLEAR") == 2


def test_json_report_parses_and_unverifiable_files_fail_closed(folders, tmp_path, capsys):
    # why: scripts read --json; a file the guard cannot check must not count as clear
    cand = tmp_path / "cand"
    shutil.copytree(folders["strangers"], cand)
    (cand / "notes.txt").write_text("not a photo")
    code = _cli(["--sources", str(folders["sources"]), "--candidates", str(cand), "--db", str(folders["db"]),
                 "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == audit_cli.EXIT_UNVERIFIED
    assert doc["candidates"] == 3 and doc["leaks"] == 0 and doc["unverified"] == 1 and doc["sources"] == 4
    status = {r["candidate"].rsplit("/", 1)[1]: r for r in doc["rows"]}
    assert status["notes.txt"]["status"] == "unverified" and "not_an_image" in status["notes.txt"]["reason"]
    dlib = status["id04_02.jpg"]["encoders"]["dlib"]
    assert status["id04_02.jpg"]["status"] == "clear" and dlib["max_similarity"] < dlib["tau"]
    assert doc["encoders"][0]["name"] == "dlib" and doc["encoders"][0]["index_kind"] == "flat_ip"


def test_usage_errors_name_the_problem(folders, tmp_path, capsys):
    # why: an absent encoder or an all-witness guard must stop the audit, saying what to fix
    args = ["--sources", str(folders["sources"]), "--candidates", str(folders["strangers"])]
    assert _cli([*args, "--encoders", "arcface", "--weights-dir", str(tmp_path)]) == audit_cli.EXIT_USAGE
    assert "w600k_r50.onnx" in capsys.readouterr().err
    assert _cli([*args, "--encoders", "dlib", "--witness-encoders", "dlib"]) == audit_cli.EXIT_USAGE
    assert "at least one must gate" in capsys.readouterr().err
    assert _cli(["--sources", str(tmp_path / "nope"), "--candidates", str(tmp_path)]) == audit_cli.EXIT_USAGE


def test_status_counts_only_gating_encoders_and_reports_witness_leaks():
    # why: a witness encoder must never decide a verdict, but its would-be rejections are the honest
    # estimate of what the gating encoders missed, so they are counted
    from personc_assets.core.audit import LEAK, UNVERIFIED, AuditReport, row_from_verdict
    from personc_assets.core.ensemble import GuardedEncoder
    from personc_assets.core.guard import PASS, REJECT, EncoderVerdict, Verdict

    def ev(name, sim, tau, gating):
        verdict = REJECT if gating and sim >= tau else PASS
        return EncoderVerdict(name, "v", tau, sim, "h1", verdict, "", gating)

    names = {"h1": "id01/a.jpg"}
    clear = row_from_verdict("c1", Verdict("c1", PASS, "", (ev("dlib", 0.8, 0.9, True),
                                                            ev("magface", 0.7, 0.5, False))), names)
    leak = row_from_verdict("c2", Verdict("c2", REJECT, "dlib: ...", (ev("dlib", 0.95, 0.9, True),
                                                                      ev("magface", 0.2, 0.5, False))), names)
    no_face = row_from_verdict("c3", Verdict("c3", REJECT, "no face found in the candidate", (
        EncoderVerdict("dlib", "v", 0.9, float("nan"), None, REJECT, "no face", True),
        EncoderVerdict("magface", "v", 0.5, float("nan"), None, REJECT, "no face", False))), names)
    assert (clear.status, leak.status, no_face.status) == ("clear", LEAK, UNVERIFIED)
    assert leak.encoders[0].nearest_source == "id01/a.jpg" and no_face.encoders[0].max_similarity is None
    report = AuditReport((clear, leak, no_face), (GuardedEncoder("dlib", "v", 0.9, "", True, "flat_ip", 1),
                                                  GuardedEncoder("magface", "v", 0.5, "", False, "flat_ip", 1)),
                         1, ())
    assert report.leaks == 1 and report.unverified == 1
    assert report.witness_leaks == {"magface": 1}
    assert json.loads(json.dumps(report.as_dict()))["witness_leaks"] == {"magface": 1}


def test_links_and_hidden_files_each_end_as_a_row(folders, shared_faces, tmp_path, capsys):
    # why: a folder of only a link to a photo, a hidden photo and a linked folder was called clear
    # without reading any of them; every file must be checked or reported unverified, never dropped
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "dir").mkdir(parents=True)
    shutil.copy(shared_faces / LEAK, elsewhere / "photo.jpg")
    shutil.copy(shared_faces / STRANGERS[1], elsewhere / "dir" / "inside.jpg")
    cand = tmp_path / "cand"
    cand.mkdir()
    (cand / "link.jpg").symlink_to(elsewhere / "photo.jpg")
    shutil.copy(shared_faces / STRANGERS[0], cand / ".x.jpg")
    (cand / "linked").symlink_to(elsewhere / "dir")
    code = _cli(["--sources", str(folders["sources"]), "--candidates", str(cand), "--db", str(folders["db"]),
                 "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == audit_cli.EXIT_UNVERIFIED
    rows = {r["candidate"].rsplit("/", 1)[1]: r for r in doc["rows"]}
    assert set(rows) == {"link.jpg", ".x.jpg", "linked"}
    assert rows[".x.jpg"]["status"] == "clear" and rows[".x.jpg"]["encoders"]["dlib"]["max_similarity"] is not None
    for name in ("link.jpg", "linked"):
        assert rows[name]["status"] == "unverified" and rows[name]["reason"].startswith("outside_source_dir")
        assert str(elsewhere) in rows[name]["reason"], "the reason says where the link leads"


def test_links_inside_the_folder_are_followed_and_loops_reported(folders, shared_faces, tmp_path, capsys):
    # why: a link inside the data set is part of it and must be judged; a loop must end, and be reported
    cand = tmp_path / "cand"
    (cand / "sub").mkdir(parents=True)
    shutil.copy(shared_faces / LEAK, cand / "sub" / "photo.jpg")
    (cand / "again.jpg").symlink_to(cand / "sub" / "photo.jpg")
    (cand / "sub" / "up").symlink_to(cand)
    code = _cli(["--sources", str(folders["sources"]), "--candidates", str(cand), "--db", str(folders["db"])])
    out = capsys.readouterr().out
    assert code == audit_cli.EXIT_LEAK, out
    assert "3 candidates: 2 leak(s), 1 unverified, 0 clear" in out
    assert next(l for l in out.splitlines() if l.startswith("up ")).split()[1] == "UNVERIFIED"
    assert "symlink_loop" in out


def test_an_edited_copy_of_a_source_photo_leaks_even_with_another_face(folders, tmp_path, capsys):
    # why: a source photo whose face was swapped for a stranger's keeps the source's hair, clothes and
    # backdrop; identity alone would call it clear, the reuse gate must not
    import numpy as np
    from PIL import Image

    from personc_assets.core.faces.detect import detect_faces

    source = np.asarray(Image.open(folders["sources"] / "id05_01.jpg").convert("RGB")).copy()
    stranger = np.asarray(Image.open(folders["strangers"] / "id04_02.jpg").convert("RGB"))
    x0, y0, x1, y1 = detect_faces(source)[0].box
    sx0, sy0, sx1, sy1 = detect_faces(stranger)[0].box
    face = Image.fromarray(stranger[sy0:sy1, sx0:sx1]).resize((x1 - x0, y1 - y0))
    source[y0:y1, x0:x1] = np.asarray(face)  # the stranger's face pasted into the source photo
    cand = tmp_path / "cand"
    cand.mkdir()
    Image.fromarray(source).save(cand / "swapped.jpg", quality=90)
    code = _cli(["--sources", str(folders["sources"]), "--candidates", str(cand), "--db", str(folders["db"]),
                 "--json"])
    doc = json.loads(capsys.readouterr().out)
    row = doc["rows"][0]
    assert code == audit_cli.EXIT_LEAK and row["status"] == "leak", row
    assert "reuse" in row["reason"], row["reason"]
