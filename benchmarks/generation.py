"""Benchmark the generation metrics: fid_domain + is_domain on n samples, and Inception throughput.

Prints a markdown table. The domain metrics are timed end to end as `bench run` computes them
at an evaluation (sampling from the model included), once with a cold cache (classifier
training and reference statistics, paid once per dataset) and then warm (every later
evaluation). Inception throughput is images/s of torch-fidelity's InceptionV3 on 28x28 images
(resized to 299x299 inside the extractor); it does not depend on the weights, so the offline
weights are used when present and a randomly initialised network of the same layout otherwise.

    python benchmarks/generation.py                       # CPU, Fashion-MNIST, n = 10,000
    python benchmarks/generation.py --device cuda --inception-images 2048
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch


def train_briefly(name: str, data, steps: int, device: torch.device):
    from bench.config import BudgetConfig
    from bench.models import build_model
    from bench.train import Trainer

    torch.manual_seed(0)
    model = build_model(name, {}, data.image_shape).to(device)
    Trainer(model, data, BudgetConfig(steps=steps, batch_size=64), 0).run()
    return model


def time_domain_metrics(model, data, n: int, device: torch.device) -> float:
    from bench.config import EvalConfig
    from bench.metrics import evaluate

    cfg = EvalConfig(metrics=["fid_domain", "is_domain"], n_samples=n, n_real=n)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    evaluate(model, data, cfg, 0, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def time_reference_statistics(data, n: int, device: torch.device) -> tuple[float, float]:
    """Seconds to obtain fid_domain's reference statistics (n real images through the domain
    classifier, then mean and covariance): computed on a cache miss, then loaded on a hit. The
    classifier itself is trained (or loaded) before the clock starts."""
    import shutil

    from bench.cache import cache_dir
    from bench.config import EvalConfig
    from bench.metrics.features import real_statistics
    from bench.metrics.generative import GenerationEval, generation_metric

    gm = generation_metric("fid_domain")
    gen = GenerationEval(data, EvalConfig(metrics=["fid_domain"], n_samples=n, n_real=n), 0, device)
    prep = gen.prepared(gm.extractor)
    layer = prep.layer("fid")
    for kind in ("features", "statistics"):
        shutil.rmtree(cache_dir() / kind, ignore_errors=True)
    times = []
    for _ in range(2):  # miss, then hit
        t0 = time.perf_counter()
        real_statistics(gen.reference, prep, layer, gen.cfg.batch_size, device)
        times.append(time.perf_counter() - t0)
    return times[0], times[1]


def inception_images_per_s(images: int, batch: int, device: torch.device) -> tuple[float, str]:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from bench.metrics import inception

    if inception.find_torchscript() is not None:
        path, what = str(inception.offline_weights().path), "offline weights"
    else:

        class Untrained(FeatureExtractorInceptionV3):  # same layout and cost, random parameters
            def load_state_dict(self, state_dict, strict=True, assign=False):
                return None

        d = tempfile.mkdtemp()
        path = os.path.join(d, "empty.pt")
        torch.save({}, path)
        what = "random weights, same network"
    cls = FeatureExtractorInceptionV3 if what == "offline weights" else Untrained
    fe = cls("inception-v3-compat", ["2048"], feature_extractor_weights_path=path).to(device).eval()
    x = torch.randint(0, 256, (batch, 3, 28, 28), dtype=torch.uint8, device=device)
    with torch.no_grad():
        fe(x)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        done = 0
        while done < images:
            fe(x)
            done += batch
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return done / (time.perf_counter() - t0), what


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--n", type=int, default=10000, help="generated samples and reference images")
    p.add_argument("--models", nargs="+", default=["gan-mlp", "dcgan"])
    p.add_argument("--train-steps", type=int, default=50)
    p.add_argument("--inception-images", type=int, default=128)
    p.add_argument("--inception-batch", type=int, default=64)
    args = p.parse_args()

    from bench.data import load_dataset

    device = torch.device(args.device)
    data = load_dataset(args.dataset).to(device)
    rows = [
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
        f"torch threads {torch.get_num_threads()}, dataset {args.dataset}, n = {args.n}",
        "",
        "| measurement | value |",
        "|---|---|",
    ]
    with tempfile.TemporaryDirectory() as cache:
        os.environ["BENCH_CACHE_DIR"] = cache  # a cold cache, as on a fresh machine
        for i, name in enumerate(args.models):
            model = train_briefly(name, data, args.train_steps, device)
            if i == 0:
                cold = time_domain_metrics(model, data, args.n, device)
                rows.append(
                    f"| fid_domain + is_domain, cold cache (classifier + reference), {name} | {cold:.1f} s |"
                )
            warm = time_domain_metrics(model, data, args.n, device)
            rows.append(f"| fid_domain + is_domain incl. sampling, warm cache, {name} | {warm:.1f} s |")
        miss, hit = time_reference_statistics(data, args.n, device)
        rows.append(f"| reference statistics (fid_domain, n = {args.n}), cache miss | {miss:.2f} s |")
        rows.append(f"| reference statistics, cache hit | {hit * 1000:.1f} ms ({miss / hit:.0f}x faster) |")
        rate, what = inception_images_per_s(args.inception_images, args.inception_batch, device)
        rows.append(f"| Inception features, batch {args.inception_batch} ({what}) | {rate:.1f} images/s |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
