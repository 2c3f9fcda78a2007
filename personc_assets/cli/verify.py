"""``personc verify FILE...``: read back the watermark and metadata of released faces.

For each file it prints the verdict (``verified``, ``watermark_only``,
``revoked``, ``metadata_only``, ``mismatch``, ``not_personc``), the reason,
the release id, the ``Synthetic`` flag, the watermark bits and the PersonC
metadata. A manifest (``--manifest``, or ``manifest.json`` next to the file or
one folder up) names releases whose metadata was stripped and the releases
that were revoked (withdrawn because they came to resemble a real person).
The exit code is 0 when every file is a PersonC release in force (verified,
or identified by its watermark alone, e.g. a JPEG re-share whose metadata was
stripped) and 1 otherwise: not a release, or a revoked one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from typing import Any

from ..core.explain.manifest import known_releases, load_manifest, revoked_releases
from ..core.explain.watermark import VerifyResult, verify_png


def register(subparsers) -> None:
    p = subparsers.add_parser("verify", help="check the watermark and synthetic-image metadata of files")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="image files (PNG, JPEG, ...)")
    p.add_argument("--manifest", type=Path, default=None,
                   help="manifest.json used to name releases whose metadata was stripped and to report "
                        "revoked releases (default: manifest.json next to the file or one folder up)")
    p.add_argument("--size", default=None, metavar="WxH",
                   help="decode after resizing to this size (for resized copies, e.g. 256x256)")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of text")
    p.set_defaults(func=run)


def _parse_size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--size must look like 256x256, got {text!r}") from None
    return w, h


def _manifest_for(path: Path, explicit: Path | None,
                  cache: dict[Path, dict[str, Any] | None]) -> dict[str, Any] | None:
    """The loaded manifest that speaks for ``path`` (None when there is none)."""
    candidates = [explicit] if explicit else [path.parent / "manifest.json", path.parent.parent / "manifest.json"]
    for cand in candidates:
        if cand is None:
            continue
        cand = cand.resolve()
        if cand not in cache:
            try:
                cache[cand] = load_manifest(cand) if cand.is_file() else None
            except ValueError:
                if explicit:
                    raise
                cache[cand] = None
        if cache[cand] is not None:
            return cache[cand]
    return None


def _as_dict(res: VerifyResult) -> dict[str, object]:
    return {"file": str(res.path), "status": res.status, "is_personc": res.is_personc, "in_force": res.in_force,
            "reason": res.reason,
            "release_id": res.release_id, "synthetic": res.synthetic, "watermark_hex": res.decoded_hex,
            "magic_bits_agree": res.magic_agree, "bit_accuracy": res.bit_accuracy,
            "size": list(res.size), "metadata": dict(res.metadata)}


def _text(res: VerifyResult) -> str:
    mark = "OK " if res.in_force else "REVOKED " if res.status == "revoked" else "NO "
    lines = [f"{mark}{res.path}: {res.status} — {res.reason}"]
    lines.append(f"  release id: {res.release_id or '-'}")
    lines.append(f"  Synthetic: {res.metadata.get('Synthetic', '(absent)')}")
    wm = res.decoded_hex or "unreadable"
    acc = f", {res.bit_accuracy:.0%} of bits match" if res.bit_accuracy is not None else ""
    lines.append(f"  watermark: {wm} (magic {res.magic_agree}/16{acc})")
    for key, value in sorted(res.metadata.items()):
        if key != "Synthetic":
            lines.append(f"  {key}: {value}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    size = _parse_size(args.size)
    cache: dict[Path, dict[str, Any] | None] = {}
    results = []
    for path in args.files:
        if not path.exists():
            results.append(VerifyResult(path, "not_personc", "file not found"))
            continue
        try:
            manifest = _manifest_for(path, args.manifest, cache)
        except ValueError as exc:
            sys.stderr.write(f"personc verify: {exc}\n")
            return 2
        known = known_releases(manifest) if manifest is not None else None
        revoked = revoked_releases(manifest) if manifest is not None else None
        results.append(verify_png(path, known_releases=known, expected_size=size, revoked=revoked))
    if args.json:
        sys.stdout.write(json.dumps([_as_dict(r) for r in results], indent=2) + "\n")
    else:
        sys.stdout.write("\n".join(_text(r) for r in results) + "\n")
        ok, revoked = sum(r.in_force for r in results), sum(r.status == "revoked" for r in results)
        sys.stdout.write(f"{ok} of {len(results)} file(s) are PersonC releases in force"
                         + (f"; {revoked} revoked (withdrawn: do not use)" if revoked else "") + "\n")
    return 0 if all(r.in_force for r in results) else 1
