"""One registry and one format for every object distnn saves (docs/architecture.md, "Serialization").

Layers, models, losses, metrics, activations, initializers, regularizers, constraints, optimizers
and learning-rate schedules are all saved as ``{"module": ..., "class_name": ..., "config": ...}``
(a named function as ``{"class_name": "function", "config": name}``) and rebuilt by one lookup of
the name, in Keras 3's order:

1. the objects of the innermost ``custom_object_scope``,
2. objects registered with ``@register_keras_serializable()`` (under ``"Package>Name"``),
3. the ``custom_objects`` given to ``load_model`` / ``deserialize_keras_object``,
4. the table of the module asking (``distnn.losses`` looks among the losses),
5. distnn's own objects, which each module lists here with ``register_builtins``: the table named
   by the config's ``"module"``, or the only table holding the name.

Nothing else can be rebuilt: a configuration names a class, it never imports a module, unpickles or
runs code. This module imports nothing from distnn, so every other module can use it without an
import cycle (docs/architecture.md, "Modules and dependencies").
"""
from __future__ import annotations

import inspect
import threading
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np

_custom_objects: dict[str, Any] = {}  # registered name -> class or function (Keras' GLOBAL_CUSTOM_OBJECTS)
_custom_names: dict[Any, str] = {}  # class or function -> registered name
_builtins: dict[str, dict[str, Any]] = {}  # table ("distnn.layers", ...) -> {name: object}
_builtin_tables: dict[Any, str] = {}  # object -> the table saved as its "module"
_scopes = threading.local()  # each thread's stack of custom_object_scope dicts, as Keras keeps it


# ------------------------------------------------------------------------------------ registering
def register_keras_serializable(package: str = "Custom", name: str | None = None) -> Callable[[Any], Any]:
    """Decorator: make a custom class or function loadable by name, as ``"package>name"`` (Keras 3).

    ``name`` defaults to the class or function name. Equivalent to passing the object in
    ``custom_objects`` on every load.
    """
    if not isinstance(package, str) or ">" in package:
        raise ValueError(f"package must be a string without '>'. Received: package={package!r}")

    def decorator(obj: Any) -> Any:
        return _register(obj, f"{package}>{name if name is not None else obj.__name__}")

    return decorator


def register_serializable(cls: Any = None, *, name: str | None = None, package: str | None = None) -> Any:
    """distnn's spelling of ``register_keras_serializable``, usable bare (``@register_serializable``);
    without a ``package`` the object is registered under its plain name, as distnn 0.1 saved it."""
    def decorator(obj: Any) -> Any:
        plain = name if name is not None else obj.__name__
        return _register(obj, plain if package is None else f"{package}>{plain}")

    return decorator(cls) if cls is not None else decorator


def _register(obj: Any, registered_name: str) -> Any:
    if inspect.isclass(obj) and not hasattr(obj, "get_config"):
        raise ValueError(f"Cannot register {obj.__name__}: a class needs get_config() to be saved")
    if not callable(obj):
        raise TypeError(f"Only classes and functions can be registered. Received: {obj!r}")
    _custom_objects[registered_name] = obj
    _custom_names[obj] = registered_name
    return obj


def register_builtins(table: str, objects: Mapping[str, Any]) -> None:
    """List a distnn module's own objects under ``table`` (its public module name, saved as the
    config's ``"module"``). An object listed under several names is saved under its own name."""
    entries = _builtins.setdefault(table, {})
    entries.update(objects)
    for key, obj in objects.items():
        if key == getattr(obj, "__name__", None) or obj not in _builtin_tables:
            _builtin_tables[obj] = table


def builtin_objects(table: str) -> dict[str, Any]:
    """The objects a module listed with ``register_builtins`` (empty before it is imported)."""
    return dict(_builtins.get(table, {}))


def get_custom_objects() -> dict[str, Any]:
    """The live dict of registered objects (Keras 3): adding to it registers under that name."""
    return _custom_objects


def get_registered_name(obj: Any) -> str:
    """The name ``obj`` (a class or function) is saved under: its registered name, else its own
    name. Looked up for the object itself, so a subclass of a registered class keeps its name."""
    return _custom_names.get(obj, getattr(obj, "__name__", type(obj).__name__))


def get_registered_object(name: str, custom_objects: Mapping[str, Any] | None = None,
                          module_objects: Mapping[str, Any] | None = None) -> Any:
    """The object saved as ``name``: from the active scopes, the registry, ``custom_objects``, then
    ``module_objects``; ``None`` when none has it."""
    for table in (*reversed(_scope_stack()), _custom_objects, custom_objects or {}, module_objects or {}):
        if name in table:
            return table[name]
    return None


# ----------------------------------------------------------------------------------------- scopes
def _scope_stack() -> list[Mapping[str, Any]]:
    if not hasattr(_scopes, "stack"):
        _scopes.stack = []
    return _scopes.stack


class CustomObjectScope:
    """``with CustomObjectScope({"MyLayer": MyLayer}):`` — the objects are found by name inside the
    block (in this thread), as if passed in every ``custom_objects``."""

    def __init__(self, *custom_objects: Mapping[str, Any] | None):
        self.custom_objects: dict[str, Any] = {}
        for objects in custom_objects:
            if objects is not None and not isinstance(objects, Mapping):
                raise TypeError(f"CustomObjectScope takes dicts of name -> object. Received: {objects!r}")
            self.custom_objects.update(objects or {})

    def __enter__(self) -> "CustomObjectScope":
        _scope_stack().append(self.custom_objects)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        _scope_stack().pop()


custom_object_scope = CustomObjectScope


