"""The suite's ``train:`` options: bf16 autocast and torch.compile in the training step."""

import copy
import math

import pytest
import torch
from conftest import tiny_suite

from bench import numerics
from bench.config import BudgetConfig, TrainConfig
from bench.data import load_dataset
from bench.models import build_model
from bench.numerics import Numerics, compile_problem
from bench.suite import SuiteError, expand, flatten, load_suite
from bench.train import Trainer

needs_compiler = pytest.mark.skipif(compile_problem() is not None, reason=str(compile_problem()))


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", train_size=100, test_size=20)


def trainer(data, name="ae-mlp", params=None, steps=6, **train):
    torch.manual_seed(0)
    model = build_model(name, params or {}, data.image_shape)
    return Trainer(
        model, data, BudgetConfig(steps=steps, batch_size=16), 0, log_every=3, train=TrainConfig(**train)
    )


def logged(t: Trainer) -> list[dict[str, float]]:
    out = []
    t.run(on_log=lambda s, v: out.append(v))
    return out


@pytest.mark.parametrize("name", ["ae-mlp", "vae-mlp", "gan-mlp"])
def test_bf16_trains_with_finite_losses_that_differ_from_fp32(data, name):
    fp32 = logged(trainer(data, name))
    t = trainer(data, name, precision="bf16")
    bf16 = logged(t)
    assert [v.keys() for v in bf16] == [v.keys() for v in fp32]
    assert all(torch.isfinite(torch.tensor(list(v.values()))).all() for v in bf16)
    assert bf16 != fp32
    # only the forward ran in bf16: weights and Adam's moments stay float32
    assert {p.dtype for p in t.model.parameters()} == {torch.float32}
    opt_state = t.step_fn.state_dict()
    moments = [s["exp_avg"] for sd in opt_state.values() for s in sd["state"].values()]
    assert moments and {m.dtype for m in moments} == {torch.float32}


def test_bf16_changes_each_losses_rounding_not_its_scale(data):
    # same weights, same batch: the bf16 loss is the fp32 loss to bf16's ~3 significant digits
    t32, t16 = trainer(data, "vae-mlp"), trainer(data, "vae-mlp", precision="bf16")
    x = data.train_x[:16].float() / 255
    torch.manual_seed(1)
    a = t32.step_fn.loss(x)
    torch.manual_seed(1)
    b = t16.step_fn.loss(x)
    assert b["loss"].dtype == torch.float32
    assert a["loss"].item() != b["loss"].item()
    assert b["loss"].item() == pytest.approx(a["loss"].item(), rel=2e-2)


@needs_compiler
def test_compiled_run_checkpoints_and_resumes(data):
    full = trainer(data, steps=6, compile=True)
    full_logged = logged(full)
    eager_keys = list(build_model("ae-mlp", {}, data.image_shape).state_dict())
    assert list(full.model.state_dict()) == eager_keys  # no "_orig_mod." prefixes

    first = trainer(data, steps=6, compile=True)
    states = {}
    first.run(
        on_checkpoint=lambda s: states.setdefault(s, copy.deepcopy(first.state_dict())), checkpoint_every=3
    )
    resumed = trainer(data, steps=6, compile=True)
    resumed.load_state_dict(states[3])
    tail = logged(resumed)
    assert tail == full_logged[1:]
    for a, b in zip(resumed.model.state_dict().values(), full.model.state_dict().values()):
        assert torch.equal(a, b)
    # and the checkpoint of a compiled run loads into an eager model
    build_model("ae-mlp", {}, data.image_shape).load_state_dict(states[3]["model"])


