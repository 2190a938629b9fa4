"""How the model computes: the training step's ``train:`` options (bf16 autocast, ``torch.compile``)
and the evaluation's forward passes (``eval.precision``, the conv layout).

Both are off by default and both change a run's numbers, so the suite records them in the run's
parameters and its config hash. Only the forward pass and the loss run under autocast; the
losses are cast back to float32 before ``backward``, and weights and optimiser state stay float32.
``torch.compile`` wraps the model's loss functions, never the module itself, so a compiled run's
``state_dict`` has the same keys as an eager one and its checkpoints load either way.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from bench.config import TrainConfig

Losses = dict[str, torch.Tensor]


@functools.cache
def compile_problem() -> str | None:
    """Why ``torch.compile`` cannot build kernels here (no C++ compiler), or None when it can."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()  # inductor's own search: $CXX, else g++ (clang++ on macOS)
        return None
    except ImportError:  # the private helper moved: fall back to the same search
        import os
        import sys

        cxx = os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")
        if shutil.which(cxx):
            return None
    except Exception:  # inductor raises InvalidCxxCompiler
        pass
    return (
        "torch.compile needs a C++ compiler for its kernels and none was found "
        "(install g++, e.g. `apt-get install g++`, or set $CXX)"
    )


class Numerics:
    """The step's view of ``train:``: wraps a model's loss function in autocast (and compiles it)."""

    def __init__(self, cfg: TrainConfig | None, device: torch.device) -> None:
        self.bf16 = cfg is not None and cfg.precision == "bf16"
        self.compile = cfg is not None and cfg.compile
        self.device_type = device.type

    def loss_fn(self, model: torch.nn.Module, name: str) -> Callable[..., Losses]:
        """``model.<name>(*args)`` under the step's numerics, its losses as float32.

        Eager, the method is looked up at each call, so a model's loss stays replaceable. Compiled,
        it is the bound method that is compiled: dynamo keeps its graphs on the class's function,
        so the next seed of the same variant reuses them instead of compiling again."""
        compiled = torch.compile(getattr(model, name)) if self.compile else None
        if compiled is not None:
            _configure_compile()

        def call(*args: torch.Tensor) -> Losses:
            fn = compiled or getattr(model, name)
            if not self.bf16:
                return fn(*args)
            with torch.autocast(self.device_type, dtype=torch.bfloat16):
                out = fn(*args)
            return {k: v.float() for k, v in out.items()}

        return call


def _configure_compile() -> None:
    """Process-wide settings for compiled steps.

    One process trains a whole suite, and every variant of a model class (backbone, loss,
    penalty, bf16 or not, the short last batch of an epoch) is one more graph of the same loss
    method: more than dynamo's default limit of 8. Past the limit raise, never fall back to eager
    silently (a run recorded as compiled would not be). Random draws inside a compiled loss
    (reparameterisation noise, penalty interpolates) use PyTorch's own generator, as eager does,
    so that compiling changes rounding, not the random stream of a seed."""
    import torch._dynamo.config
    import torch._inductor.config

    dynamo = torch._dynamo.config
    dynamo.recompile_limit = max(dynamo.recompile_limit, 64)
    dynamo.fail_on_recompile_limit_hit = True
    torch._inductor.config.fallback_random = True


# --------------------------------------------------------------------------- evaluation

# the model's methods whose forward passes an evaluation's precision applies to
FORWARD_METHODS = ("encode", "decode", "sample", "reconstruct")
_PRECISION: ContextVar[str] = ContextVar("bench_eval_precision", default="fp32")
_EXACT: ContextVar[bool] = ContextVar("bench_eval_exact", default=False)


def eval_precision() -> str:
    """The precision the model's forward passes run at here: what memoised codes are keyed by."""
    return "fp32" if _EXACT.get() else _PRECISION.get()


@contextlib.contextmanager
def exact() -> Iterator[None]:
    """Float32 forward passes inside, whatever ``eval.precision`` says: for what needs full
    precision (the likelihood's log-densities, the bitstreams' quantised codes)."""
    token = _EXACT.set(True)
    try:
        yield
    finally:
        _EXACT.reset(token)


def _to_float(out):
    if isinstance(out, torch.Tensor):
        return out.float() if out.dtype == torch.bfloat16 else out
    if isinstance(out, tuple | list):
        return type(out)(_to_float(o) for o in out)
    return out


@contextlib.contextmanager
def evaluation(model: torch.nn.Module, precision: str, device: torch.device) -> Iterator[None]:
    """How an evaluation runs the model's forward passes; everything is restored on exit.

    - On a CPU, conv weights are held in channels_last for the evaluation: oneDNN's faster
      kernels, still float32 (values change at rounding level only; docs/performance.md).
    - ``precision="bf16"``: the model's own ``encode``, ``decode``, ``sample`` and ``reconstruct``
      run under bf16 autocast and return float32. Nothing else does: the metrics' arithmetic, the
      feature extractors (Inception, the domain classifier), the likelihood and the bitstreams
      (``exact()``) stay float32.
    """
    params = [p for p in model.parameters() if p.dim() == 4]
    relayout = device.type == "cpu" and bool(params) and all(p.is_contiguous() for p in params)
    if relayout:
        model.to(memory_format=torch.channels_last)
    patched = []
    if precision == "bf16":
        for name in FORWARD_METHODS:
            fn = getattr(model, name, None)
            if callable(fn) and name not in vars(model):
                object.__setattr__(model, name, _autocast(fn, device.type))
                patched.append(name)
    token = _PRECISION.set(precision)
    try:
        yield
    finally:
        _PRECISION.reset(token)
        for name in patched:
            object.__delattr__(model, name)
        if relayout:
            model.to(memory_format=torch.contiguous_format)


def _autocast(fn: Callable, device_type: str) -> Callable:
    @functools.wraps(fn)
    def call(*args, **kwargs):
        if _EXACT.get():
            return fn(*args, **kwargs)
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return _to_float(fn(*args, **kwargs))

    return call
