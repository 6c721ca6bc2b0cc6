"""Plugin registry: entry points of group ``nlframe`` → typed lookup per kind.

Built-in plugins are ordinary entry points of nlframe's own distribution, so
they load exactly like third-party ones (built-ins first). Behaviour a user can
act on:

* unknown name → :class:`UnknownPluginError` listing the registered names and
  the closest match;
* a name registered twice in one kind → :class:`DuplicatePluginError` naming
  the kind, the name and both distributions, and how to disable the
  distribution that brought the clash (``NLFRAME_DISABLE_PLUGINS=<dist>``);
* a plugin that fails to import, or whose hook raises (``SystemExit``
  included; only ``KeyboardInterrupt`` passes through) → one-line
  :class:`PluginLoadWarning` naming the entry point, its distribution and the
  exception; all other plugins keep working;
* a hook implementation whose name is not a hook of nlframe (a typo such as
  ``nlframe_register_optimiser``), or a hook function without
  ``@nlframe.hookimpl`` → :class:`UnknownHookWarning` naming the plugin, the
  function and the closest hook name;
* ``NLFRAME_DISABLE_PLUGINS=a,b`` skips every entry point that ``a`` or ``b``
  names: an entry-point name (``lion``), one distribution's entry point
  (``nlframe-lion:lion``) or a whole distribution (``nlframe-lion``;
  ``-``, ``_``, ``.`` and case are not significant); ``NLFRAME_ONLY_PLUGINS=a,b``
  loads only those, named the same ways.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import inspect
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
    "UnknownHookWarning",
    "get_registry",
    "reload_registry",
    "ENTRY_POINT_GROUP",
    "BUILTIN_DISTRIBUTION",
]

ENTRY_POINT_GROUP = "nlframe"
BUILTIN_DISTRIBUTION = "nlframe"
"""The distribution of the built-in plugins; its entry points load first."""
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")


class PluginError(Exception):
    """Base class of registry errors."""


class UnknownPluginError(PluginError, ValueError, KeyError):
    """A name that no plugin of that kind registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind, self.name, self.known = kind, name, sorted(known)
        close = difflib.get_close_matches(name, self.known, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}? Registered" if close else "; registered"
        listing = ", ".join(self.known) or "(none registered)"
        self.message = f"unknown {kind} {name!r}{hint} {kind} plugins: {listing}"
        self.suggestion = close[0] if close else None
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return self.message


class DuplicatePluginError(PluginError, ValueError):
    """Two plugins registered the same name within one kind.

    ``kind``, ``name`` and ``distributions`` (first, second) describe the clash
    (``None``/empty for a plugin object registered twice); ``clashes`` lists
    every clash an entry-point load found (``[self]`` for a single one).
    """

    def __init__(self, message: str, *, kind: str | None = None, name: str | None = None,
                 distributions: tuple[str, ...] = (),
                 clashes: "list[DuplicatePluginError] | None" = None):
        super().__init__(message)
        self.kind, self.name, self.distributions = kind, name, tuple(distributions)
        self.clashes = list(clashes) if clashes is not None else [self]


class PluginLoadWarning(UserWarning):
    """A plugin could not be loaded; the others still work."""


class UnknownHookWarning(PluginLoadWarning):
    """A plugin function looks like a hook but is never called (misspelt name or
    missing ``@nlframe.hookimpl``)."""


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


