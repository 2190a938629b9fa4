"""bench's classes that torch-fidelity calls: the domain feature extractor and the noise-to-images
model of the fitted latent samplers. Imported when a metric first extracts features (it imports
torch-fidelity, and torchvision with it, which `bench validate` and `bench list` never need);
importing it registers the domain extractor under ``TF_NAME``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.generative_model_base import GenerativeModelBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from bench.cache import load_tensors
from bench.data import to_float
from bench.metrics.domain import FEATURES, LAYERS, TF_NAME, DomainNet
from bench.metrics.pixels import NOISE, pad_images, to_fidelity_images


class NoiseToImages(GenerativeModelBase):
    """A model and a sampler as a torch-fidelity generative model: normal noise (B, z) -> uint8 images.

    ``latent`` maps the noise to the model's latent code (the sampler), ``decode`` the code to
    images in [0, 1] (the model). torch-fidelity draws the noise from a seeded numpy stream, so
    the images do not depend on the batch size.
    """

    def __init__(self, noise_dim: int, latent: Callable, decode: Callable, modules: list[torch.nn.Module]):
        super().__init__()
        self._z = noise_dim
        self.latent = latent
        self.decode = decode
        self.held = torch.nn.ModuleList(modules)  # moved with the wrapper by torch-fidelity

    @property
    def z_size(self) -> int:
        return self._z

    @property
    def z_type(self) -> str:
        return NOISE

    @property
    def num_classes(self) -> int:
        return 0

    @torch.inference_mode()
    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return to_fidelity_images(self.decode(self.latent(noise)))


class PaddedModel(GenerativeModelBase):
    """A torch-fidelity generative model whose images get a zero border to ``side`` x ``side``
    (``eval.inception_pad_to``), as the real images it is compared with."""

    def __init__(self, inner: GenerativeModelBase, side: int):
        super().__init__()
        self.inner, self.side = inner, side

    @property
    def z_size(self) -> int:
        return self.inner.z_size

    @property
    def z_type(self) -> str:
        return self.inner.z_type

    @property
    def num_classes(self) -> int:
        return self.inner.num_classes

    @torch.inference_mode()
    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return pad_images(self.inner(noise), self.side)


class FeatureExtractorDomain(FeatureExtractorBase):
    """torch-fidelity feature extractor over a cached ``DomainNet``.

    Input: uint8 (B, 3, H, W), as torch-fidelity feeds every extractor (grayscale datasets arrive
    tiled to 3 channels; the net reads the dataset's own channels back). Features: "penultimate"
    (128-d, FID/KID/PRC) and "logits" (IS, modes).
    """

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(
                "the domain extractor needs feature_extractor_weights_path (a trained classifier)"
            )
        blob = load_tensors(feature_extractor_weights_path)
        self.channels = int(blob["net"]["channels"])
        self.net = DomainNet(**blob["net"])
        self.net.load_state_dict(blob["state_dict"])
        self.requires_grad_(False)
        self.eval()

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected uint8 (B, 3, H, W) images, got {x.dtype} {tuple(x.shape)}")
        feats, logits = self.net(to_float(x[:, : self.channels]))
        out = dict(zip(FEATURES, (feats.float(), logits.float())))
        return tuple(out[f] for f in self.features_list)

    @staticmethod
    def get_provided_features_list():
        return FEATURES

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return LAYERS[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 28, 28, dtype=torch.uint8)


if TF_NAME not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(TF_NAME, FeatureExtractorDomain)
