"""Likelihood: one estimator for every model that defines p(x), in bits per dimension.

Every model with the ``likelihood`` capability (``vae-*``, ``iwae``, ``vq-vae``, a plugin that
provides ``importance_samples``) is scored the same way, whatever objective it trained on:

1. ``eval.nll_k`` latent draws z_i ~ q(z | x) per test image, with log p(z_i) - log q(z_i | x)
   (``GenerativeModel.importance_samples``);
2. log P(x | z_i) of the *discrete* image under the decoder's distribution, integrated over each
   pixel's bin (Theis et al. 2016), so every model is a normalised distribution over the same
   8-bit (or binarised) images:
   - ``bernoulli`` decoders on 8-bit data: the continuous Bernoulli (Loaiza-Ganem & Cunningham
     2019) with the decoder's output as its parameter (the cross-entropy loss is its unnormalised
     log-density), integrated over the 256 bins centred on the grey levels k / 255;
   - ``bernoulli`` decoders on binarised data: the Bernoulli itself;
   - ``gaussian`` decoders: the Gaussian with the decoder's mean and variance 1/2 (what the summed
     squared error trains), integrated over the same bins, the outer ones open to +-infinity;
3. the importance-weighted bound log (1/k) sum_i P(x | z_i) p(z_i) / q(z_i | x) (Burda et al.
   2016), a lower bound on log P(x) that tightens as k grows; its negative is reported.

``nll_bpd`` divides by the number of dimensions (C x H x W) and ln 2; ``nll_nats`` is the same
estimate in nats per image, the unit of the binarised-MNIST literature. The likelihood families
(``bernoulli``, ``gaussian``) are recorded with each value and ranked apart in reports.
"""

from __future__ import annotations

import math

import torch

from bench import numerics
from bench.metrics.base import EvalContext, Result, register_metric
from bench.metrics.samplers import chunk_seed

Tensor = torch.Tensor
GAUSSIAN_VAR = 0.5  # the variance the summed squared error implies (bench.models.ae.decoder_nll)
LAMBDA_EPS = 1e-6  # Bernoulli parameters are kept in [eps, 1 - eps]: a saturated sigmoid is not 0 or 1
LIKELIHOOD_VERSION = 1  # bump when the estimator changes what a value means

DESCRIPTIONS = {
    ("bernoulli", 256): "continuous Bernoulli decoder integrated over the 256 grey-level bins",
    ("bernoulli", 2): "Bernoulli decoder on binarised pixels",
    ("gaussian", 256): f"Gaussian decoder (variance {GAUSSIAN_VAR}) integrated over the 256 grey-level bins",
    ("gaussian", 2): f"Gaussian decoder (variance {GAUSSIAN_VAR}) integrated over the two binary bins",
}


def _bin_edges(x: Tensor, levels: int) -> tuple[Tensor, Tensor]:
    """Each pixel's bin [lo, hi]: centred on its level, half a level wide on each side."""
    half = 0.5 / (levels - 1)
    return x - half, x + half


def _log_gaussian_mass(mean: Tensor, x: Tensor, levels: int) -> Tensor:
    """log of the N(mean, GAUSSIAN_VAR) mass of each pixel's bin, outer bins open: elementwise,
    x broadcast against mean (one image under each of several draws)."""
    lo, hi = _bin_edges(x, levels)
    sd = math.sqrt(GAUSSIAN_VAR)
    a = torch.where(x <= 0, -math.inf, (lo - mean).div_(sd))
    b = torch.where(x >= 1, math.inf, (hi - mean).div_(sd))
    # in the upper tail, the mirrored interval keeps the difference of CDFs away from 1 - 1
    flip = a > 0
    a, b = torch.where(flip, b.neg(), a), torch.where(flip, a.neg_(), b)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return log_a.sub_(log_b).exp_().neg_().log1p_().add_(log_b)


def _log_cb_mass(lam: Tensor, x: Tensor, levels: int) -> Tensor:
    """log of the continuous-Bernoulli(lam) mass of each pixel's bin within [0, 1]: elementwise,
    x broadcast against lam (one image under each of several draws).

    With t = logit(lam), the density is t e^(t x) / (e^t - 1) on [0, 1], so the mass of [l, l + w]
    is e^(t l) expm1(t w) / expm1(t); t < 0 is mirrored (x -> 1 - x, t -> -t) to keep t >= 0.
    Computed in place, a few passes over the draws (the bins' edges are the image's, computed
    once): the same operations in the same order as the formula, so the same values.
    """
    lo, hi = _bin_edges(x, levels)
    lo, hi = lo.clamp_(0, 1), hi.clamp_(0, 1)
    w, upper = hi - lo, 1 - hi
    lam = lam.clamp(LAMBDA_EPS, 1 - LAMBDA_EPS)
    t = torch.log1p(lam.neg()).neg_().add_(lam.log_())  # log(lam) - log1p(-lam)
    start = torch.where(t < 0, upper, lo)
    t.abs_().clamp_min_(1e-12)

    def log_expm1_(y: Tensor) -> Tensor:  # log(e^y - 1) for y > 0, without overflow
        return y.neg().expm1_().neg_().log_().add_(y)

    out = start.mul_(t).add_(log_expm1_(t * w))
    return out.sub_(log_expm1_(t))


