"""``personc audit``: check arbitrary face images against a source set with the guard.

    personc audit --sources DIR [DIR ...] --candidates DIR [--encoders dlib arcface]
        [--tau dlib=0.9] [--witness-encoders magface] [--weights-dir weights] [--db audit.duckdb] [--json]

Every file under ``--candidates`` (another generator's output, a data set about
to be published), hidden files included, is judged by the same guard as the pipeline's releases:
exactly one face, every encoder below its tau against every face found under
``--sources``. Prints one line per image (max similarity and nearest source
per encoder, status) or, with ``--json``, a JSON document.

Exit status: 0 every candidate is clear and every source file was indexed;
1 at least one candidate leaks (a gating encoder reaches tau);
3 no leak, but some candidate could not be verified (unreadable, no face,
several faces, encoder error, a symlink leading outside the candidate folder,
a broken link or a link loop: fail closed) or some source file could not be
indexed (``--allow-unindexed-sources`` accepts that); 2 usage errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import uuid
from pathlib import Path

from .run_options import add_deprecated_flag, add_setting_option

logger = logging.getLogger(__name__)

EXIT_CLEAR, EXIT_LEAK, EXIT_USAGE, EXIT_UNVERIFIED = 0, 1, 2, 3


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "audit", help="check any images against a source set with the guard (non-zero exit on a leak)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sources", type=Path, nargs="+", required=True, metavar="DIR",
                   help="folders of source photos (searched recursively; one face per photo)")
    p.add_argument("--candidates", type=Path, required=True, metavar="DIR",
                   help="folder of images to check (searched recursively)")
    p.add_argument("--encoders", nargs="+", default=None, metavar="NAME",
                   help="encoders to use (default: every encoder whose weights exist)")
    add_setting_option(p, "taus")
    p.add_argument("--witness-encoders", nargs="+", default=(), metavar="NAME",
                   help="witness encoders: measured and reported, never deciding")
    add_deprecated_flag(p, "--audit-only", "--witness-encoders", "witness_encoders", nargs="+")
    add_setting_option(p, "weights_dir")
    add_deprecated_flag(p, "--weights", "--weights-dir", "weights_dir", type=Path)
    p.add_argument("--db", type=Path, default=None,
                   help="DuckDB file caching source embeddings across audits (default: a temporary one)")
    add_setting_option(p, "min_face_px")
    p.add_argument("--allow-unindexed-sources", action="store_true",
                   help="exit 0 even when some source files could not be indexed (they are still listed)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.audit import run_audit
    from ..core.encoders.availability import resolve_encoders
    from ..core.encoders.base import MissingWeightsError
    from ..core.ensemble import resolve_taus
    from .run_options import parse_taus

    for folder in [*args.sources, args.candidates]:
        if not folder.is_dir():
            logger.error("%s is not a folder", folder)
            sys.stderr.write(f"personc audit: {folder} is not a folder\n")
            return EXIT_USAGE
    try:
        taus, bare = parse_taus(args.tau)
        encoders, skipped = resolve_encoders(args.encoders, args.weights_dir)
        choices = resolve_taus(encoders, taus, bare)
    except (MissingWeightsError, ValueError, argparse.ArgumentTypeError) as exc:
        sys.stderr.write(f"personc audit: {exc}\n")
        return EXIT_USAGE
    skipped_rows = [{"encoder": s.name, "reason": s.reason} for s in skipped]
    run_id = f"audit-{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory(prefix="personc-audit-") as tmp:
        from ..core.lineage.store import LineageStore

        store = LineageStore.open(args.db if args.db is not None else Path(tmp) / "audit.duckdb")
        try:
            report = run_audit(args.sources, args.candidates, encoders, choices, store, run_id,
                               witnesses=args.witness_encoders, min_face_px=args.min_face_px, skipped=skipped_rows)
        except ValueError as exc:
            sys.stderr.write(f"personc audit: {exc}\n")
            return EXIT_USAGE
    if args.json:
        sys.stdout.write(json.dumps(report.as_dict(), indent=1) + "\n")
    else:
        from ..core.audit import render_table

        sys.stdout.write(render_table(report))
    if report.leaks:
        return EXIT_LEAK
    if report.unverified or (report.source_problems and not args.allow_unindexed_sources):
        return EXIT_UNVERIFIED
    return EXIT_CLEAR
