"""Benchmark: the README's first command before and after, per asset, and ICS seconds per face.

Measures, in one invocation (so that both sides see the same machine load):

1. ``ingest``: jittered copies of ../shared/faces ingested by 1 and by 2
   processes, before and after;
2. ``demo``: ``python run_demo.py --num_samples 5 --tau 0.4`` (the README's
   first command, with ``--out`` in a temporary folder) run by the code at
   ``--baseline`` and at ``--after`` (git refs, each exported into a
   temporary folder, so both runs report the same code version and watermark
   the same release ids), one after the other, each in a fresh process: wall
   seconds, CPU seconds (the process and its workers) and CPU utilisation
   (CPU seconds / (wall x CPUs)) of every asset, and whether both released
   the same files (sha256);
3. ``indexes``: ``embedding_indexes`` run again on each side's finished
   workspace (everything up to date), where the age/gender labeller is now
   skipped;
4. ``ics``: exact Shapley ICS of the released faces of the after run,
   computed by ``build_coalition_table_reference`` and by the fast
   ``build_coalition_table`` in one process, alternating face by face:
   seconds per face, CPU utilisation, the ratio, and the largest difference
   of the scores;
5. ``bound``: unit costs measured on the after run's workspace (ingest of a
   photo, a render, the guard's judgement of a candidate, one coalition image,
   the novelty step of a released mix) and the pipeline's time against its
   bound: judged x (render + judge) + sources x ingest + releases x
   coalitions x coalition image, and that bound plus judged x novelty step.

Absolute times depend on what else the machine runs; the ratios are measured
in the same run. On Linux, CPU seconds are read from /proc.

    python benchmarks/bench_demo.py --baseline REF [--after HEAD] [--num-samples 5] [--tau 0.4] [--seed 0]
        [--demo-arg ARG ...] [--ingest-photos 300] [--skip demo ingest indexes ics bound] [--keep DIR] [--csv benchmarks/results/bench_demo.csv]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    section: str
    item: str
    metric: str
    value: float
    unit: str
    note: str = ""


# --------------------------------------------------------------------------- CPU of a process tree

def _stat(pid: int) -> tuple[int, float, float] | None:
    """(parent pid, own CPU seconds, reaped children's CPU seconds) of ``pid`` from /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by ``root``, its reaped children and every live descendant."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                stats[int(entry.name)] = st
    if root not in stats:
        return float("nan")
    total = stats[root][1] + stats[root][2]
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        total += stats[pid][1]  # a live child's own time; its reaped children are in its cutime
        total += stats[pid][2]
        todo += children.get(pid, [])
    return total


class CpuSampler:
    """Samples ``tree_cpu_seconds`` of this process every ``period`` seconds in a thread."""

    def __init__(self, period: float = 0.5) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)

    def _run(self, period: float) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), tree_cpu_seconds(os.getpid())))
            self._stop.wait(period)

    def __enter__(self) -> "CpuSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.time(), tree_cpu_seconds(os.getpid())))

    def at(self, t: float) -> float:
        """CPU seconds at wall time ``t`` (linear between samples)."""
        import numpy as np

        ts, cs = zip(*self.samples)
        return float(np.interp(t, ts, cs))


# --------------------------------------------------------------------------- child: one demo run

