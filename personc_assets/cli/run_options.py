"""``RunConfig``'s fields as command-line options (``personc demo`` and the privacy modes).

Each field becomes one flag, ``--max-attempts`` for ``max_attempts``, with the
field's default and help text; its type decides how the value is read:
numbers and text as given, booleans as ``--x`` / ``--no-x``, tuples as
comma-separated names, mappings as a JSON object. ``taus`` and ``bare_tau``
are both read from ``--tau``. ``--backbone-weights FILE`` is shorthand for
the ``weights`` backbone option.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Collection

from ..core.pipeline.config import RunConfig, Setting, run_settings

#: flags not spelled ``--`` + the field name with dashes
FLAGS: dict[str, tuple[str, ...]] = {"out_dir": ("--out",), "num_samples": ("--num_samples", "--num-samples")}
#: old spellings of a field's flag, accepted with a deprecation message
DEPRECATED_FLAGS: dict[str, tuple[str, ...]] = {"witness_encoders": ("--audit-encoders",)}
#: folders: read as paths (``data/out/`` and ``data/out`` are one setting)
PATH_FIELDS: tuple[str, ...] = ("out_dir", "sources_a", "sources_b", "weights_dir")
#: the fields that ``--tau`` sets (see ``parse_taus``)
TAU_FIELDS: tuple[str, ...] = ("taus", "bare_tau")
METAVARS: dict[type, str] = {int: "N", float: "NUMBER", str: "NAME"}
TAU_HELP = ("threshold per encoder, e.g. --tau dlib=0.90; a bare number is an ArcFace cosine and applies to "
            "ArcFace only (repeatable; default: each encoder's own)")
BACKBONE_WEIGHTS_HELP = "backbone weights file (stylegan2); the same as the backbone option \"weights\""
SETTINGS: dict[str, Setting] = {s.name: s for s in run_settings()}


def flags(setting: Setting) -> tuple[str, ...]:
    return FLAGS.get(setting.name, ("--" + setting.name.replace("_", "-"),))


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


class DeprecatedFlag(argparse.Action):
    """An old spelling of a flag: stores into the new flag's ``dest`` and says which flag to use."""

    def __init__(self, option_strings: list[str], dest: str, replacement: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.replacement = replacement

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        sys.stderr.write(f"{parser.prog}: {option_string} is deprecated, use {self.replacement}\n")
        setattr(namespace, self.dest, values)


def add_deprecated_flag(parser: argparse.ArgumentParser, old: str, new: str, dest: str, **kwargs: Any) -> None:
    """Accept ``old`` as a hidden, deprecated spelling of ``new`` (which must already be added)."""
    parser.add_argument(old, dest=dest, action=DeprecatedFlag, replacement=new, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS, **kwargs)


def add_run_options(parser: argparse.ArgumentParser, exclude: Collection[str] = ()) -> None:
    """One option per ``RunConfig`` field (except ``exclude``), defaults and help from the field."""
    for s in run_settings():
        if s.name not in exclude:
            add_setting_option(parser, s.name)


def add_setting_option(parser: argparse.ArgumentParser, name: str) -> None:
    """The option of ``RunConfig`` field ``name`` (``--tau`` for ``taus``; ``bare_tau`` adds nothing)."""
    s = SETTINGS[name]
    if name in TAU_FIELDS:
        if name == TAU_FIELDS[0]:
            parser.add_argument("--tau", action="append", metavar="[ENCODER=]VALUE", help=TAU_HELP)
        return
    kwargs: dict[str, Any] = {"dest": name, "default": s.default}
    if s.value_type is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif s.is_sequence:  # as typed: comma-separated
        kwargs.update(default=None if s.default is None else ",".join(s.default), metavar="NAME,...")
    elif s.is_mapping:  # as typed: a JSON object
        kwargs.update(default=json.dumps(s.default), metavar="JSON")
    elif name in PATH_FIELDS:
        kwargs.update(type=Path, default=None if s.default is None else Path(s.default), metavar="DIR")
    else:
        kwargs.update(type=s.value_type, metavar=METAVARS.get(s.value_type))
    parser.add_argument(*flags(s), help=_help(s), **kwargs)
    for old in DEPRECATED_FLAGS.get(name, ()):
        add_deprecated_flag(parser, old, flags(s)[0], name)
    if name == "backbone_options":
        parser.add_argument("--backbone-weights", type=Path, metavar="FILE", help=BACKBONE_WEIGHTS_HELP)


def _help(s: Setting) -> str:
    if s.default is None or s.value_type is bool or s.is_mapping or s.is_sequence:
        return s.help
    return f"{s.help} (default {s.default})"


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    """The ``RunConfig`` of parsed options; ``ValueError`` names the bad flag and what it needs."""
    values: dict[str, Any] = {}
    if "tau" in args:
        try:
            values["taus"], values["bare_tau"] = parse_taus(args.tau)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(str(exc)) from None
    sources_a, sources_b = getattr(args, "sources_a", None), getattr(args, "sources_b", None)
    if (sources_a is None) != (sources_b is None):
        raise ValueError("give both --sources-a and --sources-b (or neither for the demo photos)")
    for flag, folder in (("--sources-a", sources_a), ("--sources-b", sources_b)):
        if folder is not None and not folder.is_dir():
            raise ValueError(f"{flag} {folder} is not a folder")
    for name, s in SETTINGS.items():
        if name not in args or name in TAU_FIELDS:
            continue
        value = getattr(args, name)
        if s.is_mapping:
            value = _json_object(flags(s)[0], value)
        elif s.is_sequence:
            value = tuple(e.strip() for e in value.split(",")) if value else ()
        elif name in PATH_FIELDS and value is not None:
            value = str(value)
        values[name] = value
    weights = getattr(args, "backbone_weights", None)
    if weights is not None:
        if not weights.is_file():
            raise ValueError(f"--backbone-weights {weights} is not a file")
        values["backbone_options"] = {**values["backbone_options"], "weights": str(weights.resolve())}
    return RunConfig(**values)


def _json_object(flag: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise ValueError(f"{flag} must be a JSON object ({exc})") from None
    return value
