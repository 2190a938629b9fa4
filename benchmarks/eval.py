"""Benchmark evaluation: the 15 metrics of suites/fashion-mnist.yaml, one at a time, against the
forward passes they cannot avoid.

One vae-conv is trained briefly on Fashion-MNIST (or its weights loaded from ``--weights``), then
every metric is timed as one ``evaluate`` call of its own (caches that live in the model between
calls are cleared first, so each call pays for what it needs), then all metrics in one call (what
a run pays). The forward-pass floor is timed beside them: encode the train and test splits (and
the noisy test images ``denoise_psnr`` reconstructs), decode the images the metrics need, and run
the domain classifier over the generated ones. ``--rounds N`` measures the whole evaluation and
its floor N times, the trees taking turns, and reports medians.

The forward passes are also timed inside the whole evaluation (hooks on the model's networks and
on the domain classifier: images and seconds each), and the rest of the evaluation is reported
against them. Those are the same passes in the same process state as the metrics' arithmetic; the
standalone floor's passes can run slower than the evaluation's own (on a 2-core Intel Xeon, a
fresh process decoded 40,000 images in 7.4-7.8 s, one that had just evaluated in 5.5-6.9 s: how
glibc's allocator hands back the large activations depends on what ran before), so a ratio
against the standalone floor alone can flatter the evaluation.

Each code tree runs in a worker process of its own (``--tree label=DIR``: its ``bench`` package
is imported from DIR); the workers take turns metric by metric, so a busy machine slows every
tree alike and the ratios are measured side by side. The domain classifier and the reference
set's cached features are warmed up before the clock starts.

    python benchmarks/eval.py                                   # this checkout only
    git archive <commit> | tar -x -C /tmp/before                # an earlier version...
    python benchmarks/eval.py --tree before=/tmp/before --tree after=.   # ...against this one
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SUITE_METRICS = [
    "recon_mse", "psnr", "ssim", "compression_ratio", "probe_acc", "knn_acc", "denoise_psnr",
    "nll_bpd", "fid_domain", "fid_domain_gmm", "is_domain", "kid_domain", "precision_domain",
    "recall_domain", "modes_covered",
]  # fmt: skip


# --------------------------------------------------------------------------- worker (one code tree)


class Worker:
    def __init__(self, args) -> None:
        import torch

        from bench.config import BudgetConfig, DatasetConfig, EvalConfig
        from bench.data import from_config
        from bench.models import build_model

        try:  # the allocator settings the `bench` command sets, where this tree has them
            from bench.run.memory import keep_freed_memory

            keep_freed_memory()
        except ImportError:
            pass
        self.torch, self.EvalConfig = torch, EvalConfig
        self.device = torch.device(args.device)
        # eval.precision where this tree has it (older trees ran fp32 only)
        self.eval_kw = {"precision": args.precision} if "precision" in EvalConfig.model_fields else {}
        if args.precision != "fp32" and not self.eval_kw:
            raise SystemExit(f"this tree has no eval.precision: cannot run {args.precision}")
        self.data = from_config(DatasetConfig(name="fashion-mnist")).to(self.device)
        torch.manual_seed(0)
        self.model = build_model(args.model, {}, self.data.image_shape).to(self.device)
        weights = Path(args.weights)
        if weights.is_file():
            self.model.load_state_dict(torch.load(weights, map_location=self.device, weights_only=True))
        else:
            from bench.train import Trainer

            Trainer(self.model, self.data, BudgetConfig(steps=args.steps, batch_size=64), 0).run()
            torch.save(self.model.state_dict(), weights)
        self.model.eval()
        # untimed warm-up: the domain classifier, the reference features and statistics, and
        # whatever else a tree caches on disk about the reference set; and torch's first optimizer,
        # which imports torch._dynamo (1.5-2.4 s, once per process: a suite's training pays it
        # before any evaluation, so without this only the first round's probe would); and
        # torchmetrics' image metrics, imported by the first psnr or ssim (about 1.1 s, once per
        # process)
        self.evaluate(["fid_domain", "precision_domain"], n_samples=100)
        torch.optim.LBFGS([torch.zeros(1, requires_grad=True)])
        import torchmetrics.functional.image  # noqa: F401

        self.passes: dict[str, list] = {}  # network -> [images, seconds] in the last evaluation
        self._timing = False
        nets = {n: getattr(self.model, n, None) for n in ("encoder", "decoder", "generator")}
        nets["domain classifier"] = self._classifier()  # the module the metrics use (cached)
        seen: set[int] = set()  # a network under two names (a decoder that is also the generator) once
        for name, net in nets.items():
            if isinstance(net, torch.nn.Module) and id(net) not in seen:
                seen.add(id(net))
                self._time_passes(name, net)

    def _classifier(self):
        from bench.metrics.features import EXTRACTORS, _module

        ex = EXTRACTORS.get("domain")
        prep = ex.prepare(self.EvalConfig(), self.data, self.device)
        return _module(ex.fidelity_name, str(prep.weights_path), prep.weights_sha256, prep.layers,
                       str(self.device))  # fmt: skip

    def _time_passes(self, name: str, net) -> None:
        """Forward hooks that add each call's images and seconds to ``passes[name]`` while an
        evaluation is timed (hooks, not a patched forward: eval.precision's autocast wraps it)."""
        started: list[float] = []

        def pre(module, args) -> None:
            if self._timing:
                started.append(time.perf_counter())

        def post(module, args, out) -> None:
            if self._timing and started:
                acc = self.passes.setdefault(name, [0, 0.0])
                acc[0] += len(args[0]) if args and hasattr(args[0], "__len__") else 0
                acc[1] += time.perf_counter() - started.pop()

        net.register_forward_pre_hook(pre)
        net.register_forward_hook(post)

    def clear(self) -> None:
        import bench.metrics.samplers as samplers

        getattr(samplers, "_FITS", {}).clear()  # codes and fits memoised on the model

    def evaluate(self, metrics: list[str], **eval_kw) -> tuple[float, dict]:
        from bench.metrics import evaluate

        self.clear()
        cfg = self.EvalConfig(metrics=metrics, **self.eval_kw, **eval_kw)
        per_metric = {}  # filled where this tree's evaluate times each metric
        kw = {"seconds": per_metric} if "seconds" in inspect.signature(evaluate).parameters else {}
        self.passes, self._timing = {}, True
        t0 = time.perf_counter()
        try:
            out = evaluate(self.model, self.data, cfg, 0, self.device, **kw)
        finally:
            seconds = time.perf_counter() - t0
            self._timing = False
        print(f"# per metric: {json.dumps(per_metric)}", file=sys.stderr, flush=True)
        self.per_metric = per_metric
        return seconds, {k: r.value for k, r in out.items()}

    def floor(self, metrics: list[str]) -> dict[str, float]:
        """Seconds of the forward passes one evaluation cannot avoid (batches of 500, inference
        mode), at the evaluation's precision and layout where the tree has them."""
        import contextlib

        from bench.data import to_float
        from bench.metrics.features import EXTRACTORS, _module

        try:
            from bench.numerics import evaluation, exact
        except ImportError:  # a tree from before eval.precision
            evaluation, exact = None, contextlib.nullcontext
        torch, model, data, bs = self.torch, self.model, self.data, 500
        precision = self.eval_kw.get("precision", "fp32")
        numerics = evaluation(model, precision, self.device) if evaluation else contextlib.nullcontext()
        out = {}
        if not model.has_encoder:  # a GAN: its samples and their features
            return self._sampler_floor(numerics)
        # the test split again for denoise_psnr: its noisy images are encoded too (the same work)
        splits = (data.train_x, data.test_x) + ((data.test_x,) if "denoise_psnr" in metrics else ())
        with torch.inference_mode(), numerics:
            t0 = time.perf_counter()
            codes = [model.encode(to_float(x[i : i + bs])) for x in splits for i in range(0, len(x), bs)]
            out[f"encode train + test{' + noisy test' * (len(splits) == 3)} "
                f"({sum(map(len, splits)):,})"] = time.perf_counter() - t0  # fmt: skip
            test_batches = -(-len(data.test_x) // bs)  # ceil: the last batch may be short
            z = torch.cat(codes[len(codes) - test_batches :])  # the test split's 10,000 codes
            t0 = time.perf_counter()
            imgs = [model.decode(z[i : i + bs]) for _ in range(4) for i in range(0, len(z), bs)]
            out["decode 40,000 (reconstructions, denoising, prior, GMM)"] = time.perf_counter() - t0
            if "nll_bpd" in metrics or "nll_nats" in metrics:  # 2,000 test images x k = 16, float32
                cfg = self.EvalConfig()
                n, k = getattr(cfg, "nll_n", 2000), getattr(cfg, "nll_k", 16)
                with exact():
                    t0 = time.perf_counter()
                    zs = [model.encode(to_float(data.test_x[i : i + bs])) for i in range(0, n, bs)]
                    zz = torch.cat(zs).repeat(k, 1)
                    for i in range(0, len(zz), bs):
                        model.decode(zz[i : i + bs])
                    out[f"likelihood: encode {n:,}, decode {n * k:,} (float32)"] = time.perf_counter() - t0
            ex = EXTRACTORS.get("domain")
            prep = ex.prepare(self.EvalConfig(), data, self.device)
            fe = _module(ex.fidelity_name, str(prep.weights_path), prep.weights_sha256, prep.layers,
                         str(self.device))  # fmt: skip
            x = torch.cat(imgs[:40]).clamp(0, 1).mul(255).round().to(torch.uint8).repeat(1, 3, 1, 1)
            t0 = time.perf_counter()
            for i in range(0, len(x), bs):
                fe(x[i : i + bs])
            out["domain classifier over 20,000 generated images"] = time.perf_counter() - t0
        return out

    def _sampler_floor(self, numerics) -> dict[str, float]:
        from bench.metrics.features import EXTRACTORS, _module

        torch, model, bs = self.torch, self.model, 500
        n = self.EvalConfig().n_samples
        out = {}
        with torch.inference_mode(), numerics:
            g = torch.Generator(device=self.device).manual_seed(0)
            t0 = time.perf_counter()
            imgs = [model.sample(bs, generator=g) for _ in range(0, n, bs)]
            out[f"sample {n:,}"] = time.perf_counter() - t0
            ex = EXTRACTORS.get("domain")
            prep = ex.prepare(self.EvalConfig(), self.data, self.device)
            fe = _module(ex.fidelity_name, str(prep.weights_path), prep.weights_sha256, prep.layers,
                         str(self.device))  # fmt: skip
            x = torch.cat(imgs).clamp(0, 1).mul(255).round().to(torch.uint8).repeat(1, 3, 1, 1)
            t0 = time.perf_counter()
            for i in range(0, len(x), bs):
                fe(x[i : i + bs])
            out[f"domain classifier over {n:,} generated images"] = time.perf_counter() - t0
        return out

    def serve(self) -> None:
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["what"] == "metric":
                seconds, values = self.evaluate([cmd["metric"]])
                reply = {"seconds": seconds, "values": values}
            elif cmd["what"] == "all":
                seconds, values = self.evaluate(cmd["metrics"])
                reply = {"seconds": seconds, "values": values, "per_metric": self.per_metric,
                         "passes": self.passes}  # fmt: skip
            else:
                reply = {"floor": self.floor(cmd["metrics"])}
            print(json.dumps(reply), flush=True)


# --------------------------------------------------------------------------- kernels


def kernels(n_train: int, n_test: int, n_feat: int, repeats: int) -> None:
    """The replaced library calls against their torch versions on the same synthetic inputs, in
    one process, alternately (A B A B ...): wall and CPU seconds, median of ``repeats``."""
    import statistics

    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from torch_fidelity.metric_prc import prc_features_to_metric

    from bench.metrics.neighbours import knn_classify, kth_neighbour_distance, precision_recall
    from bench.metrics.probe import fit_logistic

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 64, generator=g)
    ytr, yte = torch.randint(0, 10, (n_train,), generator=g), torch.randint(0, 10, (n_test,), generator=g)
    xtr = centres[ytr] + 2 * torch.randn(n_train, 64, generator=g)
    xte = centres[yte] + 2 * torch.randn(n_test, 64, generator=g)
    real = torch.randn(n_feat, 128, generator=g).double()
    fake = (torch.randn(n_feat, 128, generator=g) + 0.1).double()
    radii = kth_neighbour_distance(real, 3)  # cached on disk for the reference set

    def acc(pred):
        return (pred == yte).double().mean().item()

    def sk_probe():
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
        pred = clf.fit(xtr.double().numpy(), ytr.numpy()).predict(xte.double().numpy())
        return (pred == yte.numpy()).mean()

    def sk_knn():
        clf = KNeighborsClassifier(n_neighbors=10, algorithm="brute").fit(xtr.double().numpy(), ytr.numpy())
        return (clf.predict(xte.double().numpy()) == yte.numpy()).mean()

    def tf_prc():
        r = prc_features_to_metric(fake, real, prc_neighborhood=3, prc_batch_size=1000, save_cpu_ram=True,
                                   verbose=False)  # fmt: skip
        return r["precision"], r["recall"]

    pairs = {
        "probe_acc": (sk_probe, lambda: acc(fit_logistic(xtr, ytr, 10).predict(xte))),
        "knn_acc": (sk_knn, lambda: acc(knn_classify(xtr, ytr, xte, 10, 10))),
        "precision + recall": (tf_prc, lambda: precision_recall(fake, real, 3, real_radii=radii)),
    }
    head = ["library wall s", "torch wall s", "library CPU s", "torch CPU s", "wall ratio", "library value"]
    print(f"| computation (train {n_train}, test {n_test}, features {n_feat}) | " + " | ".join(head)
          + " | torch value |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, (lib, ours) in pairs.items():
        t = {"lib": [], "ours": []}
        for _ in range(repeats):
            for side, fn in (("lib", lib), ("ours", ours)):
                w0, c0 = time.perf_counter(), time.process_time()
                value = fn()
                t[side].append((time.perf_counter() - w0, time.process_time() - c0, value))
        med = {k: [statistics.median(x[i] for x in v) for i in (0, 1)] for k, v in t.items()}
        (lw, lc), (ow, oc) = med["lib"], med["ours"]
        print(f"| {name} | {lw:.2f} | {ow:.2f} | {lc:.2f} | {oc:.2f} | {lw / ow:.1f}x "
              f"| {t['lib'][0][2]} | {t['ours'][0][2]} |", flush=True)  # fmt: skip


# --------------------------------------------------------------------------- driver


def start(label: str, tree: str, precision: str, args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
    cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--steps", str(args.steps),
           "--weights", args.weights, "--device", args.device, "--precision", precision]  # fmt: skip
    p = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line:
        raise SystemExit(f"worker {label} ({tree}) failed to start")
    print(f"# worker {label} ready ({tree}, eval.precision {precision})", file=sys.stderr, flush=True)
    return p


def ask(p: subprocess.Popen, cmd: dict) -> dict:
    p.stdin.write(json.dumps(cmd) + "\n")
    p.stdin.flush()
    line = p.stdout.readline()
    if not line:
        raise SystemExit("a worker died")
    return json.loads(line)


def fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.5g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", help="label=DIR[@PRECISION] of a code tree and the "
                    "eval.precision it runs (default: this checkout, fp32)")  # fmt: skip
    ap.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="vae-conv")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--weights", default="/tmp/bench-eval-vae-conv.pt", help="loaded if present, else saved")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--metrics", default=",".join(SUITE_METRICS))
    ap.add_argument("--skip-single", action="store_true", help="time only the whole evaluation")
    ap.add_argument("--all-for", help="labels of the trees timed for the whole evaluation (default: all)")
    ap.add_argument("--json", help="write every measurement here")
    ap.add_argument("--kernels", metavar="TRAIN,TEST,FEATURES", help="only the library-against-torch "
                    "comparison of the replaced computations, on synthetic inputs")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=3, help="for --kernels")
    ap.add_argument("--rounds", type=int, default=1, help="times the whole evaluation and the floor are "
                    "measured, the trees taking turns in each round: medians are reported")  # fmt: skip
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.kernels:
        kernels(*map(int, args.kernels.split(",")), args.repeats)
        return
    if args.worker:
        Worker(args).serve()
        return
    trees = [t.split("=", 1) for t in (args.tree or [f"this={Path(__file__).resolve().parents[1]}"])]
    metrics = args.metrics.split(",")
    workers = {label: start(label, *(tree.rsplit("@", 1) + ["fp32"])[:2], args) for label, tree in trees}
    res: dict = {label: {"single": {}, "values": {}} for label in workers}
    if not args.skip_single:
        for m in metrics:
            for label, p in workers.items():
                r = ask(p, {"what": "metric", "metric": m})
                res[label]["single"][m] = r["seconds"]
                res[label]["values"].update(r["values"])
                print(f"# {m} {label}: {r['seconds']:.1f} s", file=sys.stderr, flush=True)
    whole = args.all_for.split(",") if args.all_for else list(workers)
    runs: dict[str, list[dict]] = {label: [] for label in whole}
    floors: dict[str, list[dict]] = {label: [] for label in whole}
    for _ in range(args.rounds):  # the trees take turns in each round: the whole evaluation, its floor
        for label in whole:
            r = ask(workers[label], {"what": "all", "metrics": metrics})
            runs[label].append(r)
            print(f"# all {label}: {r['seconds']:.1f} s", file=sys.stderr, flush=True)
        for label in whole:
            floors[label].append(ask(workers[label], {"what": "floor", "metrics": metrics})["floor"])
    for label, p in workers.items():
        res[label]["all"] = res[label]["floor"] = None
        if label in whole:  # medians over the rounds (each metric's, each pass's on its own)
            rs = runs[label]
            res[label]["all"] = statistics.median(r["seconds"] for r in rs)
            res[label]["all_range"] = (min(r["seconds"] for r in rs), max(r["seconds"] for r in rs))
            res[label]["all_values"] = rs[-1]["values"]
            res[label]["all_split"] = {
                m: statistics.median(r.get("per_metric", {}).get(m, 0.0) for r in rs)
                for m in rs[-1].get("per_metric", {})
            }
            res[label]["passes"] = {  # medians over the rounds: images, seconds
                n: [statistics.median(r["passes"].get(n, [0, 0.0])[i] for r in rs) for i in (0, 1)]
                for n in rs[-1].get("passes", {})
            }
            first = floors[label][0]
            res[label]["floor"] = {k: statistics.median(f[k] for f in floors[label]) for k in first}
        p.stdin.close()
        p.wait()
    labels = list(workers)
    print("| metric | " + " | ".join(f"{lb} (s)" for lb in labels) + " | "
          + " | ".join(f"{lb} value" for lb in labels) + " |")  # fmt: skip
    print("|---" * (1 + 2 * len(labels)) + "|")
    if not args.skip_single:
        for m in metrics:
            secs = [fmt(res[lb]["single"].get(m)) for lb in labels]
            vals = [fmt(res[lb]["values"].get(m)) for lb in labels]
            print(f"| {m} | " + " | ".join(secs) + " | " + " | ".join(vals) + " |")
        sums = [fmt(sum(res[lb]["single"].values())) for lb in labels]
        print("| sum of the single calls | " + " | ".join(sums) + " |" * (len(labels) + 1))
    print("| all metrics in one call | " + " | ".join(fmt(res[lb]["all"]) for lb in labels)
          + " |" * (len(labels) + 1))  # fmt: skip
    if args.rounds > 1:
        print(f"| (median of {args.rounds} rounds; range) | "
              + " | ".join("{:.1f}-{:.1f}".format(*res[lb]["all_range"]) if res[lb]["all"] else ""
                           for lb in labels) + " |" * (len(labels) + 1))  # fmt: skip
    split = [lb for lb in labels if res[lb].get("all_split")]
    if split:  # what each metric cost inside the one call (shared work charged to its first user)
        print("\n| one call, per metric | " + " | ".join(f"{lb} (s)" for lb in split) + " | "
              + " | ".join(f"{lb} value" for lb in split) + " |")  # fmt: skip
        print("|---" * (1 + 2 * len(split)) + "|")
        for m in metrics:
            secs = [fmt(res[lb]["all_split"].get(m)) for lb in split]
            vals = [fmt(res[lb]["all_values"].get(m)) for lb in split]
            print(f"| {m} | " + " | ".join(secs) + " | " + " | ".join(vals) + " |")
    for lb in [lb for lb in labels if res[lb]["floor"]]:
        floor = res[lb]["floor"]
        print(f"\nforward-pass floor ({lb}):")
        for k, v in floor.items():
            print(f"  {k}: {v:.1f} s")
        total = sum(floor.values())
        print(f"  total: {total:.1f} s; all metrics in one call: {res[lb]['all']:.1f} s "
              f"= {res[lb]['all'] / total:.2f}x the floor")  # fmt: skip
    for lb in [lb for lb in labels if res[lb].get("passes")]:
        passes = res[lb]["passes"]
        print(f"\nforward passes inside the evaluation ({lb}; medians):")
        for k, (n, v) in passes.items():
            print(f"  {k}: {n:,.0f} images, {v:.1f} s")
        inside, whole = sum(v for _, v in passes.values()), res[lb]["all"]
        print(f"  total: {inside:.1f} s; all metrics in one call: {whole:.1f} s = {whole / inside:.2f}x "
              f"its own forward passes; everything else: {whole - inside:.1f} s")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
