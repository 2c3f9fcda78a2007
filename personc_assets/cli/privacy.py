"""``personc anonymize`` / ``personc cancelable`` / ``personc dp``: the privacy modes.

    personc anonymize [--out data/out] [--input PHOTO ...] [--strength 1.0] [--limit 3]
    personc cancelable enroll|revoke [--key-env PERSONC_CANCELABLE_KEY] [--context own|key] [--input PHOTO ...]
    personc dp [--attribute gender age] [--epsilon 1] [--mechanism laplace|gaussian] [--delta 0]
               [--width 2] [--budget-epsilon 4] [--limit 3]

Each runs the mode's job of the asset graph (``personc_anonymize``,
``personc_cancelable``, ``personc_dp``) through the same in-process runner as
``personc demo``: the pipeline's ingest/backbone/index assets on the configured
sources (the demo sources when none are given), with the same run settings as
``personc demo`` for those steps (--backbone, --backbone-options, --encoders,
--tau, --weights-dir, ...; see --help), then the mode's assets, the mode's
options as their run config. It writes PNGs under ``<out>/privacy/<mode>/``
and lineage rows into ``<out>/personc.duckdb``, records the run in the
project's Dagster instance (``personc ui`` shows it), and prints a JSON
summary. The cancelable key is read from an environment variable,
never from the command line (shell history) and never stored. ``cancelable enroll``
first measures whether templates on this backbone keep their properties and
exits 3, with the measured figures, when they do not. ``dp`` prints what its
epsilon covers and what it does not.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .run_options import add_deprecated_flag, add_run_options, run_config_from_args

if TYPE_CHECKING:
    from ..core.pipeline.config import RunConfig
    from ..runner import JobRun

logger = logging.getLogger(__name__)


#: run settings of generation and release only: the privacy modes have no flag for them
GENERATION_ONLY: tuple[str, ...] = ("num_samples", "max_attempts", "seed", "recipe_options", "novelty",
                                    "attribution_maps", "report_sources")


def _common(p: argparse.ArgumentParser) -> None:
    add_run_options(p, exclude=GENERATION_ONLY)
    add_deprecated_flag(p, "--weights", "--weights-dir", "weights_dir", type=Path)
    p.add_argument("--limit", type=int, default=3, help="source faces to process when no --input is given")
    p.add_argument("--input", type=Path, nargs="*", default=[], metavar="PHOTO", help="photos to process")


def register(subparsers: argparse._SubParsersAction) -> None:
    a = subparsers.add_parser("anonymize", help="replace a face's identity factors, keep the rest (guard-checked)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(a)
    a.add_argument("--strength", type=float, default=1.0, help="share of identity replaced, 0..1 (default 1)")
    a.add_argument("--attempts", type=int, default=4, help="donor draws per face (default 4)")
    a.set_defaults(func=run_anonymize)

    c = subparsers.add_parser("cancelable", help="keyed, revocable synthetic face templates",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("action", choices=("enroll", "revoke"))
    _common(c)
    c.add_argument("--key-env", default="PERSONC_CANCELABLE_KEY", help="environment variable holding the key")
    c.add_argument("--context", choices=("own", "key"), default="own", help="hair/background source")
    c.add_argument("--reason", default="revoked by user", help="revocation reason (revoke)")
    c.set_defaults(func=run_cancelable)

    d = subparsers.add_parser("dp", help="differentially private age/gender positions with a privacy ledger",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(d)
    d.add_argument("--attribute", nargs="+", default=["gender"], choices=("gender", "age"))
    d.add_argument("--epsilon", type=float, default=1.0, help="epsilon per attribute and face (default 1)")
    d.add_argument("--mechanism", choices=("laplace", "gaussian"), default="laplace")
    d.add_argument("--delta", type=float, default=0.0, help="delta (Gaussian only)")
    d.add_argument("--width", type=float, default=2.0, help="clip range in coordinate sd (default 2)")
    d.add_argument("--budget-epsilon", type=float, default=4.0, help="epsilon budget per face (default 4)")
    d.add_argument("--budget-delta", type=float, default=1e-5, help="delta budget per face")
    d.set_defaults(func=run_dp)


def _run_config(args: argparse.Namespace) -> RunConfig | None:
    """The run settings of the flags, or None (after saying why) when a flag is wrong."""
    try:
        return run_config_from_args(args)
    except ValueError as exc:
        logger.error("%s", exc)
        return None


def _run_mode(cfg: RunConfig, job: str, options: dict[str, Any]) -> JobRun:
    """Run the mode's job, ``options`` as its mode asset's run config (``defs.privacy.MODE_ASSETS``)."""
    from ..defs.privacy import MODE_ASSETS
    from ..runner import run_job

    return run_job(cfg, job, {MODE_ASSETS[job]: options})


def _print(summary: dict) -> int:
    sys.stdout.write(json.dumps(summary, indent=1, default=str) + "\n")
    return 0


def _failed(run: JobRun) -> int:
    logger.error("%s", run.failure())
    return 1


def _inputs(args: argparse.Namespace) -> list[str]:
    return [str(p.resolve()) for p in args.input]


def run_anonymize(args: argparse.Namespace) -> int:
    from ..core.privacy.results import AnonymizedFaces, RecordedRanking

    if not 0.0 <= args.strength <= 1.0:
        logger.error("--strength must be in [0, 1], got %s", args.strength)
        return 2
    cfg = _run_config(args)
    if cfg is None:
        return 2
    run = _run_mode(cfg, "personc_anonymize", {"strength": args.strength, "attempts": args.attempts,
                                                "limit": args.limit, "inputs": _inputs(args)})
    if not run.success:
        return _failed(run)
    ranking, out = run.value("factor_identity_ranking", RecordedRanking), run.value("anonymized_faces", AnonymizedFaces)
    assert ranking is not None and out is not None, "a successful run stored both values"
    return _print({"run_id": run.run_id, "factor_order": list(ranking.ranking.order()), **out.as_dict()})


def run_cancelable(args: argparse.Namespace) -> int:
    from ..core.privacy.cancelable import CancelableKeyError
    from ..core.privacy.results import CancelableTemplates

    key = os.environ.get(args.key_env)
    if not key:
        logger.error("environment variable %s is not set: put the secret key there (at least 12 characters)",
                     args.key_env)
        return 2
    if args.action == "revoke":
        from ..core.lineage.store import LineageStore
        from ..core.pipeline.config import Workspace
        from ..core.privacy import steps

        try:
            kid = steps.revoke_key(LineageStore.open(Workspace(args.out_dir).db_path), key, args.reason)
        except CancelableKeyError as exc:
            logger.error("%s", exc)
            return 2
        return _print({"revoked_key_id": kid})
    cfg = _run_config(args)
    if cfg is None:
        return 2
    run = _run_mode(cfg, "personc_cancelable", {"key_env": args.key_env, "context": args.context,
                                                 "limit": args.limit, "inputs": _inputs(args)})
    if run.error_type == "CancelableKeyError":
        logger.error("%s", run.error)
        return 2
    if run.error_type == "CancelableUnavailableError":
        # measured refusal: the properties are recorded in privacy_cancelable_assessment
        logger.error("%s", run.error)
        _print({"refused": run.error})
        return 3
    if not run.success:
        return _failed(run)
    out = run.value("cancelable_templates", CancelableTemplates)
    assert out is not None, "a successful run stored its value"
    return _print({"run_id": run.run_id, **out.as_dict()})


def run_dp(args: argparse.Namespace) -> int:
    from ..core.privacy.results import DPReleases

    cfg = _run_config(args)
    if cfg is None:
        return 2
    run = _run_mode(cfg, "personc_dp", {
        "attributes": list(args.attribute), "epsilon": args.epsilon, "mechanism": args.mechanism,
        "delta": args.delta, "width": args.width, "epsilon_per_face": args.budget_epsilon,
        "delta_per_face": args.budget_delta, "limit": args.limit})
    if not run.success:
        return _failed(run)
    out = run.value("dp_attribute_releases", DPReleases)
    assert out is not None, "a successful run stored its value"
    return _print({"run_id": run.run_id, **out.as_dict()})
