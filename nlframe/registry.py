"""Plugin registry: entry points of group ``nlframe`` → typed lookup per kind.

Built-in plugins are ordinary entry points of nlframe's own distribution, so
they load exactly like third-party ones. Behaviour a user can act on:

* unknown name → :class:`UnknownPluginError` listing the registered names and
  the closest match;
* a name registered twice in one kind → :class:`DuplicatePluginError` naming
  both distributions;
* a plugin that fails to import (or whose hook raises) → one-line
  :class:`PluginLoadWarning` naming the entry point, its distribution and the
  exception; all other plugins keep working;
* ``NLFRAME_DISABLE_PLUGINS=a,b`` skips the entry points named ``a`` and ``b``
  (or ``dist:a`` to name one distribution's entry point);
  ``NLFRAME_ONLY_PLUGINS=a,b`` loads only those.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import os
import re
import threading
import warnings
from typing import Any, Iterable

import attrs
import pluggy

from . import hookspecs
from .hookspecs import KINDS

__all__ = [
    "PluginEntry",
    "Registry",
    "PluginError",
    "UnknownPluginError",
    "DuplicatePluginError",
    "PluginLoadWarning",
    "get_registry",
    "reload_registry",
    "ENTRY_POINT_GROUP",
]

ENTRY_POINT_GROUP = "nlframe"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")


class PluginError(Exception):
    """Base class of registry errors."""


class UnknownPluginError(PluginError, ValueError, KeyError):
    """A name that no plugin of that kind registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind, self.name, self.known = kind, name, sorted(known)
        close = difflib.get_close_matches(name, self.known, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        listing = ", ".join(self.known) or "(none registered)"
        self.message = f"unknown {kind} {name!r}{hint} Registered {kind} plugins: {listing}"
        self.suggestion = close[0] if close else None
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return self.message


class DuplicatePluginError(PluginError):
    """Two plugins registered the same name within one kind."""


class PluginLoadWarning(UserWarning):
    """A plugin could not be loaded; the others still work."""


@attrs.frozen
class PluginEntry:
    """One registered plugin: what it is and where it came from."""

    kind: str
    name: str
    obj: Any = attrs.field(eq=False, repr=False)
    distribution: str
    version: str
    description: str
    source: str  # "<entry point name>" or the module/object name for local plugins

    def as_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "description": self.description,
            "source": self.source,
        }


def _first_doc_line(obj: Any) -> str:
    doc = getattr(obj, "__doc__", None) or ""
    for line in doc.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def _env_list(var: str) -> set[str]:
    raw = os.environ.get(var, "")
    return {x.strip() for x in raw.split(",") if x.strip()}


