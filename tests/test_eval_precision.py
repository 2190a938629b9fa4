"""How an evaluation runs the model's forward passes: ``eval.precision``, the conv layout and the
linear layers' oneDNN GEMM (``bench.numerics.evaluation``)."""

import pytest
import torch
from conftest import tiny_suite

from bench import numerics
from bench.config import BudgetConfig, EvalConfig
from bench.data import load_dataset
from bench.metrics import evaluate
from bench.models import build_model
from bench.suite import expand, flatten, load_suite
from bench.train import Trainer

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", train_size=256, test_size=64)


@pytest.fixture(scope="module")
def vae(data):
    torch.manual_seed(0)
    model = build_model("vae-conv", {}, data.image_shape)
    Trainer(model, data, BudgetConfig(steps=20, batch_size=32), 0).run()
    return model.eval()


def test_the_evaluation_leaves_the_model_as_it_found_it(vae):
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    convs = [p for p in vae.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous() for p in convs)
    with numerics.evaluation(vae, "bf16", CPU):
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
        assert all("forward" in vars(net) for net in (vae.encoder, vae.decoder))  # wrapped
        assert numerics.eval_mode() == "bf16/channels_last+onednn_linear+gemm_deconv"
        with numerics.exact():
            assert numerics.eval_mode() == "fp32/channels_last+onednn_linear+gemm_deconv"
    assert numerics.eval_mode() == "fp32/contiguous"
    assert not any("forward" in vars(m) for m in vae.modules())
    assert all(p.is_contiguous() for p in convs)
    after = vae.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].is_contiguous() for k in before)


def test_bf16_rounds_the_forward_passes_and_exact_keeps_them_float32(vae, data):
    x = data.test_x[:32].float() / 255
    with torch.inference_mode():
        plain = vae.reconstruct(x)
        with numerics.evaluation(vae, "fp32", CPU):
            relaid = vae.reconstruct(x)  # channels_last, float32: rounding-level changes only
        with numerics.evaluation(vae, "bf16", CPU):
            low = vae.reconstruct(x)
            z = vae.encode(x)
            with numerics.exact():
                full = vae.reconstruct(x)
    assert torch.allclose(relaid, plain, atol=1e-5)
    assert low.dtype == z.dtype == torch.float32  # what the metrics receive
    assert not torch.equal(low, plain) and (low - plain).abs().max() < 0.05
    assert torch.equal(full, relaid)


def linears(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)]


def test_linear_layers_run_through_onednn_at_float32_rounding(vae, data):
    assert numerics.onednn_linear_available()  # every x86 and ARM build of torch has it
    x = data.test_x[:32].float() / 255
    z = torch.randn(32, vae.params.latent_dim)
    with torch.inference_mode():
        plain = vae.encode(x), vae.decode(z)
        with numerics.evaluation(vae, "fp32", CPU):
            assert all(isinstance(vars(m).get("forward"), numerics._OneDNNLinear) for m in linears(vae))
            fast = vae.encode(x), vae.decode(z)
            again = vae.encode(x), vae.decode(z)
    for a, b, c in zip(plain, fast, again):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5) and torch.equal(b, c)  # and repeatable
    assert not any("forward" in vars(m) for m in vae.modules())


