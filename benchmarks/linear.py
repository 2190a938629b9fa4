"""Float32 linear products on the CPU: torch's own (``F.linear``, MKL's GEMM) against oneDNN's
(``bench.numerics.packed_linear``, what an evaluation's linear layers and the GMM's E-step use).

Measured side by side, the two taking turns round by round (each going first every other
round), medians printed:
- the products alone, at the shapes of vae-conv's largest layers (batches of 500) and of the
  GMM's E-step (chunks of 1,024 64-d codes against 10 components), in GFLOP/s, with each
  one's largest error against float64;
- vae-conv's encoder and decoder inside ``numerics.evaluation`` (channels_last either way), with
  and without their linear layers through oneDNN, in images/s;
- the GMM fit (``bench.metrics.gmm.fit_em``, 10 full-covariance components) on 60,000 64-d
  synthetic codes (or ``--codes``), with and without oneDNN's E-step: seconds, EM iterations and
  the fit's mean log-likelihood;
- k-NN's distances and top-k (10,000 queries against 60,000 64-d points, as ``knn_acc``): MKL
  into one buffer in chunks of 1,000 rows, oneDNN in chunks of ``CHUNK_VALUES`` distances
  (``bench.metrics.neighbours``), oneDNN in chunks of 1,000 rows (a fresh 240 MB each), and
  oneDNN in chunks of ``CHUNK_VALUES`` with ``neighbours.smallest`` in place of ``topk``;
- the k smallest of each row alone, ``topk`` against ``neighbours.smallest``, on the chunks
  ``knn_acc`` and the k-NN radii of precision/recall select from (checked equal);
- torch's exp against ``numerics.exp_flushed`` on 600,000 values (a GMM's responsibilities of
  60,000 codes and 10 components), for arguments all in range, mostly far below it, and all
  below it;
- transposed convolutions with few output channels (the conv backbones' last layers), oneDNN's
  kernel against torch's GEMM kernel (``numerics._GemmDeconv``), alone and inside the decoders
  that end in them (``numerics.evaluation`` either way), with each one's largest difference.

    python benchmarks/linear.py                # 5 rounds
    python benchmarks/linear.py --rounds 9 --codes codes.pt   # a tensor, or {"train": tensor}
    python benchmarks/linear.py --only deconvs

Prints markdown.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import numerics  # noqa: E402
from bench.metrics import gmm  # noqa: E402
from bench.models import build_model  # noqa: E402

SHAPES = {  # (rows, in, out)
    "vae-conv encoder 6272 -> 1024 (batch 500)": (500, 6272, 1024),
    "vae-conv decoder 1024 -> 6272 (batch 500)": (500, 1024, 6272),
    "GMM E-step 64 -> 640 (chunk of 1,024 codes)": (1024, 64, 640),
}


def seconds(fn, *args, repeats: int = 20) -> float:
    fn(*args)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn(*args)
    return (time.perf_counter() - t0) / repeats


def products(rounds: int) -> None:
    print("| product | MKL GFLOP/s | oneDNN GFLOP/s | oneDNN / MKL | largest error: MKL | oneDNN |")
    print("|---|--:|--:|--:|--:|--:|")
    g = torch.Generator().manual_seed(0)
    for name, (m, k, n) in SHAPES.items():
        x, w, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)
        fast = numerics.packed_linear(w, b)
        exact = F.linear(x.double(), w.double(), b.double())
        times: dict[str, list[float]] = {"mkl": [], "onednn": []}
        with torch.inference_mode():
            for r in range(rounds):  # the two take turns, each going first every other round
                for side in ("mkl", "onednn")[:: 1 if r % 2 == 0 else -1]:
                    times[side].append(seconds(F.linear, x, w, b) if side == "mkl" else seconds(fast, x))
            err_mkl = (F.linear(x, w, b) - exact).abs().max().item()
            err_dnn = (fast(x) - exact).abs().max().item()
        flop = 2 * m * k * n
        a, o = (flop / statistics.median(times[t]) / 1e9 for t in ("mkl", "onednn"))
        print(f"| {name} | {a:.0f} | {o:.0f} | {o / a:.2f} | {err_mkl:.1e} | {err_dnn:.1e} |")


def networks(rounds: int) -> None:
    torch.manual_seed(0)
    model = build_model("vae-conv", {}, (1, 28, 28)).eval()
    x, z = torch.rand(500, 1, 28, 28), torch.randn(500, model.params.latent_dim)
    patch = numerics._onednn_linears
    rates: dict[tuple[str, bool], list[float]] = {}
    for r in range(rounds):
        for onednn in (False, True)[:: 1 if r % 2 == 0 else -1]:
            numerics._onednn_linears = patch if onednn else (lambda model: [])
            try:
                with numerics.evaluation(model, "fp32", torch.device("cpu")), torch.inference_mode():
                    for net, arg in (("encoder", x), ("decoder", z)):
                        rate = 500 / seconds(getattr(model, net), arg, repeats=10)
                        rates.setdefault((net, onednn), []).append(rate)
            finally:
                numerics._onednn_linears = patch
    print("\n| vae-conv, batches of 500 | linear layers on MKL (images/s) | on oneDNN (images/s) | ratio |")
    print("|---|--:|--:|--:|")
    for net in ("encoder", "decoder"):
        a, o = statistics.median(rates[(net, False)]), statistics.median(rates[(net, True)])
        print(f"| {net} | {a:,.0f} | {o:,.0f} | {o / a:.2f} |")


def gmm_fit(rounds: int, codes_file: str | None) -> None:
    if codes_file:  # e.g. a trained encoder's codes of the training split: a tensor, or {"train": tensor}
        codes = torch.load(codes_file, weights_only=True)
        codes = (codes["train"] if isinstance(codes, dict) else codes).float()
    else:  # heavy-tailed, correlated codes: EM runs about as many steps as on vae-conv's (67)
        g = torch.Generator().manual_seed(0)
        codes = torch.randn(60000, 64, generator=g).pow(3) @ (torch.randn(64, 64, generator=g) / 8)
    packed = numerics.packed_linear
    out: dict[bool, list] = {False: [], True: []}
    for r in range(max(1, rounds // 2)):
        for onednn in (False, True)[:: 1 if r % 2 == 0 else -1]:
            numerics.packed_linear = packed if onednn else (lambda w, b=None: lambda x: F.linear(x, w, b))
            try:
                t0 = time.perf_counter()
                fit = gmm.fit_em(codes, 10, 0)
                out[onednn].append((time.perf_counter() - t0, fit.n_iter, fit.log_likelihood))
            finally:
                numerics.packed_linear = packed
    title = f"GMM fit, {len(codes):,} {codes.shape[1]}-d codes, 10 components"
    print(f"\n| {title} | E-step on MKL | on oneDNN |")
    print("|---|--:|--:|")
    a, o = (statistics.median(t for t, _, _ in out[k]) for k in (False, True))
    print(f"| seconds (median) | {a:.2f} | {o:.2f} |")
    print(f"| EM iterations | {out[False][0][1]} | {out[True][0][1]} |")
    print(f"| mean log-likelihood per code | {out[False][0][2]:.6f} | {out[True][0][2]:.6f} |")


def knn(rounds: int) -> None:
    from bench.metrics import neighbours

    g = torch.Generator().manual_seed(0)
    train, query = torch.randn(60000, 64, generator=g), torch.randn(10000, 64, generator=g)
    sq = train.square().sum(1)
    buf = torch.empty(1000, len(train))

    def mkl() -> None:
        for q in query.split(1000):
            torch.addmm(sq, q, train.T, alpha=-2, out=buf[: len(q)]).topk(10, dim=1, largest=False)

    def onednn(rows: int, select=lambda d2: d2.topk(10, dim=1, largest=False)) -> None:
        distances = numerics.packed_linear(-2 * train, sq)
        for q in query.split(rows):
            select(distances(q))

    capped = neighbours.CHUNK_VALUES // len(train)
    ways = {
        "MKL, chunks of 1,000 rows into one buffer": mkl,
        f"oneDNN, chunks of {capped} rows ({capped * len(train) * 4 / 2**20:.0f} MB)": lambda: onednn(capped),
        "oneDNN, chunks of 1,000 rows (229 MB)": lambda: onednn(1000),
        f"oneDNN, chunks of {capped} rows, `neighbours.smallest`": lambda: onednn(
            capped, lambda d2: neighbours.smallest(d2, 10)
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in ways}
    for r in range(rounds):
        for name in list(ways)[r % len(ways) :] + list(ways)[: r % len(ways)]:
            times[name].append(seconds(ways[name], repeats=1))
    print("\n| k-NN: 10,000 queries against 60,000 64-d points, distances and top-10 | seconds (median) |")
    print("|---|--:|")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.3f} |")


def selection(rounds: int) -> None:
    from bench.metrics import neighbours

    g = torch.Generator().manual_seed(0)
    # (rows, columns, k): a chunk of knn_acc; one of the radii of 10,000 features (k + 1 + SPARE
    # for k = 3, torch-fidelity's neighbourhood)
    cases = {
        (neighbours.CHUNK_VALUES // 60000, 60000, 10): None,
        (neighbours.CHUNK_VALUES // 10000, 10000, 3 + 1 + neighbours.SPARE): None,
    }
    print("\n| the k smallest of each row | topk (ms) | neighbours.smallest (ms) | topk / smallest |")
    print("|---|--:|--:|--:|")
    for c, n, k in cases:
        values = torch.randn(c, 64, generator=g) @ torch.randn(64, n, generator=g)
        exact, fast = values.topk(k, dim=1, largest=False), neighbours.smallest(values, k)
        assert torch.equal(exact.values, fast[0]) and torch.equal(values.gather(1, fast[1]), fast[0])
        fns = {
            "topk": lambda v, k=k: v.topk(k, dim=1, largest=False),
            "smallest": lambda v, k=k: neighbours.smallest(v, k),
        }
        times: dict[str, list[float]] = {"topk": [], "smallest": []}
        for r in range(rounds):
            for side in ("topk", "smallest")[:: 1 if r % 2 == 0 else -1]:
                times[side].append(seconds(fns[side], values) * 1e3)
        t, f = (statistics.median(times[x]) for x in ("topk", "smallest"))
        print(f"| {c} rows x {n:,} columns, k = {k} | {t:.2f} | {f:.2f} | {t / f:.1f}x |")


def exp_paths(rounds: int) -> None:
    g = torch.Generator().manual_seed(0)
    near = -50 * torch.rand(60000, 10, generator=g)
    far = -1000 - 4000 * torch.rand(60000, 10, generator=g)
    # as in a GMM fit: most codes lie far from most components
    mostly_far = torch.where(torch.rand(60000, 10, generator=g) < 0.85, far, near)
    args = {
        "in range: uniform in [-50, 0]": near,
        "85% uniform in [-5000, -1000], the rest in range": mostly_far,
        "all at -1000": torch.full((60000, 10), -1000.0),
    }
    print("\n| exp of 600,000 values | dtype | torch.exp (ms) | exp_flushed (ms) |")
    print("|---|---|--:|--:|")
    for name, x in args.items():
        for dtype in (torch.float32, torch.float64):
            v = x.to(dtype)
            times: dict[str, list[float]] = {"exp": [], "flushed": []}
            for r in range(rounds):
                for side in ("exp", "flushed")[:: 1 if r % 2 == 0 else -1]:
                    fn = torch.exp if side == "exp" else numerics.exp_flushed
                    times[side].append(seconds(fn, v) * 1e3)
            e, f = (statistics.median(times[k]) for k in ("exp", "flushed"))
            print(f"| {name} | {str(dtype).removeprefix('torch.')} | {e:.2f} | {f:.2f} |")


# (name, in channels, out channels, input side, kernel, stride, padding, batch): the last layers of
# the conv backbones (nets.py)
DECONVS = [
    ("infogan (vae-conv, dcgan on 28x28): 64 -> 1, 14x14 -> 28x28", 64, 1, 14, 4, 2, 1, 500),
    ("dcgan backbone on 32x32 colour: 64 -> 3, 16x16 -> 32x32", 64, 3, 16, 4, 2, 1, 500),
    ("ghosh on 28x28 (padded to 32): 256 -> 1, 32x32 -> 33x33", 256, 1, 32, 4, 1, 1, 100),
]


def deconvs(rounds: int) -> None:
    g = torch.Generator().manual_seed(0)
    print("\n| transposed convolution (channels_last input) | oneDNN (ms) | GEMM kernel (ms) | ratio "
          "| largest difference |")
    print("|---|--:|--:|--:|--:|")
    for name, cin, cout, side, k, stride, pad, batch in DECONVS:
        layer = torch.nn.ConvTranspose2d(cin, cout, k, stride, pad).to(memory_format=torch.channels_last)
        x = torch.randn(batch, cin, side, side, generator=g).contiguous(memory_format=torch.channels_last)
        gemm = numerics._GemmDeconv(layer)
        times: dict[str, list[float]] = {"onednn": [], "gemm": []}
        with torch.inference_mode():
            for r in range(rounds):
                for side_ in ("onednn", "gemm")[:: 1 if r % 2 == 0 else -1]:
                    fn = layer if side_ == "onednn" else gemm
                    times[side_].append(seconds(fn, x, repeats=10) * 1e3)
            diff = (layer(x) - gemm(x)).abs().max().item()
        a, o = (statistics.median(times[t]) for t in ("onednn", "gemm"))
        print(f"| {name}, batch {batch} | {a:.2f} | {o:.2f} | {a / o:.2f} | {diff:.1e} |")
    # Training is left on oneDNN (a run stays a plain PyTorch loop); this row says what that costs.
    layer = torch.nn.ConvTranspose2d(64, 1, 4, 2, 1)
    x = torch.randn(64, 64, 14, 14, generator=g, requires_grad=True)

    def step(kernel: str) -> None:
        if kernel == "onednn":
            y = layer(x)
        else:
            y = torch._C._nn.slow_conv_transpose2d(x, layer.weight, (4, 4), layer.bias, (2, 2), (1, 1),
                                                   (0, 0), (1, 1))
        y.sum().backward()

    steps: dict[str, list[float]] = {"onednn": [], "gemm": []}
    for r in range(rounds):
        for side_ in ("onednn", "gemm")[:: 1 if r % 2 == 0 else -1]:
            steps[side_].append(seconds(step, side_, repeats=10) * 1e3)
    a, o = (statistics.median(steps[t]) for t in ("onednn", "gemm"))
    print(f"| training (forward and backward, NCHW input, not routed), infogan's last layer, batch 64 "
          f"| {a:.2f} | {o:.2f} "
          f"| {a / o:.2f} | |")
    patch = numerics._gemm_deconvs
    print("\n| decoder (`numerics.evaluation`) | last layer on oneDNN (images/s) "
          "| on the GEMM kernel (images/s) | ratio |")
    print("|---|--:|--:|--:|")
    ghosh = {"backbone": "ghosh", "latent_dim": 16}  # paper-ghosh.yaml's nets
    for model_name, params, batch in (("vae-conv", {}, 500), ("vae-conv", ghosh, 100)):
        torch.manual_seed(0)
        model = build_model(model_name, params, (1, 28, 28)).eval()
        z = torch.randn(batch, model.params.latent_dim)
        rates: dict[bool, list[float]] = {False: [], True: []}
        for r in range(rounds):
            for on in (False, True)[:: 1 if r % 2 == 0 else -1]:
                numerics._gemm_deconvs = patch if on else (lambda model: [])
                try:
                    with numerics.evaluation(model, "fp32", torch.device("cpu")), torch.inference_mode():
                        rates[on].append(batch / seconds(model.decode, z, repeats=5))
                finally:
                    numerics._gemm_deconvs = patch
        a, o = statistics.median(rates[False]), statistics.median(rates[True])
        label = f"{model_name}{' (ghosh backbone)' if params else ''}, batches of {batch}"
        print(f"| {label} | {a:,.0f} | {o:,.0f} | {o / a:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--codes", help="codes to fit the GMM to (a tensor file; default: synthetic)")
    sections = {
        "products": lambda: products(args.rounds),
        "networks": lambda: networks(args.rounds),
        "gmm": lambda: gmm_fit(args.rounds, args.codes),
        "knn": lambda: knn(args.rounds),
        "selection": lambda: selection(args.rounds),
        "exp": lambda: exp_paths(args.rounds),
        "deconvs": lambda: deconvs(args.rounds),
    }
    ap.add_argument("--only", action="append", choices=sections, help="these sections only (repeatable)")
    args = ap.parse_args()
    if not numerics.onednn_linear_available():
        raise SystemExit("this torch build has no oneDNN packed linear: nothing to compare")
    if "deconvs" in (args.only or sections) and not numerics.gemm_deconv_available():
        raise SystemExit("this torch build has no GEMM kernel for transposed convolutions")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    for name in args.only or sections:
        sections[name]()


if __name__ == "__main__":
    main()
