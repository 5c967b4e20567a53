"""Backbones load real weights (never random), embeddings are unit vectors with a model_id."""

import os
import shutil
import subprocess
import sys
from importlib import metadata

import cv2
import numpy as np
import pytest
import torch
import torchvision

from specimen_id.errors import WeightsUnavailable
from specimen_id.local_features import FEATURE_VERSION
from specimen_id.models import load_backbone, load_embedder
from specimen_id.models.backbones import file_sha256
from specimen_id.models.preprocess import to_rgb8
from specimen_id.models.quantize import INT8_RECIPE


def _classify(backbone, rgb):
    import cv2

    size = backbone.input_size
    x = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    x = (x - np.array(backbone.mean, np.float32)) / np.array(backbone.std, np.float32)
    with torch.inference_mode():
        probs = backbone.net(torch.from_numpy(x).permute(2, 0, 1)[None]).softmax(-1)[0]
    categories = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
    top = int(probs.argmax())
    return categories[top], float(probs[top])


def test_default_model_has_real_imagenet_weights():
    """Golden test: the packaged Lite0 weights recognise scikit-image's bundled photos."""
    from skimage import data

    backbone = load_backbone()
    label, p = _classify(backbone, data.chelsea())
    assert label == "Egyptian cat" and p >= 0.7, (label, p)
    label, p = _classify(backbone, data.coffee())
    assert label == "espresso" and p >= 0.7, (label, p)


def test_embedding_is_unit_float32_with_model_id():
    embedder = load_embedder()
    from skimage import data

    vectors = embedder.embed([data.chelsea(), data.coffee(), data.camera()])
    assert vectors.dtype == np.float32 and vectors.shape == (3, embedder.dim) == (3, 1280)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    weights_sha = file_sha256(embedder.spec.weights_file)
    # the weights, the preprocessing and the arithmetic (int8 by default, with its calibration
    # recipe) name the vectors' kind; the local features' recipe is versioned apart
    assert embedder.model_id == f"efficientnet_lite0:{weights_sha[:16]}:p3+int8-{INT8_RECIPE}"
    assert FEATURE_VERSION not in embedder.model_id
    # the same image embeds the same; different photos do not
    again = embedder.embed([data.chelsea()])
    np.testing.assert_allclose(again[0], vectors[0], atol=1e-5)
    assert vectors[0] @ vectors[1] < 0.9


def test_torchvision_download_offline_gives_one_clear_error(tmp_path, monkeypatch):
    # An empty torch cache and a proxy that refuses connections: the download cannot happen.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    with pytest.raises(WeightsUnavailable) as err:
        load_backbone("resnet50")
    message = str(err.value)
    assert "cannot download the resnet50 weights" in message
    assert "https://download.pytorch.org/models/resnet50" in message
    assert "--weights PATH" in message and str(tmp_path / "torch") in message


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "resnet50", "efficientnet_b0", "convnext_tiny"])
def test_torchvision_backbone_from_local_weights_file(tmp_path, name):
    torch.manual_seed(0)
    reference = torchvision.models.get_model(name, weights=None).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    backbone = load_backbone(name, path)
    assert backbone.weights_file == path.resolve()
    # the loaded network is the saved one, tensor for tensor
    for (key, a), b in zip(reference.state_dict().items(), backbone.net.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    x = torch.rand(1, 3, 224, 224)
    with torch.inference_mode():
        assert torch.allclose(reference(x), backbone.net(x), atol=1e-5)


def test_local_weights_file_is_used_for_embeddings(tmp_path):
    torch.manual_seed(1)
    net = torchvision.models.get_model("mobilenet_v3_large", weights=None).eval()
    path = tmp_path / "mnv3.pth"
    torch.save(net.state_dict(), path)
    embedder = load_embedder("mobilenet_v3_large", path)
    assert embedder.model_id.startswith(f"mobilenet_v3_large:{file_sha256(path)[:16]}:")
    rgb = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    # contrast stretched from the 1st to the 99.8th percentile of its levels, then normalised
    low, high = np.percentile(rgb, (1, 99.8), method="inverted_cdf")
    stretched = np.clip((rgb.astype(np.float32) - low) / (high - low), 0, 1)
    x = (stretched - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    with torch.inference_mode():
        fmap = net.features(torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None])

    def gem(region):  # GeM, p = 3, unit length
        v = region.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3)[0]
        return v / v.norm()

    # regional: the whole 7x7 map and every 5x5 and 4x4 window of it
    windows = [fmap[:, :, y:y + s, x:x + s] for s in (5, 4) for y in range(8 - s) for x in range(8 - s)]
    expected = (gem(fmap) + sum(gem(w) for w in windows)).numpy()
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(embedder.embed([rgb])[0], expected, atol=1e-4)


