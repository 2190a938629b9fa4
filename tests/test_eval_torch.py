"""The torch implementations of the evaluation's heavy parts against the libraries they replace, on
the same inputs: the k-NN classifier and the linear probe against scikit-learn (accuracy within
0.3 points), precision/recall against torch-fidelity (identical), the ex-post GMM fitted on a
subset against the full fit (held-out log-likelihood within 1%), and the shared training codes."""

import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch_fidelity.metric_prc import prc_features_to_metric

from bench.config import EvalConfig
from bench.data import ImageData
from bench.metrics import evaluate
from bench.metrics.neighbours import knn_classify, kth_neighbour_distance, precision_recall
from bench.metrics.probe import fit_logistic
from bench.metrics.samplers import GMMOptions, gmm_fit_subset, latent_gmm


def clusters(n: int, d: int, seed: int, spread: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten overlapping Gaussian classes in d dimensions (accuracies well away from 0 and 1)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(10, d, generator=torch.Generator().manual_seed(99)) * 2
    y = torch.randint(0, 10, (n,), generator=g)
    return centres[y] + spread * torch.randn(n, d, generator=g), y


@pytest.mark.parametrize("offset", [0.0, 3000.0])
def test_knn_predicts_what_scikit_learn_predicts(offset):
    """Also far from the origin, where float32 products of uncentred codes lose the distances."""
    xtr, ytr = clusters(3000, 12, 0)
    xte, yte = clusters(1000, 12, 1)
    xtr, xte = xtr + offset, xte + offset
    ours = knn_classify(xtr, ytr, xte, 10, 10, chunk=256)
    sk = KNeighborsClassifier(n_neighbors=10, algorithm="brute").fit(xtr.double().numpy(), ytr.numpy())
    theirs = torch.from_numpy(sk.predict(xte.double().numpy()))
    acc_ours, acc_sk = (ours == yte).double().mean().item(), (theirs == yte).double().mean().item()
    assert 0.3 < acc_sk < 0.95
    assert abs(acc_ours - acc_sk) <= 0.003
    assert (ours == theirs).double().mean().item() >= 0.995


def test_knn_breaks_vote_ties_towards_the_smallest_label():
    train = torch.tensor([[0.0], [1.0], [-1.0], [2.0]])
    labels = torch.tensor([3, 1, 1, 3])  # the 4 nearest of 0.1: two votes each for 1 and 3
    assert knn_classify(train, labels, torch.tensor([[0.1]]), 4, 5).item() == 1
    with pytest.raises(ValueError, match="5 nearest neighbours asked of 4"):
        knn_classify(train, labels, torch.tensor([[0.1]]), 5, 5)


def _check_smallest(values, k):
    from bench.metrics.neighbours import smallest

    near, cols = smallest(values, k)
    assert torch.equal(near, values.topk(k, dim=1, largest=False).values)
    assert torch.equal(values.gather(1, cols), near)  # the columns hold those values...
    assert all(len(set(row)) == k for row in cols.tolist())  # ...each column once


@pytest.mark.parametrize("cols", [50, 641, 3000, 3007])  # topk whole; blocks; blocks and a remainder
@pytest.mark.parametrize("k", [1, 3, 10])
def test_smallest_gives_topks_values_and_their_columns(cols, k):
    from bench.metrics import neighbours

    g = torch.Generator().manual_seed(cols + k)
    _check_smallest(torch.randn(6, cols, generator=g), k)
    _check_smallest(torch.randint(0, 5, (6, cols), generator=g).float(), k)  # ties everywhere
    _check_smallest(torch.randn(cols, 6, generator=g).T, k)  # not contiguous
    blocks = cols // neighbours.BLOCK
    crowded = torch.rand(3, cols, generator=g) + 1
    # the k smallest all in one block (columns 2, 2 + blocks, 2 + 2 blocks, ...), or in the
    # columns past the last whole block, or the smallest value in one block only
    m = min(k, neighbours.BLOCK)
    crowded[0, 2 : 2 + blocks * m : blocks] = -torch.arange(m).float()
    crowded[1, blocks * neighbours.BLOCK :] = -1
    crowded[2, 5] = -1
    _check_smallest(crowded, k)


def test_smallest_with_nans_and_infinities_is_topk():
    from bench.metrics import neighbours
    from bench.metrics.neighbours import smallest

    g = torch.Generator().manual_seed(0)
    values = torch.randn(4, 2000, generator=g)
    values[0, 7], values[1, :1000], values[2, 3] = float("nan"), float("inf"), float("-inf")
    values[0, 7 + 2000 // neighbours.BLOCK] = -100.0  # the row's smallest, in the NaN's block
    near, cols = smallest(values, 5)
    want = values.topk(5, dim=1, largest=False)
    assert torch.equal(near[1:], want.values[1:]) and torch.equal(values.gather(1, cols)[1:], near[1:])
    assert torch.allclose(near, want.values, equal_nan=True)  # a NaN row: what topk gives


@pytest.mark.parametrize("n_fake, n_real", [(50, 3), (3, 50)])
def test_precision_recall_refuses_too_few_points_for_k_on_either_side(n_fake, n_real):
    from bench.metrics.neighbours import precision_recall

    g = torch.Generator().manual_seed(0)
    fake, real = torch.randn(n_fake, 4, generator=g), torch.randn(n_real, 4, generator=g)
    with pytest.raises(ValueError, match="the 3-th nearest neighbour asked of 3 points"):
        precision_recall(fake, real, 3)


def test_linear_probe_matches_scikit_learn():
    xtr, ytr = clusters(4000, 16, 2, spread=5.0)
    xte, yte = clusters(1000, 16, 3, spread=5.0)
    xtr, xte = xtr * 5 + 40, xte * 5 + 40  # unstandardised, as codes are
    probe = fit_logistic(xtr, ytr, 10)
    assert probe.converged
    ours = probe.predict(xte)
    sk = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    theirs = torch.from_numpy(sk.fit(xtr.double().numpy(), ytr.numpy()).predict(xte.double().numpy()))
    acc_ours, acc_sk = (ours == yte).double().mean().item(), (theirs == yte).double().mean().item()
    assert 0.3 < acc_sk < 0.95
    assert abs(acc_ours - acc_sk) <= 0.003
    assert (ours == theirs).double().mean().item() >= 0.99
    # the same optimum: the coefficients agree with scikit-learn's (on the standardised codes)
    coef = torch.from_numpy(sk[-1].coef_).T
    torch.testing.assert_close(probe.weight, coef, atol=2e-3, rtol=2e-3)


def _std_gradient(probe, x, y, c=1.0):
    """The objective's gradient on the standardised codes at the probe's weights, in float64."""
    z = (x.double() - probe.mean) / probe.scale
    n = len(z)
    resid = ((z @ probe.weight + probe.bias).softmax(1) - torch.nn.functional.one_hot(y, 10).double()) / n
    return torch.cat([(z.T @ resid + probe.weight / (c * n)).flatten(), resid.sum(0)])


def _objective(probe, x, y, c=1.0):
    """The probe's objective (mean cross-entropy plus penalty) at its weights, in float64."""
    z = (x.double() - probe.mean) / probe.scale
    ce = torch.nn.functional.cross_entropy(z @ probe.weight + probe.bias, y)
    return (ce + probe.weight.square().sum() / (2 * c * len(z))).item()


@pytest.mark.parametrize("max_iter", [1, 3, 8])
def test_a_probe_out_of_iterations_says_so_and_keeps_its_last_iterate(max_iter):
    """Stopped early, the fit reports it, counts no more iterations than allowed, and returns an
    iterate L-BFGS accepted: the objective decreases with the iterations allowed."""
    xtr, ytr = clusters(2000, 12, 8, spread=3.0)
    xtr = xtr * 5 + 40
    probe = fit_logistic(xtr, ytr, 10, max_iter=max_iter)
    assert not probe.converged and 0 < probe.n_iter <= max_iter
    if max_iter == 1:
        before = torch.log(torch.tensor(10.0)).item()  # the objective at zero weights
    else:
        before = _objective(fit_logistic(xtr, ytr, 10, max_iter=max_iter - 1), xtr, ytr)
    assert _objective(probe, xtr, ytr) < before


@pytest.mark.parametrize("whiten_max_dim", [1024, 2])
def test_linear_probe_on_correlated_codes_reaches_scikit_learns_optimum(monkeypatch, whiten_max_dim):
    """Codes mixed so that their covariance is ill-conditioned (as trained codes are): the fit
    stops where scikit-learn's rule says (the largest gradient entry on the standardised codes, in
    float64, below 1e-4), at scikit-learn's optimum; also without the whitening (wide codes)."""
    from bench.metrics import probe as probe_module

    monkeypatch.setattr(probe_module, "WHITEN_MAX_DIM", whiten_max_dim)
    g = torch.Generator().manual_seed(5)
    mix = torch.linalg.qr(torch.randn(12, 12, generator=g))[0] * torch.logspace(-2, 1, 12)  # cond 1,000
    xtr, ytr = clusters(3000, 12, 6, spread=3.0)
    xte, yte = clusters(1000, 12, 7, spread=3.0)
    xtr, xte = xtr @ mix + 3, xte @ mix + 3
    probe = fit_logistic(xtr, ytr, 10)
    assert probe.converged
    assert _std_gradient(probe, xtr, ytr).abs().max() <= 1e-4
    sk = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, tol=1e-8, max_iter=5000))
    theirs = torch.from_numpy(sk.fit(xtr.double().numpy(), ytr.numpy()).predict(xte.double().numpy()))
    acc_ours = (probe.predict(xte) == yte).double().mean().item()
    acc_sk = (theirs == yte).double().mean().item()
    assert 0.3 < acc_sk < 0.95
    assert abs(acc_ours - acc_sk) <= 0.003


