"""The checkpoint mechanism on its own, with real processes killed by SIGKILL: atomic writes never
leave a torn file, claims die with their process, and (where there is a CUDA device) a trainer
killed mid-run on the GPU resumes from its last checkpoint to exactly the state of an
uninterrupted run; tests/test_resume.py does the same on CPU through the whole CLI.

The last tests damage or forge the checkpoint of a real interrupted run (a real sqlite store, the
real `bench run`): bench never trusts it, warns with its path, and trains the run from step 0.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import platform
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_suite
from mlflow import MlflowClient

from bench.cli import main
from bench.files import try_lock
from bench.run.checkpoint import CheckpointError, RunFolder, bench_home, load_state, save_state
from bench.run.execute import Execution
from bench.suite import expand, load_suite

REPO = Path(__file__).parent.parent


def python(code: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env)


def wait_for(cond, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, "the process ended early"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_a_write_killed_at_any_moment_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    writer = python(
        """
        import sys, torch
        from pathlib import Path
        from bench.run.checkpoint import save_state
        path, i = Path(sys.argv[1]), 0
        while True:  # ~4 MB per write: a kill lands mid-write often
            save_state({"step": i, "w": torch.full((1_000_000,), float(i))}, path)
            i += 1
        """,
        str(path),
    )
    try:
        wait_for(lambda: path.exists(), writer)
        time.sleep(0.5)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    state = load_state(path)  # whole, and consistent with itself
    assert state["step"] > 0 and torch.equal(state["w"], torch.full((1_000_000,), float(state["step"])))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "checkpoint.pt"]
    assert leftovers in ([], [f".checkpoint.pt.{platform.node()}.{writer.pid}.tmp"])  # the killed write's
    live = tmp_path / f".checkpoint.pt.{platform.node()}.{os.getppid()}.tmp"  # a live writer's
    other = tmp_path / ".checkpoint.pt.another-host.1.tmp"  # a writer's on another host
    killed = tmp_path / f".checkpoint.pt.{platform.node()}.{writer.pid}.tmp"
    for temp in (live, other, killed):
        temp.write_bytes(b"")
    save_state({"step": -1}, path)  # the next write goes through, and removes the killed one's temp file
    assert load_state(path)["step"] == -1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["checkpoint.pt", live.name, other.name])


def test_a_torn_or_foreign_file_is_refused_not_loaded(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_state({"step": 3, "w": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=f"{path}: cannot be loaded safely"):
        load_state(path)
    path.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_state(path)


def test_a_claim_dies_with_its_process(tmp_path):
    folder = RunFolder(tmp_path, "abc")
    holder = python(
        """
        import sys, time
        from pathlib import Path
        from bench.run.checkpoint import RunFolder
        claim = RunFolder(Path(sys.argv[1]), "abc").try_claim()
        assert claim is not None
        time.sleep(600)
        """,
        str(tmp_path),
    )
    try:
        wait_for(lambda: folder.claim_file.exists() and folder.claim_file.read_text().strip(), holder)
        assert folder.try_claim() is None  # held by a live process
        assert folder.claim_file.read_text().strip() == str(holder.pid)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    claim = folder.try_claim()  # the OS dropped the lock with the process
    assert claim is not None
    assert try_lock(folder.claim_file) is None  # and ours excludes others, in this process too
    claim.release()
    assert folder.try_claim() is not None


TRAIN = """
import sys, torch
from pathlib import Path
from bench.run.checkpoint import RunFolder
from bench.data import load_dataset
from bench.models import build_model
from bench.suite import BudgetConfig
from bench.train import Trainer

folder, device, steps = RunFolder(Path(sys.argv[1]), "run"), torch.device(sys.argv[2]), int(sys.argv[3])
data = load_dataset("synthetic", train_size=256, test_size=32).to(device)
torch.manual_seed(0)
model = build_model("vae-mlp", {}, data.image_shape).to(device)
trainer = Trainer(model, data, BudgetConfig(steps=steps, batch_size=32), seed=0, log_every=3)
state = folder.load_checkpoint()
if state is not None:
    trainer.load_state_dict(state["trainer"])
