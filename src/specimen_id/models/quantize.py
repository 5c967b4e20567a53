"""int8 quantization of a converted network (NNCF post-training quantization).

EfficientNet-Lite was designed for int8 (ReLU6, no squeeze-excite); on this project's machine
(VNNI units) it runs 2.6x faster than in f32 (bench/speed.py). Weights are quantized per
channel; activation ranges come from the microscope fields shipped in int8_fields/ (real DSB
2018 fields and one seeded simulated re-capture of each), so every installation calibrates on
the same inputs. On bench/accuracy.py it identifies better than f32 (see README) although its
vectors sit at cosine about 0.92 to f32 ones, so an int8 database is a model of its own (the
model_id says so).

NNCF's overflow fix applies to every layer, not only the first: the weights of the ordinary and
pointwise convolutions keep 7 bits (NNCF leaves the depthwise ones at 8; oneDNN sums those in 32
bits). CPUs without VNNI units (AVX2, AVX-512 before Cascade Lake) add int8 products in pairs
into 16-bit sums, which 8-bit weights can overflow; VNNI's 32-bit sums never do. With 8-bit
weights the same capture gave other vectors on such CPUs (cosine down to 0.79), so one database
filled from two machines mixed two models under one id. With 7 bits, this CPU run as an AVX2 one
(oneDNN's ISA capped) quantizes the network to the same bytes and embeds to the same vectors
(tests/test_models.py); models/probe.py refuses a machine that still differs.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np

INT8_RECIPE = "q3"  # the fields, settings and input policy (preprocess.py) it calibrated with;
# part of the model_id and the cache name
FIELDS = Path(__file__).parent / "int8_fields"


def calibration_fields() -> list[np.ndarray]:
    """The shipped fields as RGB arrays, each followed by one seeded simulated re-capture, so
    the ranges also cover blur, noise, uneven light and JPEG."""
    import cv2

    from ..simulate import Recapture

    rng = np.random.default_rng(8)
    fields = []
    for path in sorted(FIELDS.glob("*.jpg")):
        rgb = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        fields += [rgb, Recapture().apply(rgb, rng)]
    return fields


def quantize(model, inputs: list[np.ndarray]):
    """The OpenVINO model with int8 weights and activations, calibrated on `inputs` (NCHW)."""
    import logging

    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    nncf.set_log_level(logging.ERROR)
    print("specimen-id: making the int8 model (first use only, about 10 s)", file=sys.stderr)
    # NNCF draws progress bars on stdout, which belongs to --json output
    with contextlib.redirect_stdout(sys.stderr):
        return nncf.quantize(model, nncf.Dataset(inputs), subset_size=len(inputs),
                             advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE))
