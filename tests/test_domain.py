"""The domain classifier: accuracy on the real test split, trained once and cached."""

import pytest
import torch
from conftest import FASHION_DIR

from bench.data import load_dataset
from bench.metrics import domain, fidelity

CPU = torch.device("cpu")


@pytest.mark.skipif(
    not FASHION_DIR.is_dir(), reason="Fashion-MNIST (Debian dataset-fashion-mnist) not installed"
)
def test_fashion_mnist_classifier_reaches_90_percent_on_the_test_split():
    data = load_dataset("fashion-mnist")
    clf = domain.classifier(data, CPU)
    net = fidelity.FeatureExtractorDomain("bench-domain", ["logits"], str(clf.path)).net
    # recomputed here from the cached weights, on all 10,000 test images
    assert domain.accuracy(net, data.test_x, data.test_y) == pytest.approx(clf.test_accuracy)
    assert clf.test_accuracy >= 0.90


def test_classifier_is_trained_once_and_keyed_by_content(monkeypatch):
    data = load_dataset("synthetic", train_size=1024, test_size=512)
    first = domain.classifier(data, CPU)

    def no_training(*a, **k):
        raise AssertionError("the cached classifier was retrained")

    monkeypatch.setattr(domain, "train_classifier", no_training)
    again = domain.classifier(data, CPU)
    assert (again.path, again.sha256) == (first.path, first.sha256)
    other = load_dataset("synthetic", train_size=1000, test_size=512)  # other content, other key
    with pytest.raises(AssertionError, match="retrained"):
        domain.classifier(other, CPU)


@pytest.mark.parametrize("damage", ["truncated", "planted", "other net"])
def test_an_unusable_cached_classifier_is_trained_again(damage, tmp_path, caplog):
    from bench.cache import save_tensors

    data = load_dataset("synthetic", train_size=1024, test_size=512)
    first = domain.classifier(data, CPU)
    if damage == "truncated":
        first.path.write_bytes(first.path.read_bytes()[:1000])
    elif damage == "planted":
        from test_hardening import plant

        marker = tmp_path / "ran"

        plant(first.path, marker)
    else:
        save_tensors({"net": {"channels": 3}, "state_dict": {}, "test_accuracy": 1.0}, first.path)
    again = domain.classifier(data, CPU)
    assert "training it again" in caplog.text
    assert again.path == first.path and again.test_accuracy == pytest.approx(first.test_accuracy)
    net = fidelity.FeatureExtractorDomain("bench-domain", ["logits"], str(again.path)).net  # loads
    assert net.training is False
    if damage == "planted":
        assert not marker.exists()


def test_training_leaves_the_global_rng_alone():
    data = load_dataset("synthetic", train_size=300, test_size=100)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    domain.train_classifier(data, domain.TrainConfig(epochs=1, min_steps=2), CPU)
    assert torch.equal(torch.rand(3), expected)


def test_features_and_logits_shapes():
    data = load_dataset("synthetic", train_size=1024, test_size=512)
    fe = fidelity.FeatureExtractorDomain(
        "bench-domain", ["penultimate", "logits"], str(domain.classifier(data, CPU).path)
    )
    feats, logits = fe(data.test_x[:5].repeat(1, 3, 1, 1))
    assert feats.shape == (5, domain.FEATURE_DIM) and logits.shape == (5, 10)
    with pytest.raises(ValueError, match="uint8"):
        fe(data.test_x[:5].float())


def test_the_classifier_trains_on_the_evaluation_device_whose_kind_is_in_its_key(monkeypatch):
    data = load_dataset("synthetic", train_size=1024, test_size=512)
    cpu = domain.classifier(data, CPU)
    assert cpu.trained_on == "cpu" and cpu.path.is_file()
    asked = []

    def train_elsewhere(data, cfg, device):
        asked.append(device)
        raise RuntimeError("training was asked for")

    monkeypatch.setattr(domain, "train_classifier", train_elsewhere)
    # a CUDA evaluation does not reuse the CPU-trained net: it trains its own, on the GPU
    with pytest.raises(RuntimeError, match="training was asked for"):
        domain.classifier(data, torch.device("cuda"))
    assert asked == [torch.device("cuda")]
    assert domain.classifier(data, CPU).path == cpu.path  # and the CPU one is still the CPU's
