"""Explaining photos: the Explainer API, overlays, and the explain and demo commands on the bundled model."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

import onnx_rcam
import reference
from conftest import assert_close, run_model
from efficientnet_reference import bundled_reference
from onnx_rcam.console.cli import run
from onnx_rcam.explainer import Explainer
from onnx_rcam.images import input_bounds
from onnx_rcam.models_path import models_folder, sample_images
from onnx_rcam.overlay import colorize, overlay
from photos import bundled_batch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def explainer():
    return Explainer(onnx_rcam.default_model_path(), layers=["auto", "_blocks.10"], device="cpu", method="rcam")


@pytest.fixture(scope="module")
def plain_logits():
    return run_model(str(onnx_rcam.default_model_path()), {"input": bundled_batch()})["logits"]


def head(activation: np.ndarray, relevance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Relevance-CAM head (raw map, map at 224 x 224) of an output's own A and R, in float64 (reference.py)."""
    raw, heat = reference.rcam_maps(torch.from_numpy(activation).double(), torch.from_numpy(relevance).double(),
                                    (224, 224))
    return raw.numpy(), heat.numpy()


def cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        run(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_explainer_explains_the_predictions(explainer, plain_logits):
    """The photos' maps, raw maps, relevance and activations are the float64 reference's on the trained weights
    (tests/efficientnet_reference.py; test_default_model.py has the measured deviations)."""
    explanation = explainer(sample_images(), extras=True)
    assert explainer.provider == explainer.provider_note == "CPUExecutionProvider"
    np.testing.assert_array_equal(explanation.logits, plain_logits)
    np.testing.assert_array_equal(explanation.classes, plain_logits.argmax(1))
    assert explainer.layers == ["auto", "_blocks.10"]
    ref = bundled_reference("contrastive")
    np.testing.assert_array_equal(explanation.classes, ref.classes)
    for layer in explainer.layers:
        heat = explanation.maps[layer]
        assert heat.shape == (4, 224, 224) and heat.min() >= 0 and heat.max() <= 1
        assert_close(heat, ref.maps[layer], f"{layer} map")
        assert_close(explanation.raw[layer], ref.raw[layer], f"{layer} raw")
        assert_close(explanation.relevance[layer], ref.relevance[layer], f"{layer} relevance")
        assert_close(explanation.activations[layer], ref.activations[layer], f"{layer} activation")
    assert explanation.relevance["_blocks.10"].shape == (4, 112, 14, 14)
    np.testing.assert_allclose(explanation.scores.sum(1), 1.0, rtol=1e-5)


def test_explainer_takes_paths_pictures_arrays_and_batches(explainer):
    path = sample_images()[1]
    picture = Image.open(path)
    by_path = explainer(path).maps["_blocks.10"]
    for same in (picture, np.asarray(picture), explainer.prepare([path])):
        np.testing.assert_array_equal(explainer(same).maps["_blocks.10"], by_path)


def test_explainer_accepts_an_augmented_model(plain_logits):
    """An augmented ModelProto with top-k 2 (a proto has no MODEL.preprocess.json beside it: the bundled model's is
    passed). Each class's map is the head of its own relevance; the first class's is the reference's."""
    augmented = onnx_rcam.augment(onnx_rcam.default_model_path(), layers=["_blocks.4"], top_k=2)
    explanation = Explainer(augmented, device="cpu",
                            preprocessing=str(models_folder() / "efficientnet_lite0.preprocess.json"))(
        sample_images()[:2], extras=True)
    assert explanation.classes.shape == (2, 2) and explanation.maps["_blocks.4"].shape == (2, 2, 224, 224)
    np.testing.assert_array_equal(explanation.classes, np.argsort(-plain_logits[:2], axis=1)[:, :2])
    activation, relevance = explanation.activations["_blocks.4"], explanation.relevance["_blocks.4"]
    for k in range(2):
        raw, heat = head(activation, relevance[:, k])
        assert_close(explanation.raw["_blocks.4"][:, k], raw, f"class {k + 1} raw")
        assert_close(explanation.maps["_blocks.4"][:, k], heat, f"class {k + 1} map")
    ref = bundled_reference("contrastive")
    assert_close(relevance[:, 0], ref.relevance["_blocks.4"][:2], "first class's relevance")
    assert_close(explanation.maps["_blocks.4"][:, 0], ref.maps["_blocks.4"][:2], "first class's map")


def test_explainer_draws_another_method():
    """method="layercam": its maps, and the gradient in place of the relevance; a file without the method's maps
    is refused with what it holds."""
    explanation = Explainer(onnx_rcam.default_model_path(), layers=["_blocks.10"], device="cpu",
                            method="layercam")(sample_images()[:2], extras=True)
    heat = explanation.maps["_blocks.10"]
    assert heat.shape == (2, 224, 224) and heat.min() == 0 and 0.9 < heat.max() <= 1
    gradient, activation = explanation.relevance["_blocks.10"], explanation.activations["_blocks.10"]
    expected = np.maximum((np.maximum(gradient, 0) * activation).sum(1), 0)
    np.testing.assert_allclose(np.maximum(explanation.raw["_blocks.10"], 0), expected, rtol=1e-4, atol=1e-6)
    raw = torch.from_numpy(explanation.raw["_blocks.10"]).double()
    assert_close(heat, reference.normalized_map(raw.clamp(min=0), (224, 224)).numpy(), "layercam map")
    augmented = onnx_rcam.augment(onnx_rcam.default_model_path(), layers=["_blocks.10"])
    with pytest.raises(onnx_rcam.RcamError, match="no layercam maps; it holds rcam"):
        Explainer(augmented, device="cpu", method="layercam")


def test_preprocessing_from_a_file_takes_the_models_layout(tmp_path):
    """A JSON file given as preprocessing is read with the model's own layout, and its bounds reach zbox."""
    settings = tmp_path / "prep.json"
    settings.write_text(json.dumps({"size": 224, "resize_shorter": 240, "mean": [0.5, 0.4, 0.3],
                                    "std": [0.25, 0.2, 0.5]}))
    explainer = Explainer(onnx_rcam.default_model_path(), device="cpu", preprocessing=str(settings),
                          composite="epsilon_gamma_box")
    assert explainer.preprocessing.mean == (0.5, 0.4, 0.3) and explainer.preprocessing.resize_shorter == 240
    assert explainer.preprocessing.layout == "NCHW"
    np.testing.assert_allclose(input_bounds(None, str(settings))[0], [-2.0, -2.0, -0.6])


def test_overlay_keeps_the_photo_where_the_map_is_zero():
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    heat = np.zeros((8, 8), dtype=np.float32)
    heat[4:, 4:] = 1.0
    shown = overlay(photo, heat, box=(10, 0, 50, 40))
    assert shown.size == photo.size
    pixels, original = np.asarray(shown), np.asarray(photo)
    np.testing.assert_array_equal(pixels[:10, 10:20], original[:10, 10:20])   # inside the box, map 0
    # Inside the box where the map is 1, the colormap's top colour weighs alpha = 0.8 (a mask of round(204)).
    top = np.asarray(colorize(np.ones((1, 1))))[0, 0].astype(float)
    blended = (top * 204 + original[30:, 40:50].astype(float) * 51) / 255
    np.testing.assert_allclose(pixels[30:, 40:50], blended, atol=1)
    np.testing.assert_allclose(pixels[:, :10], 0.4 * original[:, :10], atol=1)  # outside: dimmed to 40%


def test_explain_folder_reports_a_corrupt_file_and_goes_on(capsys, tmp_path, plain_logits):
    photos = tmp_path / "photos"
    (photos / "more").mkdir(parents=True)
    for path in sample_images():
        shutil.copy(path, photos / path.name)
    Image.open(sample_images()[0]).save(photos / "more" / "astronaut.png")  # same stem, other folder and format
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    code, stdout, stderr = cli(capsys, "explain", str(onnx_rcam.default_model_path()), str(photos), "-o", str(out),
                               "--layer", "_blocks.10", "--batch-size", "2", "--device", "cpu", "--method", "rcam")
    assert code == 1 and "broken.jpg" in stderr and "explained 5 of 6 images" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["provider"] == "CPUExecutionProvider" and len(summary["failed"]) == 1
    top1 = {Path(r["image"]).name: r["top"][0]["class"] for r in summary["results"]}
    expected = dict(zip((p.name for p in sample_images()), plain_logits.argmax(1)))
    assert {name: top1[name] for name in expected} == expected
    assert top1["astronaut.png"] == expected["astronaut.jpg"]
    ref = bundled_reference("contrastive")
    for stem, index in (("chelsea", 1), ("more/astronaut", 0)):  # astronaut.png holds astronaut.jpg's pixels
        assert (out / f"{stem}._blocks.10.png").is_file() and (out / f"{stem}.layers.png").is_file()
        maps = np.load(out / f"{stem}.npz")
        assert_close(maps["_blocks.10.raw"], ref.raw["_blocks.10"][index], f"{stem} raw")
        assert_close(maps["_blocks.10.map"], ref.maps["_blocks.10"][index], f"{stem} map")
    assert Image.open(out / "chelsea._blocks.10.png").size == Image.open(sample_images()[1]).size
    rows = (out / "summary.csv").read_text().splitlines()
    assert len(rows) == 7 and any(r.startswith(str(photos / "broken.jpg")) and ",failed: " in r for r in rows)

    code, _, stderr = cli(capsys, "explain", str(onnx_rcam.default_model_path()), str(photos), "-o", str(out))
    assert code == 1 and "--force" in stderr


def test_explain_top_k_writes_one_overlay_per_class(capsys, tmp_path, plain_logits):
    out = tmp_path / "out"
    code, _, stderr = cli(capsys, "explain", str(onnx_rcam.default_model_path()), str(sample_images()[2]),
                          "-o", str(out), "--top-k", "2", "--layer", "_blocks.4", "--device", "cpu")
    assert code == 0, stderr
    result = json.loads((out / "summary.json").read_text())["results"][0]
    assert result["explained"] == np.argsort(-plain_logits[2])[:2].tolist()
    assert (out / "coffee._blocks.4.class1.png").is_file() and (out / "coffee._blocks.4.class2.png").is_file()


def test_demo_prints_the_predictions(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = cli(capsys, "demo")
    assert code == 0
    assert re.search(r"coffee\.jpg\s+espresso", stdout) and re.search(r"chelsea\.jpg\s+(tiger cat|tabby)", stdout)
    assert (tmp_path / "rcam-demo" / "coffee._blocks.10.png").is_file()


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys, plain_logits):
    """The README's Explainer example, exactly as written there: it prints what its comment says (the provider, and
    the photos' predicted classes), its heat is chelsea's `_blocks.10` map of the default method, lrp, from the
    reference's relevance, and it saves the overlay."""
    readme = (ROOT / "README.md").read_text()
    example = readme.split("<!-- explainer-example -->")[1].split("```python")[1].split("```")[0]
    claimed = re.search(r"^print\(explainer\.provider, explanation\.classes\)\s+# (.+)$", example, re.M)[1].strip()
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out.strip()
    provider = namespace["explainer"].provider  # "auto": CUDA where this onnxruntime can start it
    assert provider in ort.get_available_providers()
    assert printed == claimed.replace("CPUExecutionProvider", provider)
    assert printed.endswith(f" {plain_logits.argmax(1)}")
    ref = bundled_reference("contrastive")
    lrp = reference.relevance_cams(ref.activations["_blocks.10"], ref.relevance["_blocks.10"], (224, 224))["lrp"]
    assert_close(namespace["heat"], lrp[1][1].numpy(), "chelsea lrp map")
    assert (tmp_path / "chelsea-overlay.png").is_file()


def test_cuda_request_fails_clearly_without_a_gpu():
    """Asking for CUDA never silently runs on the CPU."""
    try:
        explainer = Explainer(onnx_rcam.default_model_path(), layers=["auto"], device="cuda")
    except onnx_rcam.RcamError as exc:
        assert "CUDA" in str(exc)
    else:
        assert explainer.provider == "CUDAExecutionProvider"
