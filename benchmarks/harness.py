"""Benchmark bench's training path against what a user would otherwise write.

Prints a markdown table. Each comparison runs both sides in this process, interleaved
(A B A B ...), and reports the median of the repeats, so a busy machine slows both sides alike.

    python benchmarks/harness.py                 # overhead, data path, tracking; CPU
    python benchmarks/harness.py --only overhead --device cuda
    python benchmarks/harness.py --only numerics --device cuda   # fp32 / bf16 / compile (train:)
    python benchmarks/harness.py --only layout   # channels_last against contiguous, conv models
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from bench.config import BudgetConfig, TrainConfig
from bench.data import batch_indices, load_dataset, to_float
from bench.models import build_model
from bench.train import STEP_KINDS, Trainer


def images_per_s(fn: Callable[[], int]) -> float:
    t0 = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t0)


def interleaved(a: Callable[[], int], b: Callable[[], int], repeats: int) -> tuple[float, float]:
    """Median images/s of a and b, measured alternately."""
    return tuple(interleaved_all([a, b], repeats))  # type: ignore[return-value]


def interleaved_all(fns: list[Callable[[], int]], repeats: int) -> list[float]:
    """Median images/s of each function, measured in turn (A B C A B C ...)."""
    rates: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for r, fn in zip(rates, fns):
            r.append(images_per_s(fn))
    return [statistics.median(r) for r in rates]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_steps(name: str, steps: int, device: torch.device) -> int:
    """Conv nets take ~100x longer per step than the MLPs on a CPU: measure them over fewer steps."""
    return steps if name.endswith("mlp") or device.type == "cuda" else max(10, steps // 10)


# ----------------------------------------------------------------------------- 1. overhead


def bare_loop(model, data, steps: int, batch_size: int, device, memory_format=None) -> int:
    """The loop a user writes: shuffled index batches from the resident tensor, one step each."""
    step = STEP_KINDS[model.step_kind](model)
    n = len(data.train_x)
    perm = torch.randperm(n, device=device)
    seen = 0
    for s in range(steps):
        idx = perm[(s * batch_size) % n : (s * batch_size) % n + batch_size]
        x = to_float(data.train_x[idx])
        if memory_format is not None:
            x = x.contiguous(memory_format=memory_format)
        step(model, x, s)
        seen += len(idx)
    sync(device)
    return seen


def bench_loop(model, data, steps: int, batch_size: int, device, on_log=None, train=None) -> int:
    trainer = Trainer(
        model, data, BudgetConfig(steps=steps, batch_size=batch_size), seed=0, log_every=50, train=train
    )
    p = trainer.run(on_log=on_log or (lambda s, v: None))
    sync(device)
    return p.images


def section_overhead(data, device, steps: int, repeats: int) -> list[str]:
    rows = ["| model | bare loop (img/s) | bench loop (img/s) | ratio | target |", "|---|---|---|---|---|"]
    for name in ("ae-mlp", "vae-conv", "dcgan"):
        n_steps = model_steps(name, steps, device)
        torch.manual_seed(0)
        m_bare = build_model(name, {}, data.image_shape).to(device)
        m_bench = build_model(name, {}, data.image_shape).to(device)
        bare_loop(m_bare, data, 3, 64, device)  # warm-up
        bench_loop(m_bench, data, 3, 64, device)
        a, b = interleaved(
            partial(bare_loop, m_bare, data, n_steps, 64, device),
            partial(bench_loop, m_bench, data, n_steps, 64, device),
            repeats,
        )
        rows.append(f"| {name} | {a:,.0f} | {b:,.0f} | {b / a:.3f} | ≥ 0.97 |")
    return rows


# ----------------------------------------------------------------------------- 2. data path


def torchvision_fashion(tmp: Path):
    """torchvision's FashionMNIST dataset over the same IDX files, as its examples use it."""
    import gzip
    import shutil

    from torchvision import datasets, transforms

    src = Path("/usr/share/datasets/fashion-mnist")
    raw = tmp / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in src.glob("*.gz"):
        with gzip.open(f) as fin, open(raw / f.stem, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    return datasets.FashionMNIST(str(tmp), train=True, download=False, transform=transforms.ToTensor())


def section_data(steps: int, repeats: int) -> list[str]:
    from torch.utils.data import DataLoader

    device = torch.device("cpu")
    data = load_dataset("fashion-mnist")
    with tempfile.TemporaryDirectory() as tmp:
        ds = torchvision_fashion(Path(tmp))
        torch.manual_seed(0)
        m_a = build_model("ae-mlp", {}, data.image_shape)
        m_b = build_model("ae-mlp", {}, data.image_shape)
        step_a = STEP_KINDS["reconstruction"](m_a)

        def loader_loop() -> int:
            loader = DataLoader(ds, batch_size=64, shuffle=True)
            seen = 0
            for s, (x, _) in enumerate(loader):
                if s == steps:
                    break
                step_a(m_a, x, s)
                seen += len(x)
            return seen

        def loader_batches() -> int:  # the data path alone: batches as float tensors, no model
            seen = 0
            for s, (x, _) in enumerate(DataLoader(ds, batch_size=64, shuffle=True)):
                if s == steps:
                    break
                seen += len(x)
            return seen

        def bench_batches() -> int:
            seen = 0
            for s in range(steps):
                x = to_float(data.train_x[batch_indices(len(data.train_x), 64, s, 0, device)])
                seen += len(x)
            return seen

        a, b = interleaved(loader_loop, lambda: bench_loop(m_b, data, steps, 64, device), repeats)
        c, d = interleaved(loader_batches, bench_batches, repeats)
    return [
        "| data path (Fashion-MNIST, CPU, batch 64) | torchvision dataset + DataLoader + ToTensor "
        "| bench: resident uint8 tensor, index batches | speed-up (target ≥ 5×) |",
        "|---|---|---|---|",
        f"| batches alone (img/s) | {c:,.0f} | {d:,.0f} | {d / c:.1f}× |",
        f"| training ae-mlp on them (img/s) | {a:,.0f} | {b:,.0f} | {b / a:.1f}× |",
    ]


# ----------------------------------------------------------------------------- 3. tracking


def logged_loop(model, data, steps: int, device, run) -> int:
    """bench's loop with its MLflow loss logging, until the store holds every logged value."""
    n = bench_loop(model, data, steps, 64, device, on_log=run.losses)
    run.flush()
    return n


def section_tracking(data, device, steps: int, repeats: int, models: list[str]) -> list[str]:
    from bench.store.tracking import Tracker

    rows = [
        "| model | logging off (img/s) | MLflow logging on (img/s) | overhead | target |",
        "|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        tracker = Tracker(f"sqlite:///{tmp}/mlflow.db")
        parent = tracker.start_suite("tracking-bench", "name: tracking-bench\n", 1)
        for name in models:
            n_steps = model_steps(name, steps, device)
            torch.manual_seed(0)
            m_off = build_model(name, {}, data.image_shape).to(device)
            m_on = build_model(name, {}, data.image_shape).to(device)
            run = tracker.start_run(parent, {"label": name}, name)

            off = partial(bench_loop, m_off, data, n_steps, 64, device)
            on = partial(logged_loop, m_on, data, n_steps, device, run)
            a, b = interleaved(off, on, repeats)
            run.finish()
            rows.append(f"| {name} | {a:,.0f} | {b:,.0f} | {100 * (a / b - 1):.2f}% | ≤ 2% |")
        parent.finish()
    return rows


# ----------------------------------------------------------------------------- 4. numerics


NUMERICS = {
    "fp32": TrainConfig(),
    "bf16": TrainConfig(precision="bf16"),
    "fp32 + compile": TrainConfig(compile=True),
    "bf16 + compile": TrainConfig(precision="bf16", compile=True),
}


def section_numerics(data, device, steps: int, repeats: int, models: list[str]) -> list[str]:
    """bench's loop under each ``train:`` setting; compile time is paid in an untimed warm-up."""
    from bench.numerics import compile_problem

    kinds = [k for k, cfg in NUMERICS.items() if not (cfg.compile and compile_problem())]
    rows = [
        f"| model | {' | '.join(f'{k} (img/s)' for k in kinds)} | best against fp32 |",
        f"|---|{'---|' * len(kinds)}---|",
    ]
    for name in models:
        n_steps = model_steps(name, steps, device)
        fns = []
        for k in kinds:
            torch.manual_seed(0)
            m = build_model(name, {}, data.image_shape).to(device)
            bench_loop(m, data, 3, 64, device, train=NUMERICS[k])  # warm-up (and compilation)
            fns.append(partial(bench_loop, m, data, n_steps, 64, device, train=NUMERICS[k]))
        rates = interleaved_all(fns, repeats)
        best = max(range(len(kinds)), key=lambda i: rates[i])
        cells = " | ".join(f"{r:,.0f}" for r in rates)
        rows.append(f"| {name} | {cells} | {kinds[best]}: {rates[best] / rates[0]:.2f}× |")
    if len(kinds) < len(NUMERICS):
        rows.append(f"\ncompile rows left out: {compile_problem()}")
    return rows


# ----------------------------------------------------------------------------- 5. memory layout


def section_layout(data, device, steps: int, repeats: int, models: list[str]) -> list[str]:
    """The conv models with weights and input batches in channels_last against the default layout."""
    rows = [
        "| model | contiguous (img/s) | channels_last (img/s) | ratio |",
        "|---|---|---|---|",
    ]
    cl = torch.channels_last
    for name in models:
        n_steps = model_steps(name, steps, device)
        torch.manual_seed(0)
        m_a = build_model(name, {}, data.image_shape).to(device)
        m_b = build_model(name, {}, data.image_shape).to(device).to(memory_format=cl)
        bare_loop(m_a, data, 3, 64, device)  # warm-up
        bare_loop(m_b, data, 3, 64, device, memory_format=cl)
        a, b = interleaved(
            partial(bare_loop, m_a, data, n_steps, 64, device),
            partial(bare_loop, m_b, data, n_steps, 64, device, memory_format=cl),
            repeats,
        )
        rows.append(f"| {name} | {a:,.0f} | {b:,.0f} | {b / a:.3f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["overhead", "data", "tracking", "numerics", "layout"], action="append")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--steps", type=int, default=200, help="steps per measurement (conv models use a tenth on a CPU)"
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", nargs="+", help="models of the tracking, numerics and layout sections")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    sections = args.only or ["overhead", "data", "tracking"]
    data = load_dataset("fashion-mnist").to(device)
    print(
        f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    if "overhead" in sections:
        print("### Harness overhead\n")
        print("\n".join(section_overhead(data, device, args.steps, args.repeats)), "\n")
    if "data" in sections:
        print("### Data path\n")
        print("\n".join(section_data(args.steps, args.repeats)), "\n")
    if "tracking" in sections:
        print("### Tracking overhead\n")
        print(
            "\n".join(
                section_tracking(data, device, args.steps, args.repeats, args.models or ["ae-mlp", "dcgan"])
            ),
            "\n",
        )
    if "numerics" in sections:
        models = args.models or ["ae-mlp", "vae-conv", "dcgan"]
        print("### Numerics: the suite's train: options\n")
        print("\n".join(section_numerics(data, device, args.steps, args.repeats, models)), "\n")
    if "layout" in sections:
        models = args.models or ["ae-conv", "vae-conv", "dcgan"]
        print("### Memory layout: channels_last\n")
        print("\n".join(section_layout(data, device, args.steps, args.repeats, models)), "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
