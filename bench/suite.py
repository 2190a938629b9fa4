"""The suite file: reading, validation with file + field-path errors, and expansion into runs.

The schema itself is ``bench.config``; this module adds what needs the registries.

Everything a suite can get wrong is found here, before any data is read or any run is created
in the tracking store. ``load_suite`` raises ``SuiteError`` carrying every problem at once.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from bench.config import (  # noqa: F401  (re-exported: the schema's names, as the suite's)
    BIG,
    BUDGET_KINDS,
    BudgetConfig,
    CheckpointConfig,
    DatasetConfig,
    EvalConfig,
    ModelConfig,
    ReportConfig,
    ResourcesConfig,
    Strict,
    Suite,
    TrackingConfig,
    TrainConfig,
    without_neutral_defaults,
)
from bench.version import __version__

if TYPE_CHECKING:
    from bench.data import ImageData
    from bench.models.base import ModelEntry

# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class FieldError:
    loc: str
    msg: str


class SuiteError(Exception):
    """Every problem found in one suite file; ``str`` gives ``<file>: <field.path>: <message>`` lines."""

    def __init__(self, file: str, errors: list[FieldError]) -> None:
        self.file = file
        self.errors = errors
        super().__init__("\n".join(f"{file}: {e.loc}: {e.msg}" for e in errors))


def _loc(parts: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in parts) or "(top level)"


def pydantic_errors(err: ValidationError, prefix: tuple[Any, ...] = ()) -> list[FieldError]:
    out = []
    for e in err.errors():
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        msg = re.sub(r" or instance of \w+$", "", msg.removeprefix("Value error, "))
        out.append(FieldError(_loc(prefix + tuple(e["loc"])), msg))
    return out


# --------------------------------------------------------------------------- loading


MAX_YAML_VALUES = 100_000  # a suite is a few hundred values; more means an alias bomb or a wrong file
MAX_YAML_DEPTH = 32  # a suite nests four levels deep (models.0.hidden.0); far more is not a suite
MAX_SUITE_BYTES = 1 << 20  # 1 MiB: a suite file is a few kB; a larger file is read no further


class _Unbounded(Exception):
    """A YAML document beyond ``MAX_YAML_VALUES`` nodes or ``MAX_YAML_DEPTH`` levels, or with a
    recursive alias: found while composing, before the document takes memory or the stack."""


class _BoundedLoader(yaml.SafeLoader):
    """YAML's safe loader that counts nodes and nesting while composing and refuses an alias to a
    node that is still being composed (which would make the document infinite)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0
        self._open: list[str] = []  # anchors of the nodes being composed

    def compose_node(self, parent, index):
        event = self.peek_event()
        line = event.start_mark.line + 1 if event.start_mark else 0
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open:
                raise _Unbounded(
                    f"recursive alias *{event.anchor} at line {line}: it refers to a node that contains it"
                )
            return super().compose_node(parent, index)
        self._nodes += 1
        self._depth += 1
        if self._nodes > MAX_YAML_VALUES:
            raise _Unbounded(f"the document has more than {MAX_YAML_VALUES} values (MAX_YAML_VALUES)")
        if self._depth > MAX_YAML_DEPTH:
            raise _Unbounded(f"nested more than {MAX_YAML_DEPTH} levels deep at line {line} (MAX_YAML_DEPTH)")
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._open.append(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open.pop()


# integers are decimal digits: YAML 1.1's 0x10, 010 (octal), 10_0 and 1:30 (base 60) stay text, so
# the schema refuses them instead of reading another number than the one the reader sees; so do the
# floats 1_0.5 and 1:30.0 (YAML 1.1's other floats, and its booleans yes/no/on/off, are unchanged)
_REDEFINED = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_BoundedLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _REDEFINED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?(0|[1-9][0-9]*)$"), list("-+0123456789")
)
_BoundedLoader.add_implicit_resolver(  # PyYAML's float without its underscores and base 60
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?[0-9]+\.[0-9]*(?:[eE][-+][0-9]+)?|\.[0-9]+(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def load_yaml_value(text: str) -> Any:
    """One YAML value (a ``--set`` value) with the suite file's bounds; raises ``yaml.YAMLError``
    or ``ValueError`` (beyond the bounds)."""
    loader = _BoundedLoader(text)
    try:
        try:
            return loader.get_single_data()
        except _Unbounded as e:
            raise ValueError(str(e)) from None
    finally:
        loader.dispose()


def _read_text(p: Path) -> str:
    """The text of a regular file of at most ``MAX_SUITE_BYTES``: a FIFO, a device (/dev/zero) or
    a socket is refused without blocking, a larger file without reading it."""
    fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "it is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise _NotRegular("not a regular file (a FIFO, device or socket)")
        data = f.read(MAX_SUITE_BYTES + 1)
    if len(data) > MAX_SUITE_BYTES:
        raise _TooLarge(
            f"the file is larger than {MAX_SUITE_BYTES} bytes (1 MiB, MAX_SUITE_BYTES); a suite is a few kB"
        )
    return data.decode("utf-8")


class _NotRegular(OSError):
    pass


class _TooLarge(OSError):
    pass


def read_suite_dict(path: str | Path) -> dict[str, Any]:
    """Read a suite file with YAML's safe loader; a key given twice is an error, not "the last wins".

    Bounded: a regular file of at most ``MAX_SUITE_BYTES``, at most ``MAX_YAML_VALUES`` nodes
    (aliases counted at each use) and ``MAX_YAML_DEPTH`` levels, no recursive alias."""
    p = Path(path)
    try:
        text = _read_text(p)
    except (OSError, UnicodeDecodeError) as e:
        raise SuiteError(str(p), [FieldError("(file)", f"cannot read: {_read_problem(e)}")]) from None
    try:
        loader = _BoundedLoader(text)
        try:
            node = loader.get_single_node()
            errors = _yaml_shape_errors(node) if node is not None else []
            if errors:
                raise SuiteError(str(p), errors)
            raw = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except _Unbounded as e:
        raise SuiteError(str(p), [FieldError("(file)", str(e))]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        context = getattr(e, "context", None)
        if context and context.startswith("expected"):  # "expected a single document in the stream"
            problem = f"{context}, {problem}"
        raise SuiteError(str(p), [FieldError("(file)", f"not valid YAML{where}: {problem}")]) from None
    if raw is None:
        raise SuiteError(str(p), [FieldError("(file)", "the file is empty")])
    if not isinstance(raw, dict):
        raise SuiteError(
            str(p), [FieldError("(top level)", f"a suite is a mapping of keys, got {type(raw).__name__}")]
        )
    return raw


def _read_problem(e: Exception) -> str:
    if isinstance(e, UnicodeDecodeError):
        line = e.object[: e.start].count(b"\n") + 1
        return f"not UTF-8 text (line {line}, byte {e.start})"
    if isinstance(e, IsADirectoryError):
        return "it is a directory"
    if isinstance(e, (_NotRegular, _TooLarge)):
        return str(e)
    return getattr(e, "strerror", None) or str(e)


def _yaml_shape_errors(root: yaml.Node) -> list[FieldError]:
    """Keys given twice (with their field path) and documents that expand beyond MAX_YAML_VALUES."""
    errors: list[tuple[int, FieldError]] = []
    count = 0
    stack: list[tuple[yaml.Node, tuple[Any, ...]]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES:  # aliases are walked again at each use: this bounds the expansion
            return [FieldError("(file)", f"the document expands to more than {MAX_YAML_VALUES} values")]
        if len(path) > MAX_YAML_DEPTH:  # aliases inside nested nodes nest deeper than the text
            return [FieldError("(file)", f"the document nests more than {MAX_YAML_DEPTH} levels deep")]
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for k, v in node.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else None
                if key is not None and key in seen and key != "<<":  # "<<" is YAML's merge key
                    line = k.start_mark.line
                    errors.append(
                        (
                            line,
                            FieldError(
                                _loc(path + (key,)), f"key given twice (lines {seen[key] + 1} and {line + 1})"
                            ),
                        )
                    )
                elif key is not None:
                    seen[key] = k.start_mark.line
                stack.append((v, path + (key if key is not None else "?",)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((v, path + (i,)) for i, v in enumerate(node.value))
    return [e for _, e in sorted(errors, key=lambda le: le[0])]


def apply_overrides(raw: dict[str, Any], overrides: list[str], file: str) -> dict[str, Any]:
    """Apply ``--set dotted.key=value`` (value parsed as YAML); list items by index (models.0.beta).

    An index is written in decimal digits (``models.0``, never ``models.-1``); a value that is not
    valid YAML is reported as such."""
    key_errors = _unencodable(raw)  # keys that are not text (a date, a number) have no JSON copy
    if key_errors:
        raise SuiteError(file, key_errors)
    raw = json.loads(json.dumps(raw, default=str))  # deep copy
    errors = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            errors.append(FieldError(f"--set {item}", "expected dotted.key=value"))
            continue
        try:
            val = load_yaml_value(value)
        except (yaml.YAMLError, ValueError) as e:
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            errors.append(FieldError(f"--set {key}", f"the value {value!r} did not parse as YAML: {problem}"))
            continue
        bad_keys = _unencodable(val, (f"--set {key}",))
        if bad_keys:
            errors += bad_keys
            continue
        parts = key.split(".")
        node: Any = raw
        try:
            for part in parts[:-1]:
                node = node[_index(part)] if isinstance(node, list) else node.setdefault(part, {})
            leaf = parts[-1]
            if isinstance(node, list):
                node[_index(leaf)] = val
            else:
                if parts[:-1] == ["budget"] and leaf in BUDGET_KINDS:  # a new budget kind replaces the old
                    for k in BUDGET_KINDS:
                        node.pop(k, None)
                node[leaf] = val
        except (ValueError, IndexError, TypeError, AttributeError):
            errors.append(FieldError(f"--set {key}", "no such place in the suite"))
    if errors:
        raise SuiteError(file, errors)
    return raw


def _index(part: str) -> int:
    """A list index of ``--set``: decimal digits only (no sign, underscore or other digits)."""
    if not re.fullmatch(r"[0-9]+", part):
        raise ValueError(part)
    return int(part)


def load_suite(path: str | Path, overrides: list[str] | None = None) -> Suite:
    """Read, override and fully validate a suite file; raises ``SuiteError`` listing every problem.
    Plugin models are looked for in the suite file's folder (and its ``plugins`` folders)."""
    file = str(path)
    raw = apply_overrides(read_suite_dict(path), overrides or [], file)
    return validate_suite(raw, file, folder=Path(path).resolve().parent)


def validate_suite(raw: dict[str, Any], file: str = "<suite>", folder: str | Path | None = None) -> Suite:
    """Validate a suite given as data; ``folder`` is where relative ``plugins`` paths and plugin
    modules are looked for (default: the working directory)."""
    text_errors = _unencodable(raw)
    if text_errors:  # a lone surrogate ("\ud800") cannot be logged, written or shown
        raise SuiteError(file, text_errors)
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as e:
        errors = pydantic_errors(e)
        errors += _semantic_errors_partial(raw, folder)
        raise SuiteError(file, _dedupe(errors)) from None
    suite._folder = str(Path(folder or ".").resolve())
    errors = _semantic_errors(suite)
    if errors:
        raise SuiteError(file, errors)
    return suite


def _unencodable(value: Any, path: tuple[Any, ...] = ()) -> list[FieldError]:
    """Every key that is not text (YAML reads ``2024-01-01:`` as a date, ``5:`` as a number), and every
    key or string value that is not encodable text (a lone surrogate from a YAML escape)."""

    def bad(text: str) -> bool:
        try:
            text.encode("utf-8")
            return False
        except UnicodeEncodeError:
            return True

    errors: list[FieldError] = []
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, path)]
    while stack:
        v, p = stack.pop()
        if isinstance(v, dict):
            for k, item in v.items():
                key = k if isinstance(k, str) and not bad(k) else ascii(k)
                if not isinstance(k, str):
                    errors.append(
                        FieldError(
                            _loc(p + (key,)), f"keys must be text, not {type(k).__name__} (quote the key)"
                        )
                    )
                elif bad(k):
                    errors.append(
                        FieldError(_loc(p + (key,)), "the key is not encodable text (a lone surrogate)")
                    )
                stack.append((item, p + (key,)))
        elif isinstance(v, list):
            stack.extend((item, p + (i,)) for i, item in enumerate(v))
        elif isinstance(v, str) and bad(v):
            errors.append(FieldError(_loc(p), f"{ascii(v)} is not encodable text (a lone surrogate)"))
    return sorted(errors, key=lambda e: e.loc)


def _dedupe(errors: list[FieldError]) -> list[FieldError]:
    seen, out = set(), []
    for e in errors:
        if (e.loc, e.msg) not in seen:
            seen.add((e.loc, e.msg))
            out.append(e)
    return out


def _semantic_errors_partial(raw: dict[str, Any], folder: str | Path | None) -> list[FieldError]:
    """Registry checks on the parts of a structurally broken file that can still be read."""
    models = raw.get("models")
    if not isinstance(models, list):
        return []
    plugins = raw.get("plugins")
    probe = Suite.model_construct(plugins=plugins if isinstance(plugins, list) else [])
    probe._folder = str(Path(folder or ".").resolve())
    try:
        paths = probe.plugin_paths
    except (TypeError, ValueError, OSError):
        paths = []
    return _model_errors(models, paths)[0]


def _model_errors(models: list[Any], paths: list[str]) -> tuple[list[FieldError], dict[int, ModelEntry]]:
    """Unknown models, plugin classes that miss the contract and invalid model parameters, with
    their field paths; and the entries of the models that resolved, by position."""
    from bench.models.plugins import PluginError, is_import_name, resolve

    errors, entries = [], {}
    for i, m in enumerate(models):
        if not isinstance(m, dict) or not isinstance(m.get("name"), str):
            continue
        try:
            entry = resolve(m["name"], paths)
        except PluginError as e:
            where = f" ({e.file})" if e.file else ""
            msg = f"{m['name']}: {e}{where}" if is_import_name(m["name"]) else str(e)
            errors.append(FieldError(f"models.{i}.name", msg))
            continue
        entries[i] = entry
        params = {k: v for k, v in m.items() if k not in ("name", "label", "reference")}
        try:
            entry.make_params(params)
        except ValidationError as e:
            errors += pydantic_errors(e, ("models", i))
    return errors, entries


IMAGEFOLDER_NEEDS_ROOT = "an imagefolder dataset needs root: a folder with train/ and test/"


def _semantic_errors(suite: Suite) -> list[FieldError]:
    """Checks that need the registries: names, model parameters, metric applicability."""
    from bench.data import config_problems, dataset_problem
    from bench.metrics import METRICS

    errors: list[FieldError] = []
    problem = dataset_problem(suite.dataset.name)
    if problem:
        errors.append(FieldError("dataset.name", problem))
    elif suite.dataset.name == "imagefolder" and suite.dataset.root is None:
        errors.append(FieldError("dataset.root", IMAGEFOLDER_NEEDS_ROOT))
    base = Path(suite._folder or ".")
    for i, folder in enumerate(suite.plugins):
        if not (base / Path(folder).expanduser()).is_dir():
            errors.append(FieldError(f"plugins.{i}", f"{folder!r}: no such folder (relative to {base})"))
    errors += [FieldError(loc, msg) for loc, msg in config_problems(suite.dataset)]
    model_errors, entries = _model_errors([m.model_dump() for m in suite.models], suite.plugin_paths)
    errors += model_errors

    labels = [m.display for m in suite.models]
    for i, lab in enumerate(labels):
        if labels.index(lab) != i:
            errors.append(
                FieldError(f"models.{i}.label", f"label {lab!r} is used twice; give each model a label")
            )
        elif "/" in lab:
            errors.append(FieldError(f"models.{i}.label", "labels cannot contain '/'"))

    for i, m in enumerate(suite.models):
        for metric in m.reference or {}:
            if metric not in suite.eval.metrics:
                errors.append(
                    FieldError(
                        f"models.{i}.reference.{metric}",
                        f"{metric!r} is not among eval.metrics: a published value needs the measured one",
                    )
                )

    classes = [e.cls for e in entries.values()]
    for i, name in enumerate(suite.eval.metrics):
        if name not in METRICS:
            errors.append(FieldError(f"eval.metrics.{i}", METRICS.unknown_message(name)))
            continue
        metric = METRICS.get(name)
        if classes and not any(metric.applies_to_model(c) for c in classes):
            errors.append(
                FieldError(f"eval.metrics.{i}", f"{name!r} applies to {metric.scope} and the suite has none")
            )
        for problem in metric.check(suite):
            errors.append(FieldError(f"eval.metrics.{i}", problem))
    errors += _plugin_method_errors(suite, entries)
    errors += _shape_errors(suite, config_shapes(suite.dataset))  # nets that cannot take its images

    if suite.report.baseline is not None and suite.report.baseline not in labels:
        errors.append(FieldError("report.baseline", f"{suite.report.baseline!r} is not a model label"))
    if suite.tracking.uri is not None:
        problem = check_tracking_uri(suite.tracking.uri)
        if problem:
            errors.append(FieldError("tracking.uri", problem))
    if suite.train.compile:
        from bench.numerics import compile_problem

        problem = compile_problem()
        if problem:
            errors.append(FieldError("train.compile", problem))
    return errors


def data_errors(suite: Suite, data: ImageData, labels: bool = True) -> list[FieldError]:
    """What the suite asks that its loaded data cannot give (``bench run`` and ``bench validate
    --data``, before anything is trained): models whose nets cannot take its images, metrics that
    need labels it lacks, metric settings against the real split sizes."""
    from bench.metrics.base import data_problems
    from bench.models.plugins import resolve

    classes = [resolve(m.name, suite.plugin_paths).cls for m in suite.models]
    errors = _shape_errors(suite, [data.image_shape])
    n = len(data.train_x)
    if n < 2 and any(c.family != "codec" for c in classes):
        errors.append(
            FieldError(
                "dataset.train_size",
                f"the training split has {n} image{'' if n == 1 else 's'}; training needs at least 2 "
                "(batch norm and the fitted latent samplers learn from the spread of several)",
            )
        )
    side, (h, w) = suite.eval.inception_pad_to, data.image_shape[1:]
    if side is not None and (h > side or w > side):
        errors.append(
            FieldError(
                "eval.inception_pad_to",
                f"{side} is smaller than the images ({h}x{w}): a border cannot shrink them",
            )
        )
    if suite.budget.batch_size == 1:
        errors += _batch_norm_errors(suite, data)
    if labels:  # not for what a stored run already asked (bench eval): those stay n/a, as they were
        errors += _label_errors(suite, data, classes)
    errors += [FieldError(f"eval.metrics.{i}", msg) for i, msg in data_problems(suite.eval, data, classes)]
    return errors


# the images of a built-in dataset before dataset.image_size / dataset.channels convert them
FIXED_SHAPES: dict[str, tuple[int, int, int]] = {
    "mnist": (1, 28, 28),
    "fashion-mnist": (1, 28, 28),
    "synthetic": (1, 28, 28),
}


def config_shapes(dataset: DatasetConfig) -> list[tuple[int, int, int]]:
    """The image shapes (C, H, W) a dataset section can give, known without reading its data: the
    sides from ``image_size`` (a square crop) or a built-in dataset's fixed shape, the channels
    from ``channels``, the built-in shape, or either of 1 and 3. Empty when the sides are unknown
    (an image folder or a torchvision dataset without ``image_size``)."""
    fixed = FIXED_SHAPES.get(dataset.name)
    if dataset.image_size is not None:
        h = w = dataset.image_size
    elif fixed is not None:
        h, w = fixed[1:]
    else:
        return []
    if dataset.channels is not None:
        channels = [dataset.channels]
    else:
        channels = [fixed[0]] if fixed is not None else [1, 3]
    return [(c, h, w) for c in channels]


def _shape_errors(suite: Suite, shapes: list[tuple[int, int, int]]) -> list[FieldError]:
    """Models that cannot be built for any of ``shapes`` (the images they will get): a built-in
    model by its backbone's rule (``shape_problem``), a plugin built without memory (on the meta
    device), refusing the shape with ``ImageShapeError``. Other failures to build are left to the
    run, which names them."""
    import warnings

    import torch

    from bench.models.nets import ImageShapeError, shape_problem
    from bench.models.plugins import build_model, resolve

    out = []
    for i, m in enumerate(suite.models):
        problems = []
        try:  # a name or parameters other checks refuse: left to them
            entry = resolve(m.name, suite.plugin_paths)
            backbone = getattr(entry.make_params(m.params), "backbone", None)
        except Exception:
            continue
        if entry.plugin is None:  # built in: its backbone's rule; nothing built, no compiler imported
            problems = [(s, p) for s in shapes if backbone and (p := shape_problem(backbone, s))]
        for shape in shapes if entry.plugin is not None else ():
            try:  # quietly: a library a model imports as it is built may warn (compressai)
                with torch.device("meta"), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    build_model(m.name, m.params, shape, suite.plugin_paths)
            except ImageShapeError as e:
                problems.append((shape, str(e)))
            except Exception:  # not a shape this check knows: the run reports it
                pass
        if shapes and len(problems) == len(shapes):  # whatever the channels, it cannot be built
            (c, h, w), msg = problems[0]
            where = f"{h}x{w} images" + (f" of {c} channel{'s' * (c > 1)}" if len(shapes) == 1 else "")
            out.append(FieldError(f"models.{i}", f"{m.display} cannot be built for {where}: {msg}"))
    return out


def _label_errors(suite: Suite, data: ImageData, classes: list[type]) -> list[FieldError]:
    """Metrics that need class labels (probe, kNN, the domain classifier's) asked of data without
    labels of two classes or more: they could never have a value, so they are errors, not n/a."""
    from bench.metrics import METRICS

    if data.has_labels:
        return []
    has = "a single class" if data.num_classes == 1 else "no class labels"
    out = []
    for i, name in enumerate(suite.eval.metrics):
        metric = METRICS.get(name)
        if metric.needs_labels and any(metric.applies_to_model(c) for c in classes):
            out.append(
                FieldError(
                    f"eval.metrics.{i}",
                    f"{name} needs class labels of two classes or more and the data has {has} (an image "
                    "folder's labels are its class subfolders): it could never have a value",
                )
            )
    return out


def _batch_norm_errors(suite: Suite, data: ImageData) -> list[FieldError]:
    """Models with batch norm, which cannot train on batches of one image (``budget.batch_size: 1``):
    each built without memory (on the meta device) to look."""
    import torch

    from bench.models.plugins import build_model

    out = []
    for i, m in enumerate(suite.models):
        try:
            with torch.device("meta"):
                model = build_model(m.name, m.params, data.image_shape, suite.plugin_paths)
        except Exception:  # a model that cannot be built so is checked by its run
            continue
        if any(isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for mod in model.modules()):
            out.append(
                FieldError(
                    "budget.batch_size",
                    f"models.{i} ({m.display}) has batch norm, which cannot train on batches of one image",
                )
            )
    return out


def _method(name: str) -> str:
    return "reconstruct() (nor encode() and decode())" if name == "reconstruct" else f"{name}()"


def _plugin_method_errors(suite: Suite, entries: dict[int, ModelEntry]) -> list[FieldError]:
    """Plugin models that lack a method one of the suite's metrics calls on them."""
    from bench.metrics import METRICS
    from bench.models.plugins import missing_methods

    errors = []
    for i, entry in entries.items():
        if entry.plugin is None:
            continue
        needs: dict[str, list[str]] = {}
        for name in suite.eval.metrics:
            if name in METRICS and METRICS.get(name).applies_to_model(entry.cls):
                for method in missing_methods(entry.cls, METRICS.get(name).uses):
                    needs.setdefault(method, []).append(name)
        for method, names in sorted(needs.items()):
            errors.append(
                FieldError(
                    f"models.{i}.name",
                    f"{suite.models[i].name}: {entry.cls.__qualname__} has no method {_method(method)}, "
                    f"which eval.metrics {', '.join(names)} need ({entry.plugin.file})",
                )
            )
    return errors


def check_tracking_uri(uri: str) -> str | None:
    """A syntax check of an MLflow tracking URI (reachability is checked by ``bench run``).

    A folder (a plain path or ``file://``) is MLflow's file store, which MLflow 3 refuses unless
    ``MLFLOW_ALLOW_FILE_STORE=true``: ``bench validate`` and ``bench run`` give the same answer."""
    m = re.match(r"^sqlite(\+\w+)?://(/?)(.*)$", uri)
    if m and (not m.group(2) or m.group(3).split("?")[0] in ("", ":memory:")):
        return (
            f"{uri!r} is a sqlite store in memory, which ends with the process and every result in it: "
            "name a file, sqlite:///path/to/mlflow.db"
        )
    if re.match(r"^(sqlite|postgresql|mysql|mssql)(\+\w+)?://", uri):
        return None
    if re.match(r"^(https?|databricks)://", uri):
        return None
    if re.match(r"^file://", uri) or re.match(r"^[\w./~-]+$", uri):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() == "true":
            return None
        folder = uri.removeprefix("file://").rstrip("/") or "."
        return (
            f"{uri!r} is a folder store, which MLflow keeps in maintenance mode and refuses: use "
            f"sqlite:///{folder}/mlflow.db (or set MLFLOW_ALLOW_FILE_STORE=true to use the folder)"
        )
    return f"{uri!r} is not an MLflow tracking URI (use sqlite:///file.db or http://host:port)"


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class RunSpec:
    """One training run: a model variant, a seed, and everything shared with the suite."""

    suite: Suite
    index: int  # position of the model in the suite
    label: str
    model: str
    params: dict[str, Any]  # resolved: the variant's defaults and the suite's overrides, validated
    seed: int

    @property
    def entry(self) -> ModelEntry:
        from bench.models.plugins import resolve

        return resolve(self.model, self.suite.plugin_paths)

    @property
    def family(self) -> str:
        return self.entry.family

    @property
    def run_name(self) -> str:
        return f"{self.label}/seed{self.seed}"

    def resolved(self) -> dict[str, Any]:
        """Everything that determines this run's results, as plain data."""
        s = self.suite
        entry = self.entry
        dataset = s.dataset.model_dump()
        for key in ("image_size", "channels", "binarize"):  # unset: as before these options existed
            if dataset[key] in (None, False):
                del dataset[key]
        out = {
            "suite": s.name,
            "label": self.label,
            "model": self.model,
            "family": entry.family,
            "params": self.params,
            "seed": self.seed,
            "dataset": dataset,
            "budget": s.budget.model_dump(exclude_none=True),
            "eval": s.eval.model_dump(),
            "device": s.device,
            "train": s.train.model_dump(),
        }
        if entry.plugin is not None:  # where the class came from, and the hash of its source
            p = entry.plugin
            out["plugin"] = {"file": p.file, "sha256": p.sha256, "origin": p.origin, "paths": s.plugin_paths}
        return out

    @property
    def config_hash(self) -> str:
        """Identity of the run for resuming: resolved config + code version.

        Default numerics (fp32, eager) leave the hash as it was before ``train`` existed, so the
        runs of an existing store are still found; any other ``train`` setting changes it. The same
        holds for eval options and model parameters marked ``HASH_NEUTRAL`` (``bench.config``)."""

        run = self.resolved()
        if run["train"] == TrainConfig().model_dump():
            del run["train"]
        # options added later are part of the hash only where they differ from their defaults
        run["eval"] = without_neutral_defaults(run["eval"], EvalConfig)
        run["params"] = without_neutral_defaults(run["params"], self.entry.cls.Params)
        if "plugin" in run:  # the plugin's code, not where it lies on this machine
            run["plugin"] = run["plugin"]["sha256"]
        blob = json.dumps({"run": run, "bench": __version__}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def expand(suite: Suite) -> list[RunSpec]:
    """Suite -> run specs, seed-major (so a suite stopped early has covered every model)."""
    from bench.models.plugins import resolve

    paths = suite.plugin_paths
    params = [resolve(m.name, paths).make_params(m.params).model_dump(mode="json") for m in suite.models]
    return [
        RunSpec(suite, i, m.display, m.name, params[i], seed)
        for seed in suite.seeds
        for i, m in enumerate(suite.models)
    ]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are kept as their JSON text."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out