class Registry:
    """All registered plugins, by kind and name.

    Use :func:`get_registry` for the process-wide instance loaded from entry
    points. A fresh ``Registry()`` is empty; ``load_entry_points()`` fills it and
    ``register_plugin(module)`` adds a local plugin (useful in tests and
    notebooks).
    """

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._entries: dict[str, dict[str, PluginEntry]] = {k: {} for k in KINDS}
        self.load_errors: list[str] = []
        self._lock = threading.RLock()

    # -- loading -----------------------------------------------------------
    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Load every entry point of ``group``, honouring the disable/allow lists."""
        disabled = _env_list("NLFRAME_DISABLE_PLUGINS")
        only = _env_list("NLFRAME_ONLY_PLUGINS")
        seen: set[tuple[str, str]] = set()
        for ep in sorted(md.entry_points(group=group), key=lambda e: (_dist_name(e), e.name)):
            dist, version = _dist_name(ep), _dist_version(ep)
            if (dist, ep.name) in seen:  # the same distribution found twice on sys.path
                continue
            seen.add((dist, ep.name))
            keys = {ep.name, f"{dist}:{ep.name}"}
            if keys & disabled or (only and not keys & only):
                continue
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - any failure must not break the rest
                self._warn(f"plugin {ep.name!r} from distribution {dist!r} failed to import: "
                           f"{type(exc).__name__}: {exc}")
                continue
            self.register_plugin(module, name=f"{dist}:{ep.name}", distribution=dist,
                                 version=version, source=ep.name)

    def register_plugin(self, plugin: Any, *, name: str | None = None,
                        distribution: str = "<local>", version: str = "",
                        source: str | None = None) -> None:
        """Register a module/object holding ``@nlframe.hookimpl`` functions.

        Its hooks run immediately; what they register is attributed to
        ``distribution``. A hook that raises is reported as a
        :class:`PluginLoadWarning` and nothing it registered is kept.
        """
        with self._lock:
            plugin_name = name or getattr(plugin, "__name__", None) or repr(plugin)
            try:
                self.pm.register(plugin, name=plugin_name)
            except ValueError as exc:
                raise DuplicatePluginError(f"plugin {plugin_name!r} is already registered") from exc
            source = source or plugin_name
            for kind in KINDS:
                caller = getattr(self.pm.hook, f"nlframe_register_{kind}")
                for impl in caller.get_hookimpls():
                    if impl.plugin is not plugin:
                        continue
                    added: list[str] = []
                    register = self._make_register(kind, distribution, version, source, added)
                    try:
                        impl.function(register=register)
                    except DuplicatePluginError:
                        for n in added:
                            del self._entries[kind][n]
                        raise
                    except Exception as exc:  # noqa: BLE001
                        for n in added:
                            del self._entries[kind][n]
                        self._warn(f"plugin {source!r} from distribution {distribution!r} "
                                   f"failed in nlframe_register_{kind}: {type(exc).__name__}: {exc}")

    def unregister_plugin(self, plugin: Any) -> None:
        """Remove a plugin registered with :meth:`register_plugin` and its entries."""
        with self._lock:
            name = self.pm.get_name(plugin)
            self.pm.unregister(plugin)
            for kind in KINDS:
                for n, e in list(self._entries[kind].items()):
                    if e.source == name or e.source == getattr(plugin, "__name__", None):
                        del self._entries[kind][n]

    def _make_register(self, kind, distribution, version, source, added):
        def register(name: str, obj: Any, *, description: str | None = None) -> None:
            if not isinstance(name, str) or not _NAME_RE.match(name):
                raise ValueError(f"invalid {kind} plugin name {name!r}: use lower case letters, "
                                 "digits, '-', '_' and '.'")
            if obj is None:
                raise ValueError(f"{kind} plugin {name!r}: registered object is None")
            old = self._entries[kind].get(name)
            if old is not None:
                raise DuplicatePluginError(
                    f"{kind} plugin {name!r} is registered twice: by distribution "
                    f"{old.distribution!r} ({old.source}) and by distribution {distribution!r} "
                    f"({source}). Uninstall one, or disable one with "
                    f"NLFRAME_DISABLE_PLUGINS={source}"
                )
            self._entries[kind][name] = PluginEntry(
                kind=kind, name=name, obj=obj, distribution=distribution, version=version,
                description=description or _first_doc_line(obj), source=source)
            added.append(name)

        return register

    def _warn(self, message: str) -> None:
        self.load_errors.append(message)
        warnings.warn(message, PluginLoadWarning, stacklevel=3)

    # -- lookup ------------------------------------------------------------
    def _check_kind(self, kind: str) -> None:
        if kind not in self._entries:
            raise ValueError(f"unknown plugin kind {kind!r}; kinds are: {', '.join(KINDS)}")

    def entry(self, kind: str, name: str) -> PluginEntry:
        """The :class:`PluginEntry` of ``name``; unknown names list the valid ones."""
        self._check_kind(kind)
        try:
            return self._entries[kind][name]
        except (KeyError, TypeError):
            raise UnknownPluginError(kind, str(name), self._entries[kind]) from None

    def get(self, kind: str, name: str) -> Any:
        """The object registered as ``name`` in ``kind``."""
        return self.entry(kind, name).obj

    def names(self, kind: str) -> list[str]:
        self._check_kind(kind)
        return sorted(self._entries[kind])

    def entries(self, kind: str | None = None) -> list[PluginEntry]:
        kinds = KINDS if kind is None else (kind,)
        for k in kinds:
            self._check_kind(k)
        return [self._entries[k][n] for k in kinds for n in sorted(self._entries[k])]

    def __contains__(self, key: tuple[str, str]) -> bool:
        kind, name = key
        return name in self._entries.get(kind, {})


def _dist_name(ep: md.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "<unknown>"


def _dist_version(ep: md.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.version if dist is not None else ""


_REGISTRY: Registry | None = None
_REGISTRY_LOCK = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry, loaded from entry points on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        with _REGISTRY_LOCK:
            if _REGISTRY is None:
                reg = Registry()
                reg.load_entry_points()
                _REGISTRY = reg
    return _REGISTRY


def reload_registry() -> Registry:
    """Forget the loaded registry and load entry points again (after installs
    or a change of ``NLFRAME_DISABLE_PLUGINS``)."""
    global _REGISTRY
    with _REGISTRY_LOCK:
        _REGISTRY = None
    return get_registry()
