"""The contract every model honours, and the model registry.

A model is an ``nn.Module`` that declares its family (ae | vae | gan | codec), its step kind
(reconstruction | adversarial | none: which strategy of the one training loop drives it; a
classical codec trains nothing) and a
pydantic ``Params`` class. Variants are registry entries that pre-set parameters of a class
(``vae-conv`` with ``beta: 4`` is a beta-VAE). Models from outside the package (``module:Class``
names, the ``bench.models`` entry points) meet the same contract: see ``GenerativeModel``
and ``bench.models.plugins``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import ConfigDict, Field
from torch import nn

from bench.config import Strict
from bench.registry import Registry

Family = Literal["ae", "vae", "gan", "codec"]
StepKind = Literal["reconstruction", "adversarial", "none"]
FAMILIES = ("ae", "vae", "gan", "codec")
STEP_OF_FAMILY: dict[str, StepKind] = {
    "ae": "reconstruction",
    "vae": "reconstruction",
    "gan": "adversarial",
    "codec": "none",
}
# what each step kind of the training loop calls on a model
STEP_METHODS: dict[str, tuple[str, ...]] = {
    "reconstruction": ("loss",),
    "adversarial": ("d_loss", "g_loss", "sample_z"),
    "none": (),
}

# MLP widths: at most MAX_LAYERS hidden layers of at most MAX_WIDTH units each (about 134 M
# weights at the extreme: beyond that a typo, such as 1e7, would allocate until the process dies)
MAX_WIDTH = 4096
MAX_LAYERS = 8
Widths = tuple[Annotated[int, Field(ge=1, le=MAX_WIDTH)], ...]


def widths_field(description: str) -> Any:
    """A ``Widths | None`` parameter: positive widths, each at most ``MAX_WIDTH``, ``MAX_LAYERS`` layers."""
    return Field(None, max_length=MAX_LAYERS, description=description)


class ModelParams(Strict):
    """Parameters common to every model: the optimiser (Adam) settings. Numbers and booleans are
    read as strictly as the suite's own sections (``bench.config.Strict``), in lists too."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # finite floats only

    lr: float = Field(1e-3, gt=0, le=1)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)


