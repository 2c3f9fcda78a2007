"""The IO manager that passes typed asset values between steps.

An asset returns its core value (``SourceSet``, ``EmbeddingIndexes``, ...);
the value is stored as the JSON of its ``as_dict`` in the same files, with
the same content, as ``JsonIOManager`` writes; a downstream asset gets it back
as the type its parameter is annotated with, through that type's
``from_dict``. Values stored by earlier runs load the same way, so a job that
starts half-way (a refresh, a re-run of the last steps) reads them typed.
"""

from __future__ import annotations

from typing import Any

from dagster import InputContext, OutputContext

from ..core.values import AssetValue
from .resources import JsonIOManager


class AssetValueIOManager(JsonIOManager):
    """``JsonIOManager`` for typed values: ``as_dict`` on the way out, ``from_dict`` of the
    input's annotated type on the way in (a parameter annotated ``dict`` gets the JSON object)."""

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        super().handle_output(context, obj.as_dict() if isinstance(obj, AssetValue) else obj)

    def load_input(self, context: InputContext) -> Any:
        data = super().load_input(context)
        kind = context.dagster_type.typing_type
        if isinstance(kind, type) and issubclass(kind, AssetValue):
            return kind.from_dict(data)
        return data
