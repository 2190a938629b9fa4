"""How the training step computes: bf16 autocast and ``torch.compile``, the suite's ``train:`` options.

Both are off by default and both change a run's numbers, so the suite records them in the run's
parameters and its config hash. Only the forward pass and the loss run under autocast; the
losses are cast back to float32 before ``backward``, and weights and optimiser state stay float32.
``torch.compile`` wraps the model's loss functions, never the module itself, so a compiled run's
``state_dict`` has the same keys as an eager one and its checkpoints load either way.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable
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
