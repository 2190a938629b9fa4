"""Samplers: how a trained model yields the images that generation metrics score.

- ``prior`` (every family; metric names without suffix, e.g. ``fid_domain``): the model's own
  ``sample``. GANs draw z from their noise distribution, VAEs from their prior, autoencoders from
  a full-covariance Gaussian fitted to the training codes after training (the "N" column of
  Ghosh et al. 2020). Drawn in fixed chunks of ``CHUNK`` with per-chunk seeds, so the images
  depend on the run seed only, never on ``eval.batch_size``.
- ``gmm`` (ae, vae; suffix ``_gmm``): a 10-component full-covariance Gaussian mixture fitted to
  the training codes after training ("ex-post density estimation", Ghosh et al. 2020), wrapped
  as a torch-fidelity generative model: standard normal noise from torch-fidelity's seeded
  stream -> a mixture sample -> the model's decoder.
- ``rec`` (ae, vae; suffix ``_rec``, FID only): reconstructions of the reference row's held-out
  real images (disjoint from the reference set), so an exact autoencoder scores the real-data row.

The post-training fits (``fit_latent_sampler`` for the Gaussian, ``latent_gmm``) live here,
shared by a run's evaluation (``bench.run.execute``), the metrics and ``bench eval``/``bench
sample``; they are computed once per trained state.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from bench import numerics
from bench.data import ImageData, to_float
from bench.metrics.base import ALL_FAMILIES, ENCODER_FAMILIES
from bench.metrics.codes import _FITS, _fits, _restate, train_codes  # noqa: F401  (shared with EvalContext)
from bench.metrics.features import ImageSet, RealImages, to_uint8
from bench.metrics.gmm import fit_em
from bench.metrics.pixels import unit_images
from bench.registry import Registry

if TYPE_CHECKING:
    from torch_fidelity.generative_model_base import GenerativeModelBase

Tensor = torch.Tensor
REG_COVAR = 1e-6  # added to each GMM covariance's diagonal (scikit-learn's default)

# ``eval.gmm_fit_n`` (GMMOptions.fit_n) defaults to None, all training codes, as Ghosh et al. 2020
# fit them; a number fits a seeded random subset of that many (faster, but on 64-d vae-conv codes
# of Fashion-MNIST fits to 10,000 and 20,000 codes scored a held-out log-likelihood 3.5% and 1.5%
# below the fit to all 60,000: outside the 1% a default must keep)

# --------------------------------------------------------------------------- post-training fits


# the run's metric for the time of ``fit_latent_sampler`` (within ``eval_seconds``, beside each
# metric's ``eval_seconds.<metric>``): the fit encodes the training split the metrics then share
LATENT_FIT_SECONDS = "eval_seconds.latent_fit"


def fit_latent_sampler(model, data: ImageData, batch_size: int = 500) -> bool:
    """Fit a model's post-training latent sampler (``fit_latent_prior``: the AE's Gaussian "N").

    Called by ``bench.run.execute`` after training and by ``bench eval``; a no-op for models that sample
    a fixed prior, and free for a model already fitted in its current state. Returns whether the
    model has such a sampler.
    """
    fit = getattr(model, "fit_latent_prior", None)
    if fit is None:
        return False
    memo = _fits(model, data)
    key = f"gaussian:{numerics.eval_mode()}"
    if memo.get("fitted") != key:  # fitted to the codes of this precision
        fit(train_codes(model, data, batch_size))
        _restate(model, data)  # the sampler's buffers moved, the codes did not
        memo["fitted"] = key
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


def gmm_fit_subset(n: int, fit_n: int | None, seed: int) -> Tensor | None:
    """Indices (sorted) of the ``fit_n`` training codes the GMM is fitted to: a random subset drawn
    with ``seed``; None (all codes) when ``fit_n`` is None or at least ``n``."""
    if fit_n is None or fit_n >= n:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:fit_n].sort().values


@dataclass(frozen=True)
class GMMOptions:
    """How the ex-post GMM is fitted: ``em`` is scikit-learn's GaussianMixture (maximum likelihood);
    ``dirichlet`` its BayesianGaussianMixture with a Dirichlet-process weight prior of concentration
    ``weight_concentration`` (Ghosh et al.'s published GMM numbers, 0.1); ``max_iter`` EM iterations
    (scikit-learn's default 100; Ghosh et al.'s plain GMM: 2000)."""

    kind: str = "em"
    weight_concentration: float = 0.1
    max_iter: int = 100
    fit_n: int | None = None  # training codes fitted to: a seeded random subset of this many (None: all)

    @classmethod
    def of(cls, e: Any) -> GMMOptions:
        """The options an ``eval`` section (``bench.config.EvalConfig``) sets."""
        return cls(e.gmm_kind, e.gmm_weight_concentration, e.gmm_max_iter, e.gmm_fit_n)

    def describe(self, components: int) -> str:
        what = f"{components}-component full-covariance GMM"
        if self.kind == "dirichlet":
            what += f" with a Dirichlet-process weight prior ({self.weight_concentration}) (scikit-learn)"
        else:
            what += " (maximum likelihood, EM in torch, float64, k-means++ initialisation)"
        return f"{what}, at most {self.max_iter} EM iterations"


def latent_gmm(
    model,
    data: ImageData,
    components: int,
    seed: int,
    batch_size: int = 500,
    options: GMMOptions = GMMOptions(),
) -> GMM:
    """A ``components``-component full-covariance GMM fitted to the training codes: by EM in torch
    (``bench.metrics.gmm``, on the codes' device), or scikit-learn's BayesianGaussianMixture for
    ``kind: dirichlet``."""
    memo = _fits(model, data)
    key = f"gmm:{components}:{seed}:{options}:{numerics.eval_mode()}"
    if key not in memo:
        codes = train_codes(model, data, batch_size)
        subset = gmm_fit_subset(len(codes), options.fit_n, seed)
        codes = codes if subset is None else codes[subset.to(codes.device)]
        if len(codes) < components:
            raise ValueError(f"cannot fit {components} mixture components to {len(codes)} training codes")
        if options.kind == "dirichlet":
            memo[key] = _dirichlet_gmm(codes, components, seed, options)
        else:
            fit = fit_em(codes, components, seed, max_iter=options.max_iter, reg=REG_COVAR)
            parts = (fit.weights.float(), fit.means.float(), fit.chol.float())
            memo[key] = GMM(*parts, fit.converged, fit.n_iter, len(codes))
    return memo[key]


def _dirichlet_gmm(codes: Tensor, components: int, seed: int, options: GMMOptions) -> GMM:
    """scikit-learn's BayesianGaussianMixture with a Dirichlet-process weight prior."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import BayesianGaussianMixture
    from threadpoolctl import threadpool_limits

    gm = BayesianGaussianMixture(
        n_components=components,
        weight_concentration_prior=options.weight_concentration,
        covariance_type="full",
        reg_covar=REG_COVAR,
        max_iter=options.max_iter,
        random_state=seed,
    )
    # one BLAS thread: the d x d products are small, and on shared cores idle BLAS threads
    # spin-waiting made the fit 3 to 10 times slower (measured on 2 shared cores)
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)  # recorded in provenance instead
        gm.fit(codes.double().cpu().numpy())
    return GMM(
        torch.from_numpy(gm.weights_).float(),
        torch.from_numpy(gm.means_).float(),
        torch.linalg.cholesky(torch.from_numpy(gm.covariances_)).float(),
        bool(gm.converged_),
        int(gm.n_iter_),
        len(codes),
    )


# --------------------------------------------------------------------------- the model's own sampler

CHUNK = 500  # samples per call of model.sample: fixed, so samples never depend on eval.batch_size

# what a family's own sampler draws, for provenance (the model's ``sample`` is what runs)
OWN_SAMPLER = {
    "gan": "the generator's noise distribution",
    "vae": "the prior",
    "ae": "a full-covariance Gaussian fitted to the training codes after training",
}


def chunk_seed(seed: int, chunk: int) -> int:
    """The generator seed of one chunk of samples: a pure function of (run seed, chunk index)."""
    return (seed * 1_000_003 + chunk) % 2**63


def model_samples(model, n: int, seed: int) -> Tensor:
    """n samples (n, C, H, W) uint8 from ``model.sample``, in fixed chunks with per-chunk seeds.

    Whatever a model's prior is (a GAN's uniform z, a VQ-VAE's codebook indices, an AE's fitted
    Gaussian), its own ``sample`` draws it: nothing here needs to know.
    """
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for c, start in enumerate(range(0, n, CHUNK)):
            g = torch.Generator(device=device).manual_seed(chunk_seed(seed, c))
            x = unit_images(model.sample(min(CHUNK, n - start), g), f"{type(model).__name__}.sample")
            out.append(to_uint8(x).cpu())
    return torch.cat(out)


# --------------------------------------------------------------------------- the samplers


@dataclass(frozen=True)
class SampleRequest:
    """What a sampler needs: the model (in eval mode), its data, and the evaluation's settings."""

    model: Any
    data: ImageData  # the data the model was trained on (codes for fits)
    rec: RealImages  # the real images the ``rec`` sampler reconstructs (read only by it)
    n: int
    batch_size: int
    gmm_components: int
    seed: int
    gmm: GMMOptions = GMMOptions()


@dataclass(frozen=True)
class Sampler:
    """A registered way to get images from a model; ``suffix`` is appended to metric names."""

    name: str
    suffix: str
    families: tuple[str, ...]
    description: str
    make: Callable[[SampleRequest], tuple[Dataset | GenerativeModelBase, int, dict[str, Any]]]


def _make_prior(req: SampleRequest):
    fit_latent_sampler(req.model, req.data, req.batch_size)  # a no-op for fixed priors
    detail = f"{type(req.model).__name__}.sample: {OWN_SAMPLER.get(req.model.family, 'its own sampler')}"
    prov = {"sampler": "prior", "sampler_detail": detail, "chunk": CHUNK}
    if hasattr(req.model, "fit_latent_prior"):
        prov["fit_on"] = f"{len(req.data.train_x)} training codes"
    return ImageSet(model_samples(req.model, req.n, req.seed)), req.n, prov


def _make_gmm(req: SampleRequest):
    gmm = latent_gmm(req.model, req.data, req.gmm_components, req.seed, req.batch_size, req.gmm)
    n_codes = len(req.data.train_x)
    fit_on = f"{gmm.n_fit} training codes" + (
        f" (a random subset of the {n_codes}, seed {req.seed})" if gmm.n_fit < n_codes else ""
    )
    model = req.model
    from bench.metrics.fidelity import NoiseToImages

    noise_to_images = NoiseToImages(
        gmm.means.shape[1] + 1,
        lambda n: gmm.sample_from_normal(n).to(n.device),
        # only codes the model can store are decoded
        lambda z: unit_images(model.decode(model.snap_code(z)), f"{type(model).__name__}.decode"),
        [model],
    )
    prov = {
        "sampler": "gmm",
        "sampler_detail": f"{req.gmm.describe(req.gmm_components)}, fitted to the training codes; "
        "each draw snapped to the nearest storable code (quantiser grid, codebook) before decoding",
        "fit_on": fit_on,
        "gmm_kind": req.gmm.kind,
        "gmm_components": req.gmm_components,
        "gmm_converged": gmm.converged,
        "gmm_iterations": gmm.n_iter,
    }
    return noise_to_images, req.n, prov


def _make_rec(req: SampleRequest):
    x = req.rec.images[: req.n]
    device = next(req.model.parameters()).device
    with torch.inference_mode():
        rec = torch.cat(
            [
                req.model.reconstruct(to_float(x[i : i + req.batch_size]).to(device)).cpu()
                for i in range(0, len(x), req.batch_size)
            ]
        )
    rec = unit_images(rec, f"{type(req.model).__name__}.reconstruct")
    detail = f"reconstructions of {req.rec.describe()}"
    return ImageSet(rec), len(x), {"sampler": "rec", "sampler_detail": detail}


SAMPLERS: Registry[Sampler] = Registry("sampler")
SAMPLERS.add(
    "prior",
    Sampler(
        "prior",
        "",
        ALL_FAMILIES,
        "the model's own sampler (GAN z, VAE prior, AE Gaussian fitted to the codes)",
        _make_prior,
    ),
)
SAMPLERS.add(
    "gmm",
    Sampler(
        "gmm",
        "_gmm",
        ENCODER_FAMILIES,
        "10-component GMM fitted to the training codes after training",
        _make_gmm,
    ),
)
SAMPLERS.add(
    "rec",
    Sampler("rec", "_rec", ENCODER_FAMILIES, "reconstructions of the held-out real images", _make_rec),
)


def draw(
    model,
    sampler: str,
    n: int,
    data: ImageData,
    seed: int,
    gmm_components: int = 10,
    gmm: GMMOptions = GMMOptions(),
) -> Tensor:
    """n images (n, C, H, W) in [0, 1] from a sampler, with noise from ``seed`` (``bench sample``)."""
    test = RealImages(data, "test", min(n, len(data.test_x)))
    req = SampleRequest(model, data, test, n, 256, gmm_components, seed, gmm)
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
