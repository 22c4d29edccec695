"""One registry helper for every extension point (advantages, losses, KL estimators, tasks, predictors...).

It lives in theory/ because theory/ sits at the bottom of the dependency graph
(theory <- trainer <- probes), so every package can use it.

Rules (docs/architecture.md, "Extension points", which lists every registry and its signature): one
signature per registry, duplicates raise, unknown names list the known ones, no aliases.

Plugins and parameters (docs/plugins.md) are generic over Registry, so every registry, built in or
added later, gets them with no extra code:
  - origin: each entry remembers where it was registered ("built in", or the plugin file that
    trainer/plugins.py is importing at the time); a name registered twice raises RegistryCollision
    naming both origins, and `remove_origin` takes a plugin's entries out again (a failed import).
  - parameters: an entry's parameters are its keyword-only arguments (after `*`; for a class, those
    of its __init__), each annotated int, float, bool or str and given a default. `register` checks
    that convention, so a malformed parameter fails where the entry is defined; `params(name)` lists
    them, `bind(name, values)` checks and coerces a mapping of values against them.
  - selecting field: a registry built with `field="algo.advantage"` is the one that config field
    selects from; `by_field` finds it, which is how `--set algo.advantage.k=4` finds parameter k.
"""
from __future__ import annotations

import inspect
import typing
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, Optional, TypeVar

T = TypeVar("T")

BUILTIN = "built in"
PARAM_TYPES = (int, float, bool, str)

_ALL: list["Registry"] = []
_loading: list[str] = []  # the plugin file being imported (a stack; trainer/plugins.py pushes it)


class UnknownNameError(KeyError):
    """An unknown registry name; ``str()`` is a one-line message listing the known names."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want a plain sentence.
        return str(self.args[0])


class RegistryCollision(ValueError):
    """A name registered twice; the message names both origins."""


class ParamError(ValueError):
    """A parameter value or declaration that breaks the convention; one line naming what is allowed."""


@dataclass(frozen=True)
class Param:
    """One declared parameter of a registered entry: `name: type = default` after the `*`."""

    name: str
    type: type
    default: Any

    def describe(self) -> str:
        return f"{self.name} ({self.type.__name__}, default {self.default!r})"


def declared_params(obj: Any, where: str = "") -> dict[str, Param]:
    """The keyword-only parameters of a function (or of a class's __init__), checked against the convention.

    Raises ParamError when one lacks an annotation of int/float/bool/str or a default of that type.
    """
    fn = obj.__init__ if inspect.isclass(obj) else obj
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return {}
    kw = [p for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    if not kw:
        return {}
    try:
        hints = typing.get_type_hints(fn)
    except Exception as e:  # noqa: BLE001 - an unresolvable annotation is the plugin author's mistake
        raise ParamError(f"{where}: cannot read the parameter annotations ({type(e).__name__}: {e})") from None
    out = {}
    for p in kw:
        tp = hints.get(p.name)
        if tp not in PARAM_TYPES:
            got = "no annotation" if tp is None else f"{getattr(tp, '__name__', tp)!r}"
            raise ParamError(f"{where}: parameter {p.name!r} must be annotated int, float, bool or str (got {got})")
        if p.default is inspect.Parameter.empty:
            raise ParamError(f"{where}: parameter {p.name!r} needs a default (e.g. {p.name}: {tp.__name__} = ...)")
        ok = isinstance(p.default, tp) and not (tp is not bool and isinstance(p.default, bool))
        if tp is float and isinstance(p.default, int) and not isinstance(p.default, bool):
            ok = True
        if not ok:
            raise ParamError(f"{where}: parameter {p.name!r}: default {p.default!r} is not a {tp.__name__}")
        out[p.name] = Param(p.name, tp, float(p.default) if tp is float else p.default)
    return out


def coerce(value: Any, tp: type, what: str) -> Any:
    """A TOML value or a --set string as a parameter of type tp (never evaluated); ParamError otherwise."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ParamError(f"{what}: expected {'true/false' if tp is bool else 'an integer' if tp is int else 'a number' if tp is float else 'a string'}, got {value!r}")


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

    def __init__(self, kind: str, field: Optional[str] = None):
        self.kind = kind
        self.field = field
        """The config field that selects one entry (e.g. 'algo.advantage'); None if none does."""
        self._items: dict[str, T] = {}
        self._origin: dict[str, str] = {}
        self._params: dict[str, dict[str, Param]] = {}
        _ALL.append(self)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register obj under `name` (its keyword-only arguments are its parameters)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} names are non-empty strings, got {name!r}")

        def deco(obj: T) -> T:
            origin = _loading[-1] if _loading else BUILTIN
            if name in self._items:
                raise RegistryCollision(
                    f"{self.kind} {name!r} is already registered ({self._origin[name]}); "
                    f"pick another name (known: {', '.join(self.names())})")
            params = declared_params(obj, f"{self.kind} {name!r}")
            self._items[name] = obj
            self._origin[name] = origin
            self._params[name] = params
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

    def origin(self, name: str) -> str:
        """'built in', or the path of the plugin file that registered `name`."""
        self.get(name)
        return self._origin[name]

    def params(self, name: str) -> dict[str, Param]:
        """The declared parameters of entry `name` (keyword-only arguments), in signature order."""
        self.get(name)
        return dict(self._params[name])

    def bind(self, name: str, values: dict[str, Any], where: str = "") -> dict[str, Any]:
        """Check and coerce parameter values for entry `name`; ParamError names the allowed ones."""
        decl = self.params(name)
        where = where or (self.field or self.kind)
        out = {}
        for k, v in values.items():
            if k not in decl:
                allowed = ", ".join(p.describe() for p in decl.values()) or "none (it declares no parameters)"
                raise ParamError(f"{where}.{k}: unknown parameter of {self.kind} {name!r}; allowed: {allowed}")
            out[k] = coerce(v, decl[k].type, f"{where}.{k}")
        return out

    def resolved(self, name: str, values: dict[str, Any]) -> dict[str, Any]:
        """Every declared parameter of `name`: its default, replaced by `values` where given."""
        return {k: values.get(k, p.default) for k, p in self.params(name).items()}

    def remove_origin(self, origin: str) -> list[str]:
        """Take out every entry registered by `origin` (a plugin file); returns their names."""
        gone = [n for n, o in self._origin.items() if o == origin]
        for n in gone:
            del self._items[n], self._origin[n], self._params[n]
        return gone

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def registries() -> list[Registry]:
    """Every Registry built so far (in construction order)."""
    return list(_ALL)


def by_field(field: str) -> Optional[Registry]:
    """The registry the config field `field` selects from (Registry(..., field=...)), or None."""
    for r in _ALL:
        if r.field == field:
            return r
    return None


@contextmanager
def loading(origin: str):
    """Within this block, registrations are recorded as coming from `origin` (a plugin file)."""
    _loading.append(origin)
    try:
        yield
    finally:
        _loading.pop()


__all__ = ["Registry", "UnknownNameError", "RegistryCollision", "ParamError", "Param", "BUILTIN",
           "declared_params", "coerce", "registries", "by_field", "loading"]
