"""Models from outside the package: ``module:Class`` names and the ``bench.models`` entry points.

A suite names a user's class as ``name: mypkg.models:TinyVAE``. The module is imported from the
suite's ``plugins`` folders and the suite file's own folder first, then ``sys.path``. Installed
packages register models under the entry-point group ``bench.models``
(``tinyvae = mypkg.models:TinyVAE``); the suite then names them ``name: tinyvae``.

Either way the class must meet ``GenerativeModel``'s contract; ``contract_problems`` says what a
class lacks, and ``bench.suite`` turns that into field errors before any work. The class's
source file is hashed: its sha256 enters the config hash of its runs, so an edited plugin is
a new run, not a finished one.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.metadata
import inspect
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench.models.base import (
    FAMILIES,
    MODELS,
    STEP_METHODS,
    GenerativeModel,
    ModelEntry,
    ModelParams,
    PluginSource,
)

ENTRY_POINT_GROUP = "bench.models"
IMPORT_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class PluginError(LookupError):
    """A plugin model cannot be used: not found, not importable, or not meeting the contract.
    ``file`` names the plugin's source file when it is known."""

    def __init__(self, message: str, file: str | None = None) -> None:
        super().__init__(message)
        self.file = file

    def __str__(self) -> str:
        return str(self.args[0])


def is_import_name(name: str) -> bool:
    return ":" in name


def file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- importing


_CACHE: dict[tuple[str, tuple[str, ...]], tuple[ModelEntry, float]] = {}


def _purge(top: str) -> None:
    for key in [k for k in sys.modules if k == top or k.startswith(top + ".")]:
        del sys.modules[key]


def _module_file(module: Any) -> str | None:
    f = getattr(module, "__file__", None)
    return str(Path(f).resolve()) if f else None


def _import(module: str, paths: Sequence[str]) -> Any:
    """Import ``module``, searching ``paths`` before ``sys.path``. A module of the same name already
    imported from elsewhere (another suite's folder) is dropped first, so each suite gets its own."""
    top = module.split(".")[0]
    importlib.invalidate_caches()
    spec = importlib.machinery.PathFinder.find_spec(top, list(paths)) if paths else None
    loaded = sys.modules.get(top)
    if spec is not None and loaded is not None:
        want = spec.origin or (list(spec.submodule_search_locations or []) or [None])[0]
        have = _module_file(loaded) or (list(getattr(loaded, "__path__", [])) or [None])[0]
        if want is None or have is None or Path(want).resolve() != Path(have).resolve():
            _purge(top)
    saved, saved_bytecode = list(sys.path), sys.dont_write_bytecode
    sys.path[:0] = [p for p in paths if p not in sys.path]
    # no __pycache__ beside the user's files: a suite that is then rejected leaves nothing behind
    sys.dont_write_bytecode = True
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            where = ", ".join(paths) if paths else "(no plugin folders)"
            raise PluginError(
                f"cannot import module {module!r}: not found in the plugin folders ({where}) or on sys.path"
            ) from None
        raise PluginError(f"importing {module!r} failed: {type(e).__name__}: {e}") from None
    except Exception as e:  # the user's module raised while importing: say so, with its message
        raise PluginError(f"importing {module!r} failed: {type(e).__name__}: {e}") from None
    except SystemExit as e:  # sys.exit() in the module: not bench's own exit
        raise PluginError(f"importing {module!r} failed: the module called sys.exit({e.code!r})") from None
    finally:
        sys.path[:] = saved
        sys.dont_write_bytecode = saved_bytecode


def locate(module: str, paths: Sequence[str], then_sys_path: bool = False) -> str | None:
    """Where ``module`` would be imported from among ``paths`` (then ``sys.path`` with
    ``then_sys_path``, as ``_import`` searches): its file, or its package's folder; found without
    importing anything; None when it is not there. With ``sys.path`` searched too, a regular
    package anywhere on it wins over a namespace folder of the same name in ``paths``, as in
    Python's own import (a module of that name imported from elsewhere is dropped first, as
    ``_import`` does)."""
    importlib.invalidate_caches()
    search = list(paths) + ([p for p in sys.path if p not in paths] if then_sys_path else [])
    spec = None
    for part in module.split("."):
        spec = importlib.machinery.PathFinder.find_spec(part, search) if search else None
        if spec is None:
            return None
        search = list(spec.submodule_search_locations or [])
    assert spec is not None
    return spec.origin if spec.has_location else (search[0] if search else None)


def installed_module(top: str) -> str | None:
    """Where an imported top-level module ``top`` lies when it is bench's own, the standard
    library's or an installed package's (under ``sys.prefix`` or ``sys.base_prefix``), else None:
    a name a plugin found in a folder would replace (``_import`` drops it first)."""
    loaded = sys.modules.get(top)
    if loaded is None:
        return None
    where = _module_file(loaded) or next(iter(getattr(loaded, "__path__", [])), None)
    if where is None:  # built into the interpreter
        return top
    roots = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), Path(__file__).resolve().parents[1]}
    return where if any(Path(where).resolve().is_relative_to(r) for r in roots) else None


def _attr(module: Any, qualname: str, file: str | None) -> Any:
    obj = module
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise PluginError(f"module {module.__name__!r} has no class {qualname!r}", file)
        obj = getattr(obj, part)
    return obj


def _source_file(cls: type) -> str | None:
    try:
        f = inspect.getsourcefile(cls)
    except TypeError:
        return None
    return str(Path(f).resolve()) if f else None


