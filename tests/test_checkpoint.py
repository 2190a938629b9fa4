"""The checkpoint mechanism on its own, with real processes killed by SIGKILL: atomic writes never
leave a torn file, claims die with their process, and (where there is a CUDA device) a trainer
killed mid-run on the GPU resumes from its last checkpoint to exactly the state of an
uninterrupted run; tests/test_resume.py does the same on CPU through the whole CLI.

No tracking store here: these run wherever torch does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from bench.files import try_lock
from bench.run.checkpoint import CheckpointError, RunFolder, load_state, save_state

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
    assert all(name.endswith(".tmp") for name in leftovers)  # at most the killed write's temp file
    save_state({"step": -1}, path)  # and the next write goes through
    assert load_state(path)["step"] == -1


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