def test_linear_probe_leaves_a_constant_code_unscaled():
    xtr, ytr = clusters(500, 4, 4)
    xtr = torch.cat([xtr, torch.full((500, 1), 7.0)], 1)
    probe = fit_logistic(xtr, ytr, 10)
    assert probe.scale[-1] == 1 and torch.isfinite(probe.weight).all()


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_equal_torch_fidelity(k):
    g = torch.Generator().manual_seed(k)
    real = torch.randn(700, 16, generator=g).double()
    fake = (0.8 * torch.randn(600, 16, generator=g) + 0.3).double()
    fake[:20] = real[:20]  # duplicates: distances of exactly zero
    ref = prc_features_to_metric(fake, real, prc_neighborhood=k, prc_batch_size=250, save_cpu_ram=True)
    ours = precision_recall(fake, real, k, chunk=128)
    assert ours == (ref["precision"], ref["recall"])
    radii = kth_neighbour_distance(real, k, chunk=300)  # as cached for the reference set
    assert precision_recall(fake, real, k, real_radii=radii, chunk=1000) == ours
    full = torch.cdist(real, real).kthvalue(k + 1, dim=1).values
    torch.testing.assert_close(radii, full, rtol=1e-12, atol=1e-12)


def _brute_force(fake, real, k):
    """Precision, recall and both sets' radii from every pair's float64 coordinate differences."""

    def dist(a, b):
        return (a.double()[:, None, :] - b.double()[None, :, :]).square().sum(-1).sqrt()

    real_r = dist(real, real).kthvalue(k + 1, 1).values
    fake_r = dist(fake, fake).kthvalue(k + 1, 1).values
    d = dist(fake, real)
    precision = (d <= real_r[None, :]).any(1).float().mean().item()
    return precision, (d <= fake_r[:, None]).any(0).float().mean().item(), real_r, fake_r


