"""What every asset value shares: a frozen dataclass that turns into plain JSON and back.

Each step of the pipeline returns one such value (``SourceSet``,
``EmbeddingIndexes``, ``GuardVerdicts``, ...), defined beside the step that
makes it (``pipeline/*.py``, ``redteam.py``). ``as_dict`` gives the JSON
object the Dagster IO manager stores between steps (and across runs);
``from_dict`` reads it back and raises ``MalformedValueError`` naming the
missing or unexpected keys when the JSON is not what the step writes.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Protocol, Self, runtime_checkable


class MalformedValueError(ValueError):
    """A stored asset value does not have the shape its type reads."""


@runtime_checkable
class AssetValue(Protocol):
    """A step's result that round-trips through JSON: ``from_dict(as_dict(x)) == x``."""

    def as_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Self: ...


def checked(d: Any, what: str, asset: str, required: Iterable[str],
            optional: Iterable[str] = ()) -> Mapping[str, Any]:
    """``d`` once it is a JSON object with every ``required`` key and no key outside
    ``required`` and ``optional``; else a ``MalformedValueError`` that names the keys.

    ``what`` names the value (``"SourceEntry"``), ``asset`` the asset whose step writes it.
    """
    if not isinstance(d, Mapping):
        raise MalformedValueError(f"{what} of {asset} must be a JSON object, got {type(d).__name__}; "
                                  f"re-materialize {asset}")
    required = tuple(required)
    missing = [k for k in required if k not in d]
    unexpected = sorted(set(d) - set(required) - set(optional))
    if missing or unexpected:
        problems = ([f"lacks {', '.join(map(repr, missing))}"] if missing else []) + \
                   ([f"has unknown {', '.join(map(repr, unexpected))}"] if unexpected else [])
        raise MalformedValueError(f"{what} of {asset} {' and '.join(problems)}: it was not written by this "
                                  f"version's {asset} step; re-materialize {asset}")
    return d
