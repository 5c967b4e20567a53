"""Where the CNN's arithmetic runs. PyTorch defines and loads the networks; OpenVINO runs them.

Measured on this project's 2-core machine (bench/speed.py): OpenVINO's CPU plugin (folded
batch norm, fused depthwise convolutions, its own thread pool) runs EfficientNet-Lite0 several
times faster than PyTorch eager in float32, with answers equal to PyTorch's to about 1e-5
(tests/test_models.py holds the two to cosine >= 0.9999), and int8 (see quantize.py) about
2.5x faster again. The default model runs in int8, where bench/accuracy.py found it identifies
as well as f32; other models stay f32 until measured. SPECIMEN_ID_PRECISION picks one:
int8, f32, or bf16 (on CPUs with bfloat16 units; its vectors differ between CPUs with and
without them). f32 is pinned as such: OpenVINO would otherwise choose bf16 where it can.
Each precision's vectors are a model of their own (the model_id says so).

A converted network is cached as OpenVINO IR (a few MB) under the user's cache directory,
named by the network, weights hash and precision, so only the first use of a model pays the
conversion (and the int8 calibration).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from ..cache import CACHE_ENV, cache_dir  # noqa: F401  (models' cache, and its variable)
from ..errors import SpecimenIdError
from .quantize import INT8_RECIPE

RUNTIME_ENV = "SPECIMEN_ID_RUNTIME"  # "torch" runs the PyTorch graph itself: the f32 reference
RUNTIMES = ("openvino", "torch")
PRECISION_ENV = "SPECIMEN_ID_PRECISION"
PRECISIONS = ("int8", "f32", "bf16")


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

    from .backbones import DEFAULT_MODEL

    # int8 where bench/accuracy.py measured it; checked before any conversion work
    asked = os.environ.get(PRECISION_ENV) or ("int8" if spec.name == DEFAULT_MODEL else "f32")
    if asked not in PRECISIONS:
        raise SpecimenIdError(f"{PRECISION_ENV}={asked!r}: choose one of {', '.join(PRECISIONS)}")
    core = ov.Core()
    version = ov.__version__.split("-")[0]  # "2026.4.1-22982-…/2026/4": keep the release
    stem = f"{spec.name}-{spec.weights_sha256[:16]}-{spec.input_size}-ov{version}"

    def f32_model():
        return _cached(core, stem, lambda: _convert(build()))

    def int8_model():
        from .preprocess import to_input
        from .quantize import calibration_fields, quantize

        return quantize(f32_model(), [to_input(f, spec.input_size, spec.mean, spec.std)[None]
                                      for f in calibration_fields()])

    # NNCF's and OpenCV's releases are in the name too: another may quantize otherwise, or make
    # other calibration inputs (models/probe.py)
    made = libraries()
    made_by = f"nncf{made['nncf'] or 'none'}-cv{made['opencv']}"
    model = _cached(core, f"{stem}-int8{INT8_RECIPE}-{made_by}", int8_model) if asked == "int8" else f32_model()
    # int8 leaves some operations in float: keep them f32, not bf16 on CPUs that have it
    compiled = core.compile_model(model, "CPU", {
        "INFERENCE_PRECISION_HINT": "f32" if asked == "int8" else asked,
        "PERFORMANCE_HINT": "LATENCY"})
    # an infer request runs one batch at a time ("Infer Request is busy" from a second
    # thread): each thread gets its own, on the one compiled model
    requests = threading.local()

    def run(batch: np.ndarray) -> np.ndarray:
        request = getattr(requests, "request", None)
        if request is None:
            request = requests.request = compiled.create_infer_request()
        return request.infer({0: np.ascontiguousarray(batch)})[0].copy()

    # what the CPU really runs: a CPU without bfloat16 units runs f32 whatever was asked
    run.precision = f"int8-{INT8_RECIPE}" if asked == "int8" else (
        compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())
    return run


def libraries() -> dict:
    """The releases that make and run the int8 model (None where one is not installed): OpenVINO
    runs it, NNCF quantizes it, OpenCV makes its calibration inputs. The int8 cache is named by
    them, and a database's probe records them (models/probe.py)."""
    from importlib import metadata

    import cv2

    found = {}
    for name in ("openvino", "nncf"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found | {"opencv": cv2.__version__}


def _cached(core, stem: str, make):
    """The model cached as `stem`.xml/.bin, made by `make()` and saved the first time."""
    path = cache_dir() / "openvino" / f"{stem}.xml"
    if path.is_file() and path.with_suffix(".bin").is_file():
        try:
            return core.read_model(path)
        except RuntimeError:  # a damaged cache entry is simply made again
            pass
    model = make()
    _save(model, path)
    return model


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


def _save(model, path: Path) -> None:
    """Write the IR under a temporary name, then rename both files: a concurrent first use or
    a kill mid-write leaves no half-written cache entry."""
    import openvino as ov

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
