"""One registry helper for every extension point (advantages, losses, KL estimators, tasks, predictors...).

It lives in theory/ because theory/ sits at the bottom of the dependency graph
(theory <- trainer <- probes), so every package can use it.

Rules (docs/architecture.md, "Extension points", which lists every registry and its signature): one
signature per registry, duplicates raise, unknown names list the known ones, no aliases.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """An unknown registry name; ``str()`` is a one-line message listing the known names."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want a plain sentence.
        return str(self.args[0])


class Registry(Generic[T]):
    """A name -> object map with a decorator for registration.

    >>> r = Registry("colour")
    >>> @r.register("red")
    ... def red(): return 1
    >>> r.get("red")()
    1
    >>> r.get("blue")
    Traceback (most recent call last):
    ...
    solidrl.theory.registry.UnknownNameError: unknown colour 'blue'; known: red
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> T:
        return self.register(name)(obj)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
            ) from None

    def check(self, name: str) -> str:
        """Validate a name without fetching (for config validation)."""
        self.get(name)
        return name

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
