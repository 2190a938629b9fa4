"""How the model computes: the training step's ``train:`` options (bf16 autocast, ``torch.compile``)
and the evaluation's forward passes (``eval.precision``, the conv layout).

The ``train:`` options are off by default and both change a run's numbers, so the suite records
them in the run's parameters and its config hash. Only the forward pass and the loss run under
autocast; the losses are cast back to float32 before ``backward``, and weights and optimiser
state stay float32.
``torch.compile`` wraps the model's loss functions, never the module itself, so a compiled run's
``state_dict`` has the same keys as an eager one and its checkpoints load either way.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import shutil
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING

import torch
from torch.autograd import forward_ad

log = logging.getLogger("bench")

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


_EAGER: list[dict[str, Callable]] = []  # the functions ``eager`` keeps out of compiled graphs


def eager(fn: Callable) -> Callable:
    """``torch.compiler.disable`` for ``fn``, applied when a loss is first compiled: importing
    torch's compiler takes about a second of every command's start-up (``bench validate`` and
    ``bench list`` included), and only a compiled run needs it. Compiled, a call of ``fn`` breaks
    the graph and runs eagerly; eager, it is a plain call. A compile that bench did not set up
    (``torch.compile(model.loss)`` by hand) gets the same: traced, the call disables ``fn`` itself."""
    slot = {"fn": fn}
    _EAGER.append(slot)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if torch.compiler.is_compiling() and not getattr(slot["fn"], "_torchdynamo_disable", False):
            return torch.compiler.disable(fn)(*args, **kwargs)
        return slot["fn"](*args, **kwargs)

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
    for slot in _EAGER:  # what must stay eager (``eager``), disabled once
        if not getattr(slot["fn"], "_torchdynamo_disable", False):
            slot["fn"] = torch.compiler.disable(slot["fn"])


# --------------------------------------------------------------------------- evaluation

_PRECISION: ContextVar[str] = ContextVar("bench_eval_precision", default="fp32")
_LAYOUT: ContextVar[str] = ContextVar("bench_eval_layout", default="contiguous")
_EXACT: ContextVar[bool] = ContextVar("bench_eval_exact", default=False)


def eval_mode() -> str:
    """Precision and layout of the model's networks here (``bf16/channels_last``): what memoised
    codes are keyed by."""
    precision = "fp32" if _EXACT.get() else _PRECISION.get()
    return f"{precision}/{_LAYOUT.get()}"


@contextlib.contextmanager
def exact() -> Iterator[None]:
    """Float32 networks inside, whatever ``eval.precision`` says: for what needs full precision
    (the likelihood's log-densities, the bitstreams' quantised codes)."""
    token = _EXACT.set(True)
    try:
        yield
    finally:
        _EXACT.reset(token)


def _to_float(out):
    if isinstance(out, torch.Tensor):
        return out.float() if out.dtype == torch.bfloat16 else out
    if isinstance(out, dict):
        return {k: _to_float(v) for k, v in out.items()}
    if isinstance(out, tuple) and hasattr(out, "_fields"):  # a NamedTuple
        return type(out)(*(_to_float(o) for o in out))
    if isinstance(out, tuple | list):
        return type(out)(_to_float(o) for o in out)
    return out


def _autocast(forward: Callable, device_type: str) -> Callable:
    @functools.wraps(forward)
    def call(*args, **kwargs):
        if _EXACT.get() or _PRECISION.get() != "bf16":
            return forward(*args, **kwargs)
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return _to_float(forward(*args, **kwargs))

    return call


@functools.cache
def onednn_linear_available() -> bool:
    """Whether this torch build has oneDNN's packed linear (every x86 and ARM wheel does), it is
    switched on (``torch.backends.mkldnn``), and it computes what ``F.linear`` does, checked once
    on a small case."""
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    try:
        g = torch.Generator().manual_seed(0)  # never the global generator: training draws from it
        w, x, b = (torch.randn(*shape, generator=g) for shape in ((24, 40), (5, 40), (24,)))
        with torch.no_grad():
            packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
            y = torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")
        return bool(torch.allclose(y, torch.nn.functional.linear(x, w, b), rtol=1e-5, atol=1e-5))
    except Exception:  # no oneDNN in this build, or the private ops changed
        return False


LinearFn = Callable[[torch.Tensor], torch.Tensor]


def packed_linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> LinearFn:
    """``x -> F.linear(x, weight, bias)`` (x @ weight.T + bias), for a fixed float32 ``weight`` on
    the CPU through oneDNN's GEMM, the weight packed once here. torch hands a float32 product on
    the CPU to MKL, which on AMD processors runs its AVX2 kernels: oneDNN's AVX-512 kernels were
    2.0-2.5x faster on vae-conv's largest layers and the GMM's E-step (2-core AMD EPYC;
    docs/performance.md). Still float32 products, summed in another order: values move at
    rounding level. Elsewhere (another device or dtype, no oneDNN) it is ``F.linear``. No
    gradients: for forward passes that record none."""
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or not onednn_linear_available():
        return functools.partial(torch.nn.functional.linear, weight=weight, bias=bias)
    with torch.no_grad():
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
    bias = None if bias is None else bias.detach()

    def linear(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.device.type != "cpu":
            return torch.nn.functional.linear(x, weight, bias)
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    return linear


def exp_flushed(x: torch.Tensor) -> torch.Tensor:
    """``exp(x)``, a new tensor, with every result below e times the dtype's smallest normal number
    set to 0 (below 3.2e-38 in float32, 6.1e-308 in float64).

    torch's vectorised exp on the CPU leaves its fast path for a whole vector when any lane's
    result is not normal (an argument below about -87.3 in float32, -708.4 in float64). In a GMM
    fit most codes lie hundreds of nats from most components: 600,000 values, 85% of them that far
    below, took 4.3-4.4 ms instead of 1.1-1.6 ms (2-core AMD EPYC; benchmarks/linear.py). The
    lanes flushed add nothing to sums that hold a 1; NaN and infinities go through."""
    if not x.is_floating_point():
        return torch.exp(x)
    low = math.log(torch.finfo(x.dtype).tiny) + 1  # a margin: exactly at the limit is slow too
    return x.clamp_min(low).exp_().masked_fill_(x < low, 0.0)


# smaller layers stay on torch's own forward: the call's own cost (about 20 us) outweighs what a
# faster product saves there (a 784 x 512 layer on a batch of 500: 2.3 -> 1.1 ms; 64 x 16: 16 -> 32 us)
ONEDNN_MIN_WEIGHTS = 1 << 16


def _params(m: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    return (m.weight,) if m.bias is None else (m.weight, m.bias)


def _plain_float32_cpu(x: torch.Tensor, params: tuple[torch.Tensor, ...]) -> bool:
    """Whether a layer's forward on x is a plain float32 CPU computation that another kernel may
    take over: input and weights float32 on the CPU, no autocast, no trace by ``torch.compile``,
    no gradients recorded (backward or forward mode)."""
    return (
        x.dtype == torch.float32
        and x.device.type == "cpu"
        and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in params)
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, *params)))
        and forward_ad.unpack_dual(x).tangent is None
    )


class _OneDNNLinear:
    """A float32 ``nn.Linear``'s forward through ``packed_linear``, packed again when the weight or
    bias changes through autograd's view of it (an in-place change through ``.data`` is not seen:
    the evaluation holds the weights fixed). What it cannot take goes to the layer's own forward:
    another dtype or device, autocast, a forward that records gradients (backward or forward
    mode), a trace by ``torch.compile``, weights made in inference mode (no version to watch)."""

    def __init__(self, module: torch.nn.Linear) -> None:
        self.module = module
        self.packed: LinearFn | None = None
        self.key: tuple[int, ...] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = self.module
        params = _params(m)
        if not _plain_float32_cpu(x, params) or any(t.is_inference() for t in params):
            return torch.nn.Linear.forward(m, x)
        w, b = m.weight, m.bias
        key = tuple(v for t in params for v in (t.data_ptr(), t._version))
        if self.packed is None or key != self.key:
            self.packed, self.key = packed_linear(w, b), key
        return self.packed(x)


def _route(
    layers: list[torch.nn.Module], available: Callable[[], bool], wrap: Callable
) -> list[torch.nn.Module]:
    """Give each layer ``wrap(layer)`` as its forward when the kernel is ``available()``; returns
    the layers routed (none when it is not)."""
    if not layers or not available():
        return []
    for m in layers:
        object.__setattr__(m, "forward", wrap(m))
    return layers


def _onednn_linears(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Route the model's float32 ``nn.Linear`` layers of at least ``ONEDNN_MIN_WEIGHTS`` weights
    through oneDNN (``_OneDNNLinear``); returns the layers patched. Only plain ``nn.Linear`` (no
    subclass, no parametrisation) whose forward nothing has replaced already (a nested
    evaluation, a layer that is itself a network run under autocast)."""
    from torch.nn.utils import parametrize

    layers = [
        m
        for m in model.modules()
        if type(m) is torch.nn.Linear
        and m.weight.dtype == torch.float32
        and m.weight.device.type == "cpu"
        and m.weight.numel() >= ONEDNN_MIN_WEIGHTS
        and not parametrize.is_parametrized(m)
        and "forward" not in vars(m)
    ]
    return _route(layers, onednn_linear_available, _OneDNNLinear)


