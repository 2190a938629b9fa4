"""What a model stores of each test image, as real bitstreams, and what decodes from them.

Three ways to a bitstream, one per kind of model:

- models that code images themselves (capability ``bitstream``: the Pillow codecs, the
  factorized-prior AE through compressai's rANS coder): their ``compress`` strings;
- models whose codes are quantised by construction (an AE with ``latent_bits``, VQ-VAE indices):
  the integer symbols as they are;
- float codes: rounded to multiples of ``eval.code_step`` first.

Integer symbols are entropy-coded by constriction's ANS coder, one stream per image, with a
factorized categorical model (one distribution per code dimension) fitted on the training
codes: counts plus 1/2 (Krichevsky-Trofimov), so every symbol of the alphabet stays codable.
Every stream is decoded again; the decoded symbols must equal the encoded ones, and the images
come from the decoded symbols: distortion and rate are measured on the same bits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bench import numerics
from bench.metrics.codes import encoded
from bench.metrics.pixels import unit_images

Tensor = torch.Tensor
PSEUDO_COUNT = 0.5  # Krichevsky-Trofimov
MAX_ALPHABET = 2**16  # a wider range of float symbols means a code step far too small for the codes
RANGE_HEADER_BITS = 64  # float symbols: the stream's lowest and highest symbol, two int32


@dataclass
class Coded:
    """The coded test set: images decoded from the bitstreams and the size of each bitstream."""

    decoded: Tensor  # (N, C, H, W) in [0, 1]
    bits: np.ndarray  # (N,) bits of each image's bitstream
    header_bits: int  # bits shared by the whole set (a symbol range), counted once
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def total_bits(self) -> int:
        return int(self.bits.sum()) + self.header_bits


class CodingError(RuntimeError):
    """A bitstream did not decode to what was encoded, or the codes cannot be coded as asked."""


def _batches(x: Tensor, bs: int, device: torch.device, fn: Callable[[Tensor], Any]) -> list[Any]:
    return [fn(x[i : i + bs].float().div(255).to(device)) for i in range(0, len(x), bs)]


# --------------------------------------------------------------------------- models that code themselves


def _self_coded(model, test_x: Tensor, bs: int, device: torch.device) -> Coded:
    strings: list[bytes] = []
    decoded = []
    for chunk in _batches(test_x, bs, device, model.compress):
        strings += chunk
        decoded.append(model.decompress(chunk).to(device))
    bits = np.array([8 * len(s) for s in strings], dtype=np.int64)
    prov = {"coder": f"{type(model).__name__}.compress", "streams": "one per image, file size in bytes"}
    return Coded(unit_images(torch.cat(decoded), f"{type(model).__name__}.decompress"), bits, 0, prov)


# --------------------------------------------------------------------------- integer symbols


def fit_categorical(train: np.ndarray, low: int, size: int) -> np.ndarray:
    """Per-dimension probabilities (d, size) of symbols low..low+size-1: counts + PSEUDO_COUNT."""
    d = train.shape[1]
    counts = np.zeros((d, size), dtype=np.float64)
    rows = np.broadcast_to(np.arange(d), train.shape)
    np.add.at(counts, (rows.ravel(), (train - low).ravel()), 1.0)
    counts += PSEUDO_COUNT
    return counts / counts.sum(1, keepdims=True)


def encode_symbols(symbols: np.ndarray, probs: np.ndarray) -> list[np.ndarray]:
    """One ANS stream (uint32 words) per row of ``symbols`` (N, d), shifted to 0..size-1."""
    import constriction

    family = constriction.stream.model.Categorical(perfect=False)
    out = []
    for row in symbols.astype(np.int32):
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(row, family, probs)
        out.append(coder.get_compressed())
    return out


def decode_symbols(streams: list[np.ndarray], probs: np.ndarray) -> np.ndarray:
    import constriction

    family = constriction.stream.model.Categorical(perfect=False)
    return np.stack([constriction.stream.stack.AnsCoder(s).decode(family, probs) for s in streams])


def _symbols(
    model, x: Tensor, bs: int, device: torch.device, step: float | None
) -> tuple[Tensor, int | None]:
    """Integer symbols (N, d) of x's codes and the alphabet size (None: float codes, unbounded)."""
    alphabet = None

    def one(b: Tensor) -> Tensor:
        nonlocal alphabet
        got = model.code_symbols(b)
        if got is not None:
            alphabet = got[1]
            return got[0].cpu()
        return torch.round(model.encode(b).flatten(1).double() / step).long().cpu()

    with torch.inference_mode():
        return torch.cat(_batches(x, bs, device, one)), alphabet


