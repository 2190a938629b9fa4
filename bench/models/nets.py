"""Shared backbones, so that variants of a family differ in their objective, not their networks.

A backbone builds four networks for a given image shape:
  encoder(out_dim)        (B, C, H, W) in [0, 1] -> (B, out_dim)
  decoder(latent_dim)     (B, latent_dim)        -> (B, C, H, W) in [0, 1]
  discriminator()         (B, C, H, W)           -> (B,) logits / critic values
  generator(z_dim)        (B, z_dim)             -> (B, C, H, W) in [0, 1]
Every image-producing network ends in a map onto [0, 1], so every model speaks one pixel range.
Each backbone checks the image shape it is asked to build for (``check_sides``) and raises
``ImageShapeError`` at construction for one its nets cannot take (``mlp`` and ``ghosh`` take any
side, ``infogan`` multiples of 4, ``dcgan`` of 16): ``bench validate`` (from the
suite where it gives the shape, else with ``--data``) and ``bench run`` report it as a ``models.<i>``
error before anything is written, instead of a shape mismatch at the first step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch
from pydantic import AfterValidator
from torch import nn

from bench.registry import Registry

Shape = tuple[int, int, int]


class ImageShapeError(ValueError):
    """Images of a shape a backbone (or a model) cannot be built for, raised when the model is
    constructed. A plugin model may raise it too: ``bench validate`` and ``bench run`` then report
    its message as a ``models.<i>`` error before anything is trained."""


def check_sides(name: str, shape: Shape, multiple: int) -> None:
    """Raise ``ImageShapeError`` unless H and W of ``shape`` (C, H, W) are multiples of ``multiple``."""
    _, h, w = shape
    if h % multiple or w % multiple or h < multiple or w < multiple:
        raise ImageShapeError(
            f"the {name} backbone needs H and W divisible by {multiple} (images are {h}x{w}); "
            f"set dataset.image_size to a multiple of {multiple}, or choose another backbone"
        )


class Reshape(nn.Module):
    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


class TanhToUnit(nn.Module):
    """tanh mapped onto [0, 1]: keeps the source design's tanh output in bench's pixel range."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(x) + 1) * 0.5


def _mlp(sizes: list[int], act: type[nn.Module], **act_kw) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(a, b), act(**act_kw)]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return layers


@dataclass(frozen=True)
class MLP:
    """Fully connected nets; widths come from the model's parameters (the source design's nets)."""

    enc_hidden: tuple[int, ...] = (128,)
    dec_hidden: tuple[int, ...] = (128,)
    d_hidden: tuple[int, ...] = (500, 250)
    g_hidden: tuple[int, ...] = (400, 800)
    d_batch_norm: bool = False  # MLP discriminators carry no batch norm

    def encoder(self, shape: Shape, out_dim: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), *_mlp([math.prod(shape), *self.enc_hidden, out_dim], nn.ReLU))

    def decoder(self, shape: Shape, latent_dim: int) -> nn.Module:
        layers = _mlp([latent_dim, *self.dec_hidden, math.prod(shape)], nn.ReLU)
        return nn.Sequential(*layers, nn.Sigmoid(), Reshape(*shape))

    def discriminator(self, shape: Shape) -> nn.Module:
        layers = _mlp([math.prod(shape), *self.d_hidden, 1], nn.LeakyReLU, negative_slope=0.2)
        return nn.Sequential(nn.Flatten(), *layers, nn.Flatten(0))

    def generator(self, shape: Shape, z_dim: int) -> nn.Module:
        layers = _mlp([z_dim, *self.g_hidden, math.prod(shape)], nn.ReLU)
        return nn.Sequential(*layers, TanhToUnit(), Reshape(*shape))


class ConvTrunk:
    """A conv backbone whose encoder and discriminator share one trunk (``_trunk``): the encoder
    ends in ``out_dim`` features, the discriminator in one logit per image."""

    def _trunk(self, shape: Shape, out_dim: int) -> nn.Module:
        raise NotImplementedError

    def encoder(self, shape: Shape, out_dim: int) -> nn.Module:
        return self._trunk(shape, out_dim)

    def discriminator(self, shape: Shape) -> nn.Module:
        return nn.Sequential(self._trunk(shape, 1), nn.Flatten(0))