def _hard_cases():
    """Features where float32 distances alone get answers wrong: duplicates, points on a lattice
    (many distances exactly equal to a radius), a collapsed generator, a large common offset,
    norms spread over orders of magnitude."""
    g = torch.Generator().manual_seed(0)
    real = torch.randn(600, 16, generator=g)
    fake = 0.8 * torch.randn(500, 16, generator=g) + 0.3
    fake[:20] = real[:20]
    scale = torch.exp(3 * torch.randn(600, 1, generator=g))
    return {
        "gaussians with duplicates": (fake, real),
        "offset by 1000": (fake + 1000, real + 1000),
        "offset by 1e9": (fake.double() + 1e9, real.double() + 1e9),
        "lattice": (
            torch.randint(0, 4, (500, 3), generator=g).float(),
            torch.randint(0, 4, (400, 3), generator=g).float(),
        ),
        "wide norms": (fake * scale[:500], real * scale),
        "collapsed": (real[:1].repeat(300, 1) + 1e-7 * torch.randn(300, 16, generator=g), real),
    }


@pytest.mark.parametrize("case", list(_hard_cases()))
def test_precision_recall_and_radii_equal_the_float64_answers_on_every_pair(case):
    fake, real = _hard_cases()[case]
    for k in (1, 3, 5):
        precision, recall, real_r, fake_r = _brute_force(fake, real, k)
        assert precision_recall(fake, real, k, chunk=128) == (precision, recall)
        assert torch.equal(kth_neighbour_distance(real, k, chunk=97), real_r)
        assert torch.equal(kth_neighbour_distance(fake, k, chunk=64), fake_r)


