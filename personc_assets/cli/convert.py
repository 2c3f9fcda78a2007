"""``personc convert SRC DST``: StyleGAN2 weights → safetensors + JSON (fast, code-free loading)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="convert StyleGAN2 weights (.pkl, rosinality .pt) to safetensors + JSON",
        description="Reads an official StyleGAN2-ADA snapshot (.pkl, with an allow-list unpickler that never "
                    "runs code from the file), a rosinality .pt checkpoint, or an already converted file, "
                    "and writes G_ema's weights under their official names to DST (.safetensors) with the "
                    "generator config in its header and in a sidecar DST.json.")
    p.add_argument("src", type=Path, help="weights file: .pkl, .pt/.pth or .safetensors")
    p.add_argument("dst", type=Path, help="output file, ending in .safetensors")
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.backbones.stylegan2.loading import SnapshotError, convert_snapshot, read_converted

    src, dst = Path(args.src), Path(args.dst)
    if dst.suffix != ".safetensors":
        log.error("DST must end in .safetensors, got %s", dst)
        return 2
    if dst.exists() and not args.force:
        log.error("%s exists; pass --force to overwrite it", dst)
        return 2
    try:
        out = convert_snapshot(src, dst)
    except FileNotFoundError as exc:
        log.error("%s", exc)
        return 2
    except SnapshotError as exc:
        log.error("cannot convert: %s", exc)
        return 1
    snap = read_converted(out)
    print(f"wrote {out} and {out.with_suffix('.json')}: {snap.config.img_resolution} px, "
          f"{len(snap.state_dict)} tensors, weights {snap.weights_hash()[:16]}")
    return 0
