"""Codes of the training split and what is fitted to them, memoised per trained state of a model.

The runner's post-training fits (``samplers.fit_latent_sampler``, ``samplers.latent_gmm``) and the
metrics of an evaluation (``EvalContext.codes``) share one encoding of the training split: it is
kept beside the model, keyed by a summary of its parameters and the data, and dropped when
either changes.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from bench import numerics
from bench.data import ImageData, to_float

Tensor = torch.Tensor

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
    """Deterministic codes (N, d) of the whole training split, in eval mode, once per trained state
    and forward-pass precision and layout (``bench.numerics.eval_mode``)."""
    memo = _fits(model, data)
    key = f"codes:{numerics.eval_mode()}"
    if key not in memo:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        x = data.train_x
        with torch.inference_mode():
            memo[key] = torch.cat(
                [
                    model.encode(to_float(x[i : i + batch_size]).to(device)).flatten(1).float()
                    for i in range(0, len(x), batch_size)
                ]
            )
        model.train(was_training)
    return memo[key]