def _norm_dist(name: str) -> str:
    """A distribution name as PEP 503 compares it (``Foo_Bar.baz`` → ``foo-bar-baz``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _names_entry_point(tokens: set[str], dist: str, ep_name: str) -> bool:
    """Whether one of ``tokens`` (from NLFRAME_DISABLE/ONLY_PLUGINS) names this entry
    point: ``ep_name``, ``dist:ep_name`` or the distribution ``dist`` itself."""
    for token in tokens:
        prefix, sep, rest = token.partition(":")
        if token == ep_name or _norm_dist(token) == _norm_dist(dist):
            return True
        if sep and rest == ep_name and _norm_dist(prefix) == _norm_dist(dist):
            return True
    return False


def _describe(exc: BaseException) -> str:
    """``Type: message`` (just ``Type`` when the message is empty, e.g. ``sys.exit()``)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
        self._from_entry_points: set[tuple[str, str]] = set()  # (distribution, entry point)
        self._lock = threading.RLock()

    # -- loading -----------------------------------------------------------
    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Load every entry point of ``group`` (the built-in distribution first),
        honouring NLFRAME_DISABLE_PLUGINS / NLFRAME_ONLY_PLUGINS.

        Name clashes do not stop the other plugins from loading; afterwards one
        :class:`DuplicatePluginError` reports all of them.
        """
        disabled = _env_list("NLFRAME_DISABLE_PLUGINS")
        only = _env_list("NLFRAME_ONLY_PLUGINS")
        seen: set[tuple[str, str]] = set()
        clashes: list[DuplicatePluginError] = []
        order = lambda e: (_dist_name(e) != BUILTIN_DISTRIBUTION, _dist_name(e), e.name)  # noqa: E731
        for ep in sorted(md.entry_points(group=group), key=order):
            dist, version = _dist_name(ep), _dist_version(ep)
            if (dist, ep.name) in seen:  # the same distribution found twice on sys.path
                continue
            seen.add((dist, ep.name))
            if _names_entry_point(disabled, dist, ep.name) or (
                    only and not _names_entry_point(only, dist, ep.name)):
                continue
            try:
                module = ep.load()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - SystemExit too: never end the process
                self._warn(f"plugin {ep.name!r} from distribution {dist!r} failed to import: "
                           f"{_describe(exc)}")
                continue
            self._from_entry_points.add((dist, ep.name))
            try:
                self.register_plugin(module, name=f"{dist}:{ep.name}", distribution=dist,
                                     version=version, source=ep.name)
            except DuplicatePluginError as exc:
                clashes.extend(exc.clashes)
        if len(clashes) == 1:
            raise clashes[0]
        if clashes:
            raise DuplicatePluginError(
                f"{len(clashes)} plugin name clashes:\n" + "\n".join(f"  {c}" for c in clashes),
                clashes=clashes)

    def register_plugin(self, plugin: Any, *, name: str | None = None,
                        distribution: str = "<local>", version: str = "",
                        source: str | None = None) -> None:
        """Register a module/object holding ``@nlframe.hookimpl`` functions.

        Its hooks run immediately; what they register is attributed to
        ``distribution``. A hook that raises (``SystemExit`` included) or a
        hook with a wrong signature is reported as a :class:`PluginLoadWarning`
        and nothing that hook registered is kept; a misspelt hook name is
        reported as an :class:`UnknownHookWarning`. A name that is already
        registered raises :class:`DuplicatePluginError` and removes the whole
        plugin again.
        """
        with self._lock:
            plugin_name = name or getattr(plugin, "__name__", None) or repr(plugin)
            source = source or plugin_name
            try:
                self.pm.register(plugin, name=plugin_name)
            except ValueError as exc:
                raise DuplicatePluginError(f"plugin {plugin_name!r} is already registered") from exc
            except pluggy.PluginValidationError as exc:  # e.g. a hook argument not named register
                self._warn(f"plugin {source!r} from distribution {distribution!r} is invalid: "
                           f"{exc}")
                return
            self._check_hook_names(plugin, source, distribution)
            added: list[tuple[str, str]] = []
            try:
                for kind in KINDS:
                    self._run_hook(plugin, kind, distribution, version, source, added)
            except BaseException:  # a clash or KeyboardInterrupt: leave no trace of the plugin
                for k, n in added:
                    del self._entries[k][n]
                self.pm.unregister(plugin)
                raise

    def _run_hook(self, plugin, kind, distribution, version, source, added) -> None:
        """Call ``plugin``'s ``nlframe_register_<kind>``; a failing hook is warned about
        and its entries rolled back, a clash (even one the hook swallowed) raised."""
        caller = getattr(self.pm.hook, f"nlframe_register_{kind}")
        for impl in caller.get_hookimpls():
            if impl.plugin is not plugin:
                continue
            mark = len(added)
            clashes: list[DuplicatePluginError] = []
            register = self._make_register(kind, distribution, version, source, added, clashes)
            try:
                impl.function(register=register)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - SystemExit too: never end the process
                if clashes:
                    raise clashes[0] from None
                for k, n in added[mark:]:
                    del self._entries[k][n]
                del added[mark:]
                self._warn(f"plugin {source!r} from distribution {distribution!r} "
                           f"failed in nlframe_register_{kind}: {_describe(exc)}")
                continue
            if clashes:
                raise clashes[0]

    def _check_hook_names(self, plugin: Any, source: str, distribution: str) -> None:
        """Warn about functions of ``plugin`` that look like hooks but will never be
        called: ``@nlframe.hookimpl`` on an unknown hook name, or a function named
        ``nlframe_register_*`` without the marker."""
        valid = [f"nlframe_register_{k}" for k in KINDS]
        where = f"plugin {source!r} from distribution {distribution!r}"

        def closest(name: str) -> str:
            match = difflib.get_close_matches(name, valid, n=1, cutoff=0.9)  # the prefix is shared
            return f"did you mean {match[0]!r}?" if match else f"hooks are: {', '.join(valid)}"

        for caller in self.pm.get_hookcallers(plugin) or []:
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin and not caller.has_spec() and not impl.optionalhook:
                    self._warn(f"{where} implements unknown hook {caller.name!r}, which is "
                               f"never called; {closest(caller.name)}", UnknownHookWarning)
        for attr in dir(plugin):
            if not attr.startswith("nlframe_register"):
                continue
            obj = inspect.getattr_static(plugin, attr, None)
            if inspect.isfunction(obj) and getattr(obj, f"{hookspecs.PROJECT}_impl", None) is None:
                hint = "" if attr in valid else f"; {closest(attr)}"
                self._warn(f"{where} defines {attr!r} without @nlframe.hookimpl, so it is never "
                           f"called{hint}", UnknownHookWarning)

    def unregister_plugin(self, plugin: Any) -> None:
        """Remove a plugin registered with :meth:`register_plugin` and its entries."""
        with self._lock:
            name = self.pm.get_name(plugin)
            self.pm.unregister(plugin)
            for kind in KINDS:
                for n, e in list(self._entries[kind].items()):
                    if e.source == name or e.source == getattr(plugin, "__name__", None):
                        del self._entries[kind][n]

    def _make_register(self, kind, distribution, version, source, added, clashes):
        def register(name: str, obj: Any, *, description: str | None = None) -> None:
            if not isinstance(name, str) or not _NAME_RE.match(name):
                raise ValueError(f"invalid {kind} plugin name {name!r}: use lower case letters, "
                                 "digits, '-', '_' and '.'")
            if obj is None:
                raise ValueError(f"{kind} plugin {name!r}: registered object is None")
            old = self._entries[kind].get(name)
            if old is not None:
                clashes.append(self._clash(kind, name, old, distribution, source))
                raise clashes[-1]
            self._entries[kind][name] = PluginEntry(
                kind=kind, name=name, obj=obj, distribution=distribution, version=version,
                description=description or _first_doc_line(obj), source=source)
            added.append((kind, name))

        return register

    def _clash(self, kind: str, name: str, old: PluginEntry, distribution: str,
               source: str) -> DuplicatePluginError:
        """The error for ``name`` registered by ``distribution`` after ``old``, with the
        remedy: disable the (non-built-in) entry-point distribution that brought it."""
        def origin(dist: str, src: str) -> str:
            what = "entry point" if (dist, src) in self._from_entry_points else "plugin"
            return f"distribution {dist!r} ({what} {src!r})"

        disablable = [d for d, s in ((distribution, source), (old.distribution, old.source))
                      if (d, s) in self._from_entry_points and d != BUILTIN_DISTRIBUTION]
        disablable = list(dict.fromkeys(disablable))
        if disablable:
            first = disablable[0]
            remedy = (f"Uninstall {first!r}, or disable it with NLFRAME_DISABLE_PLUGINS={first}")
            if len(disablable) > 1:
                remedy += f" (or disable {disablable[1]!r}: NLFRAME_DISABLE_PLUGINS={disablable[1]})"
        else:
            remedy = "Register one of them under another name, or unregister it"
        return DuplicatePluginError(
            f"{kind} plugin {name!r} is registered twice: by {origin(old.distribution, old.source)}"
            f" and by {origin(distribution, source)}. {remedy}.",
            kind=kind, name=name, distributions=(old.distribution, distribution))

    def _warn(self, message: str, category: type[Warning] = PluginLoadWarning) -> None:
        self.load_errors.append(message)
        warnings.warn(message, category, stacklevel=3)

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