@needs_compiler
@pytest.mark.parametrize(
    "name, params, fn",
    [
        # the gradient penalty's double backward and the VQ codebook's EMA update run eagerly
        # inside the compiled loss; the rest compiles, and must agree with eager
        ("wgan-gp", {"backbone": "mlp", "d_hidden": [32], "g_hidden": [32]}, "d_loss"),
        ("vq-vae", {"backbone": "mlp", "hidden": [32]}, "loss"),
    ],
)
@pytest.mark.parametrize("by", ["bench", "hand"])
def test_compiled_loss_agrees_with_eager(data, name, params, fn, by, monkeypatch):
    """``by``: bench's compiled step, or ``torch.compile(model.loss)`` by hand, which bench's
    compile settings have not prepared (``numerics.eager`` then disables at trace time)."""
    torch.manual_seed(0)
    eager = build_model(name, params, data.image_shape)
    compiled = copy.deepcopy(eager)
    if by == "bench":
        f = Numerics(TrainConfig(compile=True), torch.device("cpu")).loss_fn(compiled, fn)
    else:
        for slot in numerics._EAGER:  # as in a process where bench never compiled a loss
            raw = getattr(slot["fn"], "_torchdynamo_orig_callable", slot["fn"])
            monkeypatch.setitem(slot, "fn", raw)
        import torch._dynamo as dynamo

        dynamo.reset()
        f = torch.compile(getattr(compiled, fn))
    x = data.train_x[:16].float() / 255
    args = (x, torch.randn(16, eager.params.z_dim)) if fn == "d_loss" else (x,)
    for _ in range(2):  # twice: the second call sees the buffers the first one updated
        torch.manual_seed(2)
        a = getattr(eager, fn)(*args)
        torch.manual_seed(2)
        b = f(*args)
        for k in a:
            assert b[k].item() == pytest.approx(a[k].item(), rel=1e-4, abs=1e-5), k
        a["loss"].backward()
        b["loss"].backward()
    for (k, u), v in zip(eager.named_parameters(), compiled.parameters()):
        assert (u.grad is None) == (v.grad is None), k  # the GAN's generator gets none from d_loss
        assert u.grad is None or torch.allclose(u.grad, v.grad, rtol=1e-3, atol=1e-4), k
    for (k, u), v in zip(eager.state_dict().items(), compiled.state_dict().values()):
        assert torch.allclose(u.float(), v.float(), rtol=1e-4, atol=1e-5), k


# ----------------------------------------------------------------------------- the suite section


def test_train_options_land_in_params_and_the_config_hash(write_suite):
    default = expand(load_suite(write_suite(tiny_suite())))[0]
    explicit = expand(load_suite(write_suite(tiny_suite(train={"precision": "fp32", "compile": False}))))[0]
    bf16 = expand(load_suite(write_suite(tiny_suite(train={"precision": "bf16"}))))[0]
    compiled = expand(load_suite(write_suite(tiny_suite(train={"compile": True}))))[0]
    assert flatten(default.resolved())["train.precision"] == "fp32"
    assert flatten(bf16.resolved())["train.precision"] == "bf16"
    assert flatten(compiled.resolved())["train.compile"] is True
    assert default.config_hash == explicit.config_hash
    assert len({default.config_hash, bf16.config_hash, compiled.config_hash}) == 3


def test_default_numerics_keep_the_hash_of_runs_recorded_before_them(write_suite):
    from conftest import hash_as_recorded_before

    spec = expand(load_suite(write_suite(tiny_suite())))[0]
    assert spec.config_hash == hash_as_recorded_before(spec)


def test_a_code_step_changes_the_hash(write_suite):
    default = expand(load_suite(write_suite(tiny_suite())))[0]
    stepped = expand(load_suite(write_suite(tiny_suite(eval={"metrics": ["bpp"], "code_step": 0.1}))))[0]
    plain = expand(load_suite(write_suite(tiny_suite(eval={"metrics": ["bpp"]}))))[0]
    assert stepped.config_hash != plain.config_hash
    assert flatten(stepped.resolved())["eval.code_step"] == 0.1 and default.config_hash != plain.config_hash


def test_compile_without_a_compiler_is_a_validation_error(write_suite, monkeypatch):
    import bench.numerics

    monkeypatch.setattr(bench.numerics, "compile_problem", lambda: "torch.compile needs a C++ compiler")
    path = write_suite(tiny_suite(train={"compile": True}))
    with pytest.raises(SuiteError) as e:
        load_suite(path)
    assert str(e.value) == f"{path}: train.compile: torch.compile needs a C++ compiler"
    load_suite(write_suite(tiny_suite(train={"precision": "bf16"})))  # bf16 needs nothing


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exp_flushed_is_exp_but_for_results_below_e_times_the_smallest_normal(dtype):
    from bench.numerics import exp_flushed

    tiny = torch.finfo(dtype).tiny
    g = torch.Generator().manual_seed(0)
    x = torch.cat([
        -torch.rand(5000, generator=g, dtype=dtype) * 2000,  # many far below the limit
        torch.randn(5000, generator=g, dtype=dtype) * 5,
        torch.tensor([0.0, float("-inf"), float("inf"), float("nan"), math.log(tiny) + 0.5], dtype=dtype),
    ])  # fmt: skip
    before = x.clone()
    got, want = exp_flushed(x), torch.exp(x)
    assert got.dtype == dtype and got.shape == x.shape
    kept = want >= math.e * tiny
    assert torch.equal(got[kept], want[kept])
    assert (got[~kept & ~want.isnan()] == 0).all() and (~kept & ~want.isnan()).sum() > 1000
    assert got[-5] == 1 and got[-4] == 0 and got[-3] == math.inf and got[-2].isnan() and got[-1] == 0
    torch.testing.assert_close(x, before, rtol=0, atol=0, equal_nan=True)  # the argument as it was