def child_demo(out: Path, demo_args: list[str]) -> dict:
    """Run the demo graph in this process (the tree on ``sys.path``) and report per-asset figures."""
    import personc_assets
    from personc_assets import runner
    from personc_assets.cli import build_parser
    from personc_assets.cli.run_options import run_config_from_args

    spans: dict[str, tuple[float, float]] = {}
    original = runner._step_durations

    def keep_spans(instance, run_id, event_type):  # the runner's own step timing, with timestamps
        starts = {}
        for record in instance.all_logs(run_id):
            ev = record.dagster_event
            if ev is None or ev.step_key is None:
                continue
            if ev.event_type == event_type.STEP_START:
                starts[ev.step_key] = record.timestamp
            elif ev.event_type in (event_type.STEP_SUCCESS, event_type.STEP_FAILURE) and ev.step_key in starts:
                spans[ev.step_key] = (starts[ev.step_key], record.timestamp)
        return original(instance, run_id, event_type)

    runner._step_durations = keep_spans
    config = run_config_from_args(build_parser().parse_args(["demo", *demo_args, "--out", str(out)]))
    start = time.time()
    with CpuSampler() as cpu:
        result = runner.run_pipeline(config)
    end = time.time()
    steps = [{"step": k, "wall": b - a, "cpu": cpu.at(b) - cpu.at(a)} for k, (a, b) in spans.items()]
    explained = json.loads((out / "state" / "ics_reports.json").read_text()) if result.success else {"explained": []}
    return {"package": personc_assets.__file__, "success": result.success, "message": result.message,
            "wall": end - start, "cpu": cpu.at(end) - cpu.at(start), "steps": steps,
            "released": {Path(r["file"]).name: _pixels_sha256(Path(r["file"])) for r in result.released},
            "ics": _ics_rows(out),
            "ics_seconds": [e["ics_seconds"] for e in explained["explained"]],
            "maps_seconds": [e["maps_seconds"] for e in explained["explained"]]}


