"""Benchmark: the README's first command before and after, per asset, and ICS seconds per face.

Measures, in one invocation (so that both sides see the same machine load):

1. ``ingest``: jittered copies of ../shared/faces ingested by 1 and by 2
   processes, before and after;
2. ``demo``: ``python run_demo.py --num_samples 5 --tau 0.4`` (the README's
   first command, with ``--out`` in a temporary folder) run by the code at
   ``--baseline`` (a git ref, exported into a temporary folder) and by
   this tree, one after the other, each in a fresh process: wall seconds and
   CPU utilisation (CPU seconds of the process and its workers / (wall x
   CPUs)) of every asset, and whether both released the same files (sha256);
3. ``indexes``: ``embedding_indexes`` run again on each side's finished
   workspace (everything up to date), where the age/gender labeller is now
   skipped;
4. ``ics``: exact Shapley ICS of the released faces of this tree's run,
   computed by ``build_coalition_table_reference`` and by the fast
   ``build_coalition_table`` in this process, alternating face by face:
   seconds per face, CPU utilisation, the ratio, and the largest difference
   of the scores.

Absolute times depend on what else the machine runs; the ratios are measured
in the same run. On Linux, CPU seconds are read from /proc.

    python benchmarks/bench_demo.py [--baseline REF] [--num-samples 5] [--tau 0.4] [--seed 0]
        [--ingest-photos 300] [--skip demo ingest indexes ics] [--keep DIR] [--csv benchmarks/results/bench_demo.csv]
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
            "released": {Path(r["file"]).name: hashlib.sha256(Path(r["file"]).read_bytes()).hexdigest()
                         for r in result.released},
            "ics_seconds": [e["ics_seconds"] for e in explained["explained"]],
            "maps_seconds": [e["maps_seconds"] for e in explained["explained"]]}


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


def run_child(tree: Path, mode: str, out: Path, demo_args: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", mode, str(out), "--", *demo_args],
                          cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} run in {tree} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- sections

def bench_demo(trees: dict[str, Path], outs: dict[str, Path], demo_args: list[str], rows: list[Row]) -> None:
    cpus = os.cpu_count() or 1
    runs = {}
    for side, tree in trees.items():
        print(f"demo ({side}) in {tree} ...", flush=True)
        runs[side] = run_child(tree, "demo", outs[side], demo_args)
        r = runs[side]
        for s in r["steps"]:
            rows += [Row("demo", f"{side}: {s['step']}", "seconds", s["wall"], "s"),
                     Row("demo", f"{side}: {s['step']}", "CPU utilisation", s["cpu"] / max(s["wall"], 1e-9) / cpus,
                         f"of {cpus} CPUs", f"{s['cpu']:.1f} CPU s")]
        rows += [Row("demo", f"{side}: whole run", "seconds", r["wall"], "s", r["message"]),
                 Row("demo", f"{side}: whole run", "CPU utilisation", r["cpu"] / r["wall"] / cpus, f"of {cpus} CPUs",
                     f"{r['cpu']:.1f} CPU s")]
        if r["ics_seconds"]:
            rows.append(Row("demo", f"{side}: ICS per released face", "seconds",
                            sum(r["ics_seconds"]) / len(r["ics_seconds"]), "s",
                            f"{len(r['ics_seconds'])} faces; maps {sum(r['maps_seconds']) / len(r['maps_seconds']):.2f} s"))
    before, after = runs["before"], runs["after"]
    walls = {side: {s["step"]: s["wall"] for s in r["steps"]} for side, r in runs.items()}
    for step in walls["after"]:
        if step in walls["before"]:
            rows.append(Row("demo", f"ratio: {step}", "before / after", walls["before"][step] / walls["after"][step], "x"))
    rows.append(Row("demo", "ratio: whole run", "before / after", before["wall"] / after["wall"], "x"))
    same = before["released"] == after["released"] and bool(after["released"])
    rows.append(Row("demo", "identical releases", "same files", float(same), "bool",
                    f"{len(after['released'])} released after, {len(before['released'])} before (sha256 of each file)"))


def bench_indexes(trees: dict[str, Path], outs: dict[str, Path], demo_args: list[str], rows: list[Row]) -> None:
    walls = {}
    for side, tree in trees.items():
        r = run_child(tree, "indexes", outs[side], demo_args)
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
        best = run_child(tree, "ingest", corpus, [])
        for workers, r in best.items():
            rows.append(Row("ingest", f"{side}: {workers} process{'es' * (workers != '1')}", "faces/s",
                            r["faces"] / r["wall"], "faces/s",
                            f"{r['faces']} photos in {r['wall']:.1f} s, best of 2; CPU s: {r['cpu_here']:.1f} in the "
                            f"main process, {r['cpu_workers']:.1f} in workers (start-up included); utilisation "
                            f"{(r['cpu_here'] + r['cpu_workers']) / r['wall'] / cpus:.0%} of {cpus} CPUs"))
        rows.append(Row("ingest", f"{side}: 2 processes / 1", "faces/s ratio",
                        best["1"]["wall"] / best["2"]["wall"], "x"))


def bench_ics(out: Path, demo_args: list[str], rows: list[Row]) -> None:
    """Reference and fast ICS on the released faces of ``out``, alternating (this process)."""
    import numpy as np
    from PIL import Image

    from personc_assets.cli import build_parser
    from personc_assets.cli.run_options import run_config_from_args
    from personc_assets.core.explain.ics import (EncoderSimilarity, build_coalition_table,
                                                 build_coalition_table_reference, compute_ics)
    from personc_assets.core.lineage.store import LineageStore
    from personc_assets.core.pipeline.config import Workspace
    from personc_assets.core.pipeline.generation import CandidateFactory
    from personc_assets.core.pipeline.indexing import build_encoders, embed_sources
    from personc_assets.core.pipeline.sources import SourceSet

    cfg = run_config_from_args(build_parser().parse_args(["demo", *demo_args, "--out", str(out)]))
    state = {p.stem: json.loads(p.read_text()) for p in (out / "state").glob("*.json")}
    ws, store = Workspace(out), LineageStore.open(Workspace(out).db_path)
    sources = SourceSet.from_dict(state["source_images"])
    factory = CandidateFactory(cfg, ws, store, sources, state["factor_decompositions"], state["embedding_indexes"])
    encoders, _ = build_encoders(cfg)
    faces = {f.content_hash: f for batch in sources.iter_guarded_faces() for f in batch}
    entries = {e["content_hash"]: e for e in sources.guarded_entries()}
    paths = {"reference": build_coalition_table_reference, "fast": build_coalition_table}
    seconds = {k: [] for k in paths}
    cpu = {k: [] for k in paths}
    worst = 0.0
    for i, rel in enumerate(state["guard_verdicts"]["released"]):
        image = np.asarray(Image.open(rel["file"]).convert("RGB"))
        recipe = factory.stored_recipe(store, rel["candidate_id"])
        mixed = factory.stored_factors(store, rel["candidate_id"], recipe)
        targets = list(dict.fromkeys([*recipe.donors(), *[h for h in rel["nearest"].values() if h]]))
        emb = {e.name: embed_sources(e, [faces[h] for h in targets], store, "bench") for e in encoders}
        sim = EncoderSimilarity(encoders, emb, [entries[h]["source_id"] for h in targets])
        results = {}
        for name in (("reference", "fast") if i % 2 == 0 else ("fast", "reference")):
            t0, c0 = time.perf_counter(), tree_cpu_seconds(os.getpid())
            results[name] = compute_ics(paths[name](factory.backbone, mixed, sim, released_image=image))
            seconds[name].append(time.perf_counter() - t0)
            cpu[name].append(tree_cpu_seconds(os.getpid()) - c0)
        a, b = results["reference"], results["fast"]
        worst = max(worst, *(float(np.abs(getattr(a, k) - getattr(b, k)).max())
                             for k in ("phi", "share", "drop", "v_full", "v_empty")))
    if not seconds["fast"]:
        rows.append(Row("ics", "no released faces", "faces", 0, ""))
        return
    n, cpus = len(seconds["fast"]), os.cpu_count() or 1
    for name in paths:
        mean, cpu_mean = sum(seconds[name]) / n, sum(cpu[name]) / n
        rows += [Row("ics", name, "seconds per face", mean, "s", f"{n} released faces, 64 coalitions each"),
                 Row("ics", name, "CPU seconds per face", cpu_mean, "s"),
                 Row("ics", name, "CPU utilisation", cpu_mean / mean / cpus, f"of {cpus} CPUs")]
    rows += [Row("ics", "ratio reference / fast", "seconds", sum(seconds["reference"]) / sum(seconds["fast"]), "x"),
             Row("ics", "ratio reference / fast", "CPU seconds", sum(cpu["reference"]) / sum(cpu["fast"]), "x"),
             Row("ics", "largest score difference", "|fast - reference|", worst, "cos",
                 "phi, share, drop, v_full, v_empty")]


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


def baseline_tree(ref: str, where: Path) -> Path:
    """The files of ``ref`` exported into ``where`` (no worktree registered in the repository)."""
    where.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", ref], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", help="git ref of the code to compare with (default: where this branch left main)")
    p.add_argument("--num-samples", default="5")
    p.add_argument("--tau", default="0.4")
    p.add_argument("--seed", default="0")
    p.add_argument("--ingest-photos", type=int, default=300, help="photos for the ingest section")
    p.add_argument("--skip", nargs="*", default=[], choices=["demo", "indexes", "ics", "ingest"])
    p.add_argument("--keep", type=Path, help="keep both runs' output folders here")
    p.add_argument("--csv", type=Path, default=REPO / "benchmarks" / "results" / "bench_demo.csv")
    p.add_argument("--child", nargs=2, metavar=("MODE", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("demo_args", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        mode, out = args.child
        fn = {"demo": child_demo, "indexes": child_indexes, "ingest": child_ingest}[mode]
        print(json.dumps(fn(Path(out), args.demo_args)))
        return 0
    demo_args = ["--num_samples", args.num_samples, "--tau", args.tau, "--seed", args.seed]
    if args.baseline is None:
        args.baseline = subprocess.run(["git", "-C", str(REPO), "merge-base", "HEAD", "main"], check=True,
                                       capture_output=True, text=True).stdout.strip()
    work = args.keep or Path(tempfile.mkdtemp(prefix="personc-bench-demo-"))
    rows: list[Row] = []
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.baseline], check=True,
                            capture_output=True, text=True).stdout.strip()
    here = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], check=True,
                          capture_output=True, text=True).stdout.strip()
    rows.append(Row("setup", "before / after", "code", float("nan"), "", f"before {args.baseline} ({commit}), after {here}"))
    rows.append(Row("setup", "machine", "CPUs", os.cpu_count() or 1, "", f"load average {os.getloadavg()[0]:.1f} "
                    "at the start: other processes share the CPUs"))
    trees = {"before": work / "baseline-tree", "after": REPO}
    outs = {"before": work / "out-before", "after": work / "out-after"}
    try:
        if {"demo", "indexes", "ingest"} - set(args.skip) and not trees["before"].exists():
            baseline_tree(args.baseline, trees["before"])
        if "ingest" not in args.skip:
            bench_ingest(trees, work, args.ingest_photos, rows)
        if "demo" not in args.skip:
            bench_demo(trees, outs, demo_args, rows)
        if "indexes" not in args.skip:
            bench_indexes(trees, outs, demo_args, rows)
        if "ics" not in args.skip:
            bench_ics(outs["after"], demo_args, rows)
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