log = open(Path(sys.argv[1]) / "losses.txt", "a")
trainer.run(
    on_log=lambda s, v: print(s, repr(v["loss"]), file=log, flush=True),
    on_checkpoint=lambda s: folder.save_checkpoint({"step": s, "trainer": trainer.state_dict()}),
    checkpoint_every=4,
)
torch.save(model.state_dict(), Path(sys.argv[1]) / "final.pt")
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (tests/test_resume.py covers CPU)")
def test_a_trainer_killed_mid_run_on_cuda_resumes_exactly(tmp_path):
    device = "cuda"
    steps = 400
    full, cut = tmp_path / "full", tmp_path / "cut"
    full.mkdir()
    cut.mkdir()
    assert python(TRAIN, str(full), device, str(steps)).wait() == 0

    folder = RunFolder(cut, "run")
    proc = python(TRAIN, str(cut), device, str(steps))

    def step() -> int:
        try:
            return load_state(folder.checkpoint)["step"] if folder.checkpoint.exists() else -1
        except (CheckpointError, FileNotFoundError):  # replaced while read: look again
            return -1

    try:
        wait_for(lambda: step() >= 40, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = load_state(folder.checkpoint)["step"]
    assert 0 < killed_at < steps and not (cut / "final.pt").exists()
    assert python(TRAIN, str(cut), device, str(steps)).wait() == 0

    a = torch.load(full / "final.pt", weights_only=True)
    b = torch.load(cut / "final.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # every interval logged after the checkpoint matches the uninterrupted run's
    full_log = dict(line.split() for line in (full / "losses.txt").read_text().splitlines())
    cut_lines = (cut / "losses.txt").read_text().splitlines()
    for step, value in (line.split() for line in cut_lines):
        assert full_log[step] == value, step
    assert int(cut_lines[-1].split()[0]) == steps


# --------------------------------------------------------------------------- damaged or forged checkpoints


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def checkpointed_suite(models: list[dict] | None = None) -> dict:
    """8 steps, a checkpoint every 4: a run killed after its first checkpoint resumes at step 4."""
    suite = tiny_suite(
        budget={"steps": 8, "batch_size": 32},
        eval={"metrics": ["recon_mse"], "batch_size": 64},
        checkpoint={"every": 4},
    )
    suite["models"] = models or [{"name": "ae-mlp"}]
    return suite


def interrupted(
    tmp_path: Path, write_suite, store: str, monkeypatch, suite: dict, at: int = 4
) -> tuple[list[str], Path]:
    """`bench run` of ``suite``, killed right after its first run's first checkpoint (step ``at``): the run
    is KILLED in the store and its checkpoint, a genuine one, is where bench keeps it. Returns the
    command line that runs the suite again, and the checkpoint's path."""
    path = write_suite(suite)
    spec = expand(load_suite(path))[0]
    ckpt = bench_home(store) / "runs" / spec.config_hash / "checkpoint.pt"
    original = Execution.checkpoint

    def checkpoint_then_stop(self, run, trainer, step):
        original(self, run, trainer, step)
        raise KeyboardInterrupt  # a second Ctrl-C, mid-step: this checkpoint stands

    args = ["run", str(path), "--tracking-uri", store, "--out", str(tmp_path / "rep")]
    with monkeypatch.context() as m:
        m.setattr(Execution, "checkpoint", checkpoint_then_stop)
        assert main(args) == 130
    assert load_state(ckpt)["step"] == at
    return args, ckpt


def damage(ckpt: Path, change) -> None:
    """Edit the checkpoint so that it stays a weights-only dict of this store, config and run."""
    state = torch.load(ckpt, weights_only=True)
    change(state)
    save_state(state, ckpt)
    assert load_state(ckpt)["config_hash"] == state["config_hash"]


def runs(store: str, kind: str = "run") -> list:
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("tiny").experiment_id
    return client.search_runs([exp], f"tags.`bench.kind` = '{kind}'")


def assert_trained_again_from_step_0(args: list[str], ckpt: Path, store: str, caplog) -> dict:
    """`bench run` again: it warns, naming the checkpoint, and trains the run from step 0 to the end,
    in the same store run; no run is left RUNNING. Returns the run's metrics."""
    (killed,) = [r for r in runs(store) if r.info.status == "KILLED"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bench"):
        assert main(args) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(ckpt) in w and "starts from step 0" in w for w in warnings), warnings
    (run,) = [r for r in runs(store) if r.info.run_name == killed.info.run_name]
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["bench.resumed_from_step"] == "0"
    assert run.data.metrics["budget_steps"] == 8 and run.data.metrics["budget_images"] == 8 * 32
    steps = [m.step for m in MlflowClient(store).get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == [2, 4, 6, 8]  # every interval once
    assert all(r.info.status != "RUNNING" for r in runs(store) + runs(store, "suite"))
    assert not ckpt.exists()
    return run.data.metrics


def set_step(value):
    def change(state):
        state["step"] = value

    return change


def set_progress(**values):
    def change(state):
        state["trainer"]["progress"].update(values)

    return change


def set_trainer(key, value):
    def change(state):
        state["trainer"][key] = value

    return change


def beyond_the_budget(state):
    state["step"] = 4000
    state["trainer"]["progress"].update(step=4000, images=4000 * 32)


def reshape_first_weight(state):
    model = state["trainer"]["model"]
    name = next(k for k, t in model.items() if t.dim() == 2)
    model[name] = torch.zeros(model[name].shape[0] + 1, model[name].shape[1])


def drop_first_weight(state):
    model = state["trainer"]["model"]
    del model[next(iter(model))]


def reshape_adam_moment(state):
    opt = state["trainer"]["step_fn"]["opt"]
    moments = next(iter(opt["state"].values()))
    moments["exp_avg"] = torch.zeros(moments["exp_avg"].numel() + 3)


def forge_adam_step(state):
    for moments in state["trainer"]["step_fn"]["opt"]["state"].values():
        moments["step"] = torch.tensor(1e6)


def forge_learning_rate(state):
    for group in state["trainer"]["step_fn"]["opt"]["param_groups"]:
        group["lr"] = 1e3


def nan_first_weight(state):
    model = state["trainer"]["model"]
    model[next(k for k, t in model.items() if k.endswith(".weight") and t.dim() == 2)][0, 0] = math.nan


def inf_adam_moment(state):
    next(iter(state["trainer"]["step_fn"]["opt"]["state"].values()))["exp_avg_sq"][0] = math.inf


DAMAGES = {
    "step is not a number": set_step("abc"),  # was: ValueError, and every rerun the same
    "step is negative": set_step(-1),
    "step beyond the budget": beyond_the_budget,
    # was: FINISHED after 4 steps, with the forged cost
    "progress is not the checkpoint's step": set_progress(step=8, images=8 * 32, train_seconds=1e-9),
    "train_seconds is NaN": set_progress(train_seconds=math.nan),
    "train_seconds is negative": set_progress(train_seconds=-1.0),
    "more images than steps of batches": set_progress(images=10**9),
    "no progress": lambda s: s["trainer"].pop("progress"),
    "rng state is not one": set_trainer("rng", {"cpu": torch.zeros(3, dtype=torch.uint8)}),
    "model tensor missing": drop_first_weight,
    "Adam moment of another shape": reshape_adam_moment,  # was: the run FAILED, every rerun the same
    "forged learning rate": forge_learning_rate,
    "Adam steps beyond the trainer's": forge_adam_step,
    "a weight is NaN": nan_first_weight,  # was: resumed, then FAILED, every rerun the same
    "an Adam moment is infinite": inf_adam_moment,
}


@pytest.mark.parametrize("change", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_or_forged_checkpoint_is_not_trusted(
    tmp_path, write_suite, store, monkeypatch, caplog, one_thread, change
):
    args, ckpt = interrupted(tmp_path, write_suite, store, monkeypatch, checkpointed_suite())
    damage(ckpt, change)
    metrics = assert_trained_again_from_step_0(args, ckpt, store, caplog)
    assert metrics["train_seconds"] != 1e-9  # not the forged cost


def test_a_checkpoint_that_does_not_fit_the_model_fails_neither_the_run_nor_the_suite(
    tmp_path, write_suite, store, monkeypatch, caplog, one_thread
):
    suite = checkpointed_suite([{"name": "ae-mlp"}, {"name": "vae-mlp"}])
    args, ckpt = interrupted(tmp_path, write_suite, store, monkeypatch, suite)
    damage(ckpt, reshape_first_weight)
    assert_trained_again_from_step_0(args, ckpt, store, caplog)
    assert sorted(r.info.run_name for r in runs(store) if r.info.status == "FINISHED") == [
        "ae-mlp/seed0",
        "vae-mlp/seed0",
    ]
    assert main(args) == 0  # and the next `bench run` has nothing left to do
    assert len(runs(store)) == 2


def test_an_images_budget_resumes_past_images_over_batch_size_steps(
    tmp_path, write_suite, store, monkeypatch, caplog, one_thread
):
    """40 training images in batches of 32: each epoch is a batch of 32 and one of 8, so 160 images
    take 8 steps, not 160 / 32 = 5. A checkpoint at step 6 is genuine and resumes."""
    suite = checkpointed_suite()
    suite["dataset"] = {**suite["dataset"], "train_size": 40}
    suite["budget"] = {"images": 160, "batch_size": 32}
    suite["checkpoint"] = {"every": 6}
    args, ckpt = interrupted(tmp_path, write_suite, store, monkeypatch, suite, at=6)
    with caplog.at_level(logging.WARNING, logger="bench"):
        assert main(args) == 0
    assert str(ckpt) not in caplog.text
    (run,) = runs(store)
    assert run.info.status == "FINISHED" and run.data.tags["bench.resumed_from_step"] == "6"
    assert run.data.metrics["budget_steps"] == 8 and run.data.metrics["budget_images"] == 160


def test_a_genuine_checkpoint_still_resumes(tmp_path, write_suite, store, monkeypatch, caplog, one_thread):
    args, ckpt = interrupted(tmp_path, write_suite, store, monkeypatch, checkpointed_suite())
    with caplog.at_level(logging.WARNING, logger="bench"):
        assert main(args) == 0
    assert str(ckpt) not in caplog.text
    (run,) = runs(store)
    assert run.info.status == "FINISHED" and run.data.tags["bench.resumed_from_step"] == "4"
    assert run.data.metrics["budget_steps"] == 8


def test_a_checkpoint_that_cannot_be_written_says_why_and_keeps_the_previous_one(tmp_path, file_size_limit):
    path = tmp_path / "checkpoint.pt"
    save_state({"step": 1, "w": torch.ones(10)}, path)
    with file_size_limit(100_000), pytest.raises(OSError) as e:  # torch.save's RuntimeError hid it
        save_state({"step": 2, "w": torch.ones(100_000)}, path)
    assert e.value.errno == errno.EFBIG and e.value.filename == str(path)
    assert str(e.value) == f"[Errno {errno.EFBIG}] File too large: '{path}'"
    assert load_state(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left


def test_a_run_whose_checkpoint_cannot_be_written_fails_with_the_reason(
    tmp_path, write_suite, store, file_size_limit
):
    # an ae-mlp checkpoint (weights and Adam's two moments) is 2.6 MB, what the store holds < 1 MB
    path = write_suite(tiny_suite(models=[{"name": "ae-mlp"}], checkpoint={"every": 2}))
    with file_size_limit(1_500_000):
        rc = main(["run", str(path), "--tracking-uri", store, "--out", str(tmp_path / "rep")])
    assert rc == 1
    client = MlflowClient(store)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("tiny").experiment_id], "tags.`bench.kind` = 'run'"
    )
    (spec,) = expand(load_suite(path))
    ckpt = bench_home(store) / "runs" / spec.config_hash / "checkpoint.pt"
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == f"OSError: [Errno {errno.EFBIG}] File too large: '{ckpt}'"