def test_a_onednn_linear_takes_what_it_can_and_hands_the_rest_to_the_layer():
    torch.manual_seed(0)
    F = torch.nn.functional
    linear = torch.nn.Linear
    net = torch.nn.Sequential(linear(512, 256), torch.nn.ReLU(), linear(256, 300, bias=False), linear(300, 2))
    x = torch.randn(7, 512)
    with numerics.evaluation(net, "fp32", CPU):
        assert numerics.eval_mode() == "fp32/onednn_linear"  # no conv weights to relay out
        assert [isinstance(vars(m).get("forward"), numerics._OneDNNLinear) for m in net[::2]] == [True, True]
        assert "forward" not in vars(net[3])  # 600 weights: its own forward is faster
        layer = vars(net[0])["forward"]
        with torch.inference_mode():
            first = net(x)
            h = F.linear(F.linear(x, net[0].weight, net[0].bias).relu(), net[2].weight)
            assert torch.allclose(first, F.linear(h, net[3].weight, net[3].bias), rtol=1e-5, atol=1e-5)
            packed = layer.packed
            assert torch.equal(net(x), first) and layer.packed is packed  # packed once
        # a forward that records gradients goes to the layer's own forward: gradients flow, to a
        # bias alone too
        y = net(x.clone().requires_grad_())
        y.sum().backward()
        assert net[0].weight.grad is not None
        net[0].weight.requires_grad_(False)
        net[0](x).sum().backward()
        assert net[0].bias.grad is not None
        net[0].weight.requires_grad_(True)
        # forward-mode tangents too
        from torch.autograd import forward_ad

        with torch.no_grad(), forward_ad.dual_level():
            out = net[0](forward_ad.make_dual(x, torch.ones_like(x)))
            assert forward_ad.unpack_dual(out).tangent is not None
        # weights changed in place are packed again
        with torch.no_grad():
            net[0].weight.mul_(2)
            net[2].weight.zero_()
            assert torch.equal(net[2](torch.randn(3, 256)), torch.zeros(3, 300))
            net(x)
            assert layer.packed is not packed
            # float64 and autocast: the layer's own forward
            assert net.double()(x.double()).dtype == torch.float64
            net.float()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert net[0](x).dtype == torch.bfloat16
    assert not any("forward" in vars(m) for m in net.modules())


def deconvs(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.ConvTranspose2d)]


def test_few_channel_transposed_convolutions_run_through_the_gemm_kernel(vae):
    """vae-conv's decoder ends in a 64 -> 1 channel transposed convolution: that one goes through
    torch's GEMM kernel, the 128 -> 64 one stays on oneDNN, at float32 rounding either way."""
    assert numerics.gemm_deconv_available()
    z = torch.randn(32, vae.params.latent_dim)
    wide, narrow = deconvs(vae.decoder)
    assert (wide.out_channels, narrow.out_channels) == (64, 1)
    with torch.inference_mode():
        plain = vae.decode(z)
        with numerics.evaluation(vae, "fp32", CPU):
            assert "forward" not in vars(wide)
            assert isinstance(vars(narrow).get("forward"), numerics._GemmDeconv)
            fast, again = vae.decode(z), vae.decode(z)
    assert torch.allclose(fast, plain, rtol=1e-5, atol=1e-6) and torch.equal(fast, again)
    assert not any("forward" in vars(m) for m in vae.modules())


@pytest.mark.parametrize(
    "cin, cout, kernel, stride, padding, output_padding, dilation, bias",
    [(16, 1, 4, 2, 1, 0, 1, True), (16, 3, 4, 1, 1, 0, 1, False), (8, 4, 3, 2, 1, 1, 1, True),
     (8, 2, (3, 5), (2, 1), (0, 2), (1, 0), 1, True), (8, 3, 3, 2, 2, 0, 2, True)],
)  # fmt: skip
def test_the_gemm_kernel_computes_the_layers_transposed_convolution(
    cin, cout, kernel, stride, padding, output_padding, dilation, bias
):
    torch.manual_seed(0)
    layer = torch.nn.ConvTranspose2d(cin, cout, kernel, stride, padding, output_padding, bias=bias,
                                     dilation=dilation)  # fmt: skip
    x = torch.randn(5, cin, 9, 7)
    with torch.inference_mode():
        expected = layer(x)
        with numerics.evaluation(layer, "fp32", CPU):
            assert isinstance(vars(layer).get("forward"), numerics._GemmDeconv)
            assert numerics.eval_mode() == "fp32/channels_last+gemm_deconv"
            got = layer(x)
            also = layer(x.contiguous(memory_format=torch.channels_last))
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5) and torch.allclose(also, got, atol=1e-6)


