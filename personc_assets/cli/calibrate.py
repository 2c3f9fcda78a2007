"""``personc calibrate``: measure each encoder's score distributions on labelled faces.

    personc calibrate --folder ../shared/faces [--encoders dlib arcface magface]
        [--weights-dir weights] [--target-fmr 1e-3] [--gallery-size 10 1000]
        [--db personc.duckdb] [--report calibration.md]

Prints (or writes) a Markdown report with same-person and different-person
figures, the best single threshold, and tau for the target false-match rate
per released face at each gallery size; ``--db`` stores the same figures in
DuckDB tables ``calibration`` and ``calibration_tau``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import uuid
from pathlib import Path

from .run_options import add_deprecated_flag, add_setting_option

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate", help="per-encoder thresholds from a labelled folder of faces",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", type=Path, required=True,
                   help="labelled folder: one subfolder of photos per person (names starting "
                        "with _ are skipped)")
    p.add_argument("--encoders", nargs="+", default=None, metavar="NAME",
                   help="encoders to calibrate (default: every encoder whose weights exist)")
    add_setting_option(p, "weights_dir")
    add_deprecated_flag(p, "--weights", "--weights-dir", "weights_dir", type=Path)
    p.add_argument("--target-fmr", type=float, default=1e-3,
                   help="false-match rate per released face to choose tau for (default: 1e-3)")
    p.add_argument("--gallery-size", type=int, nargs="+", default=[10, 1000], metavar="N",
                   help="number of sources searched per face (default: 10 1000)")
    p.add_argument("--db", type=Path, default=None, help="DuckDB file to write the figures into")
    p.add_argument("--run-id", default=None, help="run id for the DuckDB rows (default: random)")
    p.add_argument("--report", type=Path, default=None,
                   help="write the Markdown report here (default: print it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.calibration import calibrate_folder, render_report, write_calibration
    from ..core.encoders.availability import resolve_encoders
    from ..core.encoders.base import MissingWeightsError

    if not args.folder.is_dir():
        logger.error("--folder %s is not a folder (expected one subfolder per person)", args.folder)
        return 2
    if not 0 < args.target_fmr < 1 or min(args.gallery_size) < 1:
        logger.error("--target-fmr must be in (0, 1) and --gallery-size values >= 1")
        return 2
    try:
        encoders, skipped = resolve_encoders(args.encoders, args.weights_dir)
    except MissingWeightsError as exc:
        logger.error("%s", exc)
        return 2
    targets = [(args.target_fmr, n) for n in args.gallery_size]
    result = calibrate_folder(args.folder, encoders, targets)
    report = render_report(result, [f"{s.name} ({s.reason})" for s in skipped])
    if args.db is not None:
        import duckdb

        run_id = args.run_id or f"calibrate-{uuid.uuid4().hex[:12]}"
        with duckdb.connect(str(args.db)) as conn:
            write_calibration(conn, result, run_id)
        logger.info("calibration written to %s (run_id %s)", args.db, run_id)
    if args.report is not None:
        args.report.write_text(report, encoding="utf-8")
        logger.info("report written to %s", args.report)
    else:
        sys.stdout.write(report)
    return 0
