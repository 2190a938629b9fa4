"""Models, one file per family; importing this package registers them all."""

from bench.models import ae, vae  # noqa: F401  (registration side effects; order = `bench list` order)

# isort: split
from bench.models import gan  # noqa: F401

# isort: split
from bench.models import factorized  # noqa: F401

# isort: split
from bench.models import codec  # noqa: F401
from bench.models.base import MODELS, GenerativeModel, ModelParams
from bench.models.plugins import PluginError, build_model, resolve

__all__ = ["MODELS", "GenerativeModel", "ModelParams", "PluginError", "build_model", "resolve"]