def test_a_gemm_deconv_hands_what_it_cannot_take_to_the_layer():
    torch.manual_seed(0)
    layer = torch.nn.ConvTranspose2d(8, 1, 4, 2, 1)
    grouped = torch.nn.ConvTranspose2d(8, 4, 4, 2, 1, groups=2)
    wide = torch.nn.ConvTranspose2d(8, numerics.GEMM_DECONV_MAX_CHANNELS + 1, 4, 2, 1)
    net = torch.nn.ModuleList([layer, grouped, wide])
    x = torch.randn(3, 8, 6, 6)
    with numerics.evaluation(net, "fp32", CPU):
        assert [isinstance(vars(m).get("forward"), numerics._GemmDeconv) for m in net] == [True, False, False]
        # gradients recorded: the layer's own forward, and they flow
        layer(x.clone().requires_grad_()).sum().backward()
        assert layer.weight.grad is not None
        with torch.no_grad():
            # output_size picks the output_padding: the layer's own forward
            assert layer(x, output_size=[13, 13]).shape == (3, 1, 13, 13)
            assert layer(x[0]).shape == (1, 12, 12)  # unbatched
            assert layer(x[:0]).shape == (0, 1, 12, 12)  # an empty batch: the kernel takes none
            assert layer.double()(x.double()).dtype == torch.float64
            layer.float()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert layer(x).dtype == torch.bfloat16
    assert not any("forward" in vars(m) for m in net.modules())


def test_a_compiled_network_and_inference_mode_weights_are_left_to_torch():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(512, 256), torch.nn.ReLU(), torch.nn.Linear(256, 300))
    x = torch.randn(7, 512)
    with torch.inference_mode():
        expected = net(x)
    compiled = torch.compile(net)
    with numerics.evaluation(compiled, "fp32", CPU), torch.inference_mode():
        assert torch.allclose(compiled(x), expected, rtol=1e-5, atol=1e-5)  # traced: torch's linear
    with torch.inference_mode():  # a model made (or loaded) in inference mode: no version counter
        made = torch.nn.Linear(512, 256)
        made.load_state_dict(net[0].state_dict())
    with numerics.evaluation(made, "fp32", CPU), torch.inference_mode():
        assert torch.equal(made(x), torch.nn.functional.linear(x, made.weight, made.bias))


def test_a_network_that_is_one_linear_layer_still_runs_bf16():
    class OneLayer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = torch.nn.Linear(512, 256)

        def autocast_modules(self):
            return [self.encoder]

    torch.manual_seed(0)
    model, x = OneLayer(), torch.randn(7, 512)
    with torch.inference_mode():
        with numerics.evaluation(model, "fp32", CPU):
            full = model.encoder(x)
        with numerics.evaluation(model, "bf16", CPU):
            assert not isinstance(vars(model.encoder)["forward"], numerics._OneDNNLinear)
            low = model.encoder(x)
            assert numerics.eval_mode() == "bf16/contiguous"  # nothing routed through oneDNN
    assert low.dtype == torch.float32 and not torch.equal(low, full)
    assert torch.allclose(low, full, rtol=0.05, atol=0.05)


def test_the_evaluation_draws_nothing_from_the_global_generator(vae, data):
    """Training draws from torch's global generator: an evaluation between steps (or the first of a
    process, which checks oneDNN once) must not move it, or a resumed run would train otherwise."""
    numerics.onednn_linear_available.cache_clear()
    state = torch.get_rng_state()
    with torch.inference_mode(), numerics.evaluation(vae, "fp32", CPU):
        vae.reconstruct(data.test_x[:8].float() / 255)
    assert torch.equal(torch.get_rng_state(), state)


def test_a_nested_evaluation_keeps_the_outer_onednn_layers(vae):
    with numerics.evaluation(vae, "fp32", CPU):
        outer = [vars(m)["forward"] for m in linears(vae)]
        with numerics.evaluation(vae, "bf16", CPU):
            assert [vars(m)["forward"] for m in linears(vae)] == outer
            assert numerics.eval_mode() == "bf16/channels_last+onednn_linear+gemm_deconv"
        assert [vars(m)["forward"] for m in linears(vae)] == outer
    assert not any("forward" in vars(m) for m in vae.modules())


def test_the_model_is_restored_when_the_evaluation_fails(vae):
    with pytest.raises(RuntimeError, match="a metric failed"):
        with numerics.evaluation(vae, "bf16", CPU):
            raise RuntimeError("a metric failed")
    assert not any("forward" in vars(m) for m in vae.modules())
    assert all(p.is_contiguous() for p in vae.parameters())


