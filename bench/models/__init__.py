"""Models, one file per family; importing this package registers them all."""

from bench.models import ae, gan, vae  # noqa: F401  (registration side effects)
from bench.models.base import MODELS, GenerativeModel, ModelParams, build_model

__all__ = ["MODELS", "GenerativeModel", "ModelParams", "build_model"]