@pytest.mark.parametrize("case", ["gaussians with duplicates", "lattice"])
def test_chunks_capped_by_their_number_of_distances_give_the_same_answers(monkeypatch, case):
    """``CHUNK_VALUES`` lowers the rows of a chunk below ``chunk`` (here to a few rows, the last
    one short): the same neighbours, radii and answers."""
    from bench.metrics import neighbours

    fake, real = _hard_cases()[case]
    labels = torch.arange(len(real)) % 7

    def answers():
        return (
            precision_recall(fake, real, 3, chunk=128),
            kth_neighbour_distance(real, 3, chunk=97),
            knn_classify(real, labels, fake, 5, 7, chunk=256),
        )

    whole = answers()
    monkeypatch.setattr(neighbours, "CHUNK_VALUES", 7 * len(real) + 3)  # 7 rows at a time
    capped = answers()
    assert capped[0] == whole[0] and torch.equal(capped[1], whole[1]) and torch.equal(capped[2], whole[2])


def test_the_float64_pairs_in_small_batches_give_the_same_answers(monkeypatch):
    from bench.metrics import neighbours

    fake, real = _hard_cases()["collapsed"]
    whole = precision_recall(fake, real, 3, chunk=128), kth_neighbour_distance(fake, 3)
    monkeypatch.setattr(neighbours, "PAIR_VALUES", 40)  # two or three pairs of 16 coordinates
    batched = precision_recall(fake, real, 3, chunk=128), kth_neighbour_distance(fake, 3)
    assert batched[0] == whole[0] and torch.equal(batched[1], whole[1])


def test_the_float32_screen_needs_its_rounding_bound(monkeypatch):
    """Without the bound (float32 distances decide every pair) some of the answers above change:
    the cases do reach the pairs the float64 pass decides."""
    from bench.metrics import neighbours

    bound = neighbours._bound
    monkeypatch.setattr(neighbours, "_bound", lambda *a: 0 * bound(*a))
    monkeypatch.setattr(neighbours, "U32", 0.0)
    wrong = 0
    for fake, real in _hard_cases().values():
        for k in (1, 3, 5):
            precision, recall, real_r, _ = _brute_force(fake, real, k)
            wrong += precision_recall(fake, real, k, chunk=128) != (precision, recall)
            wrong += not torch.equal(kth_neighbour_distance(real, k, chunk=97), real_r)
    assert wrong >= 3


def _beside_the_scorer(monkeypatch, kind, metrics, reference, **cfg):
    """Evaluate a gan-mlp on synthetic data, calling ``reference(gen, out, fake, real)`` beside the
    ``kind`` scorer on the same generated and real features; (results, what it returned)."""
    from bench.data import load_dataset
    from bench.metrics import generative
    from bench.metrics.features import real_features
    from bench.models import build_model

    seen = {}
    scorer = generative.SCORERS[kind]

    def spy(gen, prep, fake, n_fake, seed):
        out = scorer(gen, prep, fake, n_fake, seed)
        layer = prep.layer(kind)
        real = real_features(gen.reference, prep, gen.cfg.batch_size, gen.device)[layer]
        seen["ref"] = reference(gen, out, fake[layer], real, seed)
        return out

    monkeypatch.setitem(generative.SCORERS, kind, spy)
    data = load_dataset("synthetic", train_size=512, test_size=256)
    torch.manual_seed(0)
    model = build_model("gan-mlp", {}, data.image_shape)
    res = evaluate(model, data, EvalConfig(metrics=metrics, n_samples=200, n_real=256, **cfg), 0, CPU)
    return res, seen["ref"]


