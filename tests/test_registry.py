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