def _entry(cls: Any, origin: str, file: str | None) -> ModelEntry:
    problems = contract_problems(cls)
    if problems:
        raise PluginError("; ".join(problems), file)
    file = _source_file(cls) or file
    if file is None or not os.path.isfile(file):
        raise PluginError(f"{origin}: the class has no source file to hash (define it in a .py file)")
    # its own docstring: one inherited from GenerativeModel would describe bench's base class
    doc = inspect.cleandoc(cls.__doc__ or "").strip().splitlines() if "__doc__" in vars(cls) else []
    return ModelEntry(cls, {}, doc[0] if doc else "", PluginSource(file, file_sha256(file), origin))


def _stamp(entry: ModelEntry) -> float:
    try:
        st = os.stat(entry.plugin.file)  # type: ignore[union-attr]
    except OSError:
        return -1.0
    return st.st_mtime_ns + st.st_size * 1e-3


def _import_entry(name: str, paths: tuple[str, ...]) -> ModelEntry:
    if not IMPORT_NAME.match(name):
        raise PluginError(f"{name!r}: a model of your own is named module:Class, e.g. mypkg.models:TinyVAE")
    cached = _CACHE.get((name, paths))
    if cached is not None and _stamp(cached[0]) == cached[1]:
        return cached[0]
    module_name, _, qualname = name.partition(":")
    if cached is not None:  # the file changed since it was imported: import it again
        _purge(module_name.split(".")[0])
    module = _import(module_name, paths)
    file = _module_file(module)
    cls = _attr(module, qualname, file)
    entry = _entry(cls, f"{name} ({file})", file)
    _CACHE[(name, paths)] = (entry, _stamp(entry))
    return entry


# --------------------------------------------------------------------------- entry points


def entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """The installed ``bench.models`` entry points by name (the first of a name wins)."""
    out: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        out.setdefault(ep.name, ep)
    return out


def _dist_name(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "an installed package"


def _entry_point_entry(ep: importlib.metadata.EntryPoint) -> ModelEntry:
    origin = f"entry point {ep.name} = {ep.value} ({_dist_name(ep)})"
    try:
        cls = ep.load()
    except Exception as e:
        raise PluginError(f"{origin}: loading failed: {type(e).__name__}: {e}") from None
    return _entry(cls, origin, _source_file(cls) if isinstance(cls, type) else None)


def installed_plugins() -> list[tuple[str, ModelEntry | PluginError]]:
    """Every ``bench.models`` entry point with its entry, or why it cannot be used (for ``bench list``)."""
    out: list[tuple[str, ModelEntry | PluginError]] = []
    for name, ep in sorted(entry_points().items()):
        try:
            out.append((name, _entry_point_entry(ep)))
        except PluginError as e:
            out.append((name, e))
    return out


# --------------------------------------------------------------------------- resolving and checking


def resolve(name: str, paths: Iterable[str] = ()) -> ModelEntry:
    """The model a suite's ``models.N.name`` means: a built-in name, ``module:Class`` (imported from
    ``paths``, then ``sys.path``), or an installed ``bench.models`` entry point. Raises
    ``PluginError`` saying what is missing."""
    if name in MODELS:
        return MODELS.get(name)
    if is_import_name(name):
        return _import_entry(name, tuple(paths))
    eps = entry_points()
    if name in eps:
        return _entry_point_entry(eps[name])
    raise PluginError(
        MODELS.unknown_message(name) + "; a model of your own is named module:Class (see docs/extending.md)"
    )


def contract_problems(cls: Any) -> list[str]:
    """What ``cls`` lacks to be trained by bench at all (metrics aside): base class, family,
    Params, the sampler and the training step's methods. Empty when it meets the contract."""
    name = getattr(cls, "__qualname__", repr(cls))
    if not isinstance(cls, type) or not issubclass(cls, GenerativeModel):
        return [f"{name} is not a model: subclass bench.models.GenerativeModel"]
    family = getattr(cls, "family", None)
    if family not in FAMILIES:
        return [f"{name}: class attribute family must be one of {', '.join(FAMILIES)} (got {family!r})"]
    problems = []
    params = getattr(cls, "Params", None)
    if not isinstance(params, type) or not issubclass(params, ModelParams):
        problems.append(f"{name}.Params must subclass bench.models.ModelParams")
    step = getattr(cls, "step_kind", None)
    if step not in STEP_METHODS:
        problems.append(f"{name}: step_kind must be one of {', '.join(STEP_METHODS)} (got {step!r})")
    else:
        for method in ("sample", *STEP_METHODS[step]):
            if not cls.implements(method):
                problems.append(
                    f"{name} has no method {method}() (needed to train and sample a {family} model)"
                )
    return problems


def missing_methods(cls: type[GenerativeModel], uses: Iterable[str]) -> list[str]:
    """The methods of ``uses`` (what a metric calls) that ``cls`` does not provide."""
    return sorted(m for m in set(uses) if not cls.implements(m))


def build_model(
    name: str, params: dict[str, Any], image_shape: tuple[int, int, int], plugin_paths: Iterable[str] = ()
) -> GenerativeModel:
    """Model ``name`` (built-in, ``module:Class`` found on ``plugin_paths`` then ``sys.path``, or an
    entry point) with ``params`` for images of ``image_shape``."""
    entry = resolve(name, plugin_paths)
    return entry.cls(entry.make_params(params), image_shape)