def _split_symbols(model, data, split: str, bs: int, step: float | None) -> tuple[Tensor, int | None]:
    """A whole split's symbols from its one shared encoding (``bench.metrics.codes``): the model's
    own, or its float codes rounded to multiples of ``step`` (the same values ``_symbols`` gives)."""
    enc = encoded(model, data, split, bs, symbols=step is None)
    if step is None:
        return enc.symbols, enc.alphabet
    return torch.round(enc.codes.double() / step).long().cpu(), None


def _symbol_coded(model, data, test_x: Tensor, bs: int, device: torch.device, step: float | None) -> Coded:
    train, alphabet = _split_symbols(model, data, "train", bs, step)
    if len(test_x) == len(data.test_x):  # the whole split: its shared encoding
        test, _ = _split_symbols(model, data, "test", bs, step)
    else:  # the first eval.n_test images only
        test, _ = _symbols(model, test_x, bs, device, step)
    tr, te = train.numpy(), test.numpy()
    if alphabet is not None:
        low, size, header = 0, alphabet, 0
        prov = {"symbols": f"the model's quantised code, alphabet {alphabet}"}
    else:
        low = int(min(tr.min(), te.min()))
        size = int(max(tr.max(), te.max())) - low + 1
        header = RANGE_HEADER_BITS
        prov = {"symbols": f"float code rounded to multiples of eval.code_step = {step}", "code_step": step}
        if size > MAX_ALPHABET:
            raise CodingError(
                f"eval.code_step {step} gives {size} distinct symbols per code value "
                f"(at most {MAX_ALPHABET}): "
                "choose a larger step"
            )
    # a code that takes one value is still coded (in next to no bits): the coder's categorical
    # needs two symbols or more, so the alphabet has a second, never-used one
    probs = fit_categorical(tr, low, max(size, 2))
    streams = encode_symbols(te - low, probs)
    back = decode_symbols(streams, probs) + low
    if not np.array_equal(back, te):
        raise CodingError(f"{type(model).__name__}: the bitstreams did not decode to the encoded symbols")
    bits = np.array([32 * len(s) for s in streams], dtype=np.int64)
    with torch.inference_mode():
        sym = torch.from_numpy(back).to(device)
        if alphabet is not None:
            decoded = torch.cat([model.decode_symbols(sym[i : i + bs]) for i in range(0, len(sym), bs)])
        else:
            decoded = torch.cat(
                [model.decode(sym[i : i + bs].float() * step) for i in range(0, len(sym), bs)]
            )
    prov |= {
        "coder": "constriction ANS (stack), one stream of 32-bit words per image",
        "probability_model": f"categorical per code dimension fitted on {len(tr)} training codes "
        f"(counts + {PSEUDO_COUNT})",
        "header_bits": header,
    }
    decoded = unit_images(decoded, f"{type(model).__name__}, decoding its bitstreams,")
    return Coded(decoded, bits, header, prov)


def code_test_set(
    model, data, test_x: Tensor, step: float | None, bs: int, device: torch.device
) -> Coded | None:
    """The test images ``test_x`` (uint8) through the model's bitstreams; None when the model
    stores nothing that has a rate (no encoder, or float codes and no ``step``). The codes are
    always computed in float32, whatever ``eval.precision`` is: rates are exact counts of bits."""
    with numerics.exact():
        return _code_test_set(model, data, test_x, step, bs, device)


def _code_test_set(
    model, data, test_x: Tensor, step: float | None, bs: int, device: torch.device
) -> Coded | None:
    if "bitstream" in getattr(model, "capabilities", ()):
        with torch.inference_mode():
            return _self_coded(model, test_x, bs, device)
    if not getattr(model, "has_encoder", False) or not hasattr(model, "code_symbols"):
        return None
    with torch.inference_mode():
        quantised = model.code_symbols(test_x[:1].float().div(255).to(device)) is not None
    if not quantised and step is None:
        return None
    return _symbol_coded(model, data, test_x, bs, device, None if quantised else step)
