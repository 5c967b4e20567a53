"""Where the CNN's arithmetic runs. PyTorch defines and loads the networks; OpenVINO runs them.

Measured on this project's 2-core machine (bench/speed.py): OpenVINO's CPU plugin (folded
batch norm, fused depthwise convolutions, its own thread pool) runs EfficientNet-Lite0 several
times faster than PyTorch eager, in float32, with answers equal to PyTorch's to about 1e-5
(tests/test_models.py holds the two to cosine >= 0.9999). The precision is pinned to f32: on
CPUs with bfloat16 units OpenVINO would otherwise pick bf16 and move every vector (cosine about
0.996 to f32). SPECIMEN_ID_PRECISION=bf16 asks for it on purpose: faster, and its vectors are
then a model of their own (the model_id says so), as they differ between CPUs with and
without bfloat16 units.

A converted network is cached as OpenVINO IR (a few MB) under the user's cache directory,
named by the network and weights hash, so only the first use of a model pays the conversion.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import SpecimenIdError

CACHE_ENV = "SPECIMEN_ID_CACHE"
RUNTIME_ENV = "SPECIMEN_ID_RUNTIME"  # "torch" runs the PyTorch graph itself (the reference)
RUNTIMES = ("openvino", "torch")
PRECISION_ENV = "SPECIMEN_ID_PRECISION"  # "bf16": faster where the CPU has bfloat16 units


def cache_dir() -> Path:
    base = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "specimen-id")
    return Path(base)


def compile_trunk(spec, build, runtime: str | None = None):
    """A function from an NCHW float32 batch to the trunk's NCHW feature map (numpy), for the
    model `spec` describes; `build()` makes the PyTorch backbone, called only when needed (to
    run it, or to convert it the first time)."""
    runtime = runtime or os.environ.get(RUNTIME_ENV) or "openvino"
    if runtime not in RUNTIMES:
        raise SpecimenIdError(f"{RUNTIME_ENV}={runtime!r}: choose one of {', '.join(RUNTIMES)}")
    return _torch(build()) if runtime == "torch" else _openvino(spec, build)


def _torch(backbone):
    import torch

    # channels-last is faster for these depthwise/1x1-heavy graphs, same answers
    backbone.net.to(memory_format=torch.channels_last)

    def run(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return backbone.trunk(x).numpy()

    run.precision = "f32"
    return run


def _openvino(spec, build):
    import openvino as ov

    asked = os.environ.get(PRECISION_ENV) or "f32"  # checked before any conversion work
    if asked not in ("f32", "bf16"):
        raise SpecimenIdError(f"{PRECISION_ENV}={asked!r}: choose f32 or bf16")
    core = ov.Core()
    version = ov.__version__.split("-")[0]  # "2026.4.1-22982-…/2026/4": keep the release
    path = cache_dir() / "openvino" / (
        f"{spec.name}-{spec.weights_sha256[:16]}-{spec.input_size}-ov{version}.xml")
    model = None
    if path.is_file() and path.with_suffix(".bin").is_file():
        try:
            model = core.read_model(path)
        except RuntimeError:  # a damaged cache entry is simply made again
            model = None
    if model is None:
        model = _convert(build())
        _save(ov, model, path)
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": asked,
                                                  "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()

    def run(batch: np.ndarray) -> np.ndarray:
        return request.infer({0: np.ascontiguousarray(batch)})[0].copy()

    # what the CPU really runs: a CPU without bfloat16 units runs f32 whatever was asked
    run.precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return run


def _convert(backbone):
    import warnings

    import openvino as ov
    import torch

    size = backbone.input_size
    trunk = _Trunk(backbone.trunk).eval()
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # TorchScript tracing deprecation notes, not ours
        return ov.convert_model(trunk, example_input=torch.zeros(1, 3, size, size),
                                input=[(-1, 3, size, size)])


def _save(ov, model, path: Path) -> None:
    """Write the IR under a temporary name, then rename both files: a concurrent first use or
    a kill mid-write leaves no half-written cache entry."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.xml")
        ov.save_model(model, tmp, compress_to_fp16=False)  # fp16 weights would change answers
        os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs the conversion next time


def _Trunk(trunk):
    import torch

    class Trunk(torch.nn.Module):  # convert_model wants a Module; trunks may be bound methods
        def __init__(self):
            super().__init__()
            self.owner = getattr(trunk, "__self__", trunk)

        def forward(self, x):
            return trunk(x)

    return Trunk()