def _pixels_sha256(path: Path) -> str:
    """sha256 of an image's decoded RGB pixels (a release's file also holds its run id)."""
    import numpy as np
    from PIL import Image

    return hashlib.sha256(np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB"))).tobytes()).hexdigest()


def _ics_rows(out: Path) -> list[list]:
    """Every stored ICS score of a run: ``[release, encoder, donor, factor, method, score]``."""
    import duckdb

    with duckdb.connect(str(out / "personc.duckdb"), read_only=True) as conn:
        return [list(r) for r in conn.execute("SELECT release_id, encoder, donor, factor, method, score FROM ics "
                                               "ORDER BY 1, 2, 3, 4, 5").fetchall()]


def child_indexes(out: Path, demo_args: list[str]) -> dict:
    """``embedding_indexes`` once more on a finished workspace (every index up to date)."""
    from personc_assets.cli import build_parser
    from personc_assets.cli.run_options import run_config_from_args
    from personc_assets.core.lineage.store import LineageStore
    from personc_assets.core.pipeline import indexing
    from personc_assets.core.pipeline.config import Workspace
    from personc_assets.core.pipeline.sources import SourceSet

    cfg = run_config_from_args(build_parser().parse_args(["demo", *demo_args, "--out", str(out)]))
    ws = Workspace(out)
    sources = SourceSet.from_dict(json.loads((out / "state" / "source_images.json").read_text()))
    store = LineageStore.open(ws.db_path)
    indexing.build_indexes(cfg, ws, store, sources, "bench-warm-up")  # encoders loaded outside the timing
    start, cpu0 = time.perf_counter(), time.process_time()
    indexing.build_indexes(cfg, ws, store, sources, "bench-up-to-date")
    return {"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu0}


def child_ingest(corpus: Path, demo_args: list[str]) -> dict:
    """Ingest ``corpus`` with 1 and with 2 processes, alternating, best of two rounds each."""
    import multiprocessing
    import resource

    from personc_assets.core.faces.ingest import ingest_folders

    folders = {"A": corpus / "A", "B": corpus / "B"}
    best: dict[str, dict] = {}
    for _ in range(2):
        for workers in (1, 2):
            me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            result = ingest_folders(folders, workers=workers)
            wall = time.perf_counter() - start
            for worker in multiprocessing.active_children():  # a worker still starting is not waited for
                worker.join()  # by ingest; its CPU counts here
            me2, kids2 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
            here = me2.ru_utime + me2.ru_stime - me.ru_utime - me.ru_stime
            workers_cpu = kids2.ru_utime + kids2.ru_stime - kids.ru_utime - kids.ru_stime
            if str(workers) not in best or wall < best[str(workers)]["wall"]:
                best[str(workers)] = {"wall": wall, "faces": result.accepted, "cpu_here": here,
                                      "cpu_workers": workers_cpu}
    return best


def run_child(tree: Path, mode: str, out: Path, demo_args: list[str], record: Path) -> dict:
    """``mode`` run by the code in ``tree`` in a fresh process; its figures are kept in ``record``
    and read back from there when an interrupted benchmark runs again with the same ``--keep``."""
    if record.exists():
        print(f"{mode}: reusing {record}", flush=True)
        return json.loads(record.read_text())
    if mode == "demo":
        shutil.rmtree(out, ignore_errors=True)  # a fresh run, not one resumed from an interrupted one
    env = dict(os.environ, PYTHONPATH=str(tree))
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", mode, str(out), "--", *demo_args],
                          cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} run in {tree} failed:\n{proc.stderr[-4000:]}")
    result = dict(json.loads(proc.stdout.strip().splitlines()[-1]), started=started, load=os.getloadavg()[0])
    record.write_text(json.dumps(result))
    return result


# --------------------------------------------------------------------------- sections

def bench_demo(trees: dict[str, Path], outs: dict[str, Path], demo_args: list[str], rows: list[Row]) -> None:
    cpus = os.cpu_count() or 1
    runs = {}
    for side, tree in trees.items():
        print(f"demo ({side}) in {tree} ...", flush=True)
        runs[side] = run_child(tree, "demo", outs[side], demo_args, outs[side].parent / f"demo-{outs[side].name}.json")
        r = runs[side]
        for s in r["steps"]:
            rows += [Row("demo", f"{side}: {s['step']}", "seconds", s["wall"], "s"),
                     Row("demo", f"{side}: {s['step']}", "CPU seconds", s["cpu"], "s"),
                     Row("demo", f"{side}: {s['step']}", "CPU utilisation", s["cpu"] / max(s["wall"], 1e-9) / cpus,
                         f"of {cpus} CPUs")]
        rows += [Row("demo", f"{side}: whole run", "seconds", r["wall"], "s",
                     f"started {r['started']}, load average {r['load']:.1f} at the end; {r['message']}"),
                 Row("demo", f"{side}: whole run", "CPU utilisation", r["cpu"] / r["wall"] / cpus, f"of {cpus} CPUs",
                     f"{r['cpu']:.1f} CPU s")]
        if r["ics_seconds"]:
            rows.append(Row("demo", f"{side}: ICS per released face", "seconds",
                            sum(r["ics_seconds"]) / len(r["ics_seconds"]), "s",
                            f"{len(r['ics_seconds'])} faces; maps {sum(r['maps_seconds']) / len(r['maps_seconds']):.2f} s; "
                            "as the step times it, sharing the CPUs with whatever else the step runs then"))
    before, after = runs["before"], runs["after"]
    for metric, key in (("seconds", "wall"), ("CPU seconds", "cpu")):
        by_step = {side: {s["step"]: s[key] for s in r["steps"]} for side, r in runs.items()}
        for step in by_step["after"]:
            if step in by_step["before"]:
                rows.append(Row("demo", f"ratio: {step}", f"{metric} before / after",
                                by_step["before"][step] / max(by_step["after"][step], 1e-9), "x"))
        rows.append(Row("demo", "ratio: whole run", f"{metric} before / after", before[key] / after[key], "x"))
    same = before["released"] == after["released"] and bool(after["released"])
    rows.append(Row("demo", "identical releases", "same faces", float(same), "bool",
                    f"{len(after['released'])} released after, {len(before['released'])} before (release ids and "
                    "sha256 of the decoded pixels; both trees are exports: the same code version)"))
    keys = [r[:5] for r in before["ics"]] == [r[:5] for r in after["ics"]]
    worst = max((abs(a[5] - b[5]) for a, b in zip(before["ics"], after["ics"])), default=float("nan"))
    rows.append(Row("demo", "ICS scores stored", "largest |after - before|", worst if keys else float("nan"), "cos",
                    f"{len(after['ics'])} scores" + ("" if keys else "; the runs scored different releases")))


def bench_indexes(trees: dict[str, Path], outs: dict[str, Path], demo_args: list[str], rows: list[Row]) -> None:
    walls = {}
    for side, tree in trees.items():
        r = run_child(tree, "indexes", outs[side], demo_args, outs[side].parent / f"indexes-{outs[side].name}.json")
        walls[side] = r["wall"]
        rows.append(Row("indexes", f"{side}: embedding_indexes, indexes up to date", "seconds", r["wall"], "s",
                        f"{r['cpu']:.2f} CPU s in the main process"))
    rows.append(Row("indexes", "ratio", "before / after", walls["before"] / walls["after"], "x"))


def bench_ingest(trees: dict[str, Path], work: Path, photos: int, rows: list[Row]) -> None:
    """1 and 2 ingest processes on jittered copies of ../shared/faces, before and after."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_pipeline import jittered_corpus

    corpus = work / "ingest-corpus"
    if not corpus.exists():
        jittered_corpus(REPO.parent / "shared" / "faces", corpus, photos, seed=1)
    cpus = os.cpu_count() or 1
    for side, tree in trees.items():
        best = run_child(tree, "ingest", corpus, [], work / f"ingest-{tree.name}.json")
        best = {k: v for k, v in best.items() if k in ("1", "2")}
        for workers, r in best.items():
            rows.append(Row("ingest", f"{side}: {workers} process{'es' * (workers != '1')}", "faces/s",
                            r["faces"] / r["wall"], "faces/s",
                            f"{r['faces']} photos in {r['wall']:.1f} s, best of 2; CPU s: {r['cpu_here']:.1f} in the "
                            f"main process, {r['cpu_workers']:.1f} in workers (start-up included); utilisation "
                            f"{(r['cpu_here'] + r['cpu_workers']) / r['wall'] / cpus:.0%} of {cpus} CPUs"))
        rows.append(Row("ingest", f"{side}: 2 processes / 1", "faces/s ratio",
                        best["1"]["wall"] / best["2"]["wall"], "x"))


def _loaded_run(out: Path, demo_args: list[str]):
    """The finished run in ``out`` as the after code reads it: config, workspace, store, typed asset
    values, a candidate factory, encoders and the guarded source faces and entries by content hash."""
    from personc_assets.cli import build_parser
    from personc_assets.cli.run_options import run_config_from_args
    from personc_assets.core.lineage.store import LineageStore
    from personc_assets.core.pipeline.config import Workspace
    from personc_assets.core.pipeline.generation import CandidateFactory
    from personc_assets.core.pipeline.indexing import EmbeddingIndexes, build_encoders
    from personc_assets.core.pipeline.judging import GuardVerdicts
    from personc_assets.core.pipeline.modeling import FactorDecompositions
    from personc_assets.core.pipeline.sources import SourceSet

    def value(name, kind):
        return kind.from_dict(json.loads((out / "state" / f"{name}.json").read_text()))

    cfg = run_config_from_args(build_parser().parse_args(["demo", *demo_args, "--out", str(out)]))
    ws = Workspace(out)
    store = LineageStore.open(ws.db_path)
    sources, indexes = value("source_images", SourceSet), value("embedding_indexes", EmbeddingIndexes)
    decompositions, verdicts = value("factor_decompositions", FactorDecompositions), value("guard_verdicts",
                                                                                           GuardVerdicts)
    factory = CandidateFactory(cfg, ws, store, sources, decompositions, indexes)
    encoders, _ = build_encoders(cfg)
    faces = {f.content_hash: f for batch in sources.iter_guarded_faces() for f in batch}
    return cfg, ws, store, sources, indexes, verdicts, factory, encoders, faces, sources.by_hash()


def _donor_similarity(rel, factory, store, encoders, faces, entries, locate=None):
    """The ICS similarity of a released face (donors and nearest sources, every encoder) and its factors;
    ``locate`` (default: the full detector) finds the face in each coalition image."""
    from personc_assets.core.explain.ics import EncoderSimilarity
    from personc_assets.core.pipeline.indexing import embed_sources

    recipe = factory.stored_recipe(store, rel.candidate_id)
    mixed = factory.stored_factors(store, rel.candidate_id, recipe)
    targets = list(dict.fromkeys([*recipe.donors(), *[h for h in rel.nearest.values() if h]]))
    emb = {e.name: embed_sources(e, [faces[h] for h in targets], store, "bench") for e in encoders}
    ids = [entries[h].source_id for h in targets]
    sim = EncoderSimilarity(encoders, emb, ids) if locate is None else EncoderSimilarity(encoders, emb, ids, locate)
    return sim, recipe, mixed


def child_ics(out: Path, demo_args: list[str]) -> dict:
    """Reference and fast ICS of the released faces of ``out``, alternating face by face (this process)."""
    import numpy as np
    from PIL import Image

    from personc_assets.core.explain.ics import (build_coalition_table, build_coalition_table_reference,
                                                 coalition_locator, compute_ics)
    from personc_assets.core.pipeline.generation import stored_render

    _, _, store, _, _, verdicts, factory, encoders, faces, entries = _loaded_run(out, demo_args)
    paths = {"reference": build_coalition_table_reference, "fast": build_coalition_table}
    figures: dict = {"seconds": {k: [] for k in paths}, "cpu": {k: [] for k in paths}, "worst": 0.0}
    for i, rel in enumerate(verdicts.released):
        drawn = stored_render(store, rel.candidate_id)  # the unmarked render, as the pipeline compares
        image = np.asarray(Image.open(drawn or rel.file).convert("RGB"))
        sim, _, mixed = _donor_similarity(rel, factory, store, encoders, faces, entries)
        # the fast path as the pipeline runs it: coalition faces located without the finest levels
        quick, _, _ = _donor_similarity(rel, factory, store, encoders, faces, entries, coalition_locator(image))
        results = {}
        for name in (("reference", "fast") if i % 2 == 0 else ("fast", "reference")):
            t0, c0 = time.perf_counter(), tree_cpu_seconds(os.getpid())
            results[name] = compute_ics(paths[name](factory.backbone, mixed, sim if name == "reference" else quick,
                                                    released_image=image))
            figures["seconds"][name].append(time.perf_counter() - t0)
            figures["cpu"][name].append(tree_cpu_seconds(os.getpid()) - c0)
        a, b = results["reference"], results["fast"]
        figures["worst"] = max(figures["worst"], *(float(np.abs(getattr(a, k) - getattr(b, k)).max())
                                                   for k in ("phi", "share", "drop", "v_full", "v_empty")))
    return figures


def child_bound(out: Path, demo_args: list[str]) -> dict:
    """Unit costs of the finished run in ``out``, one at a time on one thread of work each (medians):
    ingest of a source photo, a render, the guard's judgement of a candidate (detection, gates, every
    encoder on the face and its benign transforms), one coalition image (render, locate, embed) and
    the novelty step of a released face's mix; with the counts the bound is built from."""
    import statistics

    import numpy as np
    from PIL import Image

    from personc_assets.core.faces.ingest import ingest_file
    from personc_assets.core.pipeline.judging import build_release_guard
    from personc_assets.core.recipes import mix_factors

    cfg, ws, store, sources, indexes, verdicts, factory, encoders, faces, entries = _loaded_run(out, demo_args)
    guard = build_release_guard(cfg, ws, sources, indexes)

    def timed(fn, *args):
        t0 = time.perf_counter()
        fn(*args)
        return time.perf_counter() - t0

    ingest = [timed(ingest_file, Path(e.path), e.group, e.label) for e in sources.entries[:8]]
    render, judge, coalition, novelty = [], [], [], []
    for rel in verdicts.released:
        image = np.asarray(Image.open(rel.file).convert("RGB"))
        sim, recipe, mixed = _donor_similarity(rel, factory, store, encoders, faces, entries)
        latent = factory.backbone.compose(mixed)
        render.append(timed(factory.backbone.synthesize, [latent]))
        judge.append(timed(guard.check, [(rel.candidate_id, image)]))
        coalition.append(render[-1] + timed(sim, [image]))
        if factory.novelty is not None:
            start = mix_factors(recipe, factory.factors, factory.mean)
            novelty.append(timed(factory.novelty.refine, factory.backbone, start, factory.protected))
    players = len(factory.backbone.factor_names)
    return {"ingest": statistics.median(ingest), "render": statistics.median(render),
            "judge": statistics.median(judge), "coalition": statistics.median(coalition),
            "novelty": statistics.median(novelty) if novelty else 0.0, "novelty_all": novelty,
            "judged": len(verdicts.attempts), "sources": len(sources.entries),
            "released": len(verdicts.released), "coalitions": 2 ** players}


