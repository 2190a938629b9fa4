import pytest

from bench.registry import Registry, UnknownNameError


def test_duplicate_name_raises():
    reg: Registry[int] = Registry("thing")
    reg.add("a", 1)
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("a", 2)


def test_unknown_name_suggests_close_matches():
    reg: Registry[int] = Registry("model")
    reg.add("vae-conv", 1)
    reg.add("ae-conv", 2)
    with pytest.raises(UnknownNameError) as e:
        reg.get("vae-cnv")
    assert "did you mean 'vae-conv'" in str(e.value)
    assert reg.get("ae-conv") == 2 and "ae-conv" in reg and len(reg) == 2


def test_every_generation_combination_is_registered_by_its_full_name():
    """Generation metrics are registered one line each (so grep finds them); none may be missing."""
    from bench.metrics import METRICS
    from bench.metrics.generative import BASES, EXTRACTORS, SAMPLERS, generation_metric

    want = {
        b.name + (EXTRACTORS.get(e).suffix if b.named_by_extractor else "") + SAMPLERS.get(s).suffix
        for b in BASES
        for e in b.extractors
        for s in b.samplers
    }
    have = {m for m in METRICS if METRICS.get(m).is_generation}
    assert want == have
    gm = generation_metric("fid_domain_gmm")
    assert (gm.base.name, gm.extractor.name, gm.sampler.name) == ("fid", "domain", "gmm")
