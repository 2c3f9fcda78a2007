"""``personc demo``: run the whole asset graph in-process and print the releases."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def parse_taus(values: list[str] | None) -> tuple[dict[str, float], float | None]:
    """``["0.4", "dlib=0.9"]`` → ({"dlib": 0.9}, 0.4). A bare value is ArcFace-scale."""
    taus: dict[str, float] = {}
    bare = None
    for item in values or []:
        for part in item.split(","):
            name, sep, value = part.partition("=")
            try:
                if sep:
                    taus[name.strip()] = float(value)
                else:
                    bare = float(name)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"bad --tau {part!r}: give a number (ArcFace scale) or ENCODER=NUMBER, e.g. dlib=0.90") from None
    return taus, bare


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="generate identity-safe faces end to end",
                              description="Runs the PersonC asset graph in-process: ingest A and B, fit the "
                              "backbone, build the guard's indexes, generate, guard, release and explain.")
    p.add_argument("--num_samples", "--num-samples", type=int, default=5, help="faces to release (default 5)")
    p.add_argument("--tau", action="append", metavar="[ENCODER=]VALUE",
                   help="threshold per encoder, e.g. --tau dlib=0.90; a bare number is an ArcFace cosine and "
                        "applies to ArcFace only (repeatable)")
    p.add_argument("--target-fmr", type=float, metavar="RATE",
                   help="set each encoder's tau from its stored calibration (personc calibrate --db) for "
                        "this false-match rate per released face over all sources (faces of nobody in the "
                        "sources rejected as one of them: a cost in released faces, not a bound on leaks); "
                        "never above the calibrated same-person minimum nor the encoder's default tau "
                        "(give --tau ENCODER=VALUE for a laxer one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sources-a", type=Path, help="folder of group A photos (default: demo photos)")
    p.add_argument("--sources-b", type=Path, help="folder of group B photos")
    p.add_argument("--out", type=Path, default=Path("data/out"), help="output folder (default data/out)")
    p.add_argument("--db", type=Path, help="DuckDB file (default OUT/personc.duckdb)")
    p.add_argument("--max-attempts", type=int, default=20, help="candidates tried per released face (default 20)")
    p.add_argument("--backbone", default="morphable", help="morphable (embedded, default) or stylegan2")
    p.add_argument("--weights", type=Path, help="backbone weights file (stylegan2)")
    p.add_argument("--backbone-options", default="{}", metavar="JSON",
                   help='backbone settings as JSON, e.g. \'{"projection_steps": 100, "device": "cuda"}\'')
    p.add_argument("--weights-dir", type=Path, default=Path("weights"), help="folder of encoder weights")
    p.add_argument("--encoders", help="comma-separated encoders (default: every encoder whose weights exist)")
    p.add_argument("--audit-encoders", help="comma-separated encoders that are measured and reported but never "
                   "gate a release (their leakage rate is the honest estimate of what the guard missed)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..runner import DemoRequest, run_pipeline

    try:
        taus, bare = parse_taus(args.tau)
    except argparse.ArgumentTypeError as exc:
        print(f"personc demo: {exc}", file=sys.stderr)
        return 2
    if (args.sources_a is None) != (args.sources_b is None):
        print("personc demo: give both --sources-a and --sources-b (or neither for the demo photos)", file=sys.stderr)
        return 2
    for flag, folder in (("--sources-a", args.sources_a), ("--sources-b", args.sources_b)):
        if folder is not None and not folder.is_dir():
            print(f"personc demo: {flag} {folder} is not a folder", file=sys.stderr)
            return 2
    try:
        options = json.loads(args.backbone_options)
        if not isinstance(options, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        print(f"personc demo: --backbone-options must be a JSON object ({exc})", file=sys.stderr)
        return 2
    if args.weights is not None:
        if not args.weights.is_file():
            print(f"personc demo: --weights {args.weights} is not a file", file=sys.stderr)
            return 2
        options["weights"] = str(args.weights.resolve())
    request = DemoRequest(
        out_dir=args.out, db_path=args.db, num_samples=args.num_samples, max_attempts=args.max_attempts,
        seed=args.seed, taus=taus, bare_tau=bare, target_fmr=args.target_fmr, backbone=args.backbone,
        backbone_options=options,
        sources_a=args.sources_a, sources_b=args.sources_b, weights_dir=args.weights_dir,
        encoders=tuple(e.strip() for e in args.encoders.split(",")) if args.encoders else None,
        audit_encoders=tuple(e.strip() for e in args.audit_encoders.split(",")) if args.audit_encoders else ())
    result = run_pipeline(request)
    if args.json:
        print(json.dumps(result.as_dict(), indent=1))
    else:
        print(result.render_table())
    if not result.success:
        print(f"personc demo: {result.message}", file=sys.stderr)
        return 1
    return 0