CPU = torch.device("cpu")


def test_precision_recall_of_the_domain_metrics_equal_torch_fidelity(tmp_path, monkeypatch):
    """Through the evaluation: the metric computed from the reference's cached radii equals
    torch-fidelity's value on the same features."""
    monkeypatch.setenv("BENCH_HOME", str(tmp_path))

    def theirs(gen, out, fake, real, seed):
        return prc_features_to_metric(
            fake.double(), real.double(), prc_neighborhood=gen.cfg.prc_neighborhood,
            prc_batch_size=1000, save_cpu_ram=True,
        )  # fmt: skip

    res, ref = _beside_the_scorer(monkeypatch, "prc", ["precision_domain", "recall_domain"], theirs)
    assert res["precision_domain"].value == ref["precision"]
    assert res["recall_domain"].value == ref["recall"]


def test_kid_on_float32_features_equals_the_float64_kernel_sums(monkeypatch):
    """KID takes the float32 features as torch-fidelity's own pipeline does; its kernel sums in
    float32 agree with the same sums in float64 far inside KID's own spread over subsets."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    def float64(gen, out, fake, real, seed):
        assert fake.dtype == torch.float32
        return kid_features_to_metric(
            fake.double(), real.double(), kid_subsets=gen.cfg.kid_subsets,
            kid_subset_size=out[1]["kid_subset_size"], rng_seed=seed, verbose=False,
        )  # fmt: skip

    res, ref = _beside_the_scorer(monkeypatch, "kid", ["kid_domain"], float64, kid_subset_size=100)
    res = res["kid_domain"]
    assert res.provenance["features"] == "float32"
    mean, std = ref["kernel_inception_distance_mean"], ref["kernel_inception_distance_std"]
    assert res.value != 0 and abs(res.value - mean) <= 1e-5 * abs(res.value)
    assert abs(res.value - mean) < 1e-3 * std


@pytest.mark.parametrize(
    ("n_fake", "n_real", "subsets", "size", "seed"), [(900, 700, 20, 300, 0), (500, 800, 7, 64, 3)]
)
def test_kid_equals_torch_fidelity(monkeypatch, n_fake, n_real, subsets, size, seed):
    """The same subsets, kernel and estimator as torch-fidelity's, whatever the batching of subsets."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    from bench.metrics import kid as kid_module

    g = torch.Generator().manual_seed(seed)
    real = torch.relu(torch.randn(n_real, 24, generator=g))
    fake = torch.relu(1.2 * torch.randn(n_fake, 24, generator=g) + 0.1)
    ref = kid_features_to_metric(
        fake.double(), real.double(), kid_subsets=subsets, kid_subset_size=size, rng_seed=seed, verbose=False
    )
    for values in (1 << 22, size * size, 1):  # many subsets per product, one, and one at least
        monkeypatch.setattr(kid_module, "KERNEL_VALUES", values)
        mean, std = kid_module.kid(fake, real, subsets, size, seed)
        assert mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-6)
        assert std == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-5)
    # the real features' part, computed apart (as the evaluation keeps it on disk), changes nothing
    sums = kid_module.within_sums(real, kid_module.draws(n_fake, n_real, subsets, size, seed)[1])
    assert kid_module.kid(fake, real, subsets, size, seed, real_sums=sums) == (mean, std)
    with pytest.raises(ValueError, match=f"KID subsets of {min(n_fake, n_real) + 1} drawn"):
        kid_module.kid(fake, real, 2, min(n_fake, n_real) + 1, seed)


