"""Latent and application metrics: what the codes are good for (feature learning, denoising).
The likelihood metrics are in ``likelihood.py``.

The probes (``probe.py``, ``neighbours.py``: torch, on the evaluation's device) are fitted on the
codes of the training split and scored on the codes of the test split; GANs have no encoder, so
none of these applies to them (reported as n/a).
"""

from __future__ import annotations

import torch

from bench.metrics.base import ENCODER_FAMILIES, EvalContext, Result, register_metric
from bench.metrics.neighbours import knn_classify
from bench.metrics.pixels import unit_images
from bench.metrics.probe import fit_logistic

KNN_K = 10
PROBE_MAX_ITER = 1000
DENOISE_SIGMA = 0.3
DENOISE_NOISE_SEED = 0  # the same noisy test images for every model and seed


def _probe_provenance(ctx: EvalContext, tr: torch.Tensor, te: torch.Tensor) -> dict:
    return {
        "fit": {"split": "train", "n": len(tr)},
        "score": {"split": "test", "n": len(te)},
        "code_dim": int(tr.shape[1]),
        "code": "deterministic code (posterior mean for VAEs), through any quantiser",
    }


def _training_images(name: str, least: int, why: str):
    """A ``check_data``: the training split holds at least ``least`` images."""

    def check(cfg, data) -> list[str]:
        n = len(data.train_x)
        if n >= least:
            return []
        return [
            f"{name}: {why} needs at least {least} training images; the training split has {n} "
            "(dataset.train_size)"
        ]

    return check


def _accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return (pred.cpu() == y.cpu()).double().mean().item()


@register_metric(
    "probe_acc",
    higher_is_better=True,
    families=ENCODER_FAMILIES,
    needs_labels=True,
    description="test accuracy of a logistic regression on frozen codes (fit on train, standardised)",
    check_data=_training_images("probe_acc", 2, "the probe, standardised on the training codes,"),
)
def probe_acc(ctx: EvalContext) -> Result:
    tr, te = ctx.codes("train"), ctx.codes("test")
    probe = fit_logistic(tr, ctx.data.train_y, ctx.data.num_classes, c=1.0, max_iter=PROBE_MAX_ITER)
    acc = _accuracy(probe.predict(te), ctx.data.test_y)
    prov = {
        **_probe_provenance(ctx, tr, te),
        "impl": "multinomial logistic regression (C=1) on standardised codes, fitted by full-batch "
        "L-BFGS in torch on the whitened codes (float32, then float64) until the largest gradient "
        "entry on the standardised codes is below 1e-4",
        "probe_iterations": probe.n_iter,
        "probe_converged": probe.converged,
    }
    return Result(acc, prov)


@register_metric(
    "knn_acc",
    higher_is_better=True,
    families=ENCODER_FAMILIES,
    needs_labels=True,
    description=f"test accuracy of a {KNN_K}-nearest-neighbour classifier (Euclidean) on the training codes",
    check_data=_training_images("knn_acc", KNN_K, f"the {KNN_K}-nearest-neighbour classifier"),
)
def knn_acc(ctx: EvalContext) -> Result:
    tr, te = ctx.codes("train"), ctx.codes("test")
    pred = knn_classify(tr.float(), ctx.data.train_y, te.float(), KNN_K, ctx.data.num_classes)
    acc = _accuracy(pred, ctx.data.test_y)
    prov = {
        **_probe_provenance(ctx, tr, te),
        "impl": f"exact {KNN_K}-NN (Euclidean, float32 products on centred codes, the {KNN_K} smallest), "
        "majority vote",
    }
    return Result(acc, prov)


def noisy_test_images(ctx: EvalContext) -> torch.Tensor:
    """The test images with Gaussian noise (sigma 0.3, fixed seed) added and clipped to [0, 1]."""
    clean = ctx.test_images
    g = torch.Generator().manual_seed(DENOISE_NOISE_SEED)
    noise = torch.randn(clean.shape, generator=g).to(clean.device)  # drawn on CPU: the same on every device
    return (clean + DENOISE_SIGMA * noise).clamp_(0, 1)


@register_metric(
    "denoise_psnr",
    uses=("reconstruct",),
    higher_is_better=True,
    families=ENCODER_FAMILIES,
    description=f"mean per-image PSNR (dB) of reconstructions of noisy test images (sigma {DENOISE_SIGMA}, "
    "clipped) against the clean images",
)
def denoise_psnr(ctx: EvalContext) -> Result:
    from torchmetrics.functional.image import peak_signal_noise_ratio  # imported when first used

    noisy, clean = noisy_test_images(ctx), ctx.test_images
    bs = ctx.cfg.batch_size
    with torch.inference_mode():
        rec = torch.cat([ctx.model.reconstruct(noisy[i : i + bs]) for i in range(0, len(noisy), bs)])
    rec = unit_images(rec, f"{type(ctx.model).__name__}.reconstruct")
    per_image = peak_signal_noise_ratio(rec, clean, data_range=1.0, dim=(1, 2, 3), reduction="none")
    prov = {
        **ctx.test_provenance,
        "noise": f"gaussian sigma {DENOISE_SIGMA}, clipped to [0, 1], seed {DENOISE_NOISE_SEED}",
        "impl": "torchmetrics",
        "per": "image",
    }
    return Result(per_image.double().mean().item(), prov)
