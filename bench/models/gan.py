"""GANs: one class; the loss and the discriminator penalty are parameters.

The adversarial step of the training loop calls ``d_loss`` on every step and ``g_loss`` every
``n_critic`` steps; one budget step is one discriminator update on one batch of real images, so
a budget in images means the same thing for every family.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from bench import numerics
from bench.config import HASH_NEUTRAL
from bench.models.base import GenerativeModel, ModelParams, Widths, register, widths_field
from bench.models.nets import Backbone, compare_gan_init, make_backbone

Tensor = torch.Tensor

# the losses as module-level functions (not lambdas), so that a model pickles
def _d_ns(r: Tensor, f: Tensor) -> Tensor:
    return F.softplus(-r).mean() + F.softplus(f).mean()


def _g_ns(f: Tensor) -> Tensor:
    return F.softplus(-f).mean()


def _g_mm(f: Tensor) -> Tensor:
    return -F.softplus(f).mean()


def _d_ls(r: Tensor, f: Tensor) -> Tensor:
    return 0.5 * ((r - 1) ** 2).mean() + 0.5 * (f**2).mean()


def _g_ls(f: Tensor) -> Tensor:
    return 0.5 * ((f - 1) ** 2).mean()


def _d_hinge(r: Tensor, f: Tensor) -> Tensor:
    return F.relu(1 - r).mean() + F.relu(1 + f).mean()


def _g_critic(f: Tensor) -> Tensor:
    return -f.mean()


def _d_wgan(r: Tensor, f: Tensor) -> Tensor:
    return f.mean() - r.mean()


def _d_ls_sigmoid(r: Tensor, f: Tensor) -> Tensor:
    return 0.5 * (((torch.sigmoid(r) - 1) ** 2).mean() + (torch.sigmoid(f) ** 2).mean())


def _g_ls_sigmoid(f: Tensor) -> Tensor:
    return 0.5 * ((torch.sigmoid(f) - 1) ** 2).mean()


# (discriminator loss(real_out, fake_out), generator loss(fake_out)); outputs are logits
Losses = tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor], Tensor]]

# name -> its losses
GAN_LOSSES: dict[str, Losses] = {
    "ns": (_d_ns, _g_ns),  # non-saturating (Goodfellow et al. 2014, the variant everyone trains)
    "mm": (_d_ns, _g_mm),  # minimax: G minimises log(1 - D(G(z)))
    "ls": (_d_ls, _g_ls),  # least squares (Mao et al. 2017), a-b-c = 0-1-1
    "hinge": (_d_hinge, _g_critic),
    "wgan": (_d_wgan, _g_critic),
}

# least squares on the discriminator's sigmoid outputs (compare_gan, the code of Lucic et al. 2018)
LS_SIGMOID: Losses = (_d_ls_sigmoid, _g_ls_sigmoid)

# options of the infogan backbone only, with the defaults that keep PyTorch's behaviour
INFOGAN_OPTIONS = {"init": "pytorch", "bn_momentum": 0.1, "bn_eps": 1e-5, "g_activation": "relu"}


class GANParams(ModelParams):
    lr: float = Field(2e-4, gt=0, le=1)
    beta1: float = Field(0.5, ge=0, lt=1)
    backbone: Backbone = "infogan"
    z_dim: int = Field(64, ge=1, le=4096)
    z_dist: Literal["normal", "uniform"] = "uniform"
    loss: Literal["ns", "mm", "ls", "hinge", "wgan"] = "ns"
    n_critic: int = Field(1, ge=1, le=100, description="discriminator steps per generator step")
    penalty: Literal["none", "gp", "dragan", "clip"] = "none"
    gp_lambda: float = Field(10.0, ge=0)
    clip: float = Field(0.01, gt=0)
    d_batch_norm: bool = True
    ls_on: Literal["logits", "sigmoid"] = Field(
        "logits",
        description="loss ls on the raw logits (Mao et al. 2017) or on sigmoid(logits) (compare_gan, the "
        "code of Lucic et al. 2018)",
        json_schema_extra=HASH_NEUTRAL,
    )
    init: Literal["pytorch", "compare_gan"] = Field(
        "pytorch",
        description="weight init: PyTorch's defaults, or compare_gan's (linear and deconv N(0, 0.02), conv "
        "truncated normal std 0.02, biases 0); infogan backbone only",
        json_schema_extra=HASH_NEUTRAL,
    )
    bn_momentum: float = Field(
        0.1,
        gt=0,
        le=1,
        description="batch-norm momentum (compare_gan: 0.001, i.e. decay 0.999); infogan only",
        json_schema_extra=HASH_NEUTRAL,
    )
    bn_eps: float = Field(
        1e-5,
        gt=0,
        le=1,
        description="batch-norm epsilon (compare_gan: 0.001); infogan backbone only",
        json_schema_extra=HASH_NEUTRAL,
    )
    g_activation: Literal["relu", "lrelu"] = Field(
        "relu",
        description="G's hidden activation: ReLU (the paper's text) or leaky ReLU 0.2 (compare_gan's "
        "code); infogan backbone only",
        json_schema_extra=HASH_NEUTRAL,
    )
    d_hidden: Widths | None = widths_field("MLP D widths (mlp backbone only)")
    g_hidden: Widths | None = widths_field("MLP G widths (mlp backbone only)")


    @model_validator(mode="after")
    def _widths_are_mlp_only(self):
        if self.backbone != "mlp" and (self.d_hidden is not None or self.g_hidden is not None):
            raise ValueError(
                f"d_hidden/g_hidden set MLP widths; the {self.backbone!r} backbone has fixed widths"
            )
        return self

    @model_validator(mode="after")
    def _options_fit(self):
        if self.ls_on != "logits" and self.loss != "ls":
            raise ValueError(f"ls_on applies to loss 'ls' (got loss {self.loss!r})")
        if self.backbone != "infogan":
            changed = [k for k, v in INFOGAN_OPTIONS.items() if getattr(self, k) != v]
            if changed:
                raise ValueError(
                    f"{', '.join(changed)}: options of the infogan backbone (got {self.backbone!r})"
                )
        return self

    @model_validator(mode="after")
    def _penalty_fits(self):
        # WGAN-GP's penalty is per sample, which batch norm in the critic breaks (Gulrajani et al.
        # 2017); DRAGAN is run with batch norm in D in Lucic et al.'s protocol, so it is allowed there
        if self.penalty == "gp" and self.d_batch_norm and self.backbone != "mlp":
            raise ValueError("penalty 'gp' needs d_batch_norm: false (batch norm mixes samples)")
        return self


@numerics.eager  # a double backward, which compiled graphs do not support: always eager
def gradient_penalty(critic: Callable[[Tensor], Tensor], points: Tensor) -> Tensor:
    """E[(||grad_x critic(x)||_2 - 1)^2] at ``points`` (Gulrajani et al. 2017)."""
    points = points.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(points).sum(), points, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


class GAN(GenerativeModel):
    """Generator and discriminator on a shared backbone; loss, penalty and n_critic are parameters,
    so every GAN variant of Lucic et al. 2018 is this class with other settings."""

    family = "gan"
    step_kind = "adversarial"
    Params = GANParams

    def __init__(self, params: GANParams, image_shape):
        super().__init__(params, image_shape)
        bb = make_backbone(
            params.backbone,
            d_hidden=params.d_hidden,
            g_hidden=params.g_hidden,
            d_batch_norm=params.d_batch_norm,
            bn_momentum=params.bn_momentum,
            bn_eps=params.bn_eps,
            g_activation=params.g_activation,
        )
        self.generator = bb.generator(image_shape, params.z_dim)
        self.discriminator = bb.discriminator(image_shape)
        if params.init == "compare_gan":
            compare_gan_init(self.generator)
            compare_gan_init(self.discriminator)
        sigmoid_ls = params.loss == "ls" and params.ls_on == "sigmoid"
        self._d_loss, self._g_loss = LS_SIGMOID if sigmoid_ls else GAN_LOSSES[params.loss]

    @property
    def n_critic(self) -> int:
        return self.params.n_critic

    def sample_z(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        device = next(self.parameters()).device
        if self.params.z_dist == "uniform":
            return torch.rand(n, self.params.z_dim, generator=generator, device=device) * 2 - 1
        return torch.randn(n, self.params.z_dim, generator=generator, device=device)

    def d_loss(self, x: Tensor, z: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            fake = self.generator(z)
        real_out, fake_out = self.discriminator(x), self.discriminator(fake)
        loss = self._d_loss(real_out, fake_out)
        out = {"d_loss": loss}
        p = self.params
        if p.penalty == "gp":  # on random interpolates of real and fake
            eps = torch.rand(x.shape[0], 1, 1, 1, device=x.device)
            gp = gradient_penalty(self.discriminator, eps * x + (1 - eps) * fake)
            out["gp"], loss = gp, loss + p.gp_lambda * gp
        elif p.penalty == "dragan":  # between real data and a perturbed copy (Kodali et al. 2017)
            perturbed = x + 0.5 * x.std() * torch.rand_like(x)
            alpha = torch.rand(x.shape[0], 1, 1, 1, device=x.device)
            gp = gradient_penalty(self.discriminator, x + alpha * (perturbed - x))
            out["gp"], loss = gp, loss + p.gp_lambda * gp
        out["loss"] = loss
        return out

    def g_loss(self, z: Tensor) -> dict[str, Tensor]:
        loss = self._g_loss(self.discriminator(self.generator(z)))
        return {"g_loss": loss}

    @torch.no_grad()
    def after_d_step(self) -> None:
        if self.params.penalty == "clip":  # WGAN weight clipping (Arjovsky et al. 2017)
            for w in self.discriminator.parameters():
                w.clamp_(-self.params.clip, self.params.clip)

    def sample(self, n, generator=None):
        return self.generator(self.sample_z(n, generator))


register(
    "gan-mlp",
    GAN,
    "the source design: G 100-400-800-784 (tanh), D 784-500-250-1 (leaky ReLU), NS loss",
    backbone="mlp",
    z_dim=100,
    z_dist="normal",
    d_batch_norm=False,
    d_hidden=(500, 250),
    g_hidden=(400, 800),
)
register(
    "dcgan", GAN, "InfoGAN-style conv nets of Lucic et al. 2018, NS loss, z=64 ~ U(-1,1)", backbone="infogan"
)
register(
    "lsgan",
    GAN,
    "least-squares GAN (Mao et al. 2017) on the dcgan nets; Adam 2e-4 / beta1 0.5",
    backbone="infogan",
    loss="ls",
)
register(
    "wgan-gp",
    GAN,
    "WGAN with gradient penalty (lambda 10, 5 critic steps, no BN in D) on the dcgan nets; Adam 1e-4 / 0.5",
    backbone="infogan",
    loss="wgan",
    penalty="gp",
    gp_lambda=10.0,
    n_critic=5,
    d_batch_norm=False,
    lr=1e-4,
)
register(
    "hinge-gan",
    GAN,
    "hinge-loss GAN (Lim & Ye 2017; Miyato et al. 2018) on the dcgan nets",
    backbone="infogan",
    loss="hinge",
)