def bench_ics(tree: Path, out: Path, demo_args: list[str], rows: list[Row]) -> None:
    """Reference and fast ICS on the released faces of the after run, by the after code."""
    r = run_child(tree, "ics", out, demo_args, out.parent / f"ics-{out.name}.json")
    seconds, cpu = r["seconds"], r["cpu"]
    if not seconds["fast"]:
        rows.append(Row("ics", "no released faces", "faces", 0, ""))
        return
    n, cpus = len(seconds["fast"]), os.cpu_count() or 1
    for name in ("reference", "fast"):
        mean, cpu_mean = sum(seconds[name]) / n, sum(cpu[name]) / n
        rows += [Row("ics", name, "seconds per face", mean, "s", f"{n} released faces, 64 coalitions each; "
                     f"started {r['started']}"),
                 Row("ics", name, "CPU seconds per face", cpu_mean, "s"),
                 Row("ics", name, "CPU utilisation", cpu_mean / mean / cpus, f"of {cpus} CPUs")]
    rows += [Row("ics", "ratio reference / fast", "seconds", sum(seconds["reference"]) / sum(seconds["fast"]), "x"),
             Row("ics", "ratio reference / fast", "CPU seconds", sum(cpu["reference"]) / sum(cpu["fast"]), "x"),
             Row("ics", "largest score difference", "|fast - reference|", r["worst"], "cos",
                 "phi, share, drop, v_full, v_empty")]