class GenerativeModel(nn.Module):
    """Base class of every model, built-in or not. Images in and out are float tensors (B, C, H, W)
    in [0, 1]; ``image_shape`` is the dataset's (C, H, W) (1 or 3 channels, any size).

    The contract (``bench validate`` checks it for models from outside the package):

    - ``family``: "ae", "vae" or "gan" (class attribute). It decides the default training step
      and which metrics may apply: reconstruction, latent and code-space metrics are for ae/vae,
      sample-based metrics for every family.
    - ``Params``: a ``ModelParams`` subclass (pydantic) holding every parameter; the suite's keys
      besides ``name``/``label`` are validated against it, like a built-in model's.
    - ``__init__(self, params, image_shape)``: build the networks for the data's shape.
    - ``sample(n, generator=None)``: n images (n, C, H, W) in [0, 1]. Required (every run logs a
      sample grid); unlocks fid, kid, precision, recall, is, modes_covered (``*_domain`` too).
    - Training, by ``step_kind`` (default from the family: ae/vae "reconstruction", gan
      "adversarial"). reconstruction: ``loss(x)`` -> dict with a scalar "loss" (other entries are
      logged); ``optimizer_groups()`` optional. adversarial: ``generator`` and ``discriminator``
      modules, ``sample_z(n)``, ``d_loss(x, z)`` -> dict with "loss", ``g_loss(z)`` -> dict with
      "g_loss"; optional ``n_critic`` and ``after_d_step()``.
    - ``encode(x)`` -> (B, d) codes: unlocks probe_acc, knn_acc (datasets with labels) and, with
      ``latent_bits()``, compression_ratio.
    - ``decode(z)``: with ``encode``, unlocks the code-space samplers (``*_gmm`` metrics) and the
      default ``reconstruct(x) = decode(encode(x))``.
    - ``reconstruct(x)`` (or encode + decode): unlocks recon_mse, psnr, ssim, denoise_psnr, ``*_rec``
      and the reconstruction grid.
    - ``importance_samples(x, k)`` with ``capabilities = frozenset({"likelihood"})`` and a
      ``likelihood`` name (``bernoulli`` | ``gaussian``, how ``decode`` parameterises p(x | z)):
      unlocks nll_bpd and nll_nats (vae), one importance-weighted estimator for every model.
    - ``code_symbols(x)`` -> (integer symbols (B, d'), alphabet size) and
      ``decode_symbols(symbols)``: unlocks bpp and the compression ratio of quantised codes,
      measured on real bitstreams; ``encode_with_symbols(x)`` optional: both from one forward pass
      (an evaluation then encodes each split once for the probes and the bitstreams).
    - ``fit_latent_prior(codes)`` optional: called with the training codes after training; it fits
      the model's sampler (its own parameters or buffers) and leaves ``encode`` as it was.
    - ``autocast_modules()``: the networks ``eval.precision: bf16`` runs under autocast (default:
      the ``encoder``, ``decoder`` and ``generator`` submodules the model has). The model's own
      code between them (quantisers, codebook search, prior sampling) stays float32.

    A metric a model cannot serve is n/a in its row; a metric the suite asks for that needs a
    method the model lacks is an error at ``bench validate``.
    """

    family: ClassVar[Family]
    step_kind: ClassVar[StepKind]
    Params: ClassVar[type[ModelParams]] = ModelParams
    # what the model offers beyond its family, for metrics that need it (``Metric.needs``):
    # "likelihood": ``importance_samples(x, k)`` and ``likelihood``: the model defines p(x)
    # "bitstream": ``compress``/``decompress`` code images to bytes themselves (codecs, ae-factorized)
    # "posterior": ``posterior(x)`` gives a diagonal Gaussian q(z | x) (its KL is the bits-back rate)
    capabilities: ClassVar[frozenset[str]] = frozenset()
    can_sample: ClassVar[bool] = True  # False: no generator at all (a classical codec)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not hasattr(cls, "step_kind") and getattr(cls, "family", None) in STEP_OF_FAMILY:
            cls.step_kind = STEP_OF_FAMILY[cls.family]

    @classmethod
    def implements(cls, method: str) -> bool:
        """Whether the class provides ``method`` (not the base class's placeholder). ``reconstruct``
        counts when the class overrides it or provides both ``encode`` and ``decode``."""
        if method == "reconstruct" and cls.implements("encode") and cls.implements("decode"):
            return True
        own = getattr(cls, method, None)
        return own is not None and own is not getattr(GenerativeModel, method, None)

    def __init__(self, params: ModelParams, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.params = params
        self.image_shape = image_shape

    # --- generation: every family can sample
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    # --- the adversarial step (gan): what a GAN may leave out
    n_critic: int = 1  # discriminator updates per generator update

    def after_d_step(self) -> None:
        """Called after each discriminator update (a WGAN's weight clipping); nothing by default."""

    # --- encoder families (ae, vae)
    @property
    def has_encoder(self) -> bool:
        """An encoder family that can reconstruct (every built-in ae/vae model)."""
        return self.family in ("ae", "vae") and self.implements("reconstruct")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic code of x (the mean for a VAE): what probes and compression use."""
        raise NotImplementedError(f"{type(self).__name__} has no encoder")

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no decoder")

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def autocast_modules(self) -> list[nn.Module]:
        """The networks an evaluation at ``eval.precision: bf16`` runs under bf16 autocast."""
        nets = (getattr(self, name, None) for name in ("encoder", "decoder", "generator"))
        return [m for m in nets if isinstance(m, nn.Module)]

    def snap_code(self, z: torch.Tensor) -> torch.Tensor:
        """The nearest code the model can store for a point z (B, d) of its code space: what a
        code-space sampler (the ex-post GMM) decodes. Identity for float codes."""
        return z

    @property
    def reconstructs(self) -> bool:
        """Whether the model reconstructs images (encoder families and codecs)."""
        return self.has_encoder or self.family == "codec"

    # --- rate: what is stored of an image
    def code_symbols(self, x: torch.Tensor) -> tuple[torch.Tensor, int] | None:
        """The stored code of x as integer symbols (B, d) in [0, alphabet) and the alphabet size,
        for models whose codes are quantised by construction; None: float codes (no rate until a
        quantiser step is chosen)."""
        return None

    def encode_with_symbols(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, int] | None]:
        """``encode(x)`` and ``code_symbols(x)`` together; a model whose two share a forward pass
        overrides it to run it once (an evaluation encodes each split once for both)."""
        return self.encode(x), self.code_symbols(x)

    def decode_symbols(self, symbols: torch.Tensor) -> torch.Tensor:
        """Images from the symbols ``code_symbols`` gave (models with quantised codes)."""
        raise NotImplementedError(f"{type(self).__name__} has no integer code")

    def compress(self, x: torch.Tensor) -> list[bytes]:
        """One bitstream per image (capability "bitstream")."""
        raise NotImplementedError(f"{type(self).__name__} does not code images itself")

    def decompress(self, strings: list[bytes]) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] from the bitstreams of ``compress``."""
        raise NotImplementedError(f"{type(self).__name__} does not code images itself")

    def latent_bits(self) -> float | None:
        """Bits needed to store one image's code; None for models without an encoder."""
        return None

    # --- likelihood: latent-variable models with a decoder distribution (capability "likelihood")
    @property
    def likelihood(self) -> str:
        """How ``decode(z)`` parameterises p(x | z): ``bernoulli`` (its output is the mean) or
        ``gaussian`` (its output is the mean, variance 1/2 per pixel: the summed squared error)."""
        return "bernoulli" if getattr(self.params, "recon_loss", "mse") == "bce" else "gaussian"

    def importance_samples(
        self, x: torch.Tensor, k: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """k latent draws z_i ~ q(z | x) for the importance-weighted likelihood bound (Burda et al.
        2016): the codes to decode (k', B, d) and log p(z_i) - log q(z_i | x) (k', B). A point
        posterior returns k' = 1 (its bound is the same for every k)."""
        raise NotImplementedError(f"{type(self).__name__} has no likelihood")

    def likelihood_provenance(self) -> dict[str, Any]:
        """What q(z | x) and p(z) are, in words, for the likelihood metrics' provenance."""
        return {}

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """Parameter groups for the reconstruction step's optimiser (override for per-group decay)."""
        return [{"params": list(self.parameters())}]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its class and the parameters this variant pre-sets."""

    cls: type[GenerativeModel]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    plugin: PluginSource | None = None  # where a model from outside the package came from

    @property
    def origin(self) -> str:
        return self.plugin.origin if self.plugin else "bench"

    @property
    def family(self) -> Family:
        return self.cls.family

    def make_params(self, overrides: dict[str, Any]) -> ModelParams:
        """Validate the variant's defaults with the suite's overrides (pydantic errors propagate)."""
        return self.cls.Params(**{**self.defaults, **overrides})


@dataclass(frozen=True)
class PluginSource:
    """Where a plugin model class came from: its source file (whose sha256 enters the config hash
    of its runs) and, in words, how it was found (import path or entry point and distribution)."""

    file: str
    sha256: str
    origin: str


MODELS: Registry[ModelEntry] = Registry("model")


def register(name: str, cls: type[GenerativeModel], description: str = "", **defaults: Any) -> None:
    """Register ``cls`` under ``name`` with pre-set parameters; defaults are validated now."""
    entry = ModelEntry(cls, defaults, description)
    entry.make_params({})  # a bad default is a bug in bench, caught at import
    MODELS.add(name, entry)