def log_likelihood(kind: str, out: Tensor, x: Tensor, levels: int) -> Tensor:
    """log P(x | z) of discrete images x (levels in [0, 1], ``levels`` of them) under the decoder
    output ``out`` (its mean), summed over each image's pixels, in float64: (..., C, H, W) ->
    (...). x (B, C, H, W) broadcasts against out, so out may hold several draws (k, B, C, H, W)
    of the same B images."""
    out, x = out.double(), x.double()
    if kind == "gaussian":
        per_pixel = _log_gaussian_mass(out, x, levels)
    elif kind == "bernoulli" and levels == 2:
        p = out.clamp(LAMBDA_EPS, 1 - LAMBDA_EPS)
        per_pixel = torch.where(x > 0.5, torch.log(p), torch.log1p(-p))
    elif kind == "bernoulli":
        per_pixel = _log_cb_mass(out, x, levels)
    else:
        raise ValueError(f"unknown decoder likelihood {kind!r} (bernoulli | gaussian)")
    return per_pixel.flatten(per_pixel.dim() - (x.dim() - 1)).sum(-1)


IMAGES_PER_CHUNK = 16  # images whose k draws are decoded together ...
SAMPLES_PER_BLOCK = 32  # ... in blocks of this many draws: 512 decodes a call, whatever k and eval.batch_size


def iw_log_likelihood(model, x: Tensor, k: int, levels: int, seed: int) -> Tensor:
    """The k-sample importance-weighted lower bound on log P(x) per image: (B, C, H, W) -> (B,).

    The draws come in fixed blocks, each with a generator of (seed, block), so the value depends
    on neither ``eval.batch_size`` nor the device's memory."""
    blocks = []
    for b, start in enumerate(range(0, k, SAMPLES_PER_BLOCK)):
        g = torch.Generator(device=x.device).manual_seed(chunk_seed(seed, b))
        want = min(SAMPLES_PER_BLOCK, k - start)
        z, log_ratio = model.importance_samples(x, want, g)  # (k', B, d), (k', B)
        kk = z.shape[0]
        out = model.decode(z.flatten(0, 1))  # (k' B, C, H, W)
        log_px_z = log_likelihood(model.likelihood, out.unflatten(0, (kk, -1)), x, levels)  # (k', B)
        blocks.append(log_px_z + log_ratio.double())
        if kk < want:
            break  # a point posterior gives one draw, which is the whole bound
    log_w = torch.cat(blocks)
    return torch.logsumexp(log_w, 0) - math.log(len(log_w))


def _levels(ctx: EvalContext) -> int:
    return 2 if getattr(ctx.data, "binarized", False) else 256


def estimate(ctx: EvalContext) -> dict:
    """The per-image bound over the evaluation's test images, computed once for both metrics."""
    if "likelihood" in ctx.memo:
        return ctx.memo["likelihood"]
    model, k, levels = ctx.model, ctx.cfg.nll_k, _levels(ctx)
    x = ctx.test_images[: ctx.cfg.nll_n]
    n = IMAGES_PER_CHUNK
    with torch.inference_mode(), numerics.exact():  # log-densities need float32 logits
        parts = [
            iw_log_likelihood(model, x[i : i + n], k, levels, chunk_seed(ctx.seed + 3, c))
            for c, i in enumerate(range(0, len(x), n))
        ]
    log_p = torch.cat(parts)
    kind = model.likelihood
    dims = x[0].numel()
    prov = {
        "split": "test",
        "n": len(x),
        "estimator": f"importance-weighted bound, k = {k} posterior samples (Burda et al. 2016)",
        "k": k,
        "likelihood": kind,
        "likelihood_detail": DESCRIPTIONS.get((kind, levels), kind),
        "data": "binarised pixels" if levels == 2 else "8-bit pixels (256 levels)",
        "dimensions": dims,
        "version": LIKELIHOOD_VERSION,
        **model.likelihood_provenance(),
    }
    nats = -log_p.mean().item()
    ctx.memo["likelihood"] = {"nats": nats, "bpd": nats / (dims * math.log(2)), "prov": prov}
    return ctx.memo["likelihood"]


@register_metric(
    "nll_bpd",
    higher_is_better=False,
    families=("vae",),
    needs=("likelihood",),
    uses=("importance_samples", "decode"),
    ranked_within="likelihood",
    description="negative log-likelihood of the discrete test images in bits per dimension: the "
    "importance-weighted bound with eval.nll_k samples, the decoder integrated over each pixel's bin",
)
def nll_bpd(ctx: EvalContext) -> Result:
    e = estimate(ctx)
    return Result(e["bpd"], {**e["prov"], "units": "bits per dimension"})


@register_metric(
    "nll_nats",
    higher_is_better=False,
    families=("vae",),
    needs=("likelihood",),
    uses=("importance_samples", "decode"),
    ranked_within="likelihood",
    description="the nll_bpd estimate in nats per image (the binarised-MNIST literature's unit)",
)
def nll_nats(ctx: EvalContext) -> Result:
    e = estimate(ctx)
    return Result(e["nats"], {**e["prov"], "units": "nats per image"})