@dataclass(frozen=True)
class InfoGAN(ConvTrunk):
    """The nets of Lucic et al. 2018 ("Are GANs Created Equal?"), shared by every GAN there.

    D: conv64(4,s2) lReLU conv128(4,s2) BN lReLU FC1024 BN lReLU FC1
    G: FC1024 BN ReLU FC(7*7*128) BN ReLU deconv64(4,s2) BN ReLU deconv1(4,s2) sigmoid
    The encoder of the conv autoencoders is D's trunk with a ``out_dim`` head, the decoder is G.
    Works for any H, W divisible by 4 (others: ``ImageShapeError``). ``bn_momentum``/``bn_eps`` set
    every batch norm (compare_gan: 0.001 / 0.001); ``g_activation`` "lrelu" puts leaky ReLU 0.2 in G,
    as compare_gan's code does.
    """

    d_batch_norm: bool = True
    width: int = 64
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5
    g_activation: str = "relu"

    def _bn(self, kind: type[nn.Module], n: int) -> nn.Module:
        return kind(n, eps=self.bn_eps, momentum=self.bn_momentum)

    def _g_act(self) -> nn.Module:
        return nn.LeakyReLU(0.2) if self.g_activation == "lrelu" else nn.ReLU()

    def _trunk(self, shape: Shape, out_dim: int) -> nn.Module:
        check_sides("infogan", shape, SIDE_MULTIPLE["infogan"])  # as G: two stride-2 deconvs
        c, h, w = shape
        bn = self.d_batch_norm
        k = self.width
        return nn.Sequential(
            nn.Conv2d(c, k, 4, 2, 1),  # (B, 64, H/2, W/2)
            nn.LeakyReLU(0.2),
            nn.Conv2d(k, 2 * k, 4, 2, 1, bias=not bn),  # (B, 128, H/4, W/4)
            self._bn(nn.BatchNorm2d, 2 * k) if bn else nn.Identity(),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(2 * k * (h // 4) * (w // 4), 1024, bias=not bn),
            self._bn(nn.BatchNorm1d, 1024) if bn else nn.Identity(),
            nn.LeakyReLU(0.2),
            nn.Linear(1024, out_dim),
        )

    def generator(self, shape: Shape, z_dim: int) -> nn.Module:
        check_sides("infogan", shape, SIDE_MULTIPLE["infogan"])
        c, h, w = shape
        k = self.width
        return nn.Sequential(
            nn.Linear(z_dim, 1024, bias=False),
            self._bn(nn.BatchNorm1d, 1024),
            self._g_act(),
            nn.Linear(1024, 2 * k * (h // 4) * (w // 4), bias=False),
            self._bn(nn.BatchNorm1d, 2 * k * (h // 4) * (w // 4)),
            self._g_act(),
            Reshape(2 * k, h // 4, w // 4),  # (B, 128, H/4, W/4)
            nn.ConvTranspose2d(2 * k, k, 4, 2, 1, bias=False),  # (B, 64, H/2, W/2)
            self._bn(nn.BatchNorm2d, k),
            self._g_act(),
            nn.ConvTranspose2d(k, c, 4, 2, 1),  # (B, C, H, W)
            nn.Sigmoid(),
        )

    def decoder(self, shape: Shape, latent_dim: int) -> nn.Module:
        return self.generator(shape, latent_dim)


class PadTo(nn.Module):
    """Zero-pad (B, C, H, W) to (B, C, h, w), centred: how Ghosh et al. feed 28x28 MNIST as 32x32."""

    def __init__(self, h: int, w: int) -> None:
        super().__init__()
        self.h, self.w = h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dh, dw = self.h - x.shape[-2], self.w - x.shape[-1]
        return nn.functional.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


class CropTo(nn.Module):
    """Take the (h, w) window of a larger map that ``PadTo`` padded around: the inverse placement."""

    def __init__(self, h: int, w: int) -> None:
        super().__init__()
        self.h, self.w = h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, left = (x.shape[-2] - self.h) // 2, (x.shape[-1] - self.w) // 2
        return x[..., top : top + self.h, left : left + self.w]


class ToSigned(nn.Module):
    """[0, 1] -> [-1, 1]: the first operation of the Ghosh et al. encoder."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 - 1


@dataclass(frozen=True)
class Ghosh:
    """The MNIST nets of Ghosh et al. 2020 ("From Variational to Deterministic Autoencoders").

    Encoder: [-1, 1] scaling, 4 x (conv 4x4 s2 -> BN -> ReLU) with 128-256-512-1024 channels,
    flatten, dense -> out_dim.
    Decoder: dense -> 8*8*1024, convT 512 (4x4 s2) -> BN -> ReLU, convT 256 (4x4 s2) -> BN -> ReLU,
    convT C (4x4 s1) -> sigmoid.
    Images are zero-padded inside the nets to the next multiple of 16 (28x28 -> 32x32, as in the
    paper) and the decoder crops its output back, so the data path stays at the dataset's size.
    The discriminator is the encoder with a 1-unit head (batch norm optional); the generator is the
    decoder.
    """

    d_batch_norm: bool = True
    width: int = 128

    @staticmethod
    def padded(shape: Shape) -> tuple[int, int]:
        _, h, w = shape
        return -(-h // 16) * 16, -(-w // 16) * 16

    def _trunk(self, shape: Shape, out_dim: int, bn: bool) -> nn.Module:
        c = shape[0]
        ph, pw = self.padded(shape)
        k = self.width
        layers: list[nn.Module] = [PadTo(ph, pw), ToSigned()]
        for cin, cout in [(c, k), (k, 2 * k), (2 * k, 4 * k), (4 * k, 8 * k)]:
            layers += [
                nn.Conv2d(cin, cout, 4, 2, 1, bias=not bn),  # halves H and W
                nn.BatchNorm2d(cout) if bn else nn.Identity(),
                nn.ReLU(),
            ]
        layers += [nn.Flatten(), nn.Linear(8 * k * (ph // 16) * (pw // 16), out_dim)]  # (B, out_dim)
        return nn.Sequential(*layers)

    def encoder(self, shape: Shape, out_dim: int) -> nn.Module:
        return self._trunk(shape, out_dim, bn=True)

    def discriminator(self, shape: Shape) -> nn.Module:
        return nn.Sequential(self._trunk(shape, 1, bn=self.d_batch_norm), nn.Flatten(0))

    def decoder(self, shape: Shape, latent_dim: int) -> nn.Module:
        c, h, w = shape
        ph, pw = self.padded(shape)
        k = self.width
        return nn.Sequential(
            nn.Linear(latent_dim, 8 * k * (ph // 4) * (pw // 4)),
            Reshape(8 * k, ph // 4, pw // 4),  # (B, 1024, 8, 8) for 32x32
            nn.ConvTranspose2d(8 * k, 4 * k, 4, 2, 1, bias=False),  # (B, 512, 16, 16)
            nn.BatchNorm2d(4 * k),
            nn.ReLU(),
            nn.ConvTranspose2d(4 * k, 2 * k, 4, 2, 1, bias=False),  # (B, 256, 32, 32)
            nn.BatchNorm2d(2 * k),
            nn.ReLU(),
            # 4x4 stride 1: padding 1 gives 33x33, one row/column more than 'same' padding; the
            # crop below takes the centred window, which also undoes the input padding
            nn.ConvTranspose2d(2 * k, c, 4, 1, 1),  # (B, C, 33, 33)
            CropTo(h, w),  # (B, C, H, W)
            nn.Sigmoid(),
        )

    def generator(self, shape: Shape, z_dim: int) -> nn.Module:
        return self.decoder(shape, z_dim)


@torch.no_grad()
def compare_gan_init(net: nn.Module) -> None:
    """compare_gan's initialisation (Lucic et al. 2018's code): linear and transposed-conv weights
    N(0, 0.02); conv weights truncated normal, std 0.02, cut at 2 std (TF's truncated_normal);
    biases 0; batch norm scale 1, shift 0."""
    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.Conv2d):
            nn.init.trunc_normal_(m.weight, 0.0, 0.02, -0.04, 0.04)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)


@dataclass(frozen=True)
class DCGAN(ConvTrunk):
    """DCGAN-style conv nets (Radford et al. 2016) for colour images, in the layout Lucic et al. 2018
    list for CIFAR-10 and CelebA.

    D: conv64(4,s2) lReLU, conv128(4,s2) BN lReLU, conv256(4,s2) BN lReLU, FC1
    G: FC(H/16 * W/16 * 448) BN ReLU, deconv256(4,s2) BN ReLU, deconv128(4,s2) ReLU,
       deconv64(4,s2) ReLU, deconvC(4,s2) tanh (mapped onto [0, 1])
    For 32x32 the generator starts at 2x2, for 64x64 at 4x4; H and W must be divisible by 16 for
    every net of the backbone (others: ``ImageShapeError``), as a GAN and an autoencoder both build
    G. The encoder of the autoencoders is D's trunk with an ``out_dim`` head, the decoder is G.
    """

    d_batch_norm: bool = True

    def _trunk(self, shape: Shape, out_dim: int) -> nn.Module:
        check_sides("dcgan", shape, SIDE_MULTIPLE["dcgan"])
        c, h, w = shape
        bn = self.d_batch_norm
        return nn.Sequential(
            nn.Conv2d(c, 64, 4, 2, 1),  # (B, 64, H/2, W/2)
            nn.LeakyReLU(0.2),
            nn.Conv2d(64, 128, 4, 2, 1, bias=not bn),  # (B, 128, H/4, W/4)
            nn.BatchNorm2d(128) if bn else nn.Identity(),
            nn.LeakyReLU(0.2),
            nn.Conv2d(128, 256, 4, 2, 1, bias=not bn),  # (B, 256, H/8, W/8)
            nn.BatchNorm2d(256) if bn else nn.Identity(),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(256 * (h // 8) * (w // 8), out_dim),
        )

    def generator(self, shape: Shape, z_dim: int) -> nn.Module:
        check_sides("dcgan", shape, SIDE_MULTIPLE["dcgan"])
        c, h, w = shape
        h0, w0 = h // 16, w // 16
        return nn.Sequential(
            nn.Linear(z_dim, 448 * h0 * w0, bias=False),
            nn.BatchNorm1d(448 * h0 * w0),
            nn.ReLU(),
            Reshape(448, h0, w0),  # (B, 448, H/16, W/16)
            nn.ConvTranspose2d(448, 256, 4, 2, 1, bias=False),  # (B, 256, H/8, W/8)
            nn.BatchNorm2d(256),
            nn.ReLU(),
            nn.ConvTranspose2d(256, 128, 4, 2, 1),  # (B, 128, H/4, W/4)
            nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 4, 2, 1),  # (B, 64, H/2, W/2)
            nn.ReLU(),
            nn.ConvTranspose2d(64, c, 4, 2, 1),  # (B, C, H, W)
            TanhToUnit(),
        )

    def decoder(self, shape: Shape, latent_dim: int) -> nn.Module:
        return self.generator(shape, latent_dim)


BACKBONES: Registry[type] = Registry("backbone")
BACKBONES.add("mlp", MLP)
BACKBONES.add("infogan", InfoGAN)
BACKBONES.add("ghosh", Ghosh)
BACKBONES.add("dcgan", DCGAN)
# what H and W must be multiples of, for the backbones that constrain them (``check_sides``)
SIDE_MULTIPLE = {"infogan": 4, "dcgan": 16}


def shape_problem(backbone: str, shape: Shape) -> str | None:
    """Why ``backbone``'s nets cannot be built for images of ``shape``, else None: the check its
    constructors make, without building anything (``bench validate`` of built-in models)."""
    try:
        check_sides(backbone, shape, SIDE_MULTIPLE.get(backbone, 1))
    except ImageShapeError as e:
        return str(e)
    return None


def make_backbone(name: str, **options) -> MLP | InfoGAN | Ghosh | DCGAN:
    """Build backbone ``name`` from the options it understands (the others belong to other nets)."""
    import dataclasses

    cls = BACKBONES.get(name)
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(
        **{
            k: (tuple(v) if isinstance(v, list) else v)
            for k, v in options.items()
            if k in known and v is not None
        }
    )


def known_backbone(name: str) -> str:
    """A model parameter's check: ``name`` is a registered backbone."""
    if name not in BACKBONES:
        raise ValueError(BACKBONES.unknown_message(name))
    return name


Backbone = Annotated[str, AfterValidator(known_backbone)]