def test_kid_keeps_the_real_features_part_on_disk(monkeypatch, tmp_path):
    """The real subsets' kernel sums are computed once per reference set, seed and subsets: a
    second evaluation reads them and scores the same; an entry that does not hold one float64 sum
    per subset is computed again, not broadcast."""
    from bench.cache import save_tensors
    from bench.data import load_dataset
    from bench.metrics import generative
    from bench.models import build_model

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))  # no entry from another test
    computed = []
    within_sums = generative.kid_within_sums
    monkeypatch.setattr(generative, "kid_within_sums", lambda *a: computed.append(1) or within_sums(*a))
    data = load_dataset("synthetic", train_size=512, test_size=256)
    torch.manual_seed(0)
    model = build_model("gan-mlp", {}, data.image_shape)
    cfg = EvalConfig(metrics=["kid_domain"], n_samples=200, n_real=256, kid_subset_size=100)
    first = evaluate(model, data, cfg, 0, CPU)["kid_domain"].value
    assert len(computed) == 1
    assert evaluate(model, data, cfg, 0, CPU)["kid_domain"].value == first
    assert len(computed) == 1  # read back
    (entry,) = (tmp_path / "kid").glob("*.pt")
    save_tensors({"sums": torch.zeros(1, dtype=torch.float64)}, entry)  # one sum for 100 subsets
    assert evaluate(model, data, cfg, 0, CPU)["kid_domain"].value == first
    assert len(computed) == 2
    evaluate(model, data, cfg, 1, CPU)  # another seed: other subsets
    assert len(computed) == 3


class Flatten(torch.nn.Module):
    """A fake autoencoder whose code is its image (flattened); counts how often it encodes."""

    family = "ae"
    has_encoder = True

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.encoded = 0

    def encode(self, x):
        self.encoded += len(x)
        return x.flatten(1) * 255


def code_data(train: torch.Tensor, test: torch.Tensor) -> ImageData:
    def imgs(c):
        return c.round().clamp(0, 255).to(torch.uint8)[:, None, None, :]

    return ImageData(
        "codes", imgs(train), torch.zeros(len(train), dtype=torch.long), imgs(test),
        torch.zeros(len(test), dtype=torch.long), num_classes=10, checksum="gmm-test", source="test",
    )  # fmt: skip


def mixture(n: int, seed: int) -> torch.Tensor:
    """Codes from 4 well-separated anisotropic Gaussians in 6 dimensions, on a 0..255 scale."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[60.0] * 6, [190.0] * 6, [60.0] * 3 + [190.0] * 3, [190.0] * 3 + [60.0] * 3])
    k = torch.randint(0, 4, (n,), generator=g)
    scales = torch.tensor([4.0, 8.0, 12.0, 6.0, 10.0, 5.0])
    return centres[k] + scales * torch.randn(n, 6, generator=g)


def gmm_log_likelihood(gmm, x: torch.Tensor) -> float:
    mix = torch.distributions.Categorical(gmm.weights.double())
    comp = torch.distributions.MultivariateNormal(gmm.means.double(), scale_tril=gmm.chol.double())
    return torch.distributions.MixtureSameFamily(mix, comp).log_prob(x.double()).mean().item()


def test_gmm_fitted_on_a_subset_explains_held_out_codes_as_well_as_the_full_fit():
    data = code_data(mixture(6000, 0), mixture(2000, 1))
    model = Flatten()
    full = latent_gmm(model, data, 4, seed=0, options=GMMOptions(fit_n=None))
    part = latent_gmm(model, data, 4, seed=0, options=GMMOptions(fit_n=1500))
    assert (full.n_fit, part.n_fit) == (6000, 1500)
    held_out = data.test_x.flatten(1).double()
    ll_full, ll_part = gmm_log_likelihood(full, held_out), gmm_log_likelihood(part, held_out)
    assert abs(ll_part - ll_full) <= 0.01 * abs(ll_full)
    assert model.encoded == 6000  # both fits read the one encoding of the training split
    subset = gmm_fit_subset(6000, 1500, seed=0)
    assert len(subset.unique()) == 1500 and torch.equal(subset, gmm_fit_subset(6000, 1500, seed=0))
    assert gmm_fit_subset(6000, 6000, seed=0) is None and gmm_fit_subset(6000, None, seed=0) is None


def test_an_evaluation_encodes_the_training_split_once_and_times_each_metric():
    data = code_data(mixture(600, 2), mixture(200, 3))
    model = Flatten()
    model.reconstruct = lambda x: x
    seconds = {}
    cfg = EvalConfig(metrics=["knn_acc", "probe_acc", "recon_mse"], n_samples=100)
    evaluate(model, data, cfg, 0, torch.device("cpu"), seconds)
    assert model.encoded == 600 + 200  # train once, test once, for both probes
    assert list(seconds) == ["knn_acc", "probe_acc", "recon_mse"] and min(seconds.values()) >= 0
