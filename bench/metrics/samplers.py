"""Samplers: how a trained model of each family yields the images that generation metrics score.

- ``prior`` (every family; metric names without suffix, e.g. ``fid_domain``): the model's own
  sampler. GANs draw z from their noise distribution; VAEs draw from the prior N(0, I);
  autoencoders draw from a full-covariance Gaussian fitted to the training codes after training
  (the "N" column of Ghosh et al. 2020).
- ``gmm`` (ae, vae; suffix ``_gmm``): a 10-component full-covariance Gaussian mixture fitted to
  the training codes after training ("ex-post density estimation", Ghosh et al. 2020).
- ``rec`` (ae, vae; suffix ``_rec``, FID only): reconstructions of the first test images.

Every sampler maps standard normal noise to a latent code, so torch-fidelity draws all noise
from one seeded stream and the images do not depend on the batch size. The post-training fits
(``fit_latent_sampler`` for the Gaussian, ``latent_gmm``) live here, shared by the runner, the
metrics and ``bench eval``/``bench sample``; they are computed once per trained state.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset
from torch_fidelity.generative_model_base import GenerativeModelBase

from bench.data import ImageData, to_float
from bench.metrics.features import ImageSet, NoiseToImages
from bench.registry import Registry

Tensor = torch.Tensor

# --------------------------------------------------------------------------- post-training fits

_FITS: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, Any]] = weakref.WeakKeyDictionary()


def _state_of(model: torch.nn.Module, data: ImageData) -> tuple:
    """What the training codes depend on: the parameters (cheap summary) and the training split."""
    sums = tuple(round(float(p.detach().double().sum()), 12) for p in model.parameters())
    return sums, data.checksum, len(data.train_x)


def _fits(model: torch.nn.Module, data: ImageData) -> dict[str, Any]:
    """Per-model memo of codes and fits, dropped when the parameters or the data change."""
    state = _state_of(model, data)
    memo = _FITS.get(model)
    if memo is None or memo["state"] != state:
        memo = {"state": state}
        _FITS[model] = memo
    return memo


def train_codes(model, data: ImageData, batch_size: int = 500) -> Tensor:
    """Deterministic codes (N, d) of the whole training split, in eval mode, once per trained state."""
    memo = _fits(model, data)
    if "codes" not in memo:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        x = data.train_x
        with torch.inference_mode():
            memo["codes"] = torch.cat(
                [
                    model.encode(to_float(x[i : i + batch_size]).to(device)).flatten(1).float()
                    for i in range(0, len(x), batch_size)
                ]
            )
        model.train(was_training)
    return memo["codes"]


def fit_latent_sampler(model, data: ImageData, batch_size: int = 500) -> bool:
    """Fit a model's post-training latent sampler (``fit_latent_prior``: the AE's Gaussian "N").

    Called by the runner after training and by ``bench eval``; a no-op for models that sample
    a fixed prior, and free for a model already fitted in its current state. Returns whether the
    model has such a sampler.
    """
    fit = getattr(model, "fit_latent_prior", None)
    if fit is None:
        return False
    memo = _fits(model, data)
    if not memo.get("gaussian"):
        fit(train_codes(model, data, batch_size))
        memo["gaussian"] = True
    return True


@dataclass(frozen=True)
class GMM:
    """A Gaussian mixture in latent space: weights (K,), means (K, d), Cholesky factors (K, d, d)."""

    weights: Tensor
    means: Tensor
    chol: Tensor
    converged: bool
    n_iter: int
    n_fit: int

    def sample_from_normal(self, noise: Tensor) -> Tensor:
        """(B, 1 + d) standard normal -> (B, d): the first coordinate picks the component."""
        noise = noise.double()
        u = torch.special.ndtr(noise[:, 0])  # uniform on (0, 1)
        cdf = torch.cumsum(self.weights.double().to(noise.device), 0)
        k = torch.searchsorted(cdf, u.contiguous(), right=True).clamp_(max=len(self.weights) - 1)
        means, chol = self.means.double().to(noise.device), self.chol.double().to(noise.device)
        z = means[k] + (chol[k] @ noise[:, 1:, None]).squeeze(-1)
        return z.float()


def latent_gmm(model, data: ImageData, components: int, seed: int, batch_size: int = 500) -> GMM:
    """A ``components``-component full-covariance GMM fitted (scikit-learn) to the training codes."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    memo = _fits(model, data)
    key = f"gmm:{components}:{seed}"
    if key not in memo:
        codes = train_codes(model, data, batch_size).double().cpu().numpy()
        if len(codes) < components:
            raise ValueError(f"cannot fit {components} mixture components to {len(codes)} training codes")
        gm = GaussianMixture(components, covariance_type="full", reg_covar=1e-6, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # recorded in provenance instead
            gm.fit(codes)
        memo[key] = GMM(
            torch.from_numpy(gm.weights_).float(),
            torch.from_numpy(gm.means_).float(),
            torch.linalg.cholesky(torch.from_numpy(gm.covariances_)).float(),
            bool(gm.converged_),
            int(gm.n_iter_),
            len(codes),
        )
    return memo[key]


# --------------------------------------------------------------------------- priors, per family

# a GAN's z distribution from standard normal noise (inverse-CDF transform for the uniform)
Z_FROM_NORMAL: dict[str, Callable[[Tensor], Tensor]] = {
    "normal": lambda n: n,
    "uniform": lambda n: 2 * torch.special.ndtr(n) - 1,  # U(-1, 1)
}


@dataclass(frozen=True)
class LatentMap:
    """Noise (B, noise_dim) -> code -> images in [0, 1], and what it is."""

    noise_dim: int
    latent: Callable[[Tensor], Tensor]
    decode: Callable[[Tensor], Tensor]
    description: str
    details: dict[str, Any]


def _gan_prior(model, req: SampleRequest) -> LatentMap:
    dist = model.params.z_dist
    if dist not in Z_FROM_NORMAL:
        raise ValueError(f"no sampler for a GAN with z_dist {dist!r} (known: {', '.join(Z_FROM_NORMAL)})")
    desc = "z ~ U(-1, 1)" if dist == "uniform" else "z ~ N(0, I)"
    return LatentMap(model.params.z_dim, Z_FROM_NORMAL[dist], model.generator, f"GAN prior, {desc}", {})


def _vae_prior(model, req: SampleRequest) -> LatentMap:
    return LatentMap(model.params.latent_dim, lambda n: n, model.decode, "VAE prior, z ~ N(0, I)", {})


def _fitted_gaussian(model, req: SampleRequest) -> LatentMap:
    fit_latent_sampler(model, req.data, req.batch_size)
    mean, chol = model.prior_mean, model.prior_chol
    return LatentMap(
        len(mean),
        lambda n: mean + n @ chol.T,
        model.decode,
        "full-covariance Gaussian fitted to the training codes",
        {"fit_on": f"{len(req.data.train_x)} training codes"},
    )


PRIORS: dict[str, Callable[[Any, SampleRequest], LatentMap]] = {
    "gan": _gan_prior,
    "vae": _vae_prior,
    "ae": _fitted_gaussian,
}


# --------------------------------------------------------------------------- the samplers


@dataclass(frozen=True)
class SampleRequest:
    """What a sampler needs: the model (in eval mode), its data, and the evaluation's settings."""

    model: Any
    data: ImageData  # the data the model was trained on (codes for fits)
    test_x: Tensor  # test images (uint8) for reconstructions
    n: int
    batch_size: int
    gmm_components: int
    seed: int


@dataclass(frozen=True)
class Sampler:
    """A registered way to get images from a model; ``suffix`` is appended to metric names."""

    name: str
    suffix: str
    families: tuple[str, ...]
    description: str
    make: Callable[[SampleRequest], tuple[Dataset | GenerativeModelBase, int, dict[str, Any]]]


def _noise_model(m: LatentMap, model) -> NoiseToImages:
    return NoiseToImages(m.noise_dim, m.latent, m.decode, [model])


def _make_prior(req: SampleRequest):
    m = PRIORS[req.model.family](req.model, req)
    return (
        _noise_model(m, req.model),
        req.n,
        {"sampler": "prior", "sampler_detail": m.description, **m.details},
    )


def _make_gmm(req: SampleRequest):
    gmm = latent_gmm(req.model, req.data, req.gmm_components, req.seed, req.batch_size)
    m = LatentMap(
        gmm.means.shape[1] + 1,
        lambda n: gmm.sample_from_normal(n).to(n.device),
        req.model.decode,
        f"{req.gmm_components}-component full-covariance GMM fitted to the training codes",
        {
            "fit_on": f"{gmm.n_fit} training codes",
            "gmm_converged": gmm.converged,
            "gmm_iterations": gmm.n_iter,
        },
    )
    return _noise_model(m, req.model), req.n, {"sampler": "gmm", "sampler_detail": m.description, **m.details}


def _make_rec(req: SampleRequest):
    x = req.test_x[: req.n]
    device = next(req.model.parameters()).device
    with torch.inference_mode():
        rec = torch.cat(
            [
                req.model.reconstruct(to_float(x[i : i + req.batch_size]).to(device)).clamp(0, 1).cpu()
                for i in range(0, len(x), req.batch_size)
            ]
        )
    detail = f"reconstructions of the first {len(x)} test images"
    return ImageSet(rec), len(x), {"sampler": "rec", "sampler_detail": detail}


SAMPLERS: Registry[Sampler] = Registry("sampler")
SAMPLERS.add(
    "prior",
    Sampler(
        "prior",
        "",
        ("ae", "vae", "gan"),
        "the model's own sampler (GAN z, VAE prior, AE fitted Gaussian)",
        _make_prior,
    ),
)
SAMPLERS.add(
    "gmm",
    Sampler(
        "gmm",
        "_gmm",
        ("ae", "vae"),
        "10-component GMM fitted to the training codes after training",
        _make_gmm,
    ),
)
SAMPLERS.add("rec", Sampler("rec", "_rec", ("ae", "vae"), "test-split reconstructions", _make_rec))


def draw(model, sampler: str, n: int, data: ImageData, seed: int, gmm_components: int = 10) -> Tensor:
    """n images (n, C, H, W) in [0, 1] from a sampler, with noise from ``seed`` (``bench sample``)."""
    req = SampleRequest(model, data, data.test_x, n, 256, gmm_components, seed)
    source, n, _ = SAMPLERS.get(sampler).make(req)
    if isinstance(source, Dataset):
        imgs = torch.stack([source[i] for i in range(n)])
    else:
        device = next(model.parameters()).device
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(n, source.z_size, generator=g, dtype=torch.float64).float().to(device)
        with torch.inference_mode():
            imgs = source(noise)
    c = data.image_shape[0]
    return imgs[:, :c].float().div(255)  # back to the dataset's channels
