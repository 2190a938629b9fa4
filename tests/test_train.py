"""The budgeted loop: exact stops for each budget kind, reproducibility, divergence."""

import copy

import pytest
import torch

from bench.config import BudgetConfig
from bench.data import load_dataset
from bench.models import build_model
from bench.train import Diverged, Trainer


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", train_size=100, test_size=20)


def trainer(data, name="ae-mlp", seed=0, **budget):
    torch.manual_seed(seed)
    model = build_model(name, {}, data.image_shape)
    return Trainer(model, data, BudgetConfig(**budget), seed=seed, log_every=3)


@pytest.mark.parametrize(
    "budget, steps, images",
    [
        ({"steps": 9, "batch_size": 16}, 9, 100 + 2 * 16),  # an epoch of 100 is 6 x 16 + 4
        ({"epochs": 2, "batch_size": 32}, 8, 200),  # 100 images: batches 32, 32, 32, 4 per epoch
        ({"images": 150, "batch_size": 32}, 6, 150),  # 32, 32, 32, 4 | 32, and the last cut to 18
    ],
)
def test_budget_stops_exactly(data, budget, steps, images):
    t = trainer(data, **budget)
    logged = []
    p = t.run(on_log=lambda s, losses: logged.append(s))
    assert (p.step, p.images) == (steps, images)
    assert logged[-1] == steps  # the last interval is flushed


def test_seconds_budget_stops_at_the_first_step_past_it(data, monkeypatch):
    import types

    clock = iter(range(10**6))  # a fake clock: every reading is 0.05 s after the previous one
    monkeypatch.setattr("bench.train.time", types.SimpleNamespace(perf_counter=lambda: next(clock) * 0.05))
    t = trainer(data, seconds=0.3, batch_size=16)
    p = t.run()
    # each step reads the clock twice (start, end): 0.05 s a step, so 0.3 s is reached after 6 steps
    assert p.step == 6 and p.train_seconds == pytest.approx(0.3)


@pytest.mark.parametrize("name", ["ae-mlp", "gan-mlp"])
def test_same_seed_same_losses(data, name):
    def losses(seed):
        out = []
        trainer(data, name, seed=seed, steps=6, batch_size=16).run(on_log=lambda s, v: out.append(v))
        return out

    assert losses(1) == losses(1)
    assert losses(1) != losses(2)


def test_non_finite_loss_raises_diverged(data):
    t = trainer(data, steps=10, batch_size=16)
    original = t.model.loss

    def bad_loss(x):
        out = original(x)
        if t.progress.step >= 4:
            out["loss"] = out["loss"] * float("nan")
        return out

    t.model.loss = bad_loss
    with pytest.raises(Diverged, match="non-finite loss"):
        t.run()


def test_state_dict_resume_continues_the_budget(data):
    full = trainer(data, steps=8, batch_size=16)
    full_losses = []
    full.run(on_log=lambda s, v: full_losses.append((s, v)))

    first = trainer(data, steps=8, batch_size=16)
    state = {}
    first.run(
        on_checkpoint=lambda s: state.update(copy.deepcopy(first.state_dict())) if s == 3 else None,
        checkpoint_every=3,
    )
    resumed = trainer(data, seed=0, steps=8, batch_size=16)
    resumed.load_state_dict(state)
    assert resumed.progress.step == 3
    tail = []
    resumed.run(on_log=lambda s, v: tail.append((s, v)))
    assert resumed.progress.step == 8
    assert tail[-1] == full_losses[-1]
    for a, b in zip(resumed.model.state_dict().values(), full.model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_checkpoint_between_log_steps_keeps_the_interval_losses(data):
    full = trainer(data, "vae-mlp", steps=9, batch_size=16)  # log_every=3
    full_logged = []
    full.run(on_log=lambda s, v: full_logged.append((s, v)))

    first = trainer(data, "vae-mlp", steps=9, batch_size=16)
    states = {}
    first.run(
        on_checkpoint=lambda s: states.setdefault(s, copy.deepcopy(first.state_dict())), checkpoint_every=4
    )
    resumed = trainer(data, "vae-mlp", steps=9, batch_size=16)
    resumed.load_state_dict(states[4])  # step 4: one step into the interval that is logged at step 6
    logged = []
    resumed.run(on_log=lambda s, v: logged.append((s, v)))
    assert logged == full_logged[1:]  # steps 6 and 9, with the same interval means


def test_should_stop_stops_at_a_step_boundary(data):
    from bench.train import Interrupted

    t = trainer(data, steps=20, batch_size=16)
    with pytest.raises(Interrupted) as e:
        t.run(should_stop=lambda: t.progress.step >= 5)
    assert e.value.step == 5 and t.progress.step == 5
    state = copy.deepcopy(t.state_dict())
    resumed = trainer(data, steps=20, batch_size=16)
    resumed.load_state_dict(state)
    assert resumed.run().step == 20


def test_an_error_after_divergence_is_reported_as_divergence(data):
    t = trainer(data, steps=10, batch_size=16)
    original = t.model.loss

    def loss(x):
        if t.progress.step == 1:  # poison the weights; the next forward pass then fails outright
            with torch.no_grad():
                next(t.model.parameters()).fill_(float("nan"))
        if t.progress.step == 2:
            raise RuntimeError("all elements of input should be between 0 and 1")
        return original(x)

    t.model.loss = loss
    with pytest.raises(Diverged, match=r"^non-finite loss before step 2 \(then RuntimeError: all elements"):
        t.run()