def bench_bound(tree: Path, out: Path, demo_args: list[str], pipeline_seconds: float, rows: list[Row]) -> None:
    """The demo's pipeline time against its bound (issue 15): judged x (render + judge) + sources x
    ingest + releases x coalitions x (render + locate + embed), unit costs measured in this run; and
    the same bound with the novelty step's cost per judged candidate added (it came after the issue)."""
    r = run_child(tree, "bound", out, demo_args, out.parent / f"bound-{out.name}.json")
    bound = (r["judged"] * (r["render"] + r["judge"]) + r["sources"] * r["ingest"]
             + r["released"] * r["coalitions"] * r["coalition"])
    with_novelty = bound + r["judged"] * r["novelty"]
    counts = (f"{r['judged']} judged, {r['sources']} sources, {r['released']} released x {r['coalitions']} "
              "coalitions")
    for name in ("ingest", "render", "judge", "coalition", "novelty"):
        rows.append(Row("bound", f"unit: {name}", "seconds", r[name], "s", "median"))
    rows += [Row("bound", "bound (issue 15)", "seconds", bound, "s", counts),
             Row("bound", "bound with the novelty step", "seconds", with_novelty, "s",
                 f"novelty per released mix: {', '.join(f'{x:.1f}' for x in r['novelty_all'])} s"),
             Row("bound", "pipeline / bound", "ratio", pipeline_seconds / bound, "x",
                 f"pipeline {pipeline_seconds:.1f} s (sum of the after run's steps)"),
             Row("bound", "pipeline / bound with the novelty step", "ratio", pipeline_seconds / with_novelty, "x")]