def test_wrong_or_missing_weights_file_is_refused(tmp_path):
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        load_backbone("resnet50", tmp_path / "nope.pth")
    lite0 = load_backbone().weights_file
    with pytest.raises(WeightsUnavailable, match="does not hold resnet50 weights"):
        load_backbone("resnet50", lite0)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailable, match="not a PyTorch weights file"):
        load_backbone("efficientnet_lite0", junk)
    with pytest.raises(WeightsUnavailable, match="unknown model"):
        load_backbone("alexnet9000")


def test_sixteen_bit_policy_stretches_the_used_range():
    rng = np.random.default_rng(0)
    twelve_bit = rng.integers(0, 4096, (64, 64), dtype=np.uint16)
    rgb = to_rgb8(twelve_bit)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert rgb.max() == 255 and rgb.min() == 0  # not squashed into the bottom 1/16th
    rgba = np.dstack([twelve_bit] * 3 + [np.full_like(twelve_bit, 65535)])
    np.testing.assert_array_equal(to_rgb8(rgba), rgb)  # alpha dropped, grey == equal channels


def test_importing_the_package_loads_no_torch():
    code = ("import sys, specimen_id, specimen_id.cli; "
            "heavy = {'torch', 'faiss', 'cv2', 'timm'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})


def _sample_paths():
    from conftest import QUERIES, SPECIMENS

    return sorted(SPECIMENS.rglob("*.*"))[:6] + sorted(QUERIES.glob("*.jpg"))[:4]


def _sample_pixels():
    import cv2

    return [cv2.imread(str(p)) for p in _sample_paths()]


def test_openvino_runtime_gives_pytorch_answers_on_real_captures(monkeypatch):
    """The fast runtime is a faster way to the same vectors: in f32, on the sample captures
    each embedding matches PyTorch's to cosine >= 0.9999 and ranks the captures the same way."""
    pixels = _sample_pixels()
    monkeypatch.setenv("SPECIMEN_ID_PRECISION", "f32")
    fast = load_embedder(runtime="openvino").embed(pixels)
    reference = load_embedder(runtime="torch").embed(pixels)
    assert np.min(np.sum(fast * reference, axis=1)) >= 0.9999
    np.testing.assert_array_equal(np.argsort(-fast @ fast.T, axis=1)[:, :3],
                                  np.argsort(-reference @ reference.T, axis=1)[:, :3])


def test_converted_model_is_cached_and_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    """The f32 conversion and the int8 model made from it are both cached; a damaged entry is
    made again, and int8 calibration gives the very same model every time."""
    from specimen_id.models import Embedder

    monkeypatch.setenv("SPECIMEN_ID_CACHE", str(tmp_path))
    backbone = load_backbone()
    image = np.random.default_rng(3).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    first = Embedder(backbone).embed([image])
    f32, int8 = sorted((tmp_path / "openvino").glob("*.xml"), key=lambda p: "int8" in p.name)
    assert int8.name == f32.stem + f"-int8{INT8_RECIPE}-nncf{metadata.version('nncf')}-cv{cv2.__version__}.xml"
    assert f32.with_suffix(".bin").stat().st_size > 12e6  # float32 weights (3.4M), not fp16
    assert int8.with_suffix(".bin").stat().st_size < 6e6  # one byte per weight
    stamps = [xml.stat().st_mtime_ns for xml in (f32, int8)]
    np.testing.assert_array_equal(Embedder(backbone).embed([image]), first)
    assert [xml.stat().st_mtime_ns for xml in (f32, int8)] == stamps  # read back, not made again
    int8.write_text("<net damaged")
    np.testing.assert_array_equal(Embedder(backbone).embed([image]), first)
    assert "damaged" not in int8.read_text()[:100]
    f32.write_text("<net damaged")  # read only when f32 is asked for (or int8 is made again)
    monkeypatch.setenv("SPECIMEN_ID_PRECISION", "f32")
    assert "int8" not in Embedder(backbone).model_id and "damaged" not in f32.read_text()[:100]


def test_a_query_with_the_converted_model_cached_does_not_import_torch(enrolled):
    """The CLI's cold start: once a network is converted, a new process loads it without
    PyTorch (seconds of imports), and still answers correctly."""
    from conftest import QUERIES

    code = ("import sys; from specimen_id.cli import main; sys.argv[1:] = ['--db', sys.argv[1], 'query', "
            "'--json', sys.argv[2]]\ntry:\n    main()\nfinally:\n"
            "    print('torch' in sys.modules, 'timm' in sys.modules, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, str(enrolled.db), str(QUERIES / "recapture-he-tissue-a.jpg")],
                          capture_output=True, text=True, env={**os.environ})
    assert done.returncode == 0, done.stderr
    assert '"specimen": "he-tissue-a"' in done.stdout
    assert done.stderr.strip().splitlines()[-1] == "False False"


def test_int8_by_default_identifies_the_sample_as_f32_does(monkeypatch):
    """int8 moves the vectors (a model_id of its own) but not the answers: on the real sample
    each capture's nearest other capture shows the field f32's nearest shows."""
    pixels = _sample_pixels()
    int8 = load_embedder()
    monkeypatch.setenv("SPECIMEN_ID_PRECISION", "f32")
    f32 = load_embedder()
    assert int8.model_id == f32.model_id + f"+int8-{INT8_RECIPE}"
    fast, reference = int8.embed(pixels), f32.embed(pixels)
    assert np.median(np.sum(fast * reference, axis=1)) > 0.85
    # a specimen's folder, or the field a query re-captures ("never-enrolled-N" is its own)
    fields = [p.parent.name if p.suffix == ".png" else p.stem.removeprefix("recapture-")
              for p in _sample_paths()]

    # a never-enrolled field has no partner: its nearest is whichever unrelated field, and its
    # answer no_match either way, so only captures with a partner are compared
    partnered = [i for i, f in enumerate(fields) if fields.count(f) > 1]

    def nearest_fields(vectors):
        similarity = vectors @ vectors.T
        np.fill_diagonal(similarity, -np.inf)
        return [fields[j] for j in similarity.argmax(axis=1)[partnered]]

    assert nearest_fields(fast) == nearest_fields(reference)


def test_int8_model_and_vectors_are_the_same_on_a_cpu_without_vnni(tmp_path):
    """A lab's machines share one database, so each must make the same int8 model and embed a
    capture to the same vector. ONEDNN_MAX_CPU_ISA=AVX2 makes this CPU's convolutions run as on a
    CPU without VNNI units (16-bit partial sums): starting from the f32 conversion alone, it
    quantizes the network to the very bytes this process uses, and embeds to the same vectors
    (to float rounding)."""
    from specimen_id.cache import cache_dir

    paths = _sample_paths()
    here = load_embedder()
    vectors = here.embed(_sample_pixels())
    mine = {p.name: p for p in (cache_dir() / "openvino").iterdir()}
    (tmp_path / "openvino").mkdir()
    for name, path in mine.items():
        if "-int8" not in name:
            shutil.copy(path, tmp_path / "openvino" / name)
    code = ("import sys, cv2, numpy as np; from specimen_id.models import load_embedder\n"
            "e = load_embedder(); print(e.model_id)\n"
            "np.save(sys.argv[1], e.embed([cv2.imread(p) for p in sys.argv[2:]]))")
    out = tmp_path / "avx2.npy"
    done = subprocess.run([sys.executable, "-c", code, str(out), *map(str, paths)], capture_output=True, text=True,
                          env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "SPECIMEN_ID_CACHE": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [here.model_id] and here.model_id.endswith(f"+int8-{INT8_RECIPE}")
    (made,) = (tmp_path / "openvino").glob("*-int8*.bin")
    assert made.read_bytes() == mine[made.name].read_bytes()
    # the int8 arithmetic is exact; float steps around it (pooling) may round in another order
    np.testing.assert_allclose(np.load(out), vectors, rtol=0, atol=1e-6)


def test_bfloat16_on_request_is_a_model_of_its_own(monkeypatch):
    """bf16 moves every vector a little, and only CPUs with bfloat16 units run it: its
    embeddings carry their own model_id, so a database never mixes them with f32 ones."""
    from specimen_id.errors import SpecimenIdError

    monkeypatch.setenv("SPECIMEN_ID_PRECISION", "f32")
    f32 = load_embedder()
    monkeypatch.setenv("SPECIMEN_ID_PRECISION", "bf16")
    bf16 = load_embedder()
    expected = f32.model_id + ("+bf16" if bf16.trunk.precision == "bf16" else "")
    assert bf16.model_id == expected and f32.trunk.precision == "f32"
    rgb = np.random.default_rng(4).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    assert float(bf16.embed([rgb])[0] @ f32.embed([rgb])[0]) > 0.99
    monkeypatch.setenv("SPECIMEN_ID_PRECISION", "fp8")
    with pytest.raises(SpecimenIdError, match="choose one of int8, f32, bf16"):
        load_embedder()
