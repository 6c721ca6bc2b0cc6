"""nlframe's built-in plugins (installed as ``nlframe_plugins``).

One sub-package per plugin kind. Each is announced by an entry point of group
``nlframe`` in nlframe's own ``pyproject.toml`` — the same way a third-party
distribution announces its plugins — and implements the hooks of
:mod:`nlframe.hookspecs` for its kind.
"""