# a transposed convolution with this many output channels or fewer (an image decoder's last
# layer: 1 or 3 channels) runs through torch's own GEMM kernel at evaluation (``_GemmDeconv``)
GEMM_DECONV_MAX_CHANNELS = 4


@functools.cache
def gemm_deconv_available() -> bool:
    """Whether torch's GEMM kernel for transposed convolutions (``slow_conv_transpose2d``: one
    product per image, then col2im) is there and computes what ``F.conv_transpose2d`` does,
    checked once on a small case."""
    try:
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*shape, generator=g) for shape in ((2, 8, 5, 5), (8, 3, 4, 4), (3,)))
        with torch.no_grad():
            y = torch._C._nn.slow_conv_transpose2d(x, w, (4, 4), b, (2, 2), (1, 1), (1, 1), (1, 1))
            ref = torch.nn.functional.conv_transpose2d(x, w, b, 2, 1, 1)
        return y.shape == ref.shape and bool(torch.allclose(y, ref, rtol=1e-5, atol=1e-5))
    except Exception:  # the kernel was removed or renamed
        return False


class _GemmDeconv:
    """A float32 ``nn.ConvTranspose2d`` with few output channels through torch's GEMM kernel
    (``slow_conv_transpose2d``) instead of oneDNN's, which vectorises over output channels and
    leaves most of each vector empty when there are one to four: vae-conv's last layer (64 -> 1
    channel, 14x14 -> 28x28, a batch of 500) took 19.2 ms through oneDNN and 7.3 ms through the
    GEMM (medians; 2-core Ice Lake Xeon, docs/performance.md). Still float32, summed in another
    order. What it cannot take goes to the layer's own forward, as with ``_OneDNNLinear``, and so
    do an empty batch and a call with ``output_size``."""

    def __init__(self, module: torch.nn.ConvTranspose2d) -> None:
        self.module = module

    def __call__(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        m = self.module
        # the kernel takes no empty batch
        if output_size is not None or x.dim() != 4 or not x.numel() or not _plain_float32_cpu(x, _params(m)):
            return torch.nn.ConvTranspose2d.forward(m, x, output_size)
        return torch._C._nn.slow_conv_transpose2d(
            x, m.weight, m.kernel_size, m.bias, m.stride, m.padding, m.output_padding, m.dilation
        )


def _gemm_deconvs(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Route the model's float32 ``nn.ConvTranspose2d`` layers of at most
    ``GEMM_DECONV_MAX_CHANNELS`` output channels (one group, zero padding) through torch's GEMM
    kernel (``_GemmDeconv``); returns the layers patched. As ``_onednn_linears``: plain layers
    whose forward nothing has replaced."""
    from torch.nn.utils import parametrize

    layers = [
        m
        for m in model.modules()
        if type(m) is torch.nn.ConvTranspose2d
        and m.out_channels <= GEMM_DECONV_MAX_CHANNELS
        and m.groups == 1
        and m.padding_mode == "zeros"
        and m.weight.dtype == torch.float32
        and m.weight.device.type == "cpu"
        and not parametrize.is_parametrized(m)
        and "forward" not in vars(m)
    ]
    return _route(layers, gemm_deconv_available, _GemmDeconv)


@contextlib.contextmanager
def evaluation(model: torch.nn.Module, precision: str, device: torch.device) -> Iterator[None]:
    """How an evaluation runs the model's networks; everything is restored on exit.

    - On a CPU, conv weights are held in channels_last for the evaluation, float32 linear
      layers run through oneDNN's packed GEMM (``_OneDNNLinear``), and transposed convolutions
      with one to four output channels through torch's GEMM kernel (``_GemmDeconv``): the faster
      kernels, still float32 (values change at rounding level only; docs/performance.md).
    - ``precision="bf16"``: the model's networks (``autocast_modules()``: by default its
      ``encoder``, ``decoder`` and ``generator``) run under bf16 autocast and hand float32 back.
      Nothing else does: the model's own code between its networks (quantisers, codebook search,
      prior sampling), the metrics' arithmetic, the feature extractors (Inception, the domain
      classifier), the likelihood and the bitstreams (``exact()``) stay float32.
    - Float32 matrix products run at full float32 precision, whatever the process set
      (``torch.set_float32_matmul_precision``): TF32 products would move the distances of
      precision/recall and the k-NN probe beyond the rounding bounds they are computed under.
    """
    params = [p for p in model.parameters() if p.dim() == 4]
    relayout = device.type == "cpu" and bool(params) and all(p.is_contiguous() for p in params)
    patched: list[torch.nn.Module] = []
    linears: list[torch.nn.Module] = []
    deconvs: list[torch.nn.Module] = []
    tokens = (_PRECISION.set(precision), _LAYOUT.set(_LAYOUT.get()))
    matmul = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        if relayout:
            model.to(memory_format=torch.channels_last)
        if precision == "bf16":
            nets = model.autocast_modules() if hasattr(model, "autocast_modules") else []
            if not nets:
                log.warning(
                    "eval.precision bf16: %s names no networks to autocast (autocast_modules); "
                    "its forward passes run in float32",
                    type(model).__name__,
                )
            for net in nets:
                if "forward" not in vars(net):  # not already wrapped (a nested evaluation)
                    object.__setattr__(net, "forward", _autocast(net.forward, device.type))
                    patched.append(net)
        # after the autocast wrappers: a network that is itself one linear layer keeps its autocast
        linears = _onednn_linears(model) if device.type == "cpu" else []
        deconvs = _gemm_deconvs(model) if device.type == "cpu" else []
        layout = [
            *(["channels_last"] if relayout else []),
            *(["onednn_linear"] if linears else []),
            *(["gemm_deconv"] if deconvs else []),
        ]
        if layout:  # else a nested evaluation's: the outer one's layout
            _LAYOUT.set("+".join(layout))
        yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        _LAYOUT.reset(tokens[1])
        _PRECISION.reset(tokens[0])
        for m in linears:
            if isinstance(vars(m).get("forward"), _OneDNNLinear):
                object.__delattr__(m, "forward")
        for m in deconvs:
            if isinstance(vars(m).get("forward"), _GemmDeconv):
                object.__delattr__(m, "forward")
        for net in patched:
            object.__delattr__(net, "forward")
        if relayout:
            model.to(memory_format=torch.contiguous_format)