def test_a_nested_fp32_evaluation_runs_float32(vae, data):
    x = data.test_x[:16].float() / 255
    with torch.inference_mode(), numerics.evaluation(vae, "fp32", CPU):
        plain = vae.encode(x)
        with numerics.evaluation(vae, "bf16", CPU):
            low = vae.encode(x)
            with numerics.evaluation(vae, "fp32", CPU):
                inner = vae.encode(x)
    assert not torch.equal(low, plain) and torch.equal(inner, plain)


@pytest.mark.parametrize("name, params", [("ae-conv", {"latent_bits": 4}), ("ae-conv", {"latent_bits": 8}),
                                          ("vq-vae", {})])  # fmt: skip
def test_bf16_networks_still_give_storable_codes(data, name, params):
    """The networks run in bf16, the quantiser and the codebook search in float32: every code is
    exactly a grid level or a codebook vector."""
    torch.manual_seed(0)
    model = build_model(name, params, data.image_shape).eval()
    x = data.test_x[:32].float() / 255
    with torch.inference_mode(), numerics.evaluation(model, "bf16", CPU):
        z = model.encode(x)
    assert z.dtype == torch.float32
    assert torch.equal(model.snap_code(z), z)
    if name == "vq-vae":
        vectors = z.view(-1, model.codebook.shape[1])
        assert (torch.cdist(vectors, model.codebook).min(1).values == 0).all()


def test_memoised_codes_are_kept_apart_by_precision(vae, data):
    from bench.metrics.codes import train_codes

    with torch.inference_mode():
        with numerics.evaluation(vae, "fp32", CPU):
            a = train_codes(vae, data)
        with numerics.evaluation(vae, "bf16", CPU):
            b = train_codes(vae, data)
        with numerics.evaluation(vae, "fp32", CPU):
            again = train_codes(vae, data)
    assert not torch.equal(a, b) and again is a


def test_bf16_changes_reconstructions_only_while_the_likelihood_and_rates_stay_exact(vae, data):
    metrics = ["recon_mse", "psnr", "probe_acc", "nll_bpd", "bpp"]

    def run(precision):
        cfg = EvalConfig(metrics=metrics, precision=precision, code_step=0.25, nll_n=32)
        return {k: r.value for k, r in evaluate(vae, data, cfg, 0, CPU).items()}

    fp32, bf16 = run("fp32"), run("bf16")
    assert set(fp32) == set(bf16) == set(metrics)
    # the likelihood and the bitstreams are computed in float32 whatever the precision
    assert bf16["nll_bpd"] == fp32["nll_bpd"] and bf16["bpp"] == fp32["bpp"]
    # bpp's reconstructions are decoded from the bitstreams, in float32 too
    assert bf16["recon_mse"] == fp32["recon_mse"]
    assert bf16["probe_acc"] == pytest.approx(fp32["probe_acc"], abs=0.1)


def test_bf16_reconstructions_move_at_bf16_rounding(vae, data):
    def run(precision):
        cfg = EvalConfig(metrics=["recon_mse", "psnr"], precision=precision)
        return {k: r.value for k, r in evaluate(vae, data, cfg, 0, CPU).items()}

    fp32, bf16 = run("fp32"), run("bf16")
    assert bf16["recon_mse"] != fp32["recon_mse"]
    assert bf16["recon_mse"] == pytest.approx(fp32["recon_mse"], rel=0.01)
    assert bf16["psnr"] == pytest.approx(fp32["psnr"], abs=0.05)


def test_eval_precision_is_recorded_and_only_bf16_changes_the_hash(write_suite):
    def spec(**eval_over):
        return expand(load_suite(write_suite(tiny_suite(eval={**tiny_suite()["eval"], **eval_over}))))[0]

    default, fp32, bf16 = spec(), spec(precision="fp32"), spec(precision="bf16")
    assert flatten(default.resolved())["eval.precision"] == "fp32"
    assert flatten(bf16.resolved())["eval.precision"] == "bf16"
    assert default.config_hash == fp32.config_hash != bf16.config_hash


def test_the_evaluation_multiplies_in_full_float32_whatever_the_process_set():
    """TF32 products (``set_float32_matmul_precision("high")``) are set aside inside an evaluation
    and the process's setting comes back after it."""
    model = build_model("ae-mlp", {}, (1, 28, 28))
    seen = []
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        with numerics.evaluation(model, "fp32", CPU):
            seen.append(torch.get_float32_matmul_precision())
        assert seen == ["highest"]
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)
