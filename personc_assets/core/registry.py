"""A tiny name → factory registry shared by backbones and encoders."""

from __future__ import annotations

import contextlib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised when a plug-in name is not registered; lists the known names."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps plug-in names to factories. ``kind`` is used in error messages."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: register ``factory`` under ``name`` (names are unique)."""

        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._factories[name] = factory
            return factory

        return decorate

    @contextlib.contextmanager
    def temporarily(self, name: str, factory: Callable[..., T]) -> Iterator[None]:
        """Register ``factory`` as ``name`` for the duration of a ``with`` block (tests, plug-in trials)."""
        self.register(name)(factory)
        try:
            yield
        finally:
            del self._factories[name]

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._factories))

    def create(self, name: str, **kwargs) -> T:
        """Build the plug-in registered as ``name`` with ``kwargs``."""
        try:
            factory = self._factories[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}"
            ) from None
        return factory(**kwargs)
