"""Resolve ``"package.module:attribute"`` import paths, with errors that name the path."""

from __future__ import annotations

import importlib
from typing import Any


class ImportPathError(ImportError):
    pass


def resolve_import(path: str) -> Any:
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ImportPathError(f"{path!r} is not an import path like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportPathError(f"cannot import module {module_name!r} of {path!r}: {exc}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ImportPathError(
                f"module {module_name!r} has no attribute {attribute!r}"
            ) from None
    return target


def import_path_of(obj: Any) -> str:
    """The import path of a module-level function or class, checked to resolve back to it."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        raise ImportPathError(
            f"{obj!r} must be a module-level function of an importable module (not __main__, "
            "not a lambda or a nested function): workers import it by name"
        )
    path = f"{module}:{qualname}"
    if resolve_import(path) is not obj:
        raise ImportPathError(f"{path} does not resolve back to {obj!r}")
    return path