# --------------------------------------------------------------------------- output

def print_tables(rows: list[Row]) -> None:
    for section in dict.fromkeys(r.section for r in rows):
        part = [r for r in rows if r.section == section]
        print(f"\n== {section} ==")
        w_item = max(len(r.item) for r in part)
        w_metric = max(len(r.metric) for r in part)
        for r in part:
            value = f"{r.value:.3g}" if abs(r.value) < 1e-2 else f"{r.value:.2f}"
            print(f"{r.item:<{w_item}}  {r.metric:<{w_metric}}  {value:>9} {r.unit:<10} {r.note}")


def export_tree(ref: str, where: Path) -> Path:
    """The files of ``ref`` exported into ``where`` (no worktree registered in the repository)."""
    where.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", ref], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", help="git ref of the code before (required; e.g. the commit before a merge)")
    p.add_argument("--after", default="HEAD", help="git ref of the code after (default HEAD)")
    p.add_argument("--num-samples", default="5")
    p.add_argument("--tau", default="0.4")
    p.add_argument("--seed", default="0")
    p.add_argument("--demo-arg", action="append", default=[], metavar="ARG",
                   help="one more argument for both sides' demo runs (repeat; e.g. --demo-arg=--backbone-options "
                        "--demo-arg='{\"closed_mouth\": false}' when the baseline's defaults differ)")
    p.add_argument("--ingest-photos", type=int, default=300, help="photos for the ingest section")
    p.add_argument("--skip", nargs="*", default=[], choices=["demo", "indexes", "ics", "ingest", "bound"])
    p.add_argument("--keep", type=Path, help="keep both runs' output folders here (and resume from them)")
    p.add_argument("--csv", type=Path, default=REPO / "benchmarks" / "results" / "bench_demo.csv")
    p.add_argument("--child", nargs=2, metavar=("MODE", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("demo_args", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        mode, out = args.child
        fn = {"demo": child_demo, "indexes": child_indexes, "ingest": child_ingest, "ics": child_ics,
              "bound": child_bound}[mode]
        print(json.dumps(fn(Path(out), args.demo_args)))
        return 0
    if not args.baseline:
        p.error("--baseline is required: the git ref of the code to compare with")
    demo_args = ["--num_samples", args.num_samples, "--tau", args.tau, "--seed", args.seed, *args.demo_arg]
    work = args.keep or Path(tempfile.mkdtemp(prefix="personc-bench-demo-"))
    rows: list[Row] = []
    refs = {side: subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", ref], check=True,
                                 capture_output=True, text=True).stdout.strip()
            for side, ref in (("before", args.baseline), ("after", args.after))}
    rows.append(Row("setup", "before / after", "code", float("nan"), "",
                    f"before {args.baseline} ({refs['before']}), after {args.after} ({refs['after']})"))
    rows.append(Row("setup", "machine", "CPUs", os.cpu_count() or 1, "", f"load average {os.getloadavg()[0]:.1f} "
                    "at the start: other processes share the CPUs"))
    trees = {side: work / f"tree-{side}-{ref}" for side, ref in refs.items()}
    outs = {side: work / f"out-{side}-{ref}" for side, ref in refs.items()}
    try:
        for side, ref in refs.items():
            if not trees[side].exists():
                export_tree(ref, trees[side])
        if "ingest" not in args.skip:
            bench_ingest(trees, work, args.ingest_photos, rows)
        if "demo" not in args.skip:
            bench_demo(trees, outs, demo_args, rows)
        if "indexes" not in args.skip:
            bench_indexes(trees, outs, demo_args, rows)
        if "ics" not in args.skip:
            bench_ics(trees["after"], outs["after"], demo_args, rows)
        if "bound" not in args.skip:
            after = json.loads((work / f"demo-{outs['after'].name}.json").read_text())
            bench_bound(trees["after"], outs["after"], demo_args, sum(s["wall"] for s in after["steps"]), rows)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    rows.append(Row("setup", "machine", "load average at the end", os.getloadavg()[0], ""))
    print_tables(rows)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    print(f"\nwrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