# ---------------------------------------------------------------------------------- (de)serializing
def serialize_keras_object(obj: Any) -> Any:
    """A JSON-compatible description of ``obj``: plain values as they are, lists and dicts item by
    item, an object with ``get_config`` as ``{"module", "class_name", "config"}`` (no ``"module"`` for
    a custom class: its registered name identifies it), a named function as
    ``{"class_name": "function", "config": name}``."""
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (list, tuple)):
        return [serialize_keras_object(item) for item in obj]
    if isinstance(obj, dict):
        return {key: serialize_keras_object(value) for key, value in obj.items()}
    if inspect.isclass(obj):
        raise TypeError(f"Cannot serialize the class {obj.__name__}: serialize an instance of it")
    if hasattr(obj, "get_config"):
        return _with_module(type(obj), {"class_name": get_registered_name(type(obj)),
                                        "config": serialize_keras_object(obj.get_config())})
    if callable(obj):
        name = getattr(obj, "__name__", None)
        if not name or name == "<lambda>":
            raise ValueError(f"Cannot serialize {obj!r}: a lambda has no name to load it by. Define a named "
                             "function and decorate it with @distnn.saving.register_keras_serializable()")
        return _with_module(obj, {"class_name": "function", "config": get_registered_name(obj)})
    raise TypeError(f"Cannot serialize {obj!r} of type {type(obj).__name__}: it has no get_config()")


def _with_module(obj: Any, entry: dict) -> dict:
    table = _builtin_tables.get(obj)
    return {"module": table, **entry} if table is not None and obj not in _custom_names else entry


def deserialize_keras_object(config: Any, custom_objects: Mapping[str, Any] | None = None,
                             module_objects: Mapping[str, Any] | None = None,
                             printable_module_name: str = "object") -> Any:
    """The object ``serialize_keras_object`` described, rebuilt only from known names (see the
    module docstring); a plain dict or list is rebuilt item by item. Classes are built with
    ``from_config`` inside a ``custom_object_scope(custom_objects)``, so the objects a layer's
    configuration names (its initializers, a loss's function) are found the same way."""
    if config is None or isinstance(config, (bool, int, float)):
        return config
    if isinstance(config, str):
        obj = _lookup(config, None, custom_objects, module_objects)
        if obj is None:
            raise ValueError(_unknown(printable_module_name, "", config))
        return obj
    if isinstance(config, list):
        return [deserialize_keras_object(item, custom_objects, module_objects, printable_module_name)
                for item in config]
    if not isinstance(config, dict):
        raise TypeError(f"A {printable_module_name} configuration must be a dict, a list, a name or a number. "
                        f"Received: {config!r:.200}")
    if "class_name" not in config:
        return {key: deserialize_keras_object(value, custom_objects, module_objects, printable_module_name)
                for key, value in config.items()}
    class_name, inner, module = config["class_name"], config.get("config", {}), config.get("module")
    if not isinstance(class_name, str) or not (module is None or isinstance(module, str)):
        raise ValueError(f"A {printable_module_name} configuration's class_name and module must be strings. "
                         f"Received: {config!r:.200}")
    if class_name == "function":
        function = _lookup(inner, module, custom_objects, module_objects) if isinstance(inner, str) else None
        if function is None or inspect.isclass(function) or not callable(function):
            raise ValueError(_unknown(printable_module_name, "function ", inner))
        return function
    cls = _lookup(class_name, module, custom_objects, module_objects)
    if not inspect.isclass(cls):
        raise ValueError(_unknown(printable_module_name, "class ", class_name))
    if not isinstance(inner, dict):
        raise ValueError(f"The config of {printable_module_name} class {class_name!r} must be a dict. "
                         f"Received: {inner!r:.200}")
    with custom_object_scope(custom_objects):
        return cls.from_config(inner) if hasattr(cls, "from_config") else cls(**inner)


def resolve(identifier: str | dict, module_objects: Mapping[str, Any], what: str,
            custom_objects: Mapping[str, Any] | None = None) -> Any:
    """What a name or a configuration means to a module's ``get`` (``what``: "loss", ...): the
    object it names, a class instantiated without arguments. An unknown name fails listing the
    module's Keras names (its lower-case keys)."""
    if isinstance(identifier, str):
        obj = _lookup(identifier, None, custom_objects, module_objects)
        if obj is None:
            valid = sorted(name for name in module_objects if name == name.lower())
            raise ValueError(f"Unknown {what} {identifier!r}. Valid names: {valid} (a custom {what} needs "
                             "custom_objects or @distnn.saving.register_keras_serializable())")
    else:
        obj = deserialize_keras_object(identifier, custom_objects, module_objects, what)
    return obj() if inspect.isclass(obj) else obj


def _lookup(name: str, module: str | None, custom_objects: Mapping[str, Any] | None,
            module_objects: Mapping[str, Any] | None) -> Any:
    obj = get_registered_object(name, custom_objects, module_objects)
    if obj is None and ">" in name:  # saved while registered, loaded with custom_objects={"Name": ...}
        obj = get_registered_object(name.rpartition(">")[2], custom_objects)
    if obj is not None:
        return obj
    if module is not None:
        return _builtins.get(module, {}).get(name)
    if module_objects is not None:
        return None
    found = {id(objects[name]): objects[name] for objects in _builtins.values() if name in objects}
    if len(found) > 1:
        tables = sorted(table for table, objects in _builtins.items() if name in objects)
        raise ValueError(f"{name!r} names different objects in {tables}: give the configuration's 'module' "
                         "or use that module's deserialize()")
    return next(iter(found.values()), None)


def _unknown(what: str, kind: str, name: Any) -> str:
    return (f"Unknown {what} {kind}{name!r}: pass it in custom_objects (custom_objects={{{name!r}: ...}}) or "
            "decorate it with @distnn.saving.register_keras_serializable()")

